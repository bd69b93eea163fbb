#!/usr/bin/env bash
# specd generate --backend: cpu | cuda (falls back to the CPU with one log line when there is no
# GPU or driver) | cuda! (exit 2 without one) | anything else (exit 2). With a GPU, the CUDA
# output must equal the CPU's (greedy; both backends compute canon1 bit for bit), with
# speculation and with --compare (speculative == target-only on the GPU). The worker daemon takes
# the same names (config key backend, device) with the same rules, and a cluster whose worker
# runs `backend = "cuda"` gives local target-only's output.
# SD_TEST_LABELS: cli model cuda
set -u
SPECD="$SPECD_BIN/specd"
M="$SPECD_MODEL"
fails=0; passes=0
check() { # name, condition result
    if [ "$2" = 0 ]; then passes=$((passes + 1)); else echo "FAIL: $1"; fails=$((fails + 1)); fi
}
run() { timeout 300 "$SPECD" generate --model "$M" -n 24 "$@"; }
P="The capital of France is"

cpu=$(run -p "$P" --backend cpu 2>/dev/null); rc=$?
check "cpu backend runs" $([ $rc = 0 ] && echo 0 || echo 1)
out=$(run -p "$P" --backend gpu 2>&1); rc=$?
check "unknown backend exits 2 naming the choices" \
    $([ $rc = 2 ] && echo "$out" | grep -q "cuda!" && echo 0 || echo 1)
out=$(run -p "$P" --backend cuda! 2>&1); rc=$?
gpu_present=$([ $rc = 0 ] && echo 1 || echo 0)
if [ $rc = 0 ]; then
    echo "a CUDA GPU is present: checking that its output is the CPU's"
    gpu=$(run -p "$P" --backend cuda 2>/dev/null)
    check "cuda output == cpu output (greedy)" $([ "$gpu" = "$cpu" ] && echo 0 || echo 1)
    for pr in "Write a haiku about the sea." "def fibonacci(n):" "List three primary colors:"; do
        out=$(run -p "$pr" --backend cuda! --compare 2>&1); rc=$?
        check "cuda --compare '$pr': speculative == target-only" \
            $([ $rc = 0 ] && echo 0 || echo 1)
    done
else
    check "cuda! without a GPU exits 2" $([ $rc = 2 ] && echo 0 || echo 1)
    check "cuda! says why" $(echo "$out" | grep -q "no CUDA\|no CUDA backend" && echo 0 || echo 1)
    err=$(run -p "$P" --backend cuda 2>&1 >/dev/null); rc=$?
    out=$(run -p "$P" --backend cuda 2>/dev/null)
    check "cuda without a GPU falls back and runs" $([ $rc = 0 ] && echo 0 || echo 1)
    check "the fallback is one log line" \
        $([ "$(echo "$err" | grep -c "CUDA backend unavailable")" = 1 ] && echo 0 || echo 1)
    check "fallback output == cpu output" $([ "$out" = "$cpu" ] && echo 0 || echo 1)
fi
WK="$SPECD_BIN/specd-worker"
if [ -x "$WK" ]; then # builds with the distributed runtime
    out=$(timeout 60 "$WK" --backend gpu 2>&1); rc=$?
    check "worker: unknown backend exits 2 naming the choices" \
        $([ $rc = 2 ] && echo "$out" | grep -q "cuda!" && echo 0 || echo 1)
    if [ "$gpu_present" = 0 ]; then # with a GPU it would start serving
        out=$(timeout 60 "$WK" --backend cuda! 2>&1); rc=$?
        check "worker: cuda! without a GPU exits 2 and says why" \
            $([ $rc = 2 ] && echo "$out" | grep -q "no CUDA" && echo 0 || echo 1)
    fi
    d=$(mktemp -d "${TMPDIR:-/tmp}/specd-cuda-cli.XXXXXX")
    out=$(timeout 300 "$SPECD" local --worker-set backend=cuda --dir "$d/c" --keep --model "$M" \
        -p "$P" -n 24 --compare 2>&1); rc=$?
    check "cluster with a backend=cuda worker == local target-only" \
        $([ $rc = 0 ] && echo "$out" | grep -q "identical to local target-only" && echo 0 || echo 1)
    n=$(grep -c "CUDA backend unavailable" "$d/c/worker-0.log")
    if [ "$gpu_present" = 0 ]; then
        check "worker: the fallback is one log line ($n)" $([ "$n" = 1 ] && echo 0 || echo 1)
    else
        check "worker: runs on the GPU" $(grep -q "backend cuda:" "$d/c/worker-0.log" && echo 0 || echo 1)
    fi
    [ $fails = 0 ] && rm -rf "$d"
fi
echo "$passes passed, $fails failed"
[ $fails = 0 ]
