#!/usr/bin/env bash
# Speculation parallelism (mode dsi) with real daemons: W = 1, 2 and 4 workers, random
# per-message delays and reordering from the link emulator, a forward slow enough that
# cancellations land while the worker computes; then a worker killed (-9) mid-session, whose
# chunks go to the other workers. Greedy and seeded sampling: always the local target-only
# output.
# SD_TEST_LABELS: cluster model
set -u
. "$SPECD_SRC/tests/lib/cluster.sh"
trap 'cluster_stop; daemons_stop' EXIT
link=()
for r in coordinator worker drafter; do
    link+=(--$r-set link-jitter-ms=6 --$r-set link-reorder-prob=0.2 --$r-set link-reorder-ms=4
           --$r-set "link-seed=$((SEED % 100000 + ${#r}))")
done
for W in 1 2 4; do
    poll=() # W = 2: workers that sleep at once after a forward; the others poll for the next chunk
    [ $W = 2 ] && poll=(--worker-set poll-us=0)
    cluster_start "dsi$W" --workers $W --worker-set forward-delay-ms=8 --worker-set threads=1 \
        "${poll[@]}" "${link[@]}" || exit 1
    same_as_local "dsi W=$W greedy" --mode dsi --max-inflight $W -p "def fibonacci(n):" -n 48
    same_as_local "dsi W=$W greedy, topk tree" --mode dsi --max-inflight $W \
        -p "The quick brown fox jumps over the lazy dog. The quick brown" -n 40 --tree topk:2,2,1,1
    same_as_local "dsi W=$W sampled" --mode dsi --max-inflight $W -p "Once upon a time" -n 40 \
        --temp 0.8 --top-p 0.95 --seed $((RANDOM))
    cluster_stop
done

# a worker killed mid-session: its chunks are re-dispatched, the output is unchanged
CL_DIR=$(mktemp -d "${TMPDIR:-/tmp}/specd-test-dsikill.XXXXXX")
port=$(free_port)
CL_ADDR="127.0.0.1:$port"
write_cfg "$CL_DIR/co.cfg" "port = $port;" "heartbeat_ms = 200;" "node_timeout_ms = 1500;"
write_cfg "$CL_DIR/w.cfg" "coordinator = \"$CL_ADDR\";" "threads = 1;" "forward_delay_ms = 25;"
write_cfg "$CL_DIR/d.cfg" "coordinator = \"$CL_ADDR\";"
daemon_start coordinator specd-coordinator "$CL_DIR/co.cfg"
for k in 1 2 3; do daemon_start worker$k specd-worker "$CL_DIR/w.cfg"; done
daemon_start drafter specd-drafter "$CL_DIR/d.cfg"
wait_nodes 3 1 || exit 1
for samp in greedy sampled; do
    extra=()
    [ $samp = sampled ] && extra=(--temp 0.8 --top-p 0.95 --seed $((RANDOM)))
    timeout 300 $SPECD generate --coordinator "$CL_ADDR" --model "$M" --compare --mode dsi \
        --max-inflight 3 -p "1, 2, 3, 4, 5, 6, 7, 8," -n 120 --ignore-eos "${extra[@]}" \
        >/dev/null 2>"$CL_DIR/g.err" &
    g=$!
    wait_generating 1
    st=$($SPECD status --coordinator "$CL_ADDR")
    victim=$(echo "$st" | awk '$1 ~ /^[0-9]+$/ {print $(NF-2); exit}' | sed 's|.*-||')
    [ -n "$victim" ] && kill -9 "$victim"
    wait "$g"; rc=$?
    check "dsi, $samp: worker $victim killed mid-session: still identical (rc $rc)" \
        $(ok_if grep -q "cluster output identical" "$CL_DIR/g.err")
    check "dsi, $samp: the summary says the worker was lost" \
        $(ok_if grep -q "event: worker .* lost" "$CL_DIR/g.err")
    grep "event:" "$CL_DIR/g.err"
    daemon_start worker-new specd-worker "$CL_DIR/w.cfg"
    wait_nodes 3 1 || exit 1
done
daemons_stop
echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
