#!/usr/bin/env bash
# keel against HF PEFT on the same training workload, side by side on this
# machine: `keel bench train` and benchmarks/peft_reference.py, run
# alternately ROUNDS times (default 3) per configuration, then the medians and
# ratios are written to docs/performance.md (with the machine and commands).
#
#   benchmarks/compare.sh [ROUNDS]
#
# Python deps: python3 -m pip install -r scripts/requirements-ref.txt
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
gguf="$(scripts/fetch_smollm2.sh | tail -n 1)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
cargo build --quiet --bin keel
keel="$CARGO_TARGET_DIR/debug/keel"
hf=runs/smollm2-hf
[ -f "$hf/model.safetensors" ] || "$keel" convert "$gguf" --out "$hf"

out=runs/bench/results.jsonl
mkdir -p runs/bench && : > "$out"
keel_cmd() { echo "$keel bench train --model $gguf --base-dtype $1 $2"; }
peft_cmd() { echo "python3 benchmarks/peft_reference.py --model $hf --dtype $1 $2"; }
for round in $(seq "$rounds"); do
  for cfg in "f32|fp32|" "bf16|bf16|" "f32|fp32|--gradient-checkpointing"; do
    IFS='|' read -r kd pd gc <<<"$cfg"
    kgc=""; [ -n "$gc" ] && kgc="--activation-checkpointing"
    echo "round $round: keel $kd $kgc / peft $pd $gc" >&2
    $(keel_cmd "$kd" "$kgc") | tail -n 1 >>"$out"
    $(peft_cmd "$pd" "$gc") | tail -n 1 >>"$out"
  done
done
python3 benchmarks/summarise.py "$out" "$(keel_cmd '<dtype>' '[--activation-checkpointing]')" \
  "$(peft_cmd '<dtype>' '[--gradient-checkpointing]')" > docs/performance.md
cat docs/performance.md
