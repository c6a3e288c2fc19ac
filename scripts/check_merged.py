"""Loads an HF folder written by `keel export --format merged` with
transformers, as a user would, and compares its logits with the reference
in LOGITS_JSON (the adapter's own logits, `{"prompts": [...], "logits": [...]}`).

usage: python3 scripts/check_merged.py DIR LOGITS_JSON [--tolerance 3e-4]
"""
import argparse
import json

import torch
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)
ap = argparse.ArgumentParser()
ap.add_argument("folder")
ap.add_argument("logits_json")
ap.add_argument("--tolerance", type=float, default=3e-4)
args = ap.parse_args()

ref = json.load(open(args.logits_json))
model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32, attn_implementation="eager").eval()
worst = 0.0
for ids, want in zip(ref["prompts"], ref["logits"]):
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0]
    want = torch.tensor(want)
    worst = max(worst, (got - want).abs().max().item())
    assert torch.equal(got.argmax(-1), want.argmax(-1)), "argmax differs"
print(f"transformers loads the merged folder: max |diff| {worst:.2e} (tolerance {args.tolerance})")
raise SystemExit(0 if worst <= args.tolerance else 1)
