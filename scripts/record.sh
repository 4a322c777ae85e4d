#!/usr/bin/env bash
# The record attempt, end to end, with a log: `c2m tune check`, `c2m tune apply c2m-2m` (the old
# values saved first), `c2m bench --scenario record`, `c2m tune restore` (also on failure or
# Ctrl-C). Usage: scripts/record.sh [CONNECTIONS] [PROFILE], e.g. scripts/record.sh 2m c2m-2m.
# Needs root (sysctls). Results: results/record/, the log in results/record/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-2m}
profile=${2:-c2m-2m}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p results/record/logs
log=results/record/logs/$stamp-$(hostname -s).log
exec > >(tee -a "$log") 2>&1
echo "== c2m record attempt: $connections connections, profile $profile, $(date -u)"
echo "== $(uname -sr), $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
cargo build --release --quiet
c2m=target/release/c2m

state=$(mktemp -d)/tune-state.json
restore() {
  if [ -f "$state" ]; then
    echo "== restoring the kernel settings saved before the run"
    "$c2m" tune restore --state "$state"
  fi
}
trap restore EXIT
trap 'exit 130' INT TERM

# Page cache counts against MemFree, which is what the run's guard watches; dropping it changes
# no setting (the kernel refills the cache on demand).
echo "== dropping clean page cache: MemFree before $(awk '/MemFree/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
sync
echo 1 > /proc/sys/vm/drop_caches
echo "== MemFree now $(awk '/MemFree/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"

echo "== check: every limit that caps $connections connections"
if ! "$c2m" tune check -c "$connections"; then
  echo "== $connections connections do not fit here (see above): not started"
  exit 1
fi

echo "== apply $profile (old values saved in $state)"
"$c2m" tune apply "$profile" --state "$state"

echo "== bench --scenario record -c $connections"
status=0
"$c2m" bench --scenario record -c "$connections" --no-progress || status=$?
echo "== bench exit status $status; results in results/record/, log in $log"
exit $status
