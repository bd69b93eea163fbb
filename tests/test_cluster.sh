#!/usr/bin/env bash
# The three daemons as real processes on loopback (specd local): every mode x 3 prompts x
# {greedy, seeded temperature 0.8 / top-p 0.95} gives token for token the local target-only
# output; 8 concurrent clients all do, and the worker batched chunks of several sessions.
# SD_TEST_LABELS: cluster model
set -u
. "$SPECD_SRC/tests/lib/cluster.sh"
trap 'cluster_stop' EXIT

cluster_start basic || exit 1
prompts=("def fibonacci(n):" "The capital of France is" "Write a short poem about the sea.")
for mode in ar si async; do
    for i in 0 1 2; do
        chat=""
        [ $i = 2 ] && chat="--chat"
        same_as_local "$mode greedy $i" --mode "$mode" -p "${prompts[$i]}" $chat -n 40
        s=$((RANDOM + i))
        same_as_local "$mode sampled $i" --mode "$mode" -p "${prompts[$i]}" $chat -n 40 \
            --temp 0.8 --top-p 0.95 --seed "$s"
    done
done
# other drafters and tree shapes on the drafter node
same_as_local "layerskip topk" --mode si -p "${prompts[0]}" -n 24 --draft layerskip:0-19 \
    --tree topk:2,2,1
same_as_local "ngram dynamic async" --mode async -p "${prompts[1]}" -n 24 --tree dynamic:12

# the summary's wait for the drafter: in si (no controller, a drafter that proposes every step)
# each chunk waited for the drafter's answer to the Commit before it; in ar no chunk waits for a
# drafter
for mode in si ar; do
    err=$(timeout 300 $SPECD generate --coordinator "$CL_ADDR" --model "$M" --mode $mode \
          -p "${prompts[0]}" -n 16 --ignore-eos --no-adapt --draft random:1 2>&1 >/dev/null)
    wait_us=$(sed -n 's/.*waiting for the drafter \([0-9.]*\) us per step.*/\1/p' <<<"$err")
    echo "$mode: waiting for the drafter ${wait_us:-?} us per step"
    if [ $mode = si ]; then
        check "si: the drafter's turn measured (${wait_us:-?} us)" \
            $(ok_if awk -v w="${wait_us:-0}" 'BEGIN { exit !(w > 0) }')
    else
        check "ar: no wait for a drafter (${wait_us:-?} us)" $(ok_if [ "${wait_us:-1}" = 0.0 ])
    fi
done

# compared NAME ARGS...: generate through the cluster with --compare, check the output is local
# target-only's, and set $line to the summary's drafter line
compared() {
    local name=$1 err
    shift
    err=$(timeout 300 $SPECD generate --coordinator "$CL_ADDR" --model "$M" --compare "$@" \
          2>&1 >/dev/null)
    check "$name: identical" $(ok_if grep -q "identical to local target-only" <<<"$err")
    line=$(grep "drafter: .* tree extensions" <<<"$err")
}

# an n-gram drafter with nothing to match is not waited for: the coordinator sees that the last
# tokens never occurred before (the drafter's own test), holds it and sends a plain decode; the
# summary counts those steps, and the output stays target-only's
compared "si, ngram" --mode si -p "${prompts[0]}" -n 48 --ignore-eos --no-adapt --draft ngram:3:2
misses=$(sed -n 's/.*not asked on \([0-9]*\) (no n-gram match).*/\1/p' <<<"$line")
ext=$(sed -n 's/.*drafter: \([0-9]*\) tree extensions.*/\1/p' <<<"$line")
steps=$(sed -n 's/.*held for [0-9]* of \([0-9]*\) steps.*/\1/p' <<<"$line")
echo "si, ngram: $line"
check "si, ngram: steps without a match not asked (${misses:-?}), the others asked (${ext:-?}) of ${steps:-?}" \
    $(ok_if test $(( ${misses:-0} > 0 && ${ext:-0} > 0 && ${misses:-0} + ${ext:-0} == ${steps:-0} )) = 1)

# a never-right drafter: the session's controller turns speculation off and its Commits hold the
# drafter, which then proposes nothing in those epochs (without the hold it drafts below every
# new root: CPU taken from the worker); the output stays target-only's
for mode in si async dsi; do
    compared "$mode, random drafter" --mode $mode -p "${prompts[2]}" --chat -n 64 --ignore-eos \
        --draft random:1
    held=$(sed -n 's/.*held for \([0-9]*\) of.*/\1/p' <<<"$line")
    steps=$(sed -n 's/.*held for [0-9]* of \([0-9]*\) steps.*/\1/p' <<<"$line")
    while_held=$(sed -n 's/.*, \([0-9]*\) while held.*/\1/p' <<<"$line")
    echo "$mode, random drafter: $line"
    check "$mode, random drafter: held for most steps (${held:-?} of ${steps:-?})" \
        $(ok_if test $(( ${held:-0} > 0 && 2 * ${held:-0} >= ${steps:-1} )) = 1)
    check "$mode, random drafter: nothing drafted in held epochs (${while_held:-?})" \
        $(ok_if [ "${while_held:-1}" = 0 ])
done

# 8 concurrent clients
pids=()
for k in $(seq 1 8); do
    ( err=$(timeout 300 "$SPECD" generate --coordinator "$CL_ADDR" --model "$M" --compare \
             --mode si -p "Client $k: list three colours of $(( (k * 7) % 5 )) things." -n 48 \
             --ignore-eos 2>&1 >/dev/null)
      echo "$err" | grep -q "identical to local target-only" ) &
    pids+=($!)
done
for p in "${pids[@]}"; do
    wait "$p"
    check "concurrent client $p identical" $?
done
st=$("$SPECD" status --coordinator "$CL_ADDR")
echo "$st" | sed -n '1,8p'
batched=$(echo "$st" | awk '$1 == "worker" {print $7}' | head -n1)
check "the worker batched chunks of several sessions (batched forwards: ${batched:-?})" \
    $([ "${batched:-0}" -gt 0 ] && echo 0 || echo 1)
finish
