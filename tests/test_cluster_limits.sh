#!/usr/bin/env bash
# Limits and shutdown with real daemons: a worker at its session cap makes the next client get
# RESOURCE_EXHAUSTED while the running session is unharmed; limits on context and tree size are
# clear errors; SIGTERM drains the coordinator (running sessions finish or fail with
# UNAVAILABLE, never hang) and it exits 0; workers and drafters exit 0 on SIGTERM too.
# SD_TEST_LABELS: cluster model
set -u
. "$SPECD_SRC/tests/lib/cluster.sh"
CL_DIR=$(mktemp -d "${TMPDIR:-/tmp}/specd-test-limits.XXXXXX")
trap 'daemons_stop' EXIT
port=$(free_port)
CL_ADDR="127.0.0.1:$port"
write_cfg "$CL_DIR/co.cfg" "port = $port;" "max_ctx = 512;" "drain_ms = 1500;"
write_cfg "$CL_DIR/w.cfg" "coordinator = \"$CL_ADDR\";" "max_sessions = 1;" "forward_delay_ms = 10;"
write_cfg "$CL_DIR/d.cfg" "coordinator = \"$CL_ADDR\";"
daemon_start coordinator specd-coordinator "$CL_DIR/co.cfg"; co=$DPID
daemon_start worker specd-worker "$CL_DIR/w.cfg"; w=$DPID
daemon_start drafter specd-drafter "$CL_DIR/d.cfg"; d=$DPID
wait_nodes 1 1 || exit 1
gen() { timeout 120 $SPECD generate --coordinator "$CL_ADDR" "$@"; }

gen --model "$M" --compare --mode si -p "Count: one, two, three," -n 120 --ignore-eos \
    >/dev/null 2>"$CL_DIR/long.err" &
long=$!
wait_generating 1
gen -p "hello" -n 8 >/dev/null 2>"$CL_DIR/second.err"; rc=$?
check "second session over the worker's cap: RESOURCE_EXHAUSTED (rc $rc)" \
    $(ok_if grep -q "RESOURCE_EXHAUSTED" "$CL_DIR/second.err")
wait "$long"; rc=$?
check "the running session is unharmed (rc $rc)" \
    $(ok_if grep -q "cluster output identical" "$CL_DIR/long.err")

long_prompt=$(printf 'word %.0s' $(seq 1 600))
gen -p "$long_prompt" -n 8 >/dev/null 2>"$CL_DIR/ctx.err"; rc=$?
check "prompt beyond the context limit: OUT_OF_RANGE naming the limit (rc $rc)" \
    $(ok_if grep -q "OUT_OF_RANGE.*context limit 512" "$CL_DIR/ctx.err")
gen -p "hi" -n 8 --max-nodes 65 --tree chain:4 >/dev/null 2>"$CL_DIR/nodes.err"; rc=$?
check "tree beyond the limit: INVALID_ARGUMENT (rc $rc)" \
    $(ok_if grep -q "INVALID_ARGUMENT.*max_nodes 65" "$CL_DIR/nodes.err")
gen -p "hi" -n 8 --tree bogus:3 >/dev/null 2>"$CL_DIR/tree.err"; rc=$?
check "bad tree shape: INVALID_ARGUMENT (rc $rc)" \
    $(ok_if grep -q "INVALID_ARGUMENT.*tree" "$CL_DIR/tree.err")
gen -p "hi" -n 8 --draft model:/etc/passwd >/dev/null 2>"$CL_DIR/dpath.err"; rc=$?
check "draft model outside the drafter's model-dir: PERMISSION_DENIED (rc $rc)" \
    $(ok_if grep -q "PERMISSION_DENIED" "$CL_DIR/dpath.err")

# SIGTERM drains the coordinator: a long session ends with a status, the coordinator exits 0
gen -p "Count slowly:" --mode ar -n 400 --ignore-eos >/dev/null 2>"$CL_DIR/drain.err" &
g=$!
wait_generating 1
kill -TERM "$co"
wait "$co"; rc=$?
check "coordinator exits 0 after SIGTERM (rc $rc)" $([ $rc = 0 ] && echo 0 || echo 1)
wait "$g"; rc=$?
check "the running session got a status, not a hang (rc $rc)" \
    $(ok_if grep -q "UNAVAILABLE: the coordinator is shutting down" "$CL_DIR/drain.err")
kill -TERM "$w" "$d"
wait "$w"; rw=$?
wait "$d"; rd=$?
check "worker and drafter exit 0 on SIGTERM ($rw, $rd)" $([ $rw = 0 ] && [ $rd = 0 ] && echo 0 || echo 1)
D_PIDS=()
echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
