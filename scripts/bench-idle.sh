#!/usr/bin/env bash
# The main job for now: hold idle, logged-in loopback connections on one `c2m serve` process and
# measure what each costs (server user space, kernel), sized to this box's free memory.
# Extra arguments go to the benchmark, e.g. `scripts/bench-idle.sh -c 200000`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples
exec target/release/examples/idle-memory "$@"
