#!/bin/sh
# The erlang peer, installed as bench/peers/bin/erlang by build.sh:
#   erlang --listen IP:PORT [--workers N]
# BEAM fixes its schedulers at boot, so --workers (default: the cores) is read here: +S N:N.
here=$(cd "$(dirname "$0")" && pwd)
workers=$(nproc)
prev=
for arg in "$@"; do
    case "$prev" in --workers) workers=$arg ;; esac
    case "$arg" in --workers=*) workers=${arg#--workers=} ;; esac
    prev=$arg
done
# One fd per connection: take the hard limit, and let BEAM have as many ports.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
ports=65536
fds=$(ulimit -n)
[ "$fds" != unlimited ] && [ "$fds" -gt "$ports" ] && ports=$fds
# BEAM cannot catch SIGINT (its break handler, or without it death by the signal), so this
# shell stays as the parent and turns SIGINT and SIGTERM into a SIGTERM for the node, which
# halts with status 0 (c2m_peer_signal). Signal this wrapper's pid, or its process group.
erl -noinput +S "$workers:$workers" +Q "$ports" -pa "$here/erlang-ebin" -s c2m_peer main -extra "$@" &
node=$!
trap 'kill -TERM "$node" 2>/dev/null' INT TERM
wait "$node"
status=$?
# A trapped signal interrupts wait: wait again for the node's own exit status.
while kill -0 "$node" 2>/dev/null; do
    wait "$node"
    status=$?
done
exit "$status"
