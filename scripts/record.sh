#!/usr/bin/env bash
# The record attempt, end to end, with a log: `c2m tune check`, `c2m tune apply c2m-2m` (the old
# values saved first), `c2m bench --scenario record`, `c2m tune restore` (also on failure, Ctrl-C,
# SIGTERM or SIGHUP). Usage: scripts/record.sh [--dataplane kernel|xdp] [CONNECTIONS] [PROFILE],
# e.g. scripts/record.sh 2m c2m-2m. Needs root (sysctls). Results: results/record/, the log in
# results/record/logs/.
#
# With --dataplane xdp it runs `c2m bench --scenario record-xdp` (default 10m connections): both
# ends on AF_XDP with c2m's TCP, between two network namespaces the bench makes and removes. No
# socket is the kernel's there, so no sysctl is checked or changed (PROFILE is refused). Results:
# results/record-xdp/, the log in results/record-xdp/logs/.
#
# The old values go to c2m's one state file (/var/lib/c2m/tune-state.json, no --state here), so
# if this script itself is killed (SIGKILL, a crash, a power cut), a plain `c2m tune restore`
# finds them.
#
# Environment: C2M, a c2m binary to run instead of building target/release/c2m (tests pass a
# stand-in); RECORD_DROP_CACHES=0 keeps the page cache.
set -euo pipefail
cd "$(dirname "$0")/.."
dataplane=kernel
if [ "${1:-}" = --dataplane ]; then
  dataplane=${2:?--dataplane needs kernel or xdp}
  shift 2
fi
case $dataplane in
  kernel) scenario=record; connections=${1:-2m}; profile=${2:-c2m-2m} ;;
  xdp)
    scenario=record-xdp; connections=${1:-10m}; profile=none
    if [ -n "${2:-}" ]; then
      echo "scripts/record.sh: no tuning profile on the xdp data plane (no kernel socket to tune)" >&2
      exit 2
    fi
    ;;
  *) echo "scripts/record.sh: --dataplane kernel or xdp, not $dataplane" >&2; exit 2 ;;
esac
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "results/$scenario/logs"
log=results/$scenario/logs/$stamp-$(hostname -s).log
exec > >(tee -a "$log") 2>&1
echo "== c2m record attempt: $connections connections, $dataplane data plane, profile $profile, $(date -u)"
echo "== $(uname -sr), $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ -n "${C2M:-}" ]; then
  c2m=$C2M
else
  cargo build --release --quiet
  c2m=target/release/c2m
fi

applied=
bench_pid=
# On every exit: stop the bench if it still runs, then put the kernel settings back.
finish() {
  local status=$?
  if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
    echo "== stopping c2m bench (pid $bench_pid)"
    kill -TERM "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
  fi
  if [ -n "$applied" ]; then
    echo "== restoring the kernel settings saved before the run"
    if ! "$c2m" tune restore; then
      echo "== restore failed: the old values stay in /var/lib/c2m/tune-state.json; run \`c2m tune restore\`"
      [ "$status" -ne 0 ] || status=1
    fi
  fi
  exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Page cache counts against MemFree, which is what the run's guard watches; dropping it changes
# no setting (the kernel refills the cache on demand).
if [ "${RECORD_DROP_CACHES:-1}" != 0 ]; then
  echo "== dropping clean page cache: MemFree before $(awk '/MemFree/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  sync
  echo 1 > /proc/sys/vm/drop_caches
  echo "== MemFree now $(awk '/MemFree/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
fi

if [ "$dataplane" = kernel ]; then
  echo "== check: every limit that caps $connections connections"
  if ! "$c2m" tune check -c "$connections"; then
    echo "== $connections connections do not fit here (see above): not started"
    exit 1
  fi

  # Set before the apply: an apply refused because an earlier run's state file is still there
  # makes the exit put that run's originals back.
  applied=1
  echo "== apply $profile (old values saved in c2m's state file)"
  "$c2m" tune apply "$profile"
fi

echo "== bench --scenario $scenario -c $connections"
# In the background and waited for, so a signal to this script acts at once instead of after
# the bench (which checks that the connections fit before it starts anything).
"$c2m" bench --scenario "$scenario" -c "$connections" --no-progress &
bench_pid=$!
status=0
wait "$bench_pid" || status=$?
bench_pid=
echo "== bench exit status $status; results in results/$scenario/, log in $log"
exit $status
