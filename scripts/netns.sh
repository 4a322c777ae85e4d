#!/usr/bin/env bash
# The test topology of the xdp data plane: two network namespaces joined by a veth pair.
#
#   scripts/netns.sh up       make it (cleaning up a half-made one first)
#   scripts/netns.sh down     remove it (idempotent)
#   scripts/netns.sh status   show it; exit 0 only if it is fully up
#
#   c2m-srv: c2m-s0 198.18.0.1/15 ==veth== c2m-c0 198.18.0.2/15 :c2m-cli
#            route 198.19.0.0/16 via 198.18.0.2
#
# In both namespaces net.core.txrehash is 0: a flow keeps its queue (one AF_XDP worker a queue).
# Both veth ends have 2 RX and 2 TX queues, and TX checksum offload, TSO, GSO, GRO and RX
# checksum offload off: with TX checksum offload on, a kernel socket's frames cross the veth with
# a partial TCP checksum (only the pseudo-header sum) and an AF_XDP socket reads a wrong one; TSO
# and GSO hand over 64 KiB super-frames and GRO builds them on receive; with RX checksum offload
# off the kernel verifies, instead of trusting, the checksums of frames c2m's own TCP sends. The
# route sends the server namespace's replies to 198.19.x.y (addresses an xdp load generator uses
# without configuring them anywhere) to the client end, where its AF_XDP socket picks them up.
#
# Every name and address can be overridden, so tests make their own pairs side by side:
#   C2M_NS_SRV C2M_NS_CLI C2M_VETH_SRV C2M_VETH_CLI C2M_ADDR_SRV C2M_ADDR_CLI C2M_PREFIX
#   C2M_LOADGEN_NET C2M_QUEUES
# Addresses must lie in 198.18.0.0/15 (reserved for benchmarks) and exist only inside these
# namespaces: nothing is made in the root namespace. Needs root, iproute2, and ethtool or
# python3 (offloads are set with ethtool when it is installed, else with the SIOCETHTOOL ioctl
# from a few lines of Python).
set -euo pipefail

NS_SRV=${C2M_NS_SRV:-c2m-srv}
NS_CLI=${C2M_NS_CLI:-c2m-cli}
VETH_SRV=${C2M_VETH_SRV:-c2m-s0}
VETH_CLI=${C2M_VETH_CLI:-c2m-c0}
ADDR_SRV=${C2M_ADDR_SRV:-198.18.0.1}
ADDR_CLI=${C2M_ADDR_CLI:-198.18.0.2}
PREFIX=${C2M_PREFIX:-15}
LOADGEN_NET=${C2M_LOADGEN_NET:-198.19.0.0/16}
QUEUES=${C2M_QUEUES:-2}
NETNS_DIR=/var/run/netns

die() {
  echo "netns.sh: $*" >&2
  exit 1
}

# True for an IPv4 address (optionally /prefix) inside 198.18.0.0/15.
in_bench_range() {
  local re='^198\.(18|19)\.([0-9]{1,3})\.([0-9]{1,3})(/([0-9]{1,2}))?$'
  [[ $1 =~ $re ]] || return 1
  ((BASH_REMATCH[2] <= 255 && BASH_REMATCH[3] <= 255)) || return 1
  [[ -z ${BASH_REMATCH[5]} ]] || ((BASH_REMATCH[5] >= 15 && BASH_REMATCH[5] <= 32))
}

check_args() {
  local n
  for n in "$NS_SRV" "$NS_CLI"; do
    [[ $n =~ ^[A-Za-z0-9_.-]+$ && $n != . && $n != .. ]] || die "bad namespace name '$n'"
  done
  [[ $NS_SRV != "$NS_CLI" ]] || die "the two namespaces need different names"
  for n in "$VETH_SRV" "$VETH_CLI"; do
    [[ $n =~ ^[A-Za-z0-9_.-]{1,15}$ ]] || die "bad interface name '$n' (at most 15 characters)"
  done
  for n in "$ADDR_SRV" "$ADDR_CLI" "$LOADGEN_NET"; do
    in_bench_range "$n" || die "$n is outside 198.18.0.0/15, the only range this topology may use"
  done
  in_bench_range "$ADDR_SRV/$PREFIX" || die "prefix /$PREFIX: must be 15..32"
  [[ $QUEUES =~ ^[1-9][0-9]?$ ]] || die "C2M_QUEUES=$QUEUES: must be 1..99"
}

