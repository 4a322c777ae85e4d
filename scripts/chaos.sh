#!/usr/bin/env bash
# The fault suite (issue 11): each case runs a real c2m serve and c2m load, breaks something,
# and checks that nothing leaked and that the chat ledger accounts for every message.
#
#   scripts/chaos.sh                 every case at full size
#   scripts/chaos.sh serve-kill loss  only these cases
#   CHAOS_SCALE=5000 CHAOS_STORM=20000 CHAOS_STOP=5 scripts/chaos.sh   a quick pass
#
# Cases:
#   load-kill   kill -9 of c2m load in the middle of a chat run (CHAOS_SCALE clients): the server's
#               sessions, slots, fixed files, held buffers and unreceipted lists back to 0, and its
#               offline store (the dead clients' mail) emptied by its TTL, bytes and messages both
#   serve-kill  kill -9 of c2m serve under a chat run, a new server on the same port 2 s later:
#               `c2m load --reconnect` brings every client back; the ledger says what was lost
#               with the killed server (after its ACK) and with the connections (never ACKed)
#   sigstop     SIGSTOP of the server for CHAOS_STOP seconds (30), then SIGCONT: nothing lost
#   loss        2% of the frames dropped each way on the veth between the test namespaces
#               (scripts/netns.sh; `c2m loss`, since netem is not built into this kernel and
#               nftables is not installed), kernel TCP both ends: nothing lost, nothing doubled
#   storm       CHAOS_STORM (200,000) ping clients all reset at once (`ss -K`: every server-side
#               socket destroyed, an RST to each client): how long until every one is back
#               (backoff with jitter, paced by the connect concurrency)
#
# Every case ends with the server's gauges checked (c2m_sessions_active, c2m_slab_slots_in_use,
# c2m_fixed_files_in_use, c2m_held_buffers, c2m_chat_pending_messages; the store where it must
# empty) after the load is gone. Results: results/chaos/<stamp>-<host>/ (each load's JSON, each
# server's last /metrics) and a table, results/chaos/<stamp>-<host>.md. Exit 0 when every case
# held, 3 when one did not. Needs root for `loss` (namespaces, XDP) and `storm` (sock_destroy). Only processes this script started are signalled, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${CHAOS_SCALE:-100000}
STORM=${CHAOS_STORM:-200000}
STOP=${CHAOS_STOP:-30}
LOSS_CONNS=${CHAOS_LOSS_CONNS:-20000}
if [ -n "${C2M:-}" ]; then
  c2m=$C2M
else
  cargo build --release --quiet --bins
  c2m=target/release/c2m
fi
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(load-kill serve-kill sigstop loss storm)

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=results/chaos/$stamp-$(hostname -s)
mkdir -p "$out"
table=$out.md
pids=()
netns_up=

cleanup() {
  for p in "${pids[@]}"; do
    kill -KILL "$p" 2>/dev/null || true
  done
  if [ -n "$netns_up" ]; then scripts/netns.sh down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "== $(date -u +%H:%M:%S) $*"; }
now() { date +%s.%N; }
# since T: seconds since T, to a tenth (the metric is polled every 0.25 s).
since() { awk -v t0="$1" -v t1="$(now)" 'BEGIN { printf "%.1f", t1 - t0 }'; }

# serve NAME [NETNS] [ARGS...]: starts c2m serve in the background; sets SERVE_PID, SERVE_ADDR
# and METRICS (the metrics address, in the same namespace).
serve() {
  local name=$1 ns=$2
  shift 2
  local banner=$out/$name.banner
  local run=()
  [ -z "$ns" ] || run=(ip netns exec "$ns")
  "${run[@]}" "$c2m" serve --metrics 127.0.0.1:0 "$@" >"$banner" 2>"$out/$name.log" &
  SERVE_PID=$!
  pids+=("$SERVE_PID")
  for _ in $(seq 1 200); do
    grep -q "listening on" "$banner" 2>/dev/null && break
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$out/$name.log"; echo "c2m serve ($name) did not start"; exit 1; }
    sleep 0.1
  done
  SERVE_ADDR=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$banner" | head -1)
  METRICS=$(sed -n 's|.*metrics http://\([^/ ]*\)/metrics.*|\1|p' "$banner" | head -1)
  SERVE_NS=$ns
}

