"""The llama.cpp judge for GGUF LoRA adapters and merged GGUF models keel
exports: llama.cpp (through llama-cpp-python, which builds it from source)
applies the adapter to the f32 base GGUF, or loads the merged model, and its
logits and greedy tokens must equal keel's adapted model's; the adapter must
visibly move llama.cpp's logits away from the base's.

usage: python3 scripts/check_gguf_lora.py BASE.gguf LORA.gguf KEEL.json [--tolerance 1e-3]
       python3 scripts/check_gguf_lora.py BASE.gguf MERGED.gguf KEEL.json --merged
       python3 scripts/check_gguf_lora.py BASE.gguf MERGED.gguf KEEL.json --merged --quantized
                                          [--greedy-tokens N] [--tolerance T] [--f32-tolerance T32]
       python3 scripts/check_gguf_lora.py QUANTIZED.gguf LORA.gguf KEEL.json --delta --tolerance T
                                          [--f32-tolerance T32]
KEEL.json: {"prompts": [[ids]], "logits": [[[vocab] per position]], "greedy": {"prompt": [ids], "tokens": [ids]}}
With --delta the base is quantized, so llama.cpp's logits differ from keel's f32 ones by its own
rounding of activations: what the adapter changes (llama.cpp with it minus without it) is compared
with what it changes in keel (KEEL.json's "logits" minus its "base_logits"), and the tolerance is a
fraction of the largest change keel sees; no greedy check. With --f32-tolerance the same is done
on an f32 copy of the quantized base (dequantized by the gguf package, written beside LORA.gguf and
removed after): llama.cpp then computes in f32 as keel does, so the effects must agree closely.
With --merged --quantized the merged model is itself quantized (Q8_0, Q4_K_M) and KEEL.json holds
keel's logits on its dequantized weights: llama.cpp, which also rounds activations to 8 bits for its
products, must give the same greedy answer (its first --greedy-tokens tokens), with logits within the
tolerance; the argmax at every prompt position is reported, not required. With --f32-tolerance,
llama.cpp on an f32 copy of the merged file (computing in f32 as keel does) must give the whole
greedy answer and logits within that tolerance.
"""
import argparse
import json
from pathlib import Path

import numpy as np
from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("base")
ap.add_argument("lora")
ap.add_argument("keel_json")
ap.add_argument("--tolerance", type=float, default=1e-3)
ap.add_argument("--merged", action="store_true", help="the second file is a merged model, not a LoRA")
ap.add_argument("--quantized", action="store_true", help="with --merged: the merged model is quantized")
ap.add_argument("--greedy-tokens", type=int,
                help="with --quantized: how many of keel's greedy tokens llama.cpp must give (default all)")
ap.add_argument("--delta", action="store_true", help="compare the adapter's effect, not the logits")
ap.add_argument("--f32-tolerance", type=float,
                help="with --delta or --quantized: also on an f32 copy of the quantized file")
args = ap.parse_args()
if args.quantized and not args.merged:
    ap.error("--quantized describes a merged model: give --merged too")
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


def delta_check(base_path: str, tolerance: float, what: str) -> bool:
    """llama.cpp's effect of the adapter on `base_path` against keel's."""
    adapted, base = load(args.lora, base_path), load(None, base_path)
    worst, moved = 0.0, 0.0
    for ids, want, want_base in zip(ref["prompts"], ref["logits"], ref["base_logits"]):
        want = np.array(want, dtype=np.float32) - np.array(want_base, dtype=np.float32)
        got = logits(adapted, ids) - logits(base, ids)
        worst = max(worst, float(np.abs(got - want).max()))
        moved = max(moved, float(np.abs(want).max()))
    print(f"llama.cpp with the GGUF LoRA on {what}: the adapter's effect differs from keel's by "
          f"{worst:.3g} at most, {worst / moved:.1%} of the {moved:.2f} it moves keel's logits by "
          f"(tolerance {tolerance:.0%})")
    return moved > 0 and worst <= tolerance * moved


def f32_copy(src: str, dst: Path):
    """The GGUF at `src` with every tensor dequantized to f32, metadata kept."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize

    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(str(dst), arch)
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "general.file_type":
            w.add_uint32(key, 0)  # all F32
        elif field.types[0] == GGUFValueType.ARRAY:
            w.add_key_value(key, field.contents(), field.types[0], sub_type=field.types[-1])
        else:
            w.add_key_value(key, field.contents(), field.types[0])
    for t in r.tensors:
        shape = [int(d) for d in reversed(t.shape)]
        w.add_tensor(t.name, dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if args.delta:
    ok = delta_check(args.base, args.tolerance, "the quantized base")
    if args.f32_tolerance is not None:
        copy = Path(args.lora).with_name("base-f32.gguf")
        f32_copy(args.base, copy)
        try:
            ok &= delta_check(str(copy), args.f32_tolerance, "an f32 copy of the quantized base")
        finally:
            copy.unlink()
    raise SystemExit(0 if ok else 1)


def answer_check(adapted, tolerance: float, greedy_tokens: int, what: str) -> bool:
    """llama.cpp's logits and greedy answer from `adapted` against keel's: within `tolerance`, and
    the first `greedy_tokens` greedy tokens equal."""
    # How far the adapter moves llama.cpp's logits: checked where the base is the same precision.
    base = None if args.quantized else load(None)
    worst, moved, positions, agree = 0.0, 0.0, 0, 0
    for ids, want in zip(ref["prompts"], ref["logits"]):
        got = logits(adapted, ids)
        want = np.array(want, dtype=np.float32)
        worst = max(worst, float(np.abs(got - want).max()))
        if base is not None:
            moved = max(moved, float(np.abs(logits(base, ids) - got).max()))
        positions += len(ids)
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        if not args.quantized:
            assert (got.argmax(-1) == want.argmax(-1)).all(), "argmax differs from keel"

    g = ref["greedy"]
    adapted.reset()
    adapted.eval(g["prompt"])
    tokens = []
    for _ in range(len(g["tokens"])):
        t = int(np.argmax(adapted.scores[adapted.n_tokens - 1]))
        tokens.append(t)
        adapted.eval([t])
    same = next((i for i, (a, b) in enumerate(zip(tokens, g["tokens"])) if a != b), len(tokens))

    ok = worst <= tolerance and same >= greedy_tokens
    if not args.quantized:
        ok &= moved > 10 * tolerance
    moves = "" if base is None else f", adapter moves logits by {moved:.2f}"
    print(f"llama.cpp with {what}: max |diff| {worst:.2e} (tolerance {tolerance}){moves}, "
          f"argmax equal at {agree}/{positions} positions, greedy equal for {same} of {len(tokens)} tokens "
          f"({greedy_tokens} required; llama.cpp {tokens}, keel {g['tokens']})")
    return ok


everything = len(ref["greedy"]["tokens"])
if args.quantized:
    ok = answer_check(load(None, args.lora), args.tolerance, args.greedy_tokens or everything,
                      "the quantized merged GGUF")
    if args.f32_tolerance is not None:
        copy = Path(args.lora).with_name("merged-f32.gguf")
        f32_copy(args.lora, copy)
        try:
            ok &= answer_check(load(None, str(copy)), args.f32_tolerance, everything,
                               "an f32 copy of the quantized merged GGUF")
        finally:
            copy.unlink()
else:
    what = "the merged GGUF" if args.merged else "the GGUF LoRA"
    ok = answer_check(load(None, args.lora) if args.merged else load(args.lora), args.tolerance, everything, what)
raise SystemExit(0 if ok else 1)
