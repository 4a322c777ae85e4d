#!/usr/bin/env bash
# The main job: build c2m and run a real benchmark on loopback. `c2m bench` with no scenario runs
# `bench/scenarios/default.toml`: as many logged-in, pinging connections as this box holds (at
# most 200,000, refused if the memory would not fit), one `c2m serve` and one `c2m load`
# process, then writes results/default/<stamp>-<host>.json + .hlog and results/REPORT.md.
# Extra arguments go to `c2m bench`, e.g. `scripts/bench.sh --scenario c100k`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
exec target/release/c2m bench "$@"
