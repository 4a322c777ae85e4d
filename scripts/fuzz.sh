#!/usr/bin/env bash
# Fuzz the wire-protocol parser: scripts/fuzz.sh [SECONDS] (default 60).
#
# Runs fuzz/fuzz_targets/parse_frame.rs under libFuzzer via cargo-fuzz. Extra
# arguments after SECONDS go to libFuzzer (e.g. -jobs=2). The corpus grows in
# fuzz/corpus/parse_frame and crashes land in fuzz/artifacts/parse_frame; both
# are git-ignored.
set -euo pipefail

seconds="${1:-60}"
shift || true
case "$seconds" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS] [LIBFUZZER_ARGS...]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# cargo fuzz passes nightly-only flags (-Zsanitizer, -Cpasses=sancov-module,
# ...). Only a stable toolchain is available here, and RUSTC_BOOTSTRAP=1 lets
# stable rustc accept them.
export RUSTC_BOOTSTRAP=1

# A seed so the fuzzer starts from a valid frame instead of having to discover
# the header layout: max_frame 4096, then PING seq=1 t_ns=2.
corpus=fuzz/corpus/parse_frame
mkdir -p "$corpus"
if [ -z "$(ls -A "$corpus")" ]; then
  printf '\x00\x10\x14\x00\x02\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00' \
    > "$corpus/seed-ping"
fi

# cargo fuzz builds for the host target with AddressSanitizer by default.
exec cargo fuzz run parse_frame -- -max_total_time="$seconds" "$@"
