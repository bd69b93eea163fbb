#!/usr/bin/env bash
# The link emulator on every daemon's sends: random per-message delays of 0-20 ms and random
# reordering. Timing changes; the tokens must not: every mode, greedy and sampled, still gives
# the local target-only output.
# SD_TEST_LABELS: cluster model
set -u
. "$SPECD_SRC/tests/lib/cluster.sh"
trap 'cluster_stop' EXIT
link=()
for r in coordinator worker drafter; do
    link+=(--$r-set link-jitter-ms=20 --$r-set link-reorder-prob=0.3 --$r-set link-reorder-ms=8
           --$r-set "link-seed=$((SEED % 100000 + ${#r}))")
done
cluster_start link "${link[@]}" || exit 1
grep -h "link emulator ON" "$CL_DIR"/c/*.log | head -1
check "the link emulator is on (logged)" $(ok_if grep -q "link emulator ON" "$CL_DIR/c/worker-0.log")
for mode in ar si async; do
    same_as_local "$mode greedy under delays" --mode "$mode" -p "def add(a, b):" -n 32
    same_as_local "$mode sampled under delays" --mode "$mode" -p "My favourite food is" -n 32 \
        --temp 0.8 --top-p 0.95 --seed $((RANDOM))
done
finish
