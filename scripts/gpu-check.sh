#!/usr/bin/env bash
# gpu-check: build and check the CUDA backend on a machine that has an NVIDIA GPU, nvcc and CMake
# but no package registry (docs/cuda.md). Three steps, in this order:
#
#   scripts/gpu-check.sh fetch       on a build machine (Debian 12, apt reachable): downloads the
#                                    Debian packages the engine needs at build time (PCRE2,
#                                    cmocka, libconfig, pkgconf) into build-gpu-debs/ (ignored by
#                                    git; carry it to the GPU machine with the checkout)
#   scripts/gpu-check.sh run         on the GPU machine: unpacks them with dpkg -x into a prefix,
#                                    builds specd + the CUDA backend + the tests for sm_80/sm_90,
#                                    runs the CUDA test suite on the GPU, `specd generate
#                                    --backend cuda! --compare` on 3 prompts and `bench_engine
#                                    --backend cuda!`; logs and CSV go to $OUT (or build-gpu/out)
#   scripts/gpu-check.sh --local     here, without a GPU: the same unpack + build as `run` (the
#                                    packages from build-gpu-debs/, not the system's), then the
#                                    tests, which skip (exit 77) where they need a GPU; proves the
#                                    build part
#
# Environment: SPECD_MODEL (default: the cached SmolLM2 model; the model-dependent steps are
# skipped with a message when it is missing), OUT, JOBS (default: all cores), GPU_CHECK_BUDGET_S
# (default 450: the steps get shares of it, so the whole check stays under 8 minutes).
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEBS="$ROOT/build-gpu-debs"
BUILD="$ROOT/build-gpu"
PREFIX="$BUILD/prefix"
OUT="${OUT:-$BUILD/out}"
JOBS="${JOBS:-$(nproc)}"
BUDGET="${GPU_CHECK_BUDGET_S:-450}"
MODEL="${SPECD_MODEL:-$HOME/.cache/specd/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
PKGS="libpcre2-dev libpcre2-8-0 libcmocka-dev libcmocka0 libconfig-dev libconfig9 pkgconf
pkgconf-bin libpkgconf3"

say() { echo "gpu-check: $*" | tee -a "$OUT/gpu-check.log"; }
t0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - t0))); }

fetch() {
    mkdir -p "$DEBS"
    cd "$DEBS" || exit 1
    # shellcheck disable=SC2086
    apt-get download $PKGS || { echo "gpu-check: apt-get download failed" >&2; exit 1; }
    ls -l "$DEBS"
    echo "gpu-check: packages in $DEBS; carry that folder with the checkout to the GPU machine"
}

