"""The llama.cpp judge for GGUF LoRA adapters and merged GGUF models keel
exports: llama.cpp (through llama-cpp-python, which builds it from source)
applies the adapter to the f32 base GGUF, or loads the merged model, and its
logits and greedy tokens must equal keel's adapted model's; the adapter must
visibly move llama.cpp's logits away from the base's.

usage: python3 scripts/check_gguf_lora.py BASE.gguf LORA.gguf KEEL.json [--tolerance 1e-3]
       python3 scripts/check_gguf_lora.py BASE.gguf MERGED.gguf KEEL.json --merged
       python3 scripts/check_gguf_lora.py QUANTIZED.gguf LORA.gguf KEEL.json --delta --tolerance T
KEEL.json: {"prompts": [[ids]], "logits": [[[vocab] per position]], "greedy": {"prompt": [ids], "tokens": [ids]}}
With --delta the base is quantized, so llama.cpp's logits differ from keel's f32 ones by its own
rounding of activations: what the adapter changes (llama.cpp with it minus without it) is compared
with what it changes in keel (KEEL.json's "logits" minus its "base_logits"), and the tolerance is a
fraction of the largest change keel sees; no greedy check.
"""
import argparse
import json

import numpy as np
from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("base")
ap.add_argument("lora")
ap.add_argument("keel_json")
ap.add_argument("--tolerance", type=float, default=1e-3)
ap.add_argument("--merged", action="store_true", help="the second file is a merged model, not a LoRA")
ap.add_argument("--delta", action="store_true", help="compare the adapter's effect, not the logits")
args = ap.parse_args()
ref = json.load(open(args.keel_json))


def load(lora, model=args.base):
    # f32 KV cache (type 0): the default f16 cache adds ~1e-2 of noise.
    kw = dict(model_path=model, logits_all=True, n_ctx=256, type_k=0, type_v=0, verbose=False, n_threads=1, seed=0)
    if lora:
        kw["lora_path"] = lora
    return Llama(**kw)


def logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


adapted = load(None, args.lora) if args.merged else load(args.lora)
base = load(None)
if args.delta:
    worst, moved = 0.0, 0.0
    for ids, want, want_base in zip(ref["prompts"], ref["logits"], ref["base_logits"]):
        want = np.array(want, dtype=np.float32) - np.array(want_base, dtype=np.float32)
        got = logits(adapted, ids) - logits(base, ids)
        worst = max(worst, float(np.abs(got - want).max()))
        moved = max(moved, float(np.abs(want).max()))
    ok = moved > 0 and worst <= args.tolerance * moved
    print(f"llama.cpp with the GGUF LoRA on the quantized base: the adapter's effect differs from keel's by "
          f"{worst:.3g} at most, {worst / moved:.1%} of the {moved:.2f} it moves keel's logits by "
          f"(tolerance {args.tolerance:.0%})")
    raise SystemExit(0 if ok else 1)
worst, moved = 0.0, 0.0
for ids, want in zip(ref["prompts"], ref["logits"]):
    got = logits(adapted, ids)
    want = np.array(want, dtype=np.float32)
    worst = max(worst, float(np.abs(got - want).max()))
    moved = max(moved, float(np.abs(logits(base, ids) - got).max()))
    assert (got.argmax(-1) == want.argmax(-1)).all(), "argmax differs from keel"

g = ref["greedy"]
adapted.reset()
adapted.eval(g["prompt"])
tokens = []
for _ in range(len(g["tokens"])):
    t = int(np.argmax(adapted.scores[adapted.n_tokens - 1]))
    tokens.append(t)
    adapted.eval([t])

ok = worst <= args.tolerance and moved > 10 * args.tolerance and tokens == g["tokens"]
what = "the merged GGUF" if args.merged else "the GGUF LoRA"
print(f"llama.cpp with {what}: max |diff| {worst:.2e} (tolerance {args.tolerance}), adapter moves logits by {moved:.2f}, greedy equal: {tokens == g['tokens']} (llama.cpp {tokens}, keel {g['tokens']})")
raise SystemExit(0 if ok else 1)
