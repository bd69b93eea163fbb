#!/usr/bin/env bash
# A foreign client: Python grpcio with stubs generated from proto/specd.proto at test time drives
# Generate on a real cluster; its streamed text equals the local target-only output.
# SD_TEST_LABELS: cluster model
set -u
. "$SPECD_SRC/tests/lib/cluster.sh"
PY=${SPECD_PYENV:-$HOME/.cache/specd/pyenv}/bin/python
if ! "$PY" -c 'import grpc, grpc_tools' 2>/dev/null; then
    echo "FAIL: no Python with grpcio + grpcio-tools at $PY (scripts/setup.sh installs it)"
    exit 1
fi
trap 'cluster_stop' EXIT
cluster_start python || exit 1
for mode in ar si async; do
    p="Name three planets and one fact about each."
    got=$(timeout 120 "$PY" "$SPECD_SRC/tests/py/generate_client.py" "$SPECD_SRC" "$CL_ADDR" "$p" 40 \
          "$mode" 2>"$CL_DIR/py.err")
    want=$(timeout 120 $SPECD generate --model "$M" -p "$p" --chat -n 40 --draft none 2>/dev/null)
    [ -n "${VERBOSE:-}" ] && { echo "got=$got"; echo "want=$want"; cat "$CL_DIR/py.err"; }
    check "python grpcio client, $mode: text equals local target-only" \
        $([ "$got" = "$want" ] && [ -n "$got" ] && echo 0 || echo 1)
    if [ "$got" != "$want" ]; then
        echo "got:  $got"; echo "want: $want"; tail -n 5 "$CL_DIR/py.err"
    fi
    check "python client saw the summary and the nodes" \
        $(ok_if grep -q '"n_gen": 40' "$CL_DIR/py.err")
done
finish
