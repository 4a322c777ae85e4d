#!/usr/bin/env bash
# The soak (issue 11): SOAK_CLIENTS (1,000,000) chat clients on one c2m serve for SOAK_SECONDS
# (3600), each sending a SEND a minute to a random peer, with churn: SOAK_CHURN percent (1) of
# the logged-in clients say BYE each minute and come back about 10 s later (`c2m load --churn`),
# the mail they were sent meanwhile waiting in the server's offline store. Every 10 s it samples
# the server's RSS, the kernel's Slab and MemFree, and the server's gauges (sessions, fixed
# files, held receive buffers, the offline store's messages and bytes, unreceipted messages),
# then checks that none of them drifted and that the chat ledger is exact.
#
#   scripts/soak.sh                                    the full soak (an hour)
#   SOAK_CLIENTS=20000 SOAK_SECONDS=120 scripts/soak.sh   a quick one
#
# Results: results/soak/<stamp>-<host>/: samples.csv, load.json (the ledger), server.metrics,
# and summary.md + memory.svg, connections.svg and store.svg from `c2m results soak` (drift per hour by least
# squares over the steady part, after the connects and the first SEND interval). Exit 3 when
# something drifted or the ledger is not exact. Both ends on loopback, kernel TCP.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${SOAK_CLIENTS:-1000000}
SECONDS_=${SOAK_SECONDS:-3600}
CHURN=${SOAK_CHURN:-1}
if [ -n "${C2M:-}" ]; then
  c2m=$C2M
else
  cargo build --release --quiet --bins
  c2m=target/release/c2m
fi
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=results/soak/$stamp-$(hostname -s)
mkdir -p "$out"
pids=()
trap 'for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done' EXIT
trap 'exit 130' INT TERM

echo "== soak: $CLIENTS chat clients for ${SECONDS_}s, churn $CHURN%/min, $(uname -sr), $(nproc) cores, results in $out"
"$c2m" serve --listen 127.0.0.1:0 --metrics 127.0.0.1:0 --users "$CLIENTS" --max-sessions $((CLIENTS + CLIENTS / 20 + 1000)) \
  --heartbeat 60s >"$out/serve.banner" 2>"$out/serve.log" &
serve_pid=$!
pids+=("$serve_pid")
for _ in $(seq 1 100); do grep -q "listening on" "$out/serve.banner" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$out/serve.banner")
metrics=$(sed -n 's|.*metrics http://\([^/ ]*\)/metrics.*|\1|p' "$out/serve.banner")
[ -n "$addr" ] || { cat "$out/serve.log"; exit 1; }

# One SEND a minute per client (a session stays inside the 3 x 60 s heartbeat window by it).
"$c2m" load --server "$addr" -c "$CLIENTS" --workload chat --users "$CLIENTS" --msg-rate 0.0166667 \
  -d "${SECONDS_}s" --hold 20s --churn "$CHURN" --churn-away 10s --reconnect --no-progress --force \
  --json "$out/load.json" >"$out/load.out" 2>"$out/load.log" &
load_pid=$!
pids+=("$load_pid")

# The load binds source ports 10000-65000 on its addresses, which takes them from the kernel's
# ephemeral range on every address: a scrape brings its own port.
metric() {
  curl -s --local-port 1024-9999 --max-time 5 "http://$metrics/metrics" 2>/dev/null |
    awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%.0f\n", s }'
}
meminfo() { awk -v k="$1:" '$1 == k { printf "%.0f\n", $2 * 1024 }' /proc/meminfo; }
rss() { awk '/^VmRSS:/ { printf "%.0f\n", $2 * 1024 }' "/proc/$1/status" 2>/dev/null || echo 0; }

echo "t,server_rss,load_rss,mem_free,slab,sunreclaim,sessions,fixed_files,held_buffers,store_messages,store_bytes,pending,slab_resident,put_back,stored,delivered_from_store" \
  >"$out/samples.csv"
t0=$(date +%s)
while kill -0 "$load_pid" 2>/dev/null; do
  now=$(($(date +%s) - t0))
  echo "$now,$(rss "$serve_pid"),$(rss "$load_pid"),$(meminfo MemFree),$(meminfo Slab),$(meminfo SUnreclaim),$(metric c2m_sessions_active),$(metric c2m_fixed_files_in_use),$(metric c2m_held_buffers),$(metric c2m_chat_offline_messages),$(metric c2m_chat_offline_bytes),$(metric c2m_chat_pending_messages),$(metric c2m_slab_resident_bytes),$(metric c2m_chat_put_back_total),$(metric c2m_chat_offline_stored_total),$(metric c2m_chat_offline_delivered_total)" \
    >>"$out/samples.csv"
  if [ $((now % 300)) -lt 10 ]; then
    echo "   t=${now}s sessions $(metric c2m_sessions_active), store $(metric c2m_chat_offline_messages), server RSS $(($(rss "$serve_pid") / 1048576)) MiB, MemFree $(($(meminfo MemFree) / 1048576)) MiB"
  fi
  sleep 10
done
wait "$load_pid" || echo "== c2m load exited $? (its report says why)"
sleep 5
curl -s --local-port 1024-9999 --max-time 5 "http://$metrics/metrics" >"$out/server.metrics" || true
kill -TERM "$serve_pid" 2>/dev/null || true
wait "$serve_pid" 2>/dev/null || true
"$c2m" results soak "$out"
