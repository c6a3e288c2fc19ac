#!/usr/bin/env bash
# The SmolLM2 testbed's aligned base: SmolLM2-135M-Instruct with the committed safety adapter
# (models/smollm2-safety) merged, in runs/smollm2-aligned. Made again whenever the adapter differs
# from the one it was made from (its SHA256 is kept beside it), so no script runs on a stale base.
# Prints the folder's path on its last stdout line.
#
#   usage: scripts/aligned_base.sh KEEL_BINARY SMOLLM2_GGUF
set -euo pipefail
cd "$(dirname "$0")/.."
keel="$1" model="$2" out=runs/smollm2-aligned
want="$(sha256sum models/smollm2-safety/adapter_model.safetensors | cut -d' ' -f1)"
if [ "$(cat "$out/made-from.sha256" 2>/dev/null)" != "$want" ]; then
  rm -rf "$out"
  "$keel" export --model "$model" --adapter models/smollm2-safety --format merged --out "$out" >&2
  echo "$want" >"$out/made-from.sha256"
fi
echo "$out"
