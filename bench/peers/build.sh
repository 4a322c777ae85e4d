#!/usr/bin/env bash
# Builds the peer servers into bench/peers/bin/<name>, from the package registries only
# (crates.io through cargo, Debian through apt-get), and writes bin/<name>.version and
# bin/<name>.build (one line each: what it is, and how it was compiled).
#
#   bench/peers/build.sh [tokio] [monoio] [epoll-c] [erlang]     (default: all four)
#
# Installs missing Debian packages (gcc, erlang-base) when run as root. Quick when nothing
# changed. Exits 1 naming every peer that failed. It takes no lock itself: callers on a shared
# box wrap it (flock -s /tmp/c2m-heavy.lock bench/peers/build.sh), and cargo honours
# CARGO_BUILD_JOBS from the environment.
set -u
cd "$(dirname "$0")" || exit 1
peers_dir=$(pwd)
bin="$peers_dir/bin"
export CARGO_TARGET_DIR="$peers_dir/target"
mkdir -p "$bin"

say() { echo "build.sh: $*" >&2; }

# Installs Debian packages if a command is missing (root only); refreshes the lists once if the
# first try fails (a fresh container has none).
need() {
    local cmd=$1
    shift
    command -v "$cmd" >/dev/null && return 0
    if [ "$(id -u)" != 0 ]; then
        say "$cmd is missing and this is not root: apt-get install $*"
        return 1
    fi
    say "installing $* for $cmd"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null ||
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null; } ||
        return 1
    command -v "$cmd" >/dev/null
}

# The version of a crate as locked in a project's Cargo.lock.
locked() {
    awk -v name="$2" '$0 == "name = \"" name "\"" { getline; gsub(/version = |"/, ""); print; exit }' "$1/Cargo.lock"
}

rustc_version() { rustc --version | awk '{ print $2 }'; }

# Builds a Cargo project and installs its binary as bin/<name>.
cargo_peer() {
    local name=$1 crate=$2
    command -v cargo >/dev/null || { say "$name needs cargo (rustup), which apt does not provide"; return 1; }
    cargo build --release --locked --quiet --manifest-path "$peers_dir/$name/Cargo.toml" || return 1
    install -m 755 "$CARGO_TARGET_DIR/release/peer-$name" "$bin/$name.tmp" && mv -f "$bin/$name.tmp" "$bin/$name"
    echo "$crate $(locked "$peers_dir/$name" "$crate"), rustc $(rustc_version)" > "$bin/$name.version"
    # The release profile as the peer's Cargo.toml sets it (cargo's defaults otherwise:
    # opt-level 3, no LTO).
    local profile
    profile=$(awk '/^\[profile\.release\]/ { on = 1; next } /^\[/ { on = 0 } on && NF { printf "%s%s", sep, $0; sep = ", " }' "$peers_dir/$name/Cargo.toml")
    echo "rustc $(rustc_version), cargo build --release --locked, [profile.release] ${profile:-cargo defaults}" > "$bin/$name.build"
}

build_tokio() { cargo_peer tokio tokio; }

build_monoio() { cargo_peer monoio monoio; }

build_epoll_c() {
    need gcc gcc libc6-dev || return 1
    local cflags="-O2 -Wall -pthread"
    local src="$peers_dir/epoll-c/server.c"
    if [ ! -x "$bin/epoll-c" ] || [ "$src" -nt "$bin/epoll-c" ]; then
        gcc $cflags -o "$bin/epoll-c.tmp" "$src" && mv -f "$bin/epoll-c.tmp" "$bin/epoll-c" || return 1
    fi
    echo "gcc $(gcc -dumpfullversion) $cflags" > "$bin/epoll-c.build"
    echo "gcc $(gcc -dumpfullversion), glibc $(getconf GNU_LIBC_VERSION | awk '{ print $2 }')" > "$bin/epoll-c.version"
}

build_erlang() {
    need erlc erlang-base || return 1
    local ebin="$bin/erlang-ebin" src="$peers_dir/erlang/src" stale=0 f
    mkdir -p "$ebin"
    for f in "$src"/*.erl; do
        local beam
        beam="$ebin/$(basename "$f" .erl).beam"
        [ -f "$beam" ] && [ ! "$f" -nt "$beam" ] || stale=1
    done
    if [ "$stale" = 1 ]; then
        erlc -Werror -o "$ebin" "$src"/*.erl || return 1
    fi
    install -m 755 "$peers_dir/erlang/erlang.sh" "$bin/erlang" || return 1
    local otp
    otp=$(erl -noinput -eval 'io:format("OTP ~s, erts ~s", [erlang:system_info(otp_release), erlang:system_info(version)]), halt().') || return 1
    echo "$otp, Debian erlang-base $(dpkg-query -W -f '${Version}' erlang-base 2>/dev/null || echo '?')" > "$bin/erlang.version"
    local flavor
    flavor=$(erl -noinput -eval 'io:format("~s", [erlang:system_info(emu_flavor)]), halt().') || flavor='?'
    echo "erlc -Werror (BEAM bytecode, emulator flavor $flavor), run as erl -noinput +S N:N +Q <fd limit> (erlang.sh)" > "$bin/erlang.build"
}

if [ $# -gt 0 ]; then requested=("$@"); else requested=(tokio monoio epoll-c erlang); fi
failed=()
for name in "${requested[@]}"; do
    started=$(date +%s)
    case "$name" in
        tokio) build_tokio ;;
        monoio) build_monoio ;;
        epoll-c) build_epoll_c ;;
        erlang) build_erlang ;;
        *) say "no peer named $name (tokio, monoio, epoll-c, erlang)"; false ;;
    esac
    if [ $? = 0 ]; then
        say "$name: $(cat "$bin/$name.version") ($(( $(date +%s) - started )) s)"
    else
        say "$name: FAILED"
        failed+=("$name")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    say "failed: ${failed[*]}"
    exit 1
fi
