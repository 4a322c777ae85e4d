#!/usr/bin/env bash
# Runs the tests under AddressSanitizer (stable toolchain + RUSTC_BOOTSTRAP for -Zsanitizer).
# `scripts/sanitize.sh` runs the unit tests, in which the in-process server test drives every
# unsafe block of the engine; `scripts/sanitize.sh --all` also runs the integration tests against
# an ASan-built `c2m` binary. Miri cannot run here (no nightly toolchain, and it cannot emulate
# io_uring syscalls anyway).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Zsanitizer=address"
export ASAN_OPTIONS="detect_leaks=1"
export CARGO_TARGET_DIR=target/asan
target=$(rustc -vV | sed -n 's/^host: //p')
if [ "${1:-}" = "--all" ]; then
  cargo test --release --target "$target"
else
  cargo test --release --target "$target" --lib
fi
