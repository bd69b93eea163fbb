#!/usr/bin/env bash
# bench/dsi: speculation parallelism against ar, si and async through real local clusters.
#
# EMULATED LATENCIES (said in every line it prints): a target forward costs FORWARD_MS more than
# the real one (worker forward-delay-ms, as if the target were larger), a drafted token costs
# FORWARD_MS / RATIO (drafter draft-delay-ms), and the drafter is the replay drafter — the
# target's own recorded output with each token kept with probability P — so the acceptance rate
# is a parameter. The sweep: RATIO (target/drafter latency) x P x W (workers in flight for dsi).
# Tokens are checked against the recorded target-only output in every run.
#
# Then, reported separately, the same modes without any emulation on the real default model
# with the n-gram drafter, W = 2, and the do-no-harm check: bench/spec's ChatML prompts drafted
# by a never-right drafter; each mode's ratio to ar is the median of the ratios within a
# repetition (the modes' order rotates).
#
#   bench/dsi.sh [--quick | --real-only]     (BUILD=build, FORWARD_MS=100, N=120, NODES=8; RATIOS, PS, WS lists;
#                                             REAL_N=256, REAL_REPS=5 for the real-model part)
# N: sessions of 120 tokens are ~30 steps: the per-session controller (engine/adapt) spends its
# first steps measuring, and in sessions of 10 steps that start-up is most of the run.
# Writes bench/out/dsi.csv and bench/out/dsi_real.csv; prints a table with dsi's ratio over the
# best of ar/si/async per cell.
set -u
cd "$(dirname "$0")/.."
B=${BUILD:-build}
SPECD="$B/specd"
FORWARD_MS=${FORWARD_MS:-100}
N=${N:-120}
REAL_N=${REAL_N:-256}    # the real-model part: sessions of 256 tokens (~1.5 s: shorter runs
REAL_REPS=${REAL_REPS:-5} # move by 10 % from one to the next here), 5 repetitions
NODES=${NODES:-8} # tree nodes per chunk, every mode alike: keeps the real compute small beside
              # the emulated forward
RATIOS=${RATIOS:-"5 20 50"}
PS=${PS:-"0.5 0.8 0.95"}
WS=${WS:-"1 2 4 8"}
if [ "${1:-}" = --quick ]; then RATIOS="20"; PS="0.8"; WS="1 2 4"; N=48; fi
[ "${1:-}" = --real-only ] && RATIOS=""
mkdir -p bench/out
out=bench/out/dsi.csv
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
echo "# bench/dsi on $cpu, $(nproc) cores (shared machine: ratios within one run only)"
echo "# EMULATED: +${FORWARD_MS} ms per target forward, ${FORWARD_MS}/RATIO ms per drafted token, replay drafter with acceptance P"
echo "ratio,p,prompt,mode,workers,tok_s,accepted_per_step,chunks,cancelled,compute_ms,rtt_ms,identical,emulated" >"$out"
prompts=("def merge_sort(xs):" "The history of the Roman Empire")
work=$(mktemp -d)
trap 'kill $cl 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for i in 0 1; do # the target-only reference of each prompt
    "$SPECD" generate -p "${prompts[$i]}" -n $N --ignore-eos --draft none \
        --tokens-out "$work/ref$i" >/dev/null 2>&1 || { echo "reference run failed"; exit 1; }
done

run() { # addr mode W spec prompt_i -> one CSV row (and the token check)
    local addr=$1 mode=$2 W=$3 spec=$4 i=$5 err="$work/err"
    "$SPECD" generate --coordinator "$addr" -p "${prompts[$i]}" -n $N --ignore-eos --mode "$mode" \
        --max-inflight "$W" --draft "$spec" --tree chain:4 --max-nodes "$NODES" \
        --tokens-out "$work/got" \
        >/dev/null 2>"$err" || { echo "run failed: $mode $W"; tail -3 "$err"; return 1; }
    local same=0
    cmp -s "$work/got" "$work/ref$i" && same=1
    local line tps acc chunks canc
    line=$(grep "^\[cluster" "$err" | head -1)
    tps=$(echo "$line" | sed -n 's/.* \([0-9.]*\) tok\/s.*/\1/p')
    acc=$(grep "mean accepted length" "$err" | sed -n 's/.*mean accepted length \([0-9.]*\).*/\1/p')
    chunks=$(grep -o "[0-9]* chunks" "$err" | head -1 | cut -d' ' -f1)
    canc=$(grep -o "([0-9]* cancelled)" "$err" | tr -dc 0-9)
    comp=$(sed -n 's/.*worker compute \([0-9.]*\) ms per chunk.*/\1/p' "$err" | head -1)
    rtt=$(sed -n 's/.*chunk round trip \([0-9.]*\) ms.*/\1/p' "$err" | head -1)
    echo "$ratio,$p,$i,$mode,$W,${tps:-0},${acc:-0},${chunks:-0},${canc:-0},${comp:-0},${rtt:-0},$same,yes" >>"$out"
    [ $same = 1 ] || echo "TOKENS DIFFER: $mode W=$W p=$p ratio=$ratio prompt $i"
}

