#!/usr/bin/env bash
# bench/cluster.sh: the distributed runtime against in-process generation, in one run on the
# default model (issue 7; results in docs/performance.md, "Distributed runtime").
#
#   bench/cluster.sh [--build DIR] [--reps R] [--csv FILE] [--keep]
#
# 1. latency: ar, si and async through a local cluster (specd local --serve: a coordinator, one
#    worker, one drafter on loopback) against in-process `specd generate` with the same drafter
#    and tree (in-process ar = --draft none; async has no in-process form: it is set beside
#    in-process si). Tokens/s, time to first token and inter-token latency are all taken on the
#    client side from `specd generate --timing` (token arrival times), R repetitions interleaved.
#    Then si again with one compute thread on both sides (worker threads = 1, in-process -t 1).
# 2. the network path's overhead per chunk: a 1-token prompt in ar (nothing to prefill, every
#    chunk one forward): SessionSummary.chunk_rtt_ms_mean - compute_ms_mean, beside
#    ucx_perftest's ucp_am_lat floor on TCP loopback (both its busy-polling and its sleeping
#    mode; the daemons sleep) and bench_cluster_wake's cost of waking a sleeping thread; and the
#    same on a second cluster whose worker does not poll between chunks (poll_us = 0).
# 2b. what the cluster's other processes cost the worker's forward on a machine they share:
#    the CPU time of the coordinator + drafter (/proc schedstat) and of the client (bash's time)
#    over every cluster ar/si latency run, per step; and in-process ar beside
#    `bench_cluster_wake --steal` taking 0, 150 or 300 µs of CPU every 4 ms: how much longer a
#    forward that uses every core gets per µs of CPU taken from it.
# 3. worker throughput (verified tokens/s, from the worker's counters in `specd status`) with 1,
#    4 and 16 concurrent sessions, batching = 1 (one forward over all ready sessions) vs 0: two
#    clusters up side by side, their runs alternating, the ratio taken per adjacent pair.
# Starts and stops every process itself (traps included) and checks none is left. Writes a
# tidy CSV (section,config,metric,value,unit) and prints tables and the issue's ratios. The
# machine may be shared: only ratios inside one run mean anything; the CPU and the load average
# are printed with them. A run takes 4-6 minutes on 2 busy vCPUs.
set -u
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$SRC/build
REPS=6
CSV=$SRC/bench/out/cluster.csv
KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
    --build) BUILD=$(cd "$2" && pwd) || exit 2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --csv) CSV=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/cluster.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
SPECD=$BUILD/specd
WAKE=$BUILD/bench_cluster_wake
MODEL=${SPECD_MODEL:-${SPECD_MODEL_DIR:-$HOME/.cache/specd/models}/SmolLM2-135M-Instruct.Q4_1.gguf}
for f in "$SPECD" "$BUILD/specd-coordinator" "$BUILD/specd-worker" "$BUILD/specd-drafter" "$WAKE"; do
    [ -x "$f" ] || { echo "bench/cluster.sh: $f missing: build first (cmake --build build)" >&2; exit 2; }
done
[ -r "$MODEL" ] || { echo "bench/cluster.sh: cannot read the model $MODEL (scripts/setup.sh)" >&2; exit 2; }
command -v ucx_perftest >/dev/null ||
    { echo "bench/cluster.sh: ucx_perftest not found (apt-get install ucx-utils)" >&2; exit 2; }
case $REPS in '' | *[!0-9]*) echo "bench/cluster.sh: --reps N" >&2; exit 2 ;; esac

RAW=$(mktemp -d "${TMPDIR:-/tmp}/specd-bench-cluster.XXXXXX")
mkdir -p "$RAW/t" "$(dirname "$CSV")"
CL_PID=
CL_ADDR=
CL_N=0
CLS=() # "pid:n" of every launcher still running
BG_PID= # a background helper (ucx_perftest server, bench_cluster_wake --steal)
CLIENTS=()

log() { echo "bench/cluster: $*" >&2; }

