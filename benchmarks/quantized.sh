#!/usr/bin/env bash
# LoRA training on a frozen base kept in GGUF blocks (`--base-dtype gguf`,
# or quantized at load: q8_0, q4_k) against a dense base (f32, bf16), side
# by side on this machine, alternating ROUNDS times (default 2):
#   - speed: SmolLM2-135M Q4_1, the compare.sh workload (seq 256 x batch 4);
#   - memory: Qwen2.5-Coder-0.5B Q4_K_M and a Qwen2.5-1.5B-shaped Q4_K_M with
#     random weights (benchmarks/random_model.py, made once and cached), seq
#     512 x batch 1, activation checkpointing (issue 22's target: peak RSS
#     <= 1.3 x the GGUF + 1 GiB).
# Writes docs/performance-quantized.md.
#
#   benchmarks/quantized.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-2}"
smol="$(python3 scripts/fetch_model.py smollm2 | tail -n 1)"
qwen="$(python3 scripts/fetch_model.py qwen2.5-coder-0.5b | tail -n 1)"
big="${KEEL_CACHE:-$HOME/.cache/keel}/models/random-qwen2.5-1.5b-q4_k_m.gguf"
if [ ! -s "$big" ]; then
  python3 benchmarks/random_model.py "$big.partial" >/dev/null
  mv "$big.partial" "$big"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
cargo build --quiet --bin keel
keel="$CARGO_TARGET_DIR/debug/keel"
out=runs/bench/quantized.jsonl
mkdir -p runs/bench && : > "$out"
for round in $(seq "$rounds"); do
  for dtype in f32 bf16 gguf q8_0 q4_k; do
    echo "round $round: SmolLM2 $dtype" >&2
    "$keel" bench train --model "$smol" --base-dtype "$dtype" --work runs/bench-quantized | tail -n 1 >>"$out"
  done
  for model in "$qwen" "$big"; do
    for dtype in bf16 gguf; do
      echo "round $round: $(basename "$model") $dtype" >&2
      "$keel" bench train --model "$model" --base-dtype "$dtype" --seq 512 --batch 1 \
        --activation-checkpointing --warmup 1 --steps 3 --work runs/bench-quantized | tail -n 1 >>"$out"
    done
  done
done
python3 - "$out" "$keel" >docs/performance-quantized.md <<'PY'
import json, os, platform, statistics, subprocess, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if l.startswith("Model name")), platform.processor())
print("# Performance: LoRA on a base kept in GGUF blocks\n")
print("Written by `benchmarks/quantized.sh` from its own runs; do not edit by hand.\n")
print(f"Machine: {cpu}, {os.cpu_count()} cores (keel-gemm tier {rows[0].get('cpu_tier')}, bf16 product "
      f"{rows[0].get('bf16_product')}). LoRA r16 alpha 32 on q,k,v,o,gate,up,down, AdamW, random tokens; "
      "medians over alternating rounds. `gguf`: the projections, the embeddings and an untied head stay in "
      "the file's own blocks, read in place; `q8_0`, `q4_k`: the projections quantized at load as llama.cpp "
      "does (rows Q4_K's blocks do not fit take Q5_0), the embeddings beside them bf16. The "
      "`random-qwen2.5-1.5b` file is Qwen2.5-1.5B's shape with random weights in llama.cpp's Q4_K_M types "
      "(`benchmarks/random_model.py`).\n")
for model in sorted({r["model"] for r in rows}):
    rs = [r for r in rows if r["model"] == model]
    size = os.path.getsize(model)
    r0 = rs[0]
    print(f"## {os.path.basename(model)} ({size / 1e6:.0f} MB), seq {r0['seq']} x batch {r0['batch']}"
          f"{', activation checkpointing' if r0['activation_checkpointing'] else ''}\n")
    if r0["activation_checkpointing"]:
        print(f"Memory target of issue 22 for this run: 1.3 x the file + 1 GiB = {(1.3 * size + 2**30) / 1e9:.2f} GB.\n")
    print("| base_dtype | tokens/s (each round) | median | vs bf16 | peak RSS |")
    print("|---|---|---|---|---|")
    by = {}
    for r in rs:
        by.setdefault(r["base_dtype"], []).append(r)
    bf16 = statistics.median(r["tokens_per_s"] for r in by["bf16"])
    for dtype, group in by.items():
        tps = [r["tokens_per_s"] for r in group]
        rss = statistics.median(r["peak_rss_bytes"] for r in group)
        print(f"| {dtype} | {', '.join(f'{t:.1f}' for t in tps)} | {statistics.median(tps):.1f} "
              f"| {statistics.median(tps) / bf16:.2f}x | {rss / 1e9:.2f} GB |")
    print()
print(f"Command: `{sys.argv[2]} bench train --model <gguf> --base-dtype <f32|bf16|gguf|q8_0|q4_k> [--seq 512 --batch 1 --activation-checkpointing]`")
PY
cat docs/performance-quantized.md
