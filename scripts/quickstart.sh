#!/usr/bin/env bash
# keel's main job on a fresh machine: fetch SmolLM2-135M-Instruct and ask it
# a question through the chat template, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
model="$(scripts/fetch_smollm2.sh | tail -n 1)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
cargo run --quiet -- inspect "$model" | head -n 12
cargo run --quiet -- generate --model "$model" --chat \
  --prompt "${1:-What is the capital of France?}" --max-new-tokens 64