cluster_down() { # stops the cluster in CL_PID / CL_N
    [ -n "$CL_PID" ] || return 0
    local keep=() x
    for x in "${CLS[@]}"; do [ "$x" = "$CL_PID:$CL_N" ] || keep+=("$x"); done
    CLS=("${keep[@]}")
    kill -TERM "$CL_PID" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$CL_PID" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$CL_PID" 2>/dev/null && { log "specd local did not stop: killing it"; kill -9 "$CL_PID"; }
    wait "$CL_PID" 2>/dev/null
    local left
    left=$(pgrep -f "$RAW/c$CL_N/" || true)
    if [ -n "$left" ]; then
        log "daemons left behind ($left): killing them"
        kill -9 $left 2>/dev/null
    fi
    CL_PID=
}

cleanup() {
    for p in "${CLIENTS[@]}"; do kill "$p" 2>/dev/null; done
    [ -n "$BG_PID" ] && kill "$BG_PID" 2>/dev/null && wait "$BG_PID" 2>/dev/null
    local x
    for x in "${CLS[@]}"; do
        CL_PID=${x%%:*}
        CL_N=${x##*:}
        cluster_down
    done
    if [ "$KEEP" = 1 ]; then log "raw data kept in $RAW"; else rm -rf "$RAW"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# cluster_up [specd local options]: a fresh cluster; sets CL_PID, CL_ADDR
cluster_up() {
    CL_N=$((CL_N + 1))
    "$SPECD" local --serve --dir "$RAW/c$CL_N" --coordinator-set "model=$MODEL" \
        --worker-set "model=$MODEL" --drafter-set "model=$MODEL" "$@" >"$RAW/addr$CL_N" \
        2>"$RAW/local$CL_N.err" &
    CL_PID=$!
    CLS+=("$CL_PID:$CL_N")
    for _ in $(seq 1 600); do
        CL_ADDR=$(head -n1 "$RAW/addr$CL_N" 2>/dev/null || true)
        [ -n "$CL_ADDR" ] && return 0
        kill -0 "$CL_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "the cluster did not start:"
    cat "$RAW/local$CL_N.err" "$RAW/c$CL_N"/*.log 2>/dev/null | tail -30 >&2
    exit 1
}

DRAFT=(--draft ngram:3:2 --tree chain:4)
N_GEN=128
PROMPT_ARGS_0=(--chat -p "Count from 1 to 40, separated by commas.")
PROMPT_ARGS_1=(-p "def fibonacci(n):")

# run NAME [specd generate options]: one generation with --timing into $RAW/t/NAME.*
run() {
    local name=$1
    shift
    if ! timeout 300 "$SPECD" generate "$@" --timing "$RAW/t/$name.txt" >"$RAW/t/$name.out" \
        2>"$RAW/t/$name.err"; then
        log "$name failed:"
        tail -5 "$RAW/t/$name.err" >&2
        exit 1
    fi
}

# CPU time of the processes given, in ns: the sum over their threads of schedstat's time on CPU
proc_cpu_ns() { cat $(for p in "$@"; do echo "/proc/$p/task/"*/schedstat; done) 2>/dev/null | awk '{t += $1} END {printf "%.0f\n", t}'; }

# run_cpu NAME [specd generate options]: run, adding "NAME other_ms client_ms" to cpu.txt: the
# CPU time the current cluster's coordinator and drafter ($OTHER_PIDS) and the client took
run_cpu() {
    local o0 o1 TIMEFORMAT='%3U %3S'
    o0=$(proc_cpu_ns $OTHER_PIDS)
    { time run "$@" 2>&3; } 3>&2 2>"$RAW/time.txt"
    o1=$(proc_cpu_ns $OTHER_PIDS)
    echo "$1 $(((o1 - o0) / 1000000)) $(awk '{print ($1 + $2) * 1000}' "$RAW/time.txt")" >>"$RAW/cpu.txt"
}

# worker_line: the worker's line of specd status (forwards, batched forwards, verified tokens)
worker_line() { "$SPECD" status --coordinator "$CL_ADDR" | awk '$1 == "worker"' | head -n1; }

{
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "vcpus=$(nproc)"
    echo "simd=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' |
        grep -E '^(avx2|avx512f|avx512_vnni|avx512_bf16|amx_tile)$' | tr '\n' ' ' | sed 's/ $//')"
    echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit=$(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "reps=$REPS"
    echo "n_gen=$N_GEN"
} >"$RAW/meta.txt"
log "$(sed -n 1,3p "$RAW/meta.txt" | tr '\n' ' ')- this machine may be shared with other work: ratios within this run only"

# ---- floors: ucx_perftest (busy-polling and sleeping) and thread wake-ups ----
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
export UCX_TLS=tcp,self UCX_WARN_UNUSED_ENV_VARS=n
for mode in poll sleep; do
    port=$(free_port)
    # -e: endpoints with error handling (the daemons' ucx_err_mode = peer); -I: wake-up feature
    ucx_perftest -t ucp_am_lat -s 64 -n 5000 -p "$port" -e -I -E "$mode" >"$RAW/perf_srv_$mode" 2>&1 &
    BG_PID=$!
    ok=0
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        sleep 0.3
        if timeout 60 ucx_perftest 127.0.0.1 -t ucp_am_lat -s 64 -n 5000 -p "$port" -e -I -E "$mode" \
            >"$RAW/perf_$mode" 2>&1; then
            ok=1
            break
        fi
    done
    wait "$BG_PID" 2>/dev/null
    BG_PID=
    [ $ok = 1 ] || { log "ucx_perftest ($mode) failed:"; tail -5 "$RAW/perf_$mode" >&2; exit 1; }
    # Final: iterations p50 average overall ... (latency in us = half a round trip)
    awk -v m="$mode" '$1 == "Final:" { print "perftest", m, $3, $4 }' "$RAW/perf_$mode" >>"$RAW/floor.txt"
done
unset UCX_TLS
"$WAKE" 4000 >>"$RAW/floor.txt"
log "floors: $(tr '\n' ';' <"$RAW/floor.txt")"

# ---- 1+2: latency and per-chunk overhead ----
# A second cluster whose worker sleeps at once after a forward (poll_us = 0) takes part only in
# the overhead runs, interleaved with the first's: what the worker's polling between chunks
# saves, measured side by side.
cluster_up --worker-set poll_us=0
NP_PID=$CL_PID NP_N=$CL_N NP_ADDR=$CL_ADDR
run warm_nopoll --coordinator "$NP_ADDR" --mode ar -p "Hello" -n 16 --ignore-eos
cluster_up
OTHER_PIDS=$(pgrep -f -- "--config $RAW/c$CL_N/(coordinator|drafter)\.cfg" | tr '\n' ' ')
log "cluster at $CL_ADDR (and $NP_ADDR with worker poll_us = 0); warm-up"
run warm_cluster --coordinator "$CL_ADDR" --mode ar -p "Hello" -n 16 --ignore-eos
run warm_local --model "$MODEL" --draft none -p "Hello" -n 16 --ignore-eos
for k in 1 2 3; do # a client's own start-up and shutdown, to take off its per-run CPU time
    run_cpu "cpubase_$k" --coordinator "$CL_ADDR" --mode ar -p "Hello" -n 1
done
for rep in $(seq 1 "$REPS"); do
    log "latency rep $rep/$REPS"
    for p in 0 1; do
        eval "pa=(\"\${PROMPT_ARGS_$p[@]}\")"
        common=("${pa[@]}" -n "$N_GEN" --ignore-eos "${DRAFT[@]}")
        run_cpu "lat_${rep}_${p}_cluster_ar" --coordinator "$CL_ADDR" --mode ar "${common[@]}"
        run "lat_${rep}_${p}_local_ar" --model "$MODEL" "${pa[@]}" -n "$N_GEN" --ignore-eos \
            --draft none
        run_cpu "lat_${rep}_${p}_cluster_si" --coordinator "$CL_ADDR" --mode si "${common[@]}"
        run "lat_${rep}_${p}_local_si" --model "$MODEL" "${common[@]}"
        run "lat_${rep}_${p}_cluster_async" --coordinator "$CL_ADDR" --mode async "${common[@]}"
    done
    run "ovh_${rep}" --coordinator "$CL_ADDR" --mode ar -p "Hi" -n 200 --ignore-eos
    run "ovhnp_${rep}" --coordinator "$NP_ADDR" --mode ar -p "Hi" -n 200 --ignore-eos
done
cluster_down
CL_PID=$NP_PID CL_N=$NP_N
cluster_down

# ---- 1b: the same with one compute thread on each side, so that the cluster's other threads
# (coordinator, progress threads, drafter, client) have a vCPU that the forward does not need ----
cluster_up --worker-set threads=1
log "latency with 1 compute thread (cluster at $CL_ADDR)"
run warm1_cluster --coordinator "$CL_ADDR" --mode ar -p "Hello" -n 16 --ignore-eos
for rep in $(seq 1 "$REPS"); do
    for p in 0 1; do
        eval "pa=(\"\${PROMPT_ARGS_$p[@]}\")"
        common=("${pa[@]}" -n "$N_GEN" --ignore-eos "${DRAFT[@]}")
        run "t1_${rep}_${p}_cluster_si" --coordinator "$CL_ADDR" --mode si "${common[@]}"
        run "t1_${rep}_${p}_local_si" --model "$MODEL" -t 1 "${common[@]}"
    done
done
cluster_down

# ---- 2b: CPU taken from an in-process forward (the other half of section 2b is in cpu.txt) ----
log "in-process ar beside a process taking CPU every 4 ms"
for rep in $(seq 1 "$REPS"); do
    for burn in 0 150 300; do
        "$WAKE" --steal 4000 "$burn" 300 >"$RAW/steal_${rep}_$burn.txt" &
        BG_PID=$!
        run "steal_${rep}_$burn" --model "$MODEL" "${PROMPT_ARGS_1[@]}" -n "$N_GEN" --ignore-eos \
            --draft none
        kill "$BG_PID" && wait "$BG_PID"
        BG_PID=
    done
done

# ---- 3: worker throughput, batched vs one forward per session ----
# Both clusters stay up (an idle one only heartbeats) and take turns, so each batched run has
# an unbatched one right next to it in time: the load of other tenants changes by the minute.
for batching in 1 0; do
    cluster_up --worker-set "batching=$batching" --coordinator-set heartbeat_ms=100
    eval "TP${batching}_PID=\$CL_PID TP${batching}_N=\$CL_N TP${batching}_ADDR=\$CL_ADDR"
    run "warm_b$batching" --coordinator "$CL_ADDR" --mode ar -p "Hello" -n 8 --ignore-eos
done
log "throughput: batching=1 at $TP1_ADDR, batching=0 at $TP0_ADDR"
TP_REPS=3
for mode in ar si; do
    for n in 1 4 16; do
        for rep in $(seq 1 $TP_REPS); do
            for batching in 1 0; do
                eval "CL_ADDR=\$TP${batching}_ADDR"
                sleep 0.4 # the worker's counters reach the coordinator with its heartbeats
                before=$(worker_line)
                t0=$(date +%s.%N)
                CLIENTS=()
                for k in $(seq 1 "$n"); do
                    timeout 300 "$SPECD" generate --coordinator "$CL_ADDR" --mode "$mode" \
                        "${DRAFT[@]}" -p "Session $k: write a list of $((k + 2)) animals and a fact about each." \
                        -n 64 --ignore-eos --timing "$RAW/t/tp_${batching}_${mode}_${n}_${rep}_$k.txt" \
                        >/dev/null 2>"$RAW/t/tp_${batching}_${mode}_${n}_${rep}_$k.err" &
                    CLIENTS+=($!)
                done
                bad=0
                for c in "${CLIENTS[@]}"; do wait "$c" || bad=1; done
                CLIENTS=()
                t1=$(date +%s.%N)
                [ $bad = 0 ] || { log "a throughput client failed (batching=$batching $mode n=$n)"; exit 1; }
                sleep 0.4
                after=$(worker_line)
                # worker line: kind id addr sessions seen forwards batched numerics / mean / verified
                echo "tp $batching $mode $n $rep $t0 $t1 $(echo "$before" | awk '{print $6, $7, $NF}') \
$(echo "$after" | awk '{print $6, $7, $NF}')" >>"$RAW/tp.txt"
            done
        done
    done
done
for batching in 1 0; do
    eval "CL_PID=\$TP${batching}_PID CL_N=\$TP${batching}_N"
    cluster_down
done
echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RAW/meta.txt"
python3 "$SRC/bench/cluster_agg.py" "$RAW" "$CSV"
