#!/usr/bin/env python3
"""Medians and keel/PEFT ratios from benchmarks/compare.sh's JSON lines, as
Markdown (docs/performance.md). usage: summarise.py RESULTS.jsonl KEEL_CMD PEFT_CMD"""
import json
import platform
import statistics
import subprocess
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in rows:
    key = (r["base_dtype"] in ("bf16",), r["activation_checkpointing"])
    groups.setdefault(key, {}).setdefault(r["tool"], []).append(r)


def med(rs, k):
    return statistics.median(r[k] for r in rs)


cpu = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if l.startswith("Model name")), platform.processor())
print("# Performance: keel vs HF PEFT, training\n")
print("Written by `benchmarks/compare.sh` from its own runs; do not edit by hand.\n")
keel_rows = [r for r in rows if r["tool"] == "keel"]
kernels = ", ".join(sorted({f"keel-gemm tier {r.get('cpu_tier', '?')}, bf16 product {r.get('bf16_product', '?')}"
                            for r in keel_rows}))
print(f"Machine: {cpu}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores ({kernels}). "
      "Workload: SmolLM2-135M-Instruct, LoRA r16 alpha 32 on q,k,v,o,gate,up,down, AdamW, "
      f"random tokens, seq {rows[0]['seq']} x batch {rows[0]['batch']}; medians over "
      f"{len(rows) // (2 * max(1, len(groups)))} alternating rounds of {rows[0]['timed_steps']} timed steps.\n")
print("| configuration | keel tokens/s | PEFT tokens/s | keel / PEFT | keel peak RSS | PEFT peak RSS | RSS ratio |")
print("|---|---|---|---|---|---|---|")
for (bf16, ckpt), tools in sorted(groups.items()):
    if "keel" not in tools or "peft" not in tools:
        continue
    k, p = tools["keel"], tools["peft"]
    name = ("bf16 base" if bf16 else "fp32") + (", activation checkpointing" if ckpt else "")
    kt, pt = med(k, "tokens_per_s"), med(p, "tokens_per_s")
    kr, pr = med(k, "peak_rss_bytes"), med(p, "peak_rss_bytes")
    print(f"| {name} | {kt:.1f} | {pt:.1f} | {kt / pt:.2f}x | {kr / 2**30:.2f} GiB | {pr / 2**30:.2f} GiB | {kr / pr:.2f} |")
print("\nCommands:\n")
print(f"    {sys.argv[2]}\n    {sys.argv[3]}")
