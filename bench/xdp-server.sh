#!/usr/bin/env bash
# The xdp data plane's figures (issue 13), measured, not asserted: one c2m serve on the xdp data
# plane (AF_XDP and c2m's TCP, in namespace c2m-srv) with unmodified Linux TCP clients (c2m load
# on the kernel data plane, in c2m-cli), in the topology of scripts/netns.sh.
#
#   1. Server memory per idle session at each count of C2M_XDP_COUNTS (default 100k and 1M):
#      the server process's resident memory (smaps_rollup) before the load and with every
#      connection logged in, divided by the count. The xdp server keeps no kernel socket, so its
#      kernel side (UMEM, rings, the XDP program) is fixed at start; MemFree and Slab deltas are
#      reported too, and they are mostly the clients' own kernel sockets.
#   2. Server CPU per echo, kernel data plane vs xdp data plane, same load in the same run:
#      10,000 connections, 64 B echoes, one in flight each (closed loop), 20 s.
#
# Writes results/xdp-server/<stamp>-<host>.json and prints a summary. Needs root. A count whose
# memory would not fit (MemFree less 2 GiB, at 6 KB per client socket) is skipped and says so.
# The namespaces, the client addresses and every process it starts go when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $EUID == 0 ]] || { echo "bench/xdp-server.sh: must run as root (namespaces, AF_XDP)" >&2; exit 1; }
COUNTS=${C2M_XDP_COUNTS:-100000 1000000}
ECHO_CONNECTIONS=${C2M_XDP_ECHO_CONNECTIONS:-10000}
ECHO_SECONDS=${C2M_XDP_ECHO_SECONDS:-20}
KEEP_FREE=$((2 << 30))
CLIENT_BYTES_EACH=6000 # a Linux client socket here, with margin (results/idle-memory)
PORTS_PER_ADDRESS=55000
METRICS=127.0.0.1:9477
SRV_ADDR=198.18.0.1:7700
BIN=target/release/c2m

cargo build --release --bins >&2
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=results/xdp-server
WORK=$(mktemp -d)
mkdir -p "$OUT"
SERVER_PID=

