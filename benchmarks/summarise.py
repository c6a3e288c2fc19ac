#!/usr/bin/env python3
"""Medians and keel/PEFT ratios from benchmarks/compare.sh's JSON lines, as
Markdown (docs/performance.md). usage: summarise.py RESULTS.jsonl KEEL_CMD PEFT_CMD"""
import json
import pathlib
import platform
import re
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
# Both tools do the same arithmetic; keel counts it (Config::training_flop_per_token).
gflop = keel_rows[0]["model_gflop_per_token"]
print("| configuration | keel tokens/s | PEFT tokens/s | keel / PEFT | keel GFLOPS | PEFT GFLOPS "
      "| keel peak RSS | PEFT peak RSS | RSS ratio |")
print("|---|---|---|---|---|---|---|---|---|")
peft_fp32 = None
for (bf16, ckpt), tools in sorted(groups.items()):
    if "keel" not in tools or "peft" not in tools:
        continue
    k, p = tools["keel"], tools["peft"]
    name = ("bf16 base" if bf16 else "fp32") + (", activation checkpointing" if ckpt else "")
    kt, pt = med(k, "tokens_per_s"), med(p, "tokens_per_s")
    kr, pr = med(k, "peak_rss_bytes"), med(p, "peak_rss_bytes")
    if (bf16, ckpt) == (False, False):
        peft_fp32 = pt
    print(f"| {name} | {kt:.1f} | {pt:.1f} | {kt / pt:.2f}x | {kt * gflop:.0f} | {pt * gflop:.0f} "
          f"| {kr / 2**30:.2f} GiB | {pr / 2**30:.2f} GiB | {kr / pr:.2f} |")
print(f"\nGFLOPS are model FLOPs done per second: {gflop:.3f} GFLOP a token (forward and input gradient of every "
      "frozen product, attention over the keys each position sees, LoRA's products; recomputation excluded).")
# The fastest step this machine allows: each product of SmolLM2-135M at the
# f32 rate benchmarks/kernels.sh measured for its shape (first table: every
# table's gemm column is this CPU's best), attention at keel's kernel rate,
# all else free. Per token: (k, n) -> products of that shape, forward and
# input gradient (2 FLOPs a weight each); attention over 128.5 keys on
# average (seq 256), 9 heads of 64, 30 layers, 4 FLOPs a key and head
# dimension forward and 8 backward.
PER_TOKEN = {(576, 576): 2 * 30, (576, 192): 2 * 30, (576, 1536): 2 * 30, (1536, 576): 30, (576, 49152): 1}
kernels = pathlib.Path(__file__).resolve().parent.parent / "docs/performance-kernels.md"
text = kernels.read_text() if kernels.exists() else ""
rates = {}
for m in re.finditer(r"\d+ x (\d+) x (\d+) GFLOPS +([0-9.]+)", text):
    rates.setdefault((int(m.group(1)), int(m.group(2))), float(m.group(3)))
att = re.search(r"forward ([0-9.]+) GFLOPS, backward ([0-9.]+) GFLOPS", text)
if peft_fp32 and att and all(k in rates for k in PER_TOKEN) and rows[0]["seq"] == 256:
    s_per_token = sum(4 * k * n * c / (rates[(k, n)] * 1e9) for (k, n), c in PER_TOKEN.items())
    att_flop = 576 * 30 * 128.5
    s_per_token += 4 * att_flop / (float(att.group(1)) * 1e9) + 8 * att_flop / (float(att.group(2)) * 1e9)
    best = 1 / s_per_token
    print(f"The limit here: with each frozen product at the f32 rate `docs/performance-kernels.md` measured "
          f"for its shape ({min(rates.values()):.0f}-{max(rates.values()):.0f} GFLOPS), attention at keel's kernel rate "
          f"and everything else (LoRA's products, norms, softmax, optimizer) free, a step could reach "
          f"{best:.0f} tokens/s, {best / peft_fp32:.2f}x PEFT's fp32; keel's fp32 reaches "
          f"{med(groups[(False, False)]['keel'], 'tokens_per_s') / best:.0%} of it.")
print("\nCommands:\n")
print(f"    {sys.argv[2]}\n    {sys.argv[3]}")
