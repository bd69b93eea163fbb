#!/usr/bin/env bash
# specd generate end to end on the real model: exit codes and messages for bad input, greedy and
# seeded determinism, -n respected, statistics printed.
set -u
SPECD="$SPECD_BIN/specd"
M="$SPECD_MODEL"
fails=0; passes=0
check() { # name, condition result
    if [ "$2" = 0 ]; then passes=$((passes + 1)); else echo "FAIL: $1"; fails=$((fails + 1)); fi
}
run() { timeout 120 "$SPECD" generate --model "$M" "$@"; }

out=$(run --bogus 2>&1); rc=$?
check "unknown flag exits 2" $([ $rc = 2 ] && echo 0 || echo 1)
check "unknown flag named" $(echo "$out" | grep -q -- "--bogus" && echo 0 || echo 1)
out=$(run -p hi --temp abc 2>&1); rc=$?
check "bad number exits 2" $([ $rc = 2 ] && echo 0 || echo 1)
out=$(run 2>&1); rc=$?
check "missing prompt exits 2" $([ $rc = 2 ] && echo 0 || echo 1)
out=$(timeout 60 "$SPECD" generate --model /nonexistent/m.gguf -p hi 2>&1); rc=$?
check "missing model exits 1 naming the file" \
    $([ $rc = 1 ] && echo "$out" | grep -q "/nonexistent/m.gguf" && echo 0 || echo 1)
head -c 5000 "$M" > "${TMPDIR:-/tmp}/specd-trunc-$$.gguf"
out=$(timeout 60 "$SPECD" generate --model "${TMPDIR:-/tmp}/specd-trunc-$$.gguf" -p hi 2>&1); rc=$?
rm -f "${TMPDIR:-/tmp}/specd-trunc-$$.gguf"
check "truncated model: clear error" \
    $([ $rc = 1 ] && echo "$out" | grep -q "offset" && echo 0 || echo 1)
long=$(printf 'word %.0s' $(seq 1 300))
out=$(run -p "$long" --ctx 64 2>&1); rc=$?
check "prompt longer than context" \
    $([ $rc = 1 ] && echo "$out" | grep -q "context is 64" && echo 0 || echo 1)

a=$(run -p "The capital of France is" -n 24 2>/dev/null)
b=$(run -p "The capital of France is" -n 24 2>/dev/null)
check "greedy is deterministic" $([ -n "$a" ] && [ "$a" = "$b" ] && echo 0 || echo 1)
a=$(run -p "Once upon a time" -n 24 --temp 0.9 --top-p 0.95 --seed 11 2>/dev/null)
b=$(run -p "Once upon a time" -n 24 --temp 0.9 --top-p 0.95 --seed 11 2>/dev/null)
c=$(run -p "Once upon a time" -n 24 --temp 0.9 --top-p 0.95 --seed 12 2>/dev/null)
check "same seed, same text" $([ -n "$a" ] && [ "$a" = "$b" ] && echo 0 || echo 1)
check "other seed, other text" $([ "$a" != "$c" ] && echo 0 || echo 1)
d=$(run -p "Once upon a time" -n 24 --temp 0.9 --top-p 0.95 --seed 11 --no-pack 2>/dev/null)
check "weights as stored (--no-pack): same text as packed" \
    $([ -n "$a" ] && [ "$a" = "$d" ] && echo 0 || echo 1)
# every CPU level computes the same bits (docs/numerics.md): the same text at each level the CPU has
for lvl in portable avx2 avx512; do
    e=$(run -p "Once upon a time" -n 24 --temp 0.9 --top-p 0.95 --seed 11 --cpu-level $lvl 2>&1 >/dev/null); rc=$?
    if [ $rc != 0 ] && echo "$e" | grep -q "lacks it"; then
        echo "skip --cpu-level $lvl: $(echo "$e" | grep -o 'CPU level.*' | head -1)"
        continue
    fi
    l=$(run -p "Once upon a time" -n 24 --temp 0.9 --top-p 0.95 --seed 11 --cpu-level $lvl 2>/dev/null)
    check "--cpu-level $lvl: same text as the best level" \
        $([ -n "$a" ] && [ "$a" = "$l" ] && echo 0 || echo 1)
done
err=$(run -p hi --cpu-level sse9 2>&1); rc=$?
check "bad --cpu-level exits 2 naming the levels" \
    $([ $rc = 2 ] && echo "$err" | grep -q "portable, avx2, avx512" && echo 0 || echo 1)
err=$(run -p hi -n 2 --log-level info 2>&1 >/dev/null)
check "--log-level info prints the numerics fingerprint" \
    $(echo "$err" | grep -q "numerics cpu-canon1-act8" && echo 0 || echo 1)
err=$(run -p hi -n 2 --f32-act --log-level info 2>&1 >/dev/null)
check "f32 activations: their own fingerprint" \
    $(echo "$err" | grep -q "numerics cpu-canon1-f32" && echo 0 || echo 1)
err=$(run -p "Count: 1, 2, 3," -n 17 --ignore-eos 2>&1 >/dev/null)
check "stats line with -n respected" \
    $(echo "$err" | grep -q "generated 17 tokens" && echo "$err" | grep -q "tok/s prefill" && echo 0 || echo 1)
out=$(run --chat -p "What is 2+2?" -n 16 2>/dev/null); rc=$?
check "chat mode runs" $([ $rc = 0 ] && [ -n "$out" ] && echo 0 || echo 1)

# speculation: identical to target-only, and clear errors for bad speculation flags
err=$(run -p "def add(a, b):\n    return a + b\n\ndef sub(a, b):" -n 32 --draft ngram:2 --tree chain:4 --compare 2>&1 >/dev/null); rc=$?
check "--compare reports identical output" \
    $([ $rc = 0 ] && echo "$err" | grep -q "output identical to target-only" && echo 0 || echo 1)
err=$(run -p "one two three one two three" -n 100 --ctx 24 --draft ngram:2 --tree dynamic:32 --compare 2>&1 >/dev/null); rc=$?
check "speculation fills a small context exactly like target-only" \
    $([ $rc = 0 ] && echo "$err" | grep -q "output identical to target-only" && echo 0 || echo 1)
err=$(run -p hi --draft bogus 2>&1); rc=$?
check "bad --draft named" $([ $rc = 1 ] && echo "$err" | grep -q "bogus" && echo 0 || echo 1)
err=$(run -p hi --draft ngram --tree topk:0 2>&1); rc=$?
check "bad --tree explained" $([ $rc = 1 ] && echo "$err" | grep -q "topk" && echo 0 || echo 1)
err=$(run -p hi --draft ngram --verify greedy --temp 0.5 2>&1); rc=$?
check "greedy verify needs temp 0" $([ $rc = 1 ] && echo 0 || echo 1)
err=$(run -p hi --draft model:/nonexistent.gguf 2>&1); rc=$?
check "missing draft model named" $([ $rc = 1 ] && echo "$err" | grep -q "nonexistent.gguf" && echo 0 || echo 1)

echo "$passes passed, $fails failed"
[ $fails = 0 ]