unpack() {
    ls "$DEBS"/*.deb > /dev/null 2>&1 || {
        say "no packages in $DEBS: run 'scripts/gpu-check.sh fetch' on a build machine first"
        exit 1
    }
    mkdir -p "$PREFIX"
    for d in "$DEBS"/*.deb; do dpkg -x "$d" "$PREFIX" || exit 1; done
    local lib="$PREFIX/usr/lib/x86_64-linux-gnu"
    export PKG_CONFIG_SYSROOT_DIR="$PREFIX"
    export PKG_CONFIG_LIBDIR="$lib/pkgconfig:$PREFIX/usr/share/pkgconfig"
    export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    PKGCONF="$PREFIX/usr/bin/pkgconf"
    [ -x "$PKGCONF" ] || PKGCONF="$(command -v pkg-config || true)"
    say "packages unpacked into $PREFIX (pkg-config: $PKGCONF)"
}

build() {
    local gen=()
    command -v ninja > /dev/null && gen=(-G Ninja)
    # the CMAKE_PREFIX_PATH lets find_library see the unpacked libraries; pkg-config reports
    # their paths through the sysroot
    cmake -S "$ROOT" -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DSPECD_WERROR=ON \
        -DPKG_CONFIG_EXECUTABLE="$PKGCONF" -DCMAKE_PREFIX_PATH="$PREFIX/usr" \
        -DSPECD_MODEL="$MODEL" > "$OUT/cmake.log" 2>&1 || {
        tail -30 "$OUT/cmake.log"
        say "cmake failed (log: $OUT/cmake.log)"
        exit 1
    }
    grep -q "CUDA toolkit not found" "$OUT/cmake.log" && say "WARNING: no CUDA toolkit found"
    local targets=(specd bench_engine)
    for t in test_cuda_kernels test_cuda_backend test_cuda_model test_cuda_model_default; do
        targets+=("${t}_gpu" "${t}_sim")
    done
    targets+=(test_cuda_sim_sim)
    timeout "$(left)" cmake --build "$BUILD" -j "$JOBS" --target "${targets[@]}" \
        > "$OUT/build.log" 2>&1 || {
        tail -40 "$OUT/build.log"
        say "build failed (log: $OUT/build.log)"
        exit 1
    }
    say "built in $(($(date +%s) - t0)) s"
}

check_tests() {
    cd "$BUILD" || exit 1
    local lim=$(($(left) / 3))
    # the GPU suite (skips without a GPU), then the simulator's (same sources, CPU)
    timeout "$lim" ctest -L cuda-gpu --output-on-failure > "$OUT/ctest-gpu.log" 2>&1
    local rg=$?
    # on the GPU machine the simulator run gets a third of what is left (the bench needs the
    # rest); --local has nothing after it
    local lim_sim=$(($(left) / 3))
    [ "$mode" = run ] || lim_sim=$(left)
    timeout "$lim_sim" ctest -L cuda-sim -LE slow -j "$JOBS" --output-on-failure \
        > "$OUT/ctest-sim.log" 2>&1
    local rs=$?
    grep -E "tests passed|Skipped|Failed|\*\*\*" "$OUT/ctest-gpu.log" | tee -a "$OUT/gpu-check.log"
    grep -E "tests passed" "$OUT/ctest-sim.log" | tee -a "$OUT/gpu-check.log"
    cd "$ROOT" || exit 1
    [ $rg = 0 ] && [ $rs = 0 ]
}

gpu_present() {
    "$BUILD/specd" generate --backend cuda! --model "$MODEL" -n 1 -p hi > /dev/null 2>&1
}

model_steps() {
    if [ ! -f "$MODEL" ]; then
        say "model $MODEL not found: skipping generate --compare and bench_engine"
        return 0
    fi
    if ! gpu_present; then
        say "no usable GPU: skipping generate --compare and bench_engine --backend cuda"
        return 0
    fi
    local ok=0 i=0
    for p in "Explain in three sentences why the sky is blue." "def quicksort(xs):" \
        "List the planets of the solar system in order."; do
        i=$((i + 1))
        timeout 60 "$BUILD/specd" generate --backend cuda! --model "$MODEL" -n 64 --compare \
            --draft ngram:3:2 --tree chain:4 --chat -p "$p" > "$OUT/generate-$i.log" 2>&1 ||
            ok=1
        tail -3 "$OUT/generate-$i.log" | tee -a "$OUT/gpu-check.log"
    done
    [ $ok = 0 ] && say "speculative == target-only on the GPU for 3 prompts" ||
        say "FAIL: generate --compare (logs: $OUT/generate-*.log)"
    timeout "$(left)" "$BUILD/bench_engine" --backend cuda! --model "$MODEL" --reps 10 \
        --long-ctx 1024 --csv "$OUT/engine_cuda.csv" > "$OUT/bench_engine.log" 2>&1 || ok=1
    cat "$OUT/bench_engine.log" | tee -a "$OUT/gpu-check.log"
    return $ok
}

mode="${1:-run}"
case "$mode" in
fetch)
    fetch
    ;;
run | --local | --dry-run)
    mkdir -p "$OUT"
    : > "$OUT/gpu-check.log"
    say "mode $mode, $(nproc) cores, budget ${BUDGET}s, out $OUT"
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
        --format=csv,noheader 2>&1 | tee -a "$OUT/gpu-check.log"
    command -v nvcc > /dev/null && nvcc --version | tail -1 | tee -a "$OUT/gpu-check.log"
    unpack
    build
    rc=0
    check_tests || rc=1
    model_steps || rc=1
    say "done in $(($(date +%s) - t0)) s, $([ $rc = 0 ] && echo OK || echo FAILED)"
    exit $rc
    ;;
*)
    echo "usage: scripts/gpu-check.sh fetch | run | --local" >&2
    exit 2
    ;;
esac
