#!/usr/bin/env bash
# Echo on both data planes in one run (issue 14's echo goal), measured, not asserted: c2m bench
# --scenario echo-closed (10,000 connections, 64 B ECHOs, one in flight each, 20 s) with
# c2m serve and c2m load both on the kernel data plane (io_uring over kernel TCP sockets, on
# loopback), then both on the xdp data plane (AF_XDP and c2m's TCP, between two network
# namespaces c2m bench makes and removes), in the order kernel, xdp, xdp, kernel (ABBA, so a
# drift of the box over the run falls on both alike).
#
# Per round: echoes answered per second over the message phase, and server CPU (user + system,
# its whole life: start, connects and close included) per echo answered. The ratios are xdp
# over kernel, each the median of the rounds' figures. Goal: server CPU per echo at most 2 us
# on xdp, and xdp's throughput at least 2x the kernel's.
#
#   bench/echo-planes.sh [ROUNDS_PAIRS]       (default 1: kernel xdp xdp kernel)
#
# Writes results/echo-planes/<stamp>-<host>.json and .md. Needs root (the xdp rounds).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID == 0 ]] || { echo "bench/echo-planes.sh: must run as root (namespaces, AF_XDP)" >&2; exit 1; }
PAIRS=${1:-1}
cargo build --release --bins >&2
BIN=target/release/c2m
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=results/echo-planes
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

order=()
for _ in $(seq "$PAIRS"); do order+=(kernel xdp xdp kernel); done
i=0
for plane in "${order[@]}"; do
  i=$((i + 1))
  echo "== round $i of ${#order[@]}: $plane" >&2
  "$BIN" bench --scenario echo-closed --dataplane "$plane" --no-report --no-progress \
    --results-dir "$WORK/r$i" >&2
  cp "$WORK/r$i"/echo-closed/*.json "$WORK/round-$i-$plane.json"
done

# One line per round: plane, echoes, echo rate, server CPU seconds, CPU per echo (us), load CPU.
rounds=$(for f in "$WORK"/round-*.json; do
  jq -c '{
      dataplane: .dataplane,
      result: input_filename,
      echoes: .load.messages.received,
      echo_rate: .load.messages.rate_achieved,
      server_cpu_seconds: (.server.cpu_user_seconds + .server.cpu_system_seconds),
      load_cpu_seconds: (.load_process.cpu_user_seconds + .load_process.cpu_system_seconds),
      server_cpu_us_per_echo: ((.server.cpu_user_seconds + .server.cpu_system_seconds) * 1e6 / .load.messages.received),
      rtt_p50_us: (.load.latency.rtt_uncorrected.p50),
      rtt_p99_us: (.load.latency.rtt_uncorrected.p99),
      status: .status
    }' "$f"
done | jq -s '.')
jq -n --argjson rounds "$rounds" --arg stamp "$STAMP" --arg commit "$(git rev-parse --short HEAD)" \
  --arg host "$(hostname -s)" --arg kernel "$(uname -r)" --argjson cores "$(nproc)" '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def of(p; f): [$rounds[] | select(.dataplane == p) | f] | median;
  {
    schema: "c2m.echo-planes/1", stamp: $stamp, commit: $commit,
    machine: {host: $host, kernel: $kernel, cores: $cores},
    scenario: "echo-closed: 10,000 connections, 64 B ECHO, one in flight each, 20 s; c2m serve and c2m load on the same data plane",
    xdp_mode: "copy (veth: zero-copy is not offered)",
    rounds: $rounds,
    median: {
      kernel: {echo_rate: of("kernel"; .echo_rate), server_cpu_us_per_echo: of("kernel"; .server_cpu_us_per_echo)},
      xdp: {echo_rate: of("xdp"; .echo_rate), server_cpu_us_per_echo: of("xdp"; .server_cpu_us_per_echo)}
    },
    echo_rate_xdp_over_kernel: (of("xdp"; .echo_rate) / of("kernel"; .echo_rate)),
    server_cpu_per_echo_xdp_over_kernel: (of("xdp"; .server_cpu_us_per_echo) / of("kernel"; .server_cpu_us_per_echo)),
    goals: {xdp_server_cpu_us_per_echo_at_most: 2, echo_rate_xdp_over_kernel_at_least: 2}
  }' > "$OUT/$STAMP-$(hostname -s).json"

jq -r '
  "# Echo on both data planes, \(.stamp) (\(.machine.host), \(.machine.cores) cores, kernel \(.machine.kernel), c2m \(.commit))\n",
  "\(.scenario). xdp: \(.xdp_mode).\n",
  "| round | data plane | echoes/s | server CPU per echo | rtt p50 / p99 | status |",
  "|---|---|---|---|---|---|",
  (.rounds | to_entries[] | "| \(.key + 1) | \(.value.dataplane) | \(.value.echo_rate | floor) | \(.value.server_cpu_us_per_echo * 100 | round / 100) us | \(.value.rtt_p50_us | floor) / \(.value.rtt_p99_us | floor) us | \(.value.status) |"),
  "",
  "Medians: kernel \(.median.kernel.echo_rate | floor)/s at \(.median.kernel.server_cpu_us_per_echo * 100 | round / 100) us of server CPU per echo; xdp \(.median.xdp.echo_rate | floor)/s at \(.median.xdp.server_cpu_us_per_echo * 100 | round / 100) us.",
  "xdp / kernel: throughput \(.echo_rate_xdp_over_kernel * 100 | round / 100)x (goal at least 2x), server CPU per echo \(.server_cpu_per_echo_xdp_over_kernel * 100 | round / 100)x (goal: at most 2 us on xdp)."
' "$OUT/$STAMP-$(hostname -s).json" | tee "$OUT/$STAMP-$(hostname -s).md"
