#!/usr/bin/env bash
# bench/vs_llamacpp.sh: specd against llama.cpp on the same model, machine and thread count,
# in one run: single-token decode, and the cost of one 16-token forward relative to a 1-token
# one (what a 16-node verification costs).
#
#   bench/vs_llamacpp.sh LLAMA_BENCH [MODEL] [THREADS]
#
# CPU_LEVEL=portable|avx2|avx512 caps specd's kernels (bench_engine --cpu-level; e.g. AVX2 on an
# AVX-512 machine stands in for an AVX2-only one); the CPU is named in the output.
#
# LLAMA_BENCH is a llama-bench binary you built yourself (this project does not ship or build
# llama.cpp). llama.cpp's pp16 evaluates a 16-token chain and computes the logits of its last
# token only; specd's T=16 row computes a 16-node tree with the logits of every node (what
# verification needs), so the comparison favours llama.cpp on that row.
# Writes bench/out/vs_llamacpp.csv.
set -euo pipefail
LB=${1:?usage: bench/vs_llamacpp.sh LLAMA_BENCH [MODEL] [THREADS]}
M=${2:-${SPECD_MODEL_DIR:-$HOME/.cache/specd/models}/SmolLM2-135M-Instruct.Q4_1.gguf}
TH=${3:-2}
BUILD=${BUILD:-build}
[ -x "$LB" ] || { echo "vs_llamacpp: $LB is not an executable" >&2; exit 2; }
[ -r "$M" ] || { echo "vs_llamacpp: cannot read model $M" >&2; exit 2; }
[ -x "$BUILD/bench_engine" ] || { echo "vs_llamacpp: build first (make build)" >&2; exit 2; }
mkdir -p bench/out
out=bench/out/vs_llamacpp.csv

CPU_LEVEL=${CPU_LEVEL:-best}
echo "vs_llamacpp: CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')" >&2
echo "vs_llamacpp: specd bench_engine ($TH threads, --cpu-level $CPU_LEVEL) ..." >&2
"$BUILD/bench_engine" --model "$M" --threads "$TH" --cpu-level "$CPU_LEVEL" \
    --csv bench/out/engine_vs.csv >/dev/null
val() { awk -F, -v k="$1" '$1 == k { print $2 }' bench/out/engine_vs.csv; }
s_tg=$(val decode_tps)
s_t1=$(val tree_T1_ms)
s_r16=$(val tree_cost_T16)

echo "vs_llamacpp: llama-bench ($TH threads) ..." >&2
"$LB" -m "$M" -t "$TH" -p 1,16 -n 64 -r 5 -o csv 2>/dev/null >bench/out/llamacpp.csv
# llama-bench CSV: n_prompt, n_gen and avg_ts columns (found by name)
lb() { # n_prompt n_gen -> tokens/s
    awk -F, -v p="$1" -v g="$2" 'NR == 1 { for (i = 1; i <= NF; i++) { gsub(/"/, "", $i); c[$i] = i } next }
        { gsub(/"/, "") } $c["n_prompt"] == p && $c["n_gen"] == g { print $c["avg_ts"] }' \
        bench/out/llamacpp.csv
}
l_tg=$(lb 0 64)
l_pp1=$(lb 1 0)
l_pp16=$(lb 16 0)
l_r16=$(awk -v a="$l_pp1" -v b="$l_pp16" 'BEGIN { printf "%.2f", (16 / b) / (1 / a) }')

{
    echo "engine,decode_tps,forward16_over_forward1"
    echo "specd,$s_tg,$s_r16"
    echo "llama.cpp,$l_tg,$l_r16"
} >"$out"
printf '%-10s %14s %28s\n' engine "decode tok/s" "16-token / 1-token forward"
printf '%-10s %14.1f %27.2fx  (1-token forward %.2f ms)\n' specd "$s_tg" "$s_r16" "$s_t1"
printf '%-10s %14.1f %27.2fx  (pp1 %.1f t/s, pp16 %.1f t/s)\n' llama.cpp "$l_tg" "$l_r16" \
    "$l_pp1" "$l_pp16"
echo "vs_llamacpp: wrote $out" >&2
