# Shared by the cluster tests (tests/test_cluster*.sh): start a real local cluster (`specd local
# --serve`), wait for it, check outputs against local target-only generation, stop it and make
# sure no daemon is left behind. Every wait is bounded.
SPECD="$SPECD_BIN/specd"
M="$SPECD_MODEL"
fails=0
passes=0
CL_PID=
CL_ADDR=
CL_DIR=
SEED=${SD_SEED:-$(( $(date +%s%N) % 1000000007 ))}
echo "[seed] SD_SEED=$SEED"
RANDOM=$((SEED % 32768))

check() { # name, condition-result (0 = pass)
    if [ "$2" = 0 ]; then passes=$((passes + 1)); else echo "FAIL: $1"; fails=$((fails + 1)); fi
}
ok_if() { "$@" >/dev/null 2>&1 && echo 0 || echo 1; }

# cluster_start NAME [specd local options...]: sets CL_PID, CL_ADDR, CL_DIR
cluster_start() {
    local name=$1
    shift
    CL_DIR=$(mktemp -d "${TMPDIR:-/tmp}/specd-test-$name.XXXXXX")
    $SPECD local --serve --dir "$CL_DIR/c" "$@" >"$CL_DIR/addr" 2>"$CL_DIR/local.err" &
    CL_PID=$!
    for _ in $(seq 1 600); do
        CL_ADDR=$(head -n1 "$CL_DIR/addr" 2>/dev/null || true)
        [ -n "$CL_ADDR" ] && return 0
        kill -0 "$CL_PID" 2>/dev/null || break
        sleep 0.2
    done
    echo "cluster $name did not start:"
    cat "$CL_DIR/local.err" "$CL_DIR"/c/*.log 2>/dev/null | tail -40
    return 1
}

# cluster_stop: SIGTERM the launcher, wait (bounded), check it exited 0 and left no daemon
cluster_stop() {
    [ -n "$CL_PID" ] || return 0
    kill -TERM "$CL_PID" 2>/dev/null
    local rc=0
    for _ in $(seq 1 150); do
        kill -0 "$CL_PID" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$CL_PID" 2>/dev/null; then
        echo "FAIL: specd local did not stop"; fails=$((fails + 1)); kill -9 "$CL_PID"
    fi
    wait "$CL_PID" 2>/dev/null; rc=$?
    check "specd local exits 0 on SIGTERM (rc $rc)" $([ $rc = 0 ] && echo 0 || echo 1)
    sleep 0.3
    local left
    left=$(pgrep -f "$CL_DIR/c/" || true)
    check "no daemon left behind" $([ -z "$left" ] && echo 0 || echo 1)
    [ -n "$left" ] && kill -9 $left 2>/dev/null
    CL_PID=
    [ "$fails" = 0 ] && rm -rf "$CL_DIR"
}

# same_as_local NAME [specd generate options...]: the cluster's output equals local target-only
same_as_local() {
    local name=$1
    shift
    local err
    err=$(timeout 300 $SPECD generate --coordinator "$CL_ADDR" --model "$M" --compare "$@" \
          2>&1 >/dev/null)
    if echo "$err" | grep -q "cluster output identical to local target-only"; then
        passes=$((passes + 1))
    else
        echo "FAIL: $name: $*"; echo "$err" | tail -8; fails=$((fails + 1))
    fi
}

finish() {
    cluster_stop
    echo "$passes passed, $fails failed"
    [ "$fails" = 0 ]
}

# ---- daemons started one by one (fault tests kill them individually) ----
D_PIDS=()

# daemon_start NAME BINARY CFGFILE: in the background (a child of this shell), log in
# $CL_DIR/NAME.log; its pid in DPID
daemon_start() {
    "$SPECD_BIN/$2" --config "$3" >"$CL_DIR/$1.log" 2>&1 &
    DPID=$!
    D_PIDS+=($DPID)
}

# write_cfg FILE "key = value;" ...
write_cfg() {
    local f=$1
    shift
    printf '%s\n' "$@" >"$f"
}

# wait_nodes WORKERS DRAFTERS [seconds]: until the coordinator at CL_ADDR lists them
wait_nodes() {
    local w=$1 d=$2 t=${3:-60} st
    for _ in $(seq 1 $((t * 5))); do
        st=$($SPECD status --coordinator "$CL_ADDR" --timeout 1 2>/dev/null || true)
        if [ "$(echo "$st" | grep -c '^worker ')" -ge "$w" ] &&
           [ "$(echo "$st" | grep -c '^drafter ')" -ge "$d" ]; then
            return 0
        fi
        sleep 0.2
    done
    echo "nodes did not register: $st"
    return 1
}

daemons_stop() {
    for p in "${D_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${D_PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    D_PIDS=()
}

# free_port: a TCP port nothing listens on now
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_generating [COUNT] [seconds]: until the coordinator lists COUNT sessions that have
# committed tokens (clients start slowly on a loaded machine: never race them with a sleep)
wait_generating() {
    local want=${1:-1} t=${2:-60} st k
    for _ in $(seq 1 $((t * 10))); do
        st=$($SPECD status --coordinator "$CL_ADDR" --timeout 1 2>/dev/null || true)
        k=$(echo "$st" | awk '$1 ~ /^[0-9]+$/ && $3 > 0' | wc -l)
        [ "$k" -ge "$want" ] && return 0
        sleep 0.1
    done
    echo "no session generating after $t s"
    return 1
}