require_root_and_tools() {
  [[ $EUID == 0 ]] || die "must run as root (it makes network namespaces and veth devices)"
  command -v ip >/dev/null || die "'ip' is missing: apt-get install -y iproute2"
  if command -v ethtool >/dev/null; then
    OFFLOAD_TOOL=ethtool
  elif command -v python3 >/dev/null; then
    OFFLOAD_TOOL=python3
  else
    die "neither ethtool nor python3 is installed (one is needed to turn offloads off): apt-get install -y ethtool"
  fi
}

ns_exists() { [[ -e $NETNS_DIR/$1 ]]; }

# The legacy SIOCETHTOOL feature commands, one u32 each (uapi/linux/ethtool.h): read them all, or
# set them all to 0 first. Prints "rx tx tso gso gro" as on/off.
ethtool_ioctl() { # NS DEV get|off
  ip netns exec "$1" python3 - "$2" "$3" <<'PY'
import ctypes, fcntl, socket, struct, sys
dev, what = sys.argv[1], sys.argv[2]
SIOCETHTOOL = 0x8946
FEATURES = [("rx", 0x14, 0x15), ("tx", 0x16, 0x17), ("tso", 0x1E, 0x1F), ("gso", 0x23, 0x24), ("gro", 0x2B, 0x2C)]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def call(cmd, data=0):
    buf = ctypes.create_string_buffer(struct.pack("II", cmd, data), 8)
    fcntl.ioctl(s.fileno(), SIOCETHTOOL, struct.pack("16sQ16x", dev.encode(), ctypes.addressof(buf)))
    return struct.unpack("II", buf.raw)[1]
if what == "off":
    for _, _, set_cmd in FEATURES:
        call(set_cmd, 0)
print(" ".join(f"{name}={'on' if call(get_cmd) else 'off'}" for name, get_cmd, _ in FEATURES))
PY
}

offloads() { # NS DEV get|off
  local ns=$1 dev=$2 what=$3
  if [[ $OFFLOAD_TOOL == ethtool ]]; then
    if [[ $what == off ]]; then
      ip netns exec "$ns" ethtool -K "$dev" rx off tx off tso off gso off gro off >/dev/null 2>&1 ||
        die "ethtool -K $dev failed in $ns"
    fi
    ip netns exec "$ns" ethtool -k "$dev" | awk -F': ' '
      $1 == "rx-checksumming" { rx = $2 } $1 == "tx-checksumming" { tx = $2 }
      $1 == "tcp-segmentation-offload" { tso = $2 } $1 == "generic-segmentation-offload" { gso = $2 }
      $1 == "generic-receive-offload" { gro = $2 }
      END { printf "rx=%s tx=%s tso=%s gso=%s gro=%s\n", rx, tx, tso, gso, gro }' | sed 's/ \[fixed\]//g'
  else
    ethtool_ioctl "$ns" "$dev" "$what"
  fi
}

do_down() {
  local ns
  for ns in "$NS_SRV" "$NS_CLI"; do
    if ns_exists "$ns"; then
      # Deleting a namespace deletes the veth end in it, and with it the peer.
      ip netns del "$ns" || die "could not delete namespace $ns"
    fi
  done
}

run() { # what, command...: runs it, and dies naming what failed and its message
  local what=$1 out
  shift
  if ! out=$("$@" 2>&1); then
    do_down
    die "$what failed: $out"
  fi
}