cleanup() {
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  scripts/netns.sh down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
scripts/netns.sh up >&2

metric() { # NAME: summed over its label sets
  curl -sf "http://$METRICS/metrics" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%.0f\n", s }'
}
rss_bytes() { awk '/^Rss:/ { printf "%.0f\n", $2 * 1024 }' "/proc/$1/smaps_rollup"; }
meminfo() { awk -v k="$1:" '$1 == k { printf "%.0f\n", $2 * 1024 }' /proc/meminfo; }
cpu_ticks() { awk '{ printf "%.0f\n", $14 + $15 }' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

start_server() { # PLANE MAX_SESSIONS
  local plane=$1 max=$2
  local args=(serve --netns c2m-srv --listen "$SRV_ADDR" --metrics "$METRICS" --max-sessions "$max")
  [[ $plane == xdp ]] && args+=(--dataplane xdp --iface c2m-s0)
  "$BIN" "${args[@]}" >"$WORK/server-$plane.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -sf "http://$METRICS/metrics" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "c2m serve ($plane) did not come up:" >&2
  cat "$WORK/server-$plane.log" >&2
  exit 1
}
stop_server() {
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" || true
  SERVER_PID=
}

# Client source addresses in c2m-cli (198.18.1.x, inside the namespace only).
add_sources() { # COUNT -> prints the --sources value
  local n=$(( ($1 + PORTS_PER_ADDRESS - 1) / PORTS_PER_ADDRESS ))
  for i in $(seq 1 "$n"); do
    ip -n c2m-cli addr add "198.18.1.$i/15" dev c2m-c0 2>/dev/null || true
  done
  echo "198.18.1.1-198.18.1.$n"
}

wait_sessions() { # COUNT LOAD_PID
  while kill -0 "$2" 2>/dev/null; do
    [[ $(metric c2m_sessions_active) -ge $1 ]] && return 0
    sleep 0.5
  done
  return 1
}

MEMORY_ROWS=()
for n in $COUNTS; do
  free=$(meminfo MemFree)
  need=$((n * CLIENT_BYTES_EACH + KEEP_FREE))
  if (( free < need )); then
    echo "memory at $n: skipped, it would not fit (MemFree $((free >> 20)) MiB, need $((need >> 20)) MiB)" >&2
    MEMORY_ROWS+=("{\"connections\": $n, \"skipped\": \"would not fit: MemFree $free B, need $need B\"}")
    continue
  fi
  sources=$(add_sources "$n")
  start_server xdp $((n + n / 10 + 1000))
  sleep 1
  rss0=$(rss_bytes "$SERVER_PID"); free0=$(meminfo MemFree); slab0=$(meminfo Slab)
  "$BIN" load --netns c2m-cli --server "$SRV_ADDR" -c "$n" --sources "$sources" --workload ping \
    --ping-interval 20s --duration 15s --connect-timeout 60s --no-progress --force \
    --json "$WORK/load-$n.json" >"$WORK/load-$n.log" 2>&1 &
  load_pid=$!
  if wait_sessions "$n" "$load_pid"; then
    sleep 3
    rss1=$(rss_bytes "$SERVER_PID"); free1=$(meminfo MemFree); slab1=$(meminfo Slab)
    held=$(metric c2m_sessions_active)
  else
    rss1=0; free1=0; slab1=0; held=$(metric c2m_sessions_active)
  fi
  load_rc=0; wait "$load_pid" || load_rc=$?
  stop_server
  errors=$(jq -c '.errors' "$WORK/load-$n.json" 2>/dev/null || echo null)
  echo "memory at $n: held $held, server RSS $((rss0 >> 20)) -> $((rss1 >> 20)) MiB, load exit $load_rc" >&2
  MEMORY_ROWS+=("{\"connections\": $n, \"held\": $held, \"load_exit\": $load_rc, \"load_errors\": $errors,
    \"server_rss_before\": $rss0, \"server_rss_held\": $rss1, \"memfree_before\": $free0, \"memfree_held\": $free1,
    \"slab_before\": $slab0, \"slab_held\": $slab1}")
done

ECHO_ROWS=()
for plane in kernel xdp; do
  start_server "$plane" $((ECHO_CONNECTIONS * 2))
  "$BIN" load --netns c2m-cli --server "$SRV_ADDR" -c "$ECHO_CONNECTIONS" --sources 198.18.0.2 --workload echo \
    --size 64 --in-flight 1 --duration "${ECHO_SECONDS}s" --no-progress --force \
    --json "$WORK/echo-$plane.json" >"$WORK/echo-$plane.log" 2>&1 &
  load_pid=$!
  cpu0=0
  if wait_sessions "$ECHO_CONNECTIONS" "$load_pid"; then cpu0=$(cpu_ticks "$SERVER_PID"); fi
  t0=$(date +%s.%N)
  load_rc=0; wait "$load_pid" || load_rc=$?
  cpu1=$(cpu_ticks "$SERVER_PID"); t1=$(date +%s.%N)
  stop_server
  received=$(jq '.messages.received' "$WORK/echo-$plane.json")
  rate=$(jq '.messages.rate_achieved' "$WORK/echo-$plane.json")
  echo "echo on $plane: $received echoes, $rate/s, server CPU $(( (cpu1 - cpu0) / TICK )) s, load exit $load_rc" >&2
  ECHO_ROWS+=("{\"dataplane\": \"$plane\", \"load_exit\": $load_rc, \"echoes\": $received, \"echo_rate\": $rate,
    \"server_cpu_seconds\": $(awk -v a="$cpu0" -v b="$cpu1" -v t="$TICK" 'BEGIN { print (b - a) / t }'),
    \"wall_seconds\": $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')}")
done

json="$OUT/$STAMP-$(hostname -s).json"
python3 - "$json" "$ECHO_CONNECTIONS" "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo -dirty)" \
  "[$(IFS=,; echo "${MEMORY_ROWS[*]}")]" "[$(IFS=,; echo "${ECHO_ROWS[*]}")]" <<'PY'
import json, os, platform, sys
path, echo_connections, commit = sys.argv[1], int(sys.argv[2]), sys.argv[3]
memory, echo = json.loads(sys.argv[4]), json.loads(sys.argv[5])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem_total = next(int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal:"))
for m in memory:
    if "skipped" in m or not m["held"]:
        continue
    n = m["held"]
    m["server_bytes_per_session"] = (m["server_rss_held"] - m["server_rss_before"]) / n
    m["memfree_bytes_per_connection"] = (m["memfree_before"] - m["memfree_held"]) / n
    m["slab_bytes_per_connection"] = (m["slab_held"] - m["slab_before"]) / n
for e in echo:
    e["server_cpu_us_per_echo"] = e["server_cpu_seconds"] * 1e6 / e["echoes"] if e["echoes"] else None
by = {e["dataplane"]: e for e in echo}
ratio = None
if by.get("kernel", {}).get("server_cpu_us_per_echo") and by.get("xdp", {}).get("server_cpu_us_per_echo"):
    ratio = by["xdp"]["server_cpu_us_per_echo"] / by["kernel"]["server_cpu_us_per_echo"]
result = {
    "schema": "c2m.xdp-server/1",
    "commit": commit,
    "machine": {"host": platform.node(), "kernel": platform.release(), "cpu_model": cpu,
                "cores": os.cpu_count(), "memory_bytes": mem_total},
    "xdp_mode": "copy (veth: zero-copy is not offered)",
    "clients": "c2m load --dataplane kernel in c2m-cli (Linux TCP sockets)",
    "memory": memory,
    "echo": {"connections": echo_connections, "size": 64, "in_flight": 1, "runs": echo,
             "server_cpu_per_echo_xdp_over_kernel": ratio},
    "goals": {"server_bytes_per_session": 512, "server_cpu_per_echo_xdp_over_kernel": 0.5},
}
json.dump(result, open(path, "w"), indent=2)
print(f"wrote {path}")
for m in memory:
    if "server_bytes_per_session" in m:
        print(f"  {m['held']:>9,} sessions: server {m['server_bytes_per_session']:.0f} B each "
              f"(goal < 512), MemFree {m['memfree_bytes_per_connection']:.0f} B and Slab "
              f"{m['slab_bytes_per_connection']:.0f} B per connection (mostly the clients' sockets)")
    else:
        print(f"  {m['connections']:>9,}: {m.get('skipped', 'not held')}")
for e in echo:
    print(f"  echo {e['dataplane']:>6}: {e['echoes']:,} echoes, {e['echo_rate']:.0f}/s, "
          f"server {e['server_cpu_us_per_echo']:.2f} us CPU each")
if ratio is not None:
    print(f"  server CPU per echo, xdp / kernel: {ratio:.2f} (goal < 0.5)")
PY
