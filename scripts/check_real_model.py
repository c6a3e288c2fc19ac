"""Judges keel on a real quantized GGUF by the two references a user would reach for:

- llama.cpp (llama-cpp-python) on the same GGUF: the same prompt ids, the same next token, and
  last-position logits within --llama-tolerance. llama.cpp multiplies quantized weights by
  activations it quantizes to 8 bits itself, so it is not bit-close to an f32 computation: the
  tolerance is a stated measurement, and the argmax must agree.
- transformers on the HF folder `keel convert` wrote: the same chat prompt and ids from its own
  tokenizer and template, last-position logits within --hf-tolerance (f32 on both sides, the
  same dequantized weights), and the same greedy answer.
- transformers on the GGUF itself (its own dequantization, tokenizer and model code, in f32):
  the same ids and last-position logits within --hf-tolerance. It shares nothing with keel, so it
  tells keel's error from llama.cpp's 8-bit rounding.

usage: python3 scripts/check_real_model.py MODEL.gguf HF_DIR KEEL.json [--llama-tolerance T] [--hf-tolerance T]
KEEL.json: {"messages": [...], "chat_prompt": str,
            "prompts": [{"text": str, "add_special": bool, "ids": [..], "last_logits": [..]}],
            "answer_ids": [..], "answer_text": str}; prompts[0] is the one answered (the chat prompt, or a
            text completed after BOS); add_special says whether the tokenizer adds its special tokens.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
from llama_cpp import Llama
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("gguf")
ap.add_argument("hf_dir")
ap.add_argument("keel_json")
ap.add_argument("--llama-tolerance", type=float, required=True)
ap.add_argument("--hf-tolerance", type=float, default=1e-3)
args = ap.parse_args()
keel = json.load(open(args.keel_json))
torch.set_num_threads(2)
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


# llama.cpp on the GGUF. f32 KV cache (type 0): the default f16 cache adds its own noise.
llm = Llama(model_path=args.gguf, n_ctx=512, type_k=0, type_v=0, logits_all=True, verbose=False,
            n_threads=2, seed=0)
llama_worst = 0.0
for p in keel["prompts"]:
    ids = llm.tokenize(p["text"].encode(), add_bos=p["add_special"], special=True)
    check(ids == p["ids"], f"llama.cpp tokenizes {p['text']!r} as {ids}, keel as {p['ids']}")
    llm.reset()
    llm.eval(p["ids"])
    got = np.array(llm.scores[len(p["ids"]) - 1], dtype=np.float32)
    want = np.array(p["last_logits"], dtype=np.float32)
    diff = float(np.abs(got - want).max())
    llama_worst = max(llama_worst, diff)
    check(diff <= args.llama_tolerance, f"llama.cpp last logits of {p['text'][:30]!r} differ by {diff}")
    check(int(got.argmax()) == int(want.argmax()),
          f"llama.cpp's next token {int(got.argmax())} differs from keel's {int(want.argmax())}")

def transformers_worst(tok, model, what: str) -> float:
    """The same ids from transformers' tokenizer, and its largest last-logit distance from keel's."""
    worst = 0.0
    for p in keel["prompts"]:
        ids = tok(p["text"], add_special_tokens=p["add_special"])["input_ids"]
        check(ids == p["ids"], f"{what} tokenizes {p['text'][:30]!r} as {ids}, keel as {p['ids']}")
        with torch.no_grad():
            got = model(torch.tensor([p["ids"]])).logits[0, -1].numpy()
        diff = float(np.abs(got - np.array(p["last_logits"], dtype=np.float32)).max())
        worst = max(worst, diff)
        check(diff <= args.hf_tolerance, f"{what}: last logits of {p['text'][:30]!r} differ by {diff}")
    return worst


# transformers on the converted folder.
tok = AutoTokenizer.from_pretrained(args.hf_dir)
model = AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=torch.float32).eval()
prompt = tok.apply_chat_template(keel["messages"], tokenize=False, add_generation_prompt=True)
check(prompt == keel["chat_prompt"], f"transformers renders the chat prompt as {prompt!r}")
hf_worst = transformers_worst(tok, model, "transformers")
ids = keel["prompts"][0]["ids"]
with torch.no_grad():
    out = model.generate(torch.tensor([ids]), max_new_tokens=len(keel["answer_ids"]), do_sample=False)
answer = out[0, len(ids):].tolist()
check(answer == keel["answer_ids"], f"transformers answers {tok.decode(answer)!r}, keel {keel['answer_text']!r}")
del model

# transformers on the GGUF.
gguf = Path(args.gguf)
tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
gguf_worst = transformers_worst(tok, model, "transformers (GGUF)")

print(f"llama.cpp: last logits max |diff| {llama_worst:.3g} (tolerance {args.llama_tolerance}); "
      f"transformers on the converted folder: {hf_worst:.3g} (tolerance {args.hf_tolerance}), "
      f"greedy answer equal: {answer == keel['answer_ids']}; transformers on the GGUF: {gguf_worst:.3g}")
for f in failures:
    print("FAIL:", f)
raise SystemExit(1 if failures else 0)
