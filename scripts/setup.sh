#!/usr/bin/env bash
# One-time (idempotent) set-up: Debian packages, then the default model into the cache.
#   SPECD_MODEL_DIR  cache folder (default ~/.cache/specd/models)
#   SPECD_SKIP_APT=1 do not touch system packages
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

"$(dirname "$0")/fetch-model.sh"
