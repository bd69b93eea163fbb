#!/usr/bin/env bash
# One-time (idempotent) set-up: Debian packages, then the default model into the cache.
#   SPECD_MODEL_DIR  cache folder (default ~/.cache/specd/models)
#   SPECD_SKIP_APT=1 do not touch system packages
#   SPECD_PYENV      Python venv with grpcio for the cluster tests (default ~/.cache/specd/pyenv)
#   SPECD_SKIP_PY=1  do not create it
set -euo pipefail

PKGS="build-essential cmake pkg-config python3 libpcre2-dev libcmocka-dev libconfig-dev \
libgrpc-dev protobuf-c-compiler libprotobuf-c-dev libucx-dev ucx-utils clang libclang-rt-14-dev"

missing=()
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] && [ "${SPECD_SKIP_APT:-0}" != 1 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python grpcio + grpcio-tools: the foreign gRPC client of tests/test_cluster_python.sh
PYENV="${SPECD_PYENV:-$HOME/.cache/specd/pyenv}"
if [ "${SPECD_SKIP_PY:-0}" != 1 ] && ! "$PYENV/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
    echo "setup: Python grpcio and grpcio-tools into $PYENV (for the cluster tests)"
    python3 -m venv "$PYENV"
    "$PYENV/bin/pip" install -q grpcio grpcio-tools
fi

"$(dirname "$0")/fetch-model.sh"