# metric NAME: the sum of a family on the current server (0 when the server is gone). The load
# binds source ports 10000-65000 on its addresses, which takes them from the kernel's ephemeral
# range on every address: a scrape brings its own port.
metric() {
  local run=()
  [ -z "$SERVE_NS" ] || run=(ip netns exec "$SERVE_NS")
  "${run[@]}" curl -s --local-port 1024-9999 --max-time 5 "http://$METRICS/metrics" 2>/dev/null |
    awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%.0f\n", s }'
}

# wait_metric NAME OP VALUE SECONDS: waits until the metric compares (ge, eq); 1 on timeout.
wait_metric() {
  local name=$1 op=$2 want=$3 secs=$4 got
  for _ in $(seq 1 $((secs * 4))); do
    got=$(metric "$name")
    case $op in
      eq) [ "$got" -eq "$want" ] && return 0 ;;
      ge) [ "$got" -ge "$want" ] && return 0 ;;
    esac
    sleep 0.25
  done
  echo "   $name is $got, want $op $want after ${secs}s"
  return 1
}

# leaks SECONDS: the server's per-connection gauges back to 0; prints what stayed.
leaks() {
  local left=() g
  for g in c2m_sessions_active c2m_slab_slots_in_use c2m_fixed_files_in_use c2m_held_buffers \
    c2m_chat_pending_messages; do
    wait_metric "$g" eq 0 "$1" >/dev/null || left+=("$g=$(metric "$g")")
  done
  # The store's byte count goes with its messages.
  if [ "$(metric c2m_chat_offline_messages)" -eq 0 ] && [ "$(metric c2m_chat_offline_bytes)" -ne 0 ]; then
    left+=("c2m_chat_offline_bytes=$(metric c2m_chat_offline_bytes) with no message stored")
  fi
  local run=()
  [ -z "$SERVE_NS" ] || run=(ip netns exec "$SERVE_NS")
  "${run[@]}" curl -s --local-port 1024-9999 --max-time 5 "http://$METRICS/metrics" >"$out/$CASE-server.metrics" 2>/dev/null || true
  if [ ${#left[@]} -eq 0 ]; then echo none; else echo "${left[*]}"; fi
}

# load_ended SECONDS: waits for the background load, then for the server's gauges (leaks);
# sets LEFT to what stayed.
load_ended() {
  wait "$LOAD_PID" || true
  LEFT=$(leaks "$1")
}

# json FILE EXPR: a jq expression over a load report.
json() { jq -r "$2" "$1"; }

failed=0
rows=()
row() {
  # case | clients | what happened | lost after ACK | lost never ACKed | duplicates | leaked | held
  rows+=("| $1 | $2 | $3 | $4 | $5 | $6 | $7 | $8 |")
  [ "$8" = yes ] || failed=1
  echo "   -> $1: $3; lost after ACK $4, never ACKed $5, duplicates $6, leaked: $7; held: $8"
}

# chat_row CLIENTS WHAT LEFT HELD: a row of a chat case, its ledger from $out/$CASE.json.
chat_row() {
  local j=$out/$CASE.json
  row "$CASE" "$1" "$2" "$(json "$j" .chat.lost_after_ack)" "$(json "$j" .chat.lost_unacked)" \
    "$(json "$j" .chat.duplicates)" "$3" "$4"
}

stop_server() {
  kill -TERM "$SERVE_PID" 2>/dev/null || true
  wait "$SERVE_PID" 2>/dev/null || true
}

# A chat load in the background against $SERVE_ADDR; sets LOAD_PID.
chat_load() {
  local name=$1 clients=$2
  shift 2
  "$c2m" load --server "$SERVE_ADDR" -c "$clients" --workload chat --msg-rate 0.2 --users "$clients" \
    --no-progress --json "$out/$name.json" "$@" >"$out/$name.out" 2>&1 &
  LOAD_PID=$!
  pids+=("$LOAD_PID")
}

case_load_kill() {
  CASE=load-kill
  say "$CASE: $SCALE chat clients, kill -9 of the load after 10 s of messages"
  serve "$CASE" "" --listen 127.0.0.1:0 --users "$SCALE" --offline-ttl 20s
  chat_load "$CASE" "$SCALE" -d 120s
  wait_metric c2m_sessions_active ge "$SCALE" 120 || true
  sleep 10
  local stored_before
  stored_before=$(metric c2m_chat_offline_stored_total)
  kill -KILL "$LOAD_PID"
  wait "$LOAD_PID" 2>/dev/null || true
  local t0 left gone
  t0=$(now)
  left=$(leaks 60)
  gone=$(since "$t0")
  # The dead clients' mail: stored, then expired by the TTL (20 s), bytes with it.
  wait_metric c2m_chat_offline_messages eq 0 60 >/dev/null || left="$left c2m_chat_offline_messages=$(metric c2m_chat_offline_messages)"
  [ "$(metric c2m_chat_offline_bytes)" -eq 0 ] || left="$left c2m_chat_offline_bytes=$(metric c2m_chat_offline_bytes)"
  left=${left#none }
  local what="sessions gone in ${gone}s; $(metric c2m_chat_offline_stored_total) stored ($stored_before before the kill), $(metric c2m_chat_offline_expired_total) expired by TTL, $(metric c2m_chat_put_back_total) put back"
  local held=yes
  [ "$left" = none ] || held=no
  row "$CASE" "$SCALE" "$what" "n/a (load killed)" "n/a" "n/a" "$left" "$held"
  stop_server
}

case_serve_kill() {
  CASE=serve-kill
  say "$CASE: $SCALE chat clients with --reconnect, kill -9 of the server after 10 s, a new one 2 s later"
  serve "$CASE-a" "" --listen 127.0.0.1:0 --users "$SCALE"
  local addr=$SERVE_ADDR
  # Long enough for every client to notice the kill and come back, with room to spare.
  chat_load "$CASE" "$SCALE" -d $((SCALE / 1000 + 90))s --hold 10s --reconnect --reconnect-max 2s
  wait_metric c2m_sessions_active ge "$SCALE" 120 || true
  sleep 10
  kill -KILL "$SERVE_PID"
  wait "$SERVE_PID" 2>/dev/null || true
  sleep 2
  serve "$CASE-b" "" --listen "$addr" --users "$SCALE"
  local t0
  t0=$(now)
  wait_metric c2m_sessions_active ge "$SCALE" $((SCALE / 1000 + 80)) || true
  local back
  back=$(since "$t0")
  load_ended 30
  local left=$LEFT j=$out/$CASE.json
  local what
  what="all back in ${back}s: $(json "$j" .connections.relogins) logins again, $(json "$j" .connections.established_at_end) of $SCALE up at the end; $(json "$j" .chat.delivered) of $(json "$j" .chat.expected) delivered"
  local held=yes
  [ "$left" = none ] && [ "$(json "$j" .connections.established_at_end)" -eq "$SCALE" ] &&
    [ "$(json "$j" .chat.unknown)" -eq 0 ] || held=no
  chat_row "$SCALE" "$what" "$left" "$held"
  stop_server
}

case_sigstop() {
  CASE=sigstop
  say "$CASE: $SCALE chat clients with --reconnect, SIGSTOP of the server for ${STOP}s"
  serve "$CASE" "" --listen 127.0.0.1:0 --users "$SCALE"
  chat_load "$CASE" "$SCALE" -d $((STOP + 40))s --reconnect
  wait_metric c2m_sessions_active ge "$SCALE" 120 || true
  sleep 10
  kill -STOP "$SERVE_PID"
  sleep "$STOP"
  kill -CONT "$SERVE_PID"
  load_ended 30
  local left=$LEFT j=$out/$CASE.json
  local what
  what="$(json "$j" .connections.lost) connections lost, $(json "$j" .connections.relogins) logins again; $(json "$j" .chat.delivered) of $(json "$j" .chat.expected) delivered"
  local held=yes
  [ "$left" = none ] && [ "$(json "$j" .chat.lost)" -eq 0 ] || held=no
  chat_row "$SCALE" "$what" "$left" "$held"
  stop_server
}

case_loss() {
  CASE=loss
  say "$CASE: $LOSS_CONNS chat clients through the test namespaces, 2% loss each way, kernel TCP"
  scripts/netns.sh up >/dev/null
  netns_up=1
  # An RST is sent once: one the loss took leaves its session to the heartbeat (3 x 4 s).
  serve "$CASE" c2m-srv --listen 198.18.0.1:7700 --users "$LOSS_CONNS" --heartbeat 4s
  "$c2m" loss --netns c2m-cli --iface c2m-c0 --per-mille 20 --for 600s 2>"$out/$CASE-loss-cli.log" &
  pids+=($!)
  local loss_cli=$!
  "$c2m" loss --netns c2m-srv --iface c2m-s0 --per-mille 20 --for 600s 2>"$out/$CASE-loss-srv.log" &
  pids+=($!)
  local loss_srv=$!
  local j=$out/$CASE.json
  "$c2m" load --netns c2m-cli --server 198.18.0.1:7700 --sources 198.18.0.2 -c "$LOSS_CONNS" \
    --workload chat --msg-rate 0.2 --users "$LOSS_CONNS" -d 30s --no-progress --force --json "$j" \
    >"$out/$CASE.out" 2>&1 || true
  kill -TERM "$loss_cli" "$loss_srv" 2>/dev/null || true
  wait "$loss_cli" "$loss_srv" 2>/dev/null || true
  local left
  left=$(leaks 40)
  local what
  what="$(json "$j" .connections.established) of $LOSS_CONNS logged in, $(json "$j" .connections.lost) lost; $(json "$j" .chat.delivered) of $(json "$j" .chat.expected) delivered, $(json "$j" .messages.unanswered) unanswered"
  local held=yes
  [ "$left" = none ] && [ "$(json "$j" .chat.lost)" -eq 0 ] && [ "$(json "$j" .chat.duplicates)" -eq 0 ] &&
    [ "$(json "$j" .connections.established)" -eq "$LOSS_CONNS" ] || held=no
  chat_row "$LOSS_CONNS" "$what" "$left" "$held"
  stop_server
  scripts/netns.sh down >/dev/null
  netns_up=
}

case_storm() {
  CASE=storm
  say "$CASE: $STORM ping clients with --reconnect, every connection reset at once (ss -K)"
  serve "$CASE" "" --listen 127.0.0.1:0
  local port=${SERVE_ADDR##*:}
  "$c2m" load --server "$SERVE_ADDR" -c "$STORM" --ping-interval 10s -d 60s --recv multishot --reconnect \
    --reconnect-min 50ms --reconnect-max 2s --no-progress --json "$out/$CASE.json" >"$out/$CASE.out" 2>&1 &
  LOAD_PID=$!
  pids+=("$LOAD_PID")
  wait_metric c2m_sessions_active ge "$STORM" 180 || true
  sleep 5
  # Every server-side socket of the port destroyed at once (sock_destroy: an RST to each
  # client), so all of them reconnect together, to a server that lived through it. The clients
  # keep a receive armed (--recv multishot) so each sees its RST at once, not at its next PING.
  local t0 killed back
  t0=$(now)
  killed=$(ss -K -Htn "sport = :$port" | wc -l)
  wait_metric c2m_sessions_accepted_total ge $((STORM * 2)) 120 || true
  wait_metric c2m_sessions_active ge "$STORM" 120 || true
  back=$(since "$t0")
  load_ended 30
  local left=$LEFT j=$out/$CASE.json
  local what
  what="$killed connections reset at once, all back in ${back}s: $(json "$j" .connections.reconnects) reconnects ($(json "$j" .connections.retried) retried), $(json "$j" .connections.relogins) logins again, $(json "$j" .connections.established_at_end) of $STORM up at the end"
  local held=yes
  [ "$left" = none ] && [ "$killed" -ge "$STORM" ] && [ "$(json "$j" .connections.established_at_end)" -eq "$STORM" ] || held=no
  row "$CASE" "$STORM" "$what" "n/a (ping)" "n/a" "n/a" "$left" "$held"
  stop_server
}

for c in "${cases[@]}"; do
  case $c in
    load-kill) case_load_kill ;;
    serve-kill) case_serve_kill ;;
    sigstop) case_sigstop ;;
    loss) case_loss ;;
    storm) case_storm ;;
    *) echo "unknown case $c (load-kill serve-kill sigstop loss storm)"; exit 2 ;;
  esac
done

{
  echo "# c2m fault suite, $stamp"
  echo
  echo "$(uname -sr), $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), c2m $("$c2m" --version | head -1)"
  echo "Command: scripts/chaos.sh ${*:-} (CHAOS_SCALE=$SCALE CHAOS_STORM=$STORM CHAOS_STOP=$STOP CHAOS_LOSS_CONNS=$LOSS_CONNS)"
  echo
  echo "| case | clients | what happened | lost after ACK | lost never ACKed | duplicates | leaked | held |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} >"$table"
echo
cat "$table"
[ "$failed" -eq 0 ] || exit 3
