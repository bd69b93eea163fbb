#!/usr/bin/env bash
# The configuration reference cannot go stale and the example configs stay loadable:
# 1. docs/configuration.md is exactly what scripts/gen-config-doc.sh makes from the three
#    binaries' config tables (fails with the diff; fix: run the script and commit);
# 2. configs/{coordinator,worker,drafter}.cfg load as they are: each daemon is started with its
#    example file (plus command-line overrides to free ports and this cluster's coordinator),
#    comes up and registers, one short generation runs through them, SIGTERM stops each with
#    status 0 and nothing is left running;
# 3. a key the table does not know, appended to an example file, is refused with FILE:LINE: KEY
#    and exit status 2.
# SD_TEST_LABELS: cli model
set -u
B=$SPECD_BIN
S=$SPECD_SRC
for d in specd-coordinator specd-worker specd-drafter; do
    [ -x "$B/$d" ] || { echo "SKIP: $B/$d not built (no distributed runtime in this build)"; exit 77; }
done
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
T=$(mktemp -d "${TMPDIR:-/tmp}/specd-test-configdoc.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    [ "$fails" = 0 ] && rm -rf "$T"
}
trap cleanup EXIT

# ---- 1. the generated reference ----
if ! bash "$S/scripts/gen-config-doc.sh" "$B" "$T/configuration.md" 2>"$T/gen.err"; then
    fail "scripts/gen-config-doc.sh failed: $(cat "$T/gen.err")"
elif ! diff -u "$S/docs/configuration.md" "$T/configuration.md" >"$T/doc.diff"; then
    fail "docs/configuration.md is stale: run scripts/gen-config-doc.sh and commit it"
    head -40 "$T/doc.diff"
fi

# ---- 3. an unknown key in an example file ----
for d in coordinator worker drafter; do
    cp "$S/configs/$d.cfg" "$T/bad_$d.cfg"
    echo "no_such_key = 1;" >>"$T/bad_$d.cfg"
    line=$(wc -l <"$T/bad_$d.cfg")
    bin=specd-$d
    out=$("$B/$bin" --config "$T/bad_$d.cfg" 2>&1)
    rc=$?
    [ $rc = 2 ] || fail "$bin with an unknown key exits $rc, not 2"
    echo "$out" | grep -q "bad_$d.cfg:$line: no_such_key: unknown key" ||
        fail "$bin does not name file, line and key: $out"
done

# ---- 2. the example files, as they are ----
"$B/specd-coordinator" --config "$S/configs/coordinator.cfg" --host 127.0.0.1 --port 0 \
    --port-file "$T/port" >"$T/coordinator.log" 2>&1 &
CO=$!
PIDS+=($CO)
port=
for _ in $(seq 1 300); do
    port=$(cat "$T/port" 2>/dev/null || true)
    [ -n "$port" ] && break
    kill -0 $CO 2>/dev/null || break
    sleep 0.1
done
if [ -z "$port" ]; then
    fail "the coordinator did not come up with configs/coordinator.cfg"
    tail -5 "$T/coordinator.log"
    exit 1
fi
A=127.0.0.1:$port
"$B/specd-worker" --config "$S/configs/worker.cfg" --coordinator "$A" --port 0 --ucx-port 0 \
    --threads 1 >"$T/worker.log" 2>&1 &
WK=$!
"$B/specd-drafter" --config "$S/configs/drafter.cfg" --coordinator "$A" --port 0 --ucx-port 0 \
    >"$T/drafter.log" 2>&1 &
DR=$!
PIDS+=($WK $DR)
up=0
for _ in $(seq 1 300); do
    st=$("$B/specd" status --coordinator "$A" --timeout 1 2>/dev/null || true)
    if echo "$st" | grep -q '^worker ' && echo "$st" | grep -q '^drafter '; then
        up=1
        break
    fi
    kill -0 $WK 2>/dev/null && kill -0 $DR 2>/dev/null || break
    sleep 0.2
done
if [ $up = 1 ]; then
    out=$(timeout 120 "$B/specd" generate --coordinator "$A" -p "Hello" -n 4 --ignore-eos \
        --mode si 2>&1)
    echo "$out" | grep -q "generated 4 tokens" || fail "a generation through the example configs: $out"
else
    fail "the worker and the drafter did not register with configs/worker.cfg, drafter.cfg"
    tail -5 "$T/worker.log" "$T/drafter.log"
fi
for p in $DR $WK $CO; do
    kill -TERM $p 2>/dev/null
    for _ in $(seq 1 150); do kill -0 $p 2>/dev/null || break; sleep 0.1; done
    if kill -0 $p 2>/dev/null; then
        fail "pid $p did not stop on SIGTERM"
        kill -9 $p
    fi
    wait $p
    rc=$?
    [ $rc = 0 ] || fail "pid $p exited $rc after SIGTERM (logs in $T)"
done
PIDS=()
[ "$fails" = 0 ] && echo "configuration reference current; example configs load and serve"
[ "$fails" = 0 ]
