#!/usr/bin/env bash
# The test command: unit, property and loopback integration tests (README.md, second line).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples
cargo test --release
