#!/usr/bin/env bash
# specd generate on the simulated GPU (kernels/cuda/sim), end to end through the CLI: the CUDA
# path's greedy output equals the CPU backend's, and speculative decoding equals target-only
# (--compare) on 3 prompts. Slow (the simulator runs every kernel on the CPU): label slow.
set -u
SIM="$SPECD_BIN/kernels/cuda/specd_sim"
CPU="$SPECD_BIN/specd"
M="$SPECD_MODEL"
fails=0
for p in "The capital of France is" "def fibonacci(n):" "List three primary colors:"; do
    a=$(timeout 600 "$CPU" generate --model "$M" -n 8 -p "$p" 2>/dev/null)
    b=$(timeout 600 "$SIM" generate --model "$M" -n 8 -p "$p" --backend cuda! 2>/dev/null)
    [ "$a" = "$b" ] || { echo "FAIL: '$p': simulated CUDA output differs from the CPU's"; fails=1; }
    timeout 900 "$SIM" generate --model "$M" -n 8 -p "$p" --backend cuda! --compare \
        > /dev/null 2>&1 || { echo "FAIL: '$p': --compare on simulated CUDA"; fails=1; }
done
[ $fails = 0 ] && echo "3 prompts: CUDA (simulated) == CPU, speculative == target-only"
exit $fails