do_up() {
  do_down
  run "ip netns add $NS_SRV (does this kernel have network namespaces, CONFIG_NET_NS?)" ip netns add "$NS_SRV"
  run "ip netns add $NS_CLI" ip netns add "$NS_CLI"
  # Made inside the server namespace with its peer straight in the client one: the pair never
  # exists in the root namespace, so parallel pairs cannot collide on names there.
  run "veth pair $VETH_SRV/$VETH_CLI (does this kernel have veth, CONFIG_VETH?)" \
    ip -n "$NS_SRV" link add "$VETH_SRV" numtxqueues "$QUEUES" numrxqueues "$QUEUES" type veth \
    peer name "$VETH_CLI" netns "$NS_CLI" numtxqueues "$QUEUES" numrxqueues "$QUEUES"
  run "addresses" ip -n "$NS_SRV" addr add "$ADDR_SRV/$PREFIX" dev "$VETH_SRV"
  run "addresses" ip -n "$NS_CLI" addr add "$ADDR_CLI/$PREFIX" dev "$VETH_CLI"
  local ns dev state
  for pair in "$NS_SRV:$VETH_SRV" "$NS_CLI:$VETH_CLI"; do
    ns=${pair%%:*} dev=${pair#*:}
    state=$(offloads "$ns" "$dev" off) || {
      do_down
      die "could not turn offloads off on $dev"
    }
    if [[ $state == *=on* ]]; then
      do_down
      die "offloads still on for $dev after turning them off: $state"
    fi
    run "lo up in $ns" ip -n "$ns" link set lo up
    run "$dev up" ip -n "$ns" link set "$dev" up
    # A kernel socket re-picks its TX queue (its flow hash) after a retransmission timeout; on
    # veth the TX queue is the peer's RX queue, and each RX queue is one AF_XDP worker with its
    # own connections, so a flow that moves lands on a worker that does not know it (an RST).
    # The setting belongs to the namespace and goes with it; the host's is not touched.
    run "net.core.txrehash=0 in $ns" ip netns exec "$ns" sysctl -qw net.core.txrehash=0
  done
  run "route $LOADGEN_NET via $ADDR_CLI" ip -n "$NS_SRV" route add "$LOADGEN_NET" via "$ADDR_CLI" dev "$VETH_SRV"
  echo "up: $NS_SRV/$VETH_SRV $ADDR_SRV/$PREFIX <-> $NS_CLI/$VETH_CLI $ADDR_CLI/$PREFIX, $QUEUES queues," \
    "offloads off ($OFFLOAD_TOOL), $LOADGEN_NET via $ADDR_CLI"
}

do_status() {
  local ok=0 ns dev pair
  for pair in "$NS_SRV:$VETH_SRV" "$NS_CLI:$VETH_CLI"; do
    ns=${pair%%:*} dev=${pair#*:}
    if ! ns_exists "$ns"; then
      echo "$ns: missing"
      ok=1
      continue
    fi
    if ! ip -n "$ns" link show "$dev" >/dev/null 2>&1; then
      echo "$ns: $dev missing"
      ok=1
      continue
    fi
    local addrs up queues
    addrs=$(ip -n "$ns" -4 -o addr show dev "$dev" | awk '{print $4}' | paste -sd, -)
    up=$(ip -n "$ns" -o link show "$dev" | grep -q 'state UP\|,UP' && echo up || echo down)
    queues=$(ip -n "$ns" -d -o link show "$dev" | grep -o 'numtxqueues [0-9]* numrxqueues [0-9]*' || true)
    echo "$ns: $dev $up ${addrs:-no address}, $queues, $(offloads "$ns" "$dev" get)"
    [[ $up == up && -n $addrs ]] || ok=1
  done
  if ns_exists "$NS_SRV"; then
    ip -n "$NS_SRV" route show "$LOADGEN_NET" | sed "s/^/$NS_SRV: route /"
  fi
  return $ok
}

cmd=${1:-}
case $cmd in
  up | down | status) ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
check_args
require_root_and_tools
"do_$cmd"
