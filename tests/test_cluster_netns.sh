#!/usr/bin/env bash
# Each daemon in its own network namespace ("host"), joined by veth pairs to a bridge in a hub
# namespace, all created by this test: the traffic crosses interfaces as between machines
# (UCX error mode peer: TCP, no shared memory shortcut). Where namespaces cannot be created the
# test says so and is skipped (exit 77), never passed.
# SD_TEST_LABELS: cluster model netns
set -u
. "$SPECD_SRC/tests/lib/cluster.sh"
tag="sd$$"
hub="${tag}hub"
hosts=(co wk dr cl)
cleanup_ns() {
    [ -n "${KEEP_NS:-}" ] && return
    for h in "${hosts[@]}"; do
        ip netns pids "$tag$h" 2>/dev/null | xargs -r kill -TERM 2>/dev/null
    done
    sleep 1
    for h in "${hosts[@]}"; do
        ip netns pids "$tag$h" 2>/dev/null | xargs -r kill -9 2>/dev/null
        ip netns del "$tag$h" 2>/dev/null
    done
    wait 2>/dev/null
    ip netns del "$hub" 2>/dev/null
}
trap cleanup_ns EXIT
if ! ip netns add "$hub" 2>/dev/null; then
    echo "SKIP: cannot create network namespaces here (needs root and iproute2)"
    exit 77
fi
ip -n "$hub" link add br0 type bridge && ip -n "$hub" link set br0 up || {
    echo "SKIP: cannot create a bridge"; exit 77; }
i=1
for h in "${hosts[@]}"; do
    ns="$tag$h"
    ip netns add "$ns"
    ip link add "v$tag$i" netns "$hub" type veth peer name eth0 netns "$ns"
    ip -n "$hub" link set "v$tag$i" master br0 up
    ip -n "$ns" addr add "10.77.0.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    i=$((i + 1))
done
CO=10.77.0.1 WK=10.77.0.2 DR=10.77.0.3
CL_DIR=$(mktemp -d "${TMPDIR:-/tmp}/specd-test-netns.XXXXXX")
CL_ADDR="$CO:7700"
write_cfg "$CL_DIR/co.cfg" "host = \"$CO\";" "port = 7700;"
write_cfg "$CL_DIR/w.cfg" "host = \"$WK\";" "coordinator = \"$CL_ADDR\";"
write_cfg "$CL_DIR/d.cfg" "host = \"$DR\";" "coordinator = \"$CL_ADDR\";"
ip netns exec "${tag}co" "$SPECD_BIN/specd-coordinator" --config "$CL_DIR/co.cfg" >"$CL_DIR/co.log" 2>&1 &
ip netns exec "${tag}wk" "$SPECD_BIN/specd-worker" --config "$CL_DIR/w.cfg" >"$CL_DIR/wk.log" 2>&1 &
ip netns exec "${tag}dr" "$SPECD_BIN/specd-drafter" --config "$CL_DIR/d.cfg" >"$CL_DIR/dr.log" 2>&1 &
SPECD="ip netns exec ${tag}cl $SPECD_BIN/specd"
if ! wait_nodes 1 1 60; then
    tail -n 5 "$CL_DIR"/*.log
    exit 1
fi
st=$($SPECD status --coordinator "$CL_ADDR")
echo "$st" | grep -E '^(worker|drafter)'
check "the worker registered with its namespace's address" $(ok_if grep -q "$WK:" <<<"$st")
check "the drafter registered with its namespace's address" $(ok_if grep -q "$DR:" <<<"$st")
for mode in ar si async; do
    same_as_local "$mode across namespaces" --mode "$mode" -p "The three primary colours are" -n 32
done
same_as_local "sampled across namespaces" --mode si -p "Tell me a joke." --chat -n 32 \
    --temp 0.8 --top-p 0.95 --seed $((RANDOM))
check "the coordinator reached the worker over its interface" \
    $(ok_if grep -q "registered worker .*$WK" "$CL_DIR/co.log")
echo "$passes passed, $fails failed"
[ "$fails" = 0 ] && rm -rf "$CL_DIR"
[ "$fails" = 0 ]
