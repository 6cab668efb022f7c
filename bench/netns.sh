#!/bin/sh
# Inspect or remove the benchmark topology (namespaces named mfb-*) without Python.
#   bench/netns.sh status   list our namespaces, their links, qdiscs and processes
#   bench/netns.sh clean    SIGKILL every process inside them, then delete them
# Deleting a namespace deletes its veth ends, so nothing is left in the root namespace.
set -u
ours() { ip netns list 2>/dev/null | awk '{print $1}' | grep '^mfb-' || true; }

case "${1:-status}" in
status)
    for ns in $(ours); do
        echo "== $ns"
        ip -n "$ns" -br addr
        tc -n "$ns" qdisc show | grep -v 'qdisc noqueue' || true
        for pid in $(ip netns pids "$ns"); do ps -o pid=,args= -p "$pid"; done
    done
    ;;
clean)
    for ns in $(ours); do
        for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null; done
    done
    sleep 0.2
    for ns in $(ours); do ip netns del "$ns"; done
    left=$(ours)
    [ -z "$left" ] || { echo "still present: $left" >&2; exit 1; }
    ;;
*)
    echo "usage: $0 status|clean" >&2; exit 2 ;;
esac
