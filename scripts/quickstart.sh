#!/usr/bin/env bash
# keel's main job on a fresh machine, on the CPU: fetch SmolLM2-135M-Instruct,
# make the safety-aligned base from the committed safety adapter, adapt it to
# PubMedQA with a short LoRA run (recipes/quickstart.toml), and write the
# alignment drift report of that adapter (runs/quickstart/drift/report.html).
set -euo pipefail
cd "$(dirname "$0")/.."
model="$(scripts/fetch_smollm2.sh | tail -n 1)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
cargo build --quiet --bin keel
keel="$CARGO_TARGET_DIR/debug/keel"

scripts/aligned_base.sh "$keel" "$model" >/dev/null
"$keel" train recipes/quickstart.toml --overwrite
# Exit codes 3 and 4 are the drift gate's verdict (a regression; too few prompts to tell), not
# failures of this script.
status=0
# --limit keeps it quick (40 prompts a set); drop it for the full suite.
"$keel" drift --base runs/smollm2-aligned --adapter runs/quickstart/adapter \
  --reference models/smollm2-safety --limit 40 --out runs/quickstart/drift || status=$?
case "$status" in 0) gate=pass ;; 3) gate=regression ;; 4) gate=inconclusive ;; *) exit "$status" ;; esac
echo "drift report: runs/quickstart/drift/report.html (gate: $gate)"
