#!/usr/bin/env bash
# What keel's default alignment preservation costs (issue 23's target: at most 1.3x plain LoRA's
# time): recipes/smollm2-pubmedqa.toml on the SmolLM2 testbed's aligned base for STEPS optimizer
# steps (default 16), plain (`alignment.preset=off`) and with keel's default (no method named, the
# safety adapter as reference: KL anchors on keel's safety set + Safe LoRA on the least similar
# 20%), alternating ROUNDS times (default 2) on this machine. Writes docs/performance-alignment.md.
#
#   benchmarks/alignment_cost.sh [ROUNDS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-2}" steps="${2:-16}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
cargo build --quiet --bin keel
keel="$CARGO_TARGET_DIR/debug/keel"
smol="$(python3 scripts/fetch_model.py smollm2 | tail -n 1)"
scripts/aligned_base.sh "$keel" "$smol" >/dev/null
out=runs/bench-alignment
mkdir -p "$out" && : >"$out/runs.jsonl"
for round in $(seq "$rounds"); do
  for preset in off default; do
    echo "round $round: $preset" >&2
    set=(--set "output.dir=$PWD/$out/$preset" --set "optim.steps=$steps" --set "output.save_every=$steps"
         --set "eval.every=$((steps + 1))" --set "alignment.reference=$PWD/models/smollm2-safety")
    [ "$preset" = off ] && set+=(--set alignment.preset=off)
    "$keel" train recipes/smollm2-pubmedqa.toml --overwrite "${set[@]}" >/dev/null
    python3 - "$out/$preset" "$preset" "$round" >>"$out/runs.jsonl" <<'PY'
import json, sys
d, preset, rnd = sys.argv[1:]
rows = [json.loads(l) for l in open(f"{d}/metrics.jsonl") if '"loss"' in l]
report = json.load(open(f"{d}/report.json"))
# The first step pays for one-time work (allocation, the anchors' first batch): left out.
print(json.dumps({"preset": preset, "round": int(rnd), "steps": len(rows) - 1,
                  "step_s": sum(r["step_s"] for r in rows[1:]) / (len(rows) - 1),
                  "wall_s": report["wall_s"], "peak_rss_bytes": report["peak_rss_bytes"],
                  "alignment": report["alignment"]}))
PY
  done
done
python3 - "$out/runs.jsonl" >docs/performance-alignment.md <<'PY'
import json, os, platform, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
by = {p: [r for r in runs if r["preset"] == p] for p in ("off", "default")}
med = lambda p, k: statistics.median(r[k] for r in by[p])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print("# What keel's default alignment preservation costs\n")
print("Written by `benchmarks/alignment_cost.sh`; do not edit by hand.\n")
print(f"Machine: {cpu}, {os.cpu_count()} cores, flex (CPU). Workload: `recipes/smollm2-pubmedqa.toml` "
      f"(PubMedQA, LoRA r16 on all projections, batch 4, max length 512) on the SmolLM2 testbed's aligned "
      f"base, {by['off'][0]['steps'] + 1} steps, {len(by['off'])} alternating rounds; medians. "
      "Step time leaves out the first step; wall time is the whole run (loading, tokenizing, "
      "the final evaluation and Safe LoRA included).\n")
print("| run | alignment (the run report's) | step time | wall time | peak RSS |")
print("|---|---|---|---|---|")
for p in ("off", "default"):
    print(f"| {p} | {by[p][0]['alignment']} | {med(p, 'step_s'):.2f} s | {med(p, 'wall_s'):.0f} s | "
          f"{med(p, 'peak_rss_bytes') / 2**30:.2f} GiB |")
print(f"\nDefault / plain: **{med('default', 'step_s') / med('off', 'step_s'):.2f}x** step time, "
      f"{med('default', 'wall_s') / med('off', 'wall_s'):.2f}x wall time (target: at most 1.3x).")
PY
cat docs/performance-alignment.md