for ratio in $RATIOS; do
    dms=$(python3 -c "print(round($FORWARD_MS / $ratio, 3))")
    maxw=$(echo $WS | tr ' ' '\n' | sort -n | tail -1)
    "$SPECD" local --serve --workers "$maxw" --dir "$work/c$ratio" \
        --worker-set "forward-delay-ms=$FORWARD_MS" --worker-set threads=1 \
        --drafter-set "draft-delay-ms=$dms" --coordinator-set max-inflight=16 \
        >"$work/addr" 2>"$work/local.err" &
    cl=$!
    for _ in $(seq 1 300); do [ -s "$work/addr" ] && break; sleep 0.2; done
    addr=$(head -n1 "$work/addr")
    [ -n "$addr" ] || { echo "cluster did not start"; cat "$work/local.err"; exit 1; }
    echo "# ratio $ratio: draft ${dms} ms/token, target +${FORWARD_MS} ms/forward, $maxw workers"
    "$SPECD" generate --coordinator "$addr" -p warm-up -n 8 --mode dsi --max-inflight "$maxw" \
        >/dev/null 2>&1 # first forwards after start-up are slow (page faults)
    for i in 0 1; do
        p=1
        run "$addr" ar 1 none $i
        for p in $PS; do
            spec="replay:$p:7:$(tr ' ' , <"$work/ref$i")"
            run "$addr" si 1 "$spec" $i
            run "$addr" async 1 "$spec" $i
            for W in $WS; do run "$addr" dsi "$W" "$spec" $i; done
        done
    done
    kill -TERM $cl
    wait $cl
done

# without emulation: the real model, the n-gram drafter, W = 2
real=bench/out/dsi_real.csv
echo "mode,workers,prompt,rep,tok_s,accepted_per_step,identical,emulated" >"$real"
"$SPECD" local --serve --workers 2 --dir "$work/real" --worker-set threads=1 >"$work/addr" \
    2>"$work/local.err" &
cl=$!
for _ in $(seq 1 300); do [ -s "$work/addr" ] && break; sleep 0.2; done
addr=$(head -n1 "$work/addr")
# prompts 2 and 3 are bench/spec's ChatML prompts (chat, summary) drafted by random:1, a
# drafter that is never right: do no harm
for name in chat summary; do
    prompts+=("$("$B/bench_spec" --print-prompt $name)") || { echo "bench_spec missing"; exit 1; }
done
for i in 0 1 2 3; do # the references at this part's length
    "$SPECD" generate -p "${prompts[$i]}" -n $REAL_N --ignore-eos --draft none \
        --tokens-out "$work/real$i" >/dev/null 2>&1 || { echo "reference run failed"; exit 1; }
done
modes=(ar si async dsi)
for rep in $(seq 1 "$REAL_REPS"); do
    for i in 0 1 2 3; do
        for k in 0 1 2 3; do # the order rotates from one repetition to the next
            mode=${modes[$(((k + rep) % 4))]}
            err="$work/err"
            extra=()
            [ $i -ge 2 ] && extra=(--draft random:1)
            "$SPECD" generate --coordinator "$addr" -p "${prompts[$i]}" -n $REAL_N --ignore-eos \
                --mode $mode --max-inflight 2 --tokens-out "$work/got" "${extra[@]}" \
                >/dev/null 2>"$err"
            same=0
            cmp -s "$work/got" "$work/real$i" && same=1
            tps=$(grep "^\[cluster" "$err" | head -1 | sed -n 's/.* \([0-9.]*\) tok\/s.*/\1/p')
            acc=$(grep "mean accepted length" "$err" | sed -n 's/.*mean accepted length \([0-9.]*\).*/\1/p')
            echo "$mode,2,$i,$rep,${tps:-0},${acc:-0},$same,no" >>"$real"
        done
    done
done
kill -TERM $cl
wait $cl
"${PYTHON:-python3}" bench/dsi_report.py "$out" "$real"
