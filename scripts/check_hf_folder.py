"""Loads an HF folder written by `keel convert` with transformers, as a user
would, and checks it reproduces the SmolLM2 reference: same prompt ids from
its tokenizer and chat template, same last-position logits, same greedy answer.

usage: python3 scripts/check_hf_folder.py DIR tests/fixtures/smollm2/reference.json
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(1)
folder, reference_path = sys.argv[1], sys.argv[2]
ref = json.load(open(reference_path))
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

prompt = tok.apply_chat_template(ref["chat"]["messages"], tokenize=False, add_generation_prompt=True)
assert prompt == ref["chat"]["prompt"], f"chat template differs: {prompt!r}"
ids = tok(prompt, add_special_tokens=False)["input_ids"]
assert ids == ref["chat"]["prompt_ids"], f"prompt ids differ: {ids}"

with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0, -1]
from pathlib import Path
from safetensors.torch import load_file
expected = load_file(str(Path(reference_path).parent / "last_logits.safetensors"))["logits"]
diff = (logits - expected).abs().max().item()
assert diff < 1e-3, f"last logits differ by {diff}"

out = model.generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False)
answer = tok.decode(out[0, len(ids):], skip_special_tokens=True)
assert answer == ref["chat"]["greedy"]["answer_text"], f"answer {answer!r}"
print(f"transformers loads the folder: logits max diff {diff:.2e}, answer {answer!r}")
