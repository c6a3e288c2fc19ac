#!/usr/bin/env python3
"""Generate keel's reference fixtures from the real reference implementations.

Writes into tests/fixtures/ (relative to the repo root):

  tiny-llama/    tiny random LlamaForCausalLM, f32, untied, transformers-5 style config
  tiny-llama3/   tiny random Llama with llama3 rope scaling, tied embeddings, bf16 weights,
                 legacy (transformers-4 / Hub style) config: rope_theta + rope_scaling + torch_dtype
  tiny-qwen2/    tiny random Qwen2ForCausalLM (qkv bias), f16 weights, sharded safetensors,
                 legacy config with a sliding_window trap (use_sliding_window=false)
  tiny-mistral/  tiny random MistralForCausalLM, f32, sliding_window null
  gguf-quants/   quants.gguf + expected.safetensors + expected_metadata.json (+ manifest.json)
  smollm2/       reference.json, last_logits.safetensors, hf-tokenizer/  (needs the GGUF from
                 scripts/fetch_smollm2.sh)

Every tiny model's logits.json / greedy.json are computed by *reloading the saved folder* with
transformers (dtype=float32, attn_implementation="eager"), so they describe exactly the files on
disk. Deterministic: fixed seeds, single thread; re-running reproduces identical files.

Usage:
  python3 scripts/make_fixtures.py [--only tiny,quants,smollm2] [--smollm2-gguf PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "fixtures"
SMOLLM2_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

PROMPT_LENGTHS = (1, 7, 19)
GREEDY_PROMPT_INDEX = 1  # the 7-token prompt
GREEDY_NEW_TOKENS = 12
SIG_DIGITS = 7


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------

def log(*a):
    print(*a, file=sys.stderr, flush=True)


def rnd(x: float) -> float:
    """Round to SIG_DIGITS significant digits (keeps JSON small; f32 noise is ~1e-7 anyway)."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"non-finite value {x}")
    return float(f"{x:.{SIG_DIGITS}g}")


def rnd_list(a) -> list:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return rnd(a)
    return [rnd_list(v) for v in a] if a.ndim > 1 else [rnd(v) for v in a]


def dumps_compact(v) -> str:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def write_json(path: Path, obj: dict, row_keys: tuple[str, ...] = ()):
    """Top-level keys one per line. Values under `row_keys` (lists of lists of rows) are written
    one innermost row per line so diffs stay readable; everything else is compact or indented."""
    lines = ["{"]
    items = list(obj.items())
    for i, (k, v) in enumerate(items):
        comma = "," if i + 1 < len(items) else ""
        if k in row_keys and v and all(isinstance(r, dict) for r in v):
            # list of objects, one per line
            lines.append(f"{json.dumps(k)}: [\n " + ",\n ".join(dumps_compact(r) for r in v) + f"\n ]{comma}")
        elif k in row_keys and v and all(isinstance(r, list) and (not r or not isinstance(r[0], list)) for r in v):
            # v: list of flat rows, one per line
            lines.append(f"{json.dumps(k)}: [\n " + ",\n ".join(dumps_compact(r) for r in v) + f"\n ]{comma}")
        elif k in row_keys:
            # v: list (per prompt) of list (per position) of rows
            outer = []
            for per_prompt in v:
                rows = ",\n   ".join(dumps_compact(r) for r in per_prompt)
                outer.append("  [\n   " + rows + "\n  ]")
            lines.append(f"{json.dumps(k)}: [\n" + ",\n".join(outer) + f"\n ]{comma}")
        elif isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            # dict of small dicts: one entry per line
            body = ",\n ".join(f"{json.dumps(kk, ensure_ascii=False)}: {dumps_compact(vv)}" for kk, vv in v.items())
            lines.append(f"{json.dumps(k)}: {{\n {body}\n}}{comma}")
        elif isinstance(v, (dict, list)) and len(dumps_compact(v)) > 100:
            body = json.dumps(v, indent=1, ensure_ascii=False)
            lines.append(f"{json.dumps(k)}: {body}{comma}")
        else:
            lines.append(f"{json.dumps(k)}: {dumps_compact(v)}{comma}")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def folder_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# tiny models
# ----------------------------------------------------------------------------------------------

def init_weights(model, seed: int):
    """Large-variance deterministic init so logits are far from zero and mistakes show:
    norms ~ N(1, 0.1), every other parameter (embeddings, projections, biases, lm_head) ~ N(0, 0.5)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.5 * noise)


def make_prompts(vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=n).tolist() for n in PROMPT_LENGTHS]


def to_legacy_config(path: Path, extra: dict | None = None):
    """Rewrite a transformers-5 config.json into the transformers-4 / Hub style most real
    checkpoints still ship: top-level rope_theta (+ rope_scaling), torch_dtype instead of dtype."""
    cfg = json.loads(path.read_text())
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    if rp.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = rp
    else:
        cfg["rope_scaling"] = None
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    cfg.pop("layer_types", None)
    if extra:
        cfg.update(extra)
    path.write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")


TINY_SPECS = {
    "tiny-llama": dict(
        arch="llama", seed=1001, save_dtype="float32", legacy_config=False, shard=None,
        config=dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                    rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=128,
                    bos_token_id=1, eos_token_id=2),
    ),
    "tiny-llama3": dict(
        arch="llama", seed=1002, save_dtype="bfloat16", legacy_config=True, shard=None,
        config=dict(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0,
                    # original_max_position_embeddings=64 (not 32): with head_dim 16 and theta 5e5
                    # the rotary wavelengths are 6.3, 32.4, 167, ... so 64 puts one frequency in
                    # each llama3 branch (kept / smoothly interpolated / divided by factor).
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                    rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=256,
                    bos_token_id=1, eos_token_id=2),
    ),
    "tiny-qwen2": dict(
        arch="qwen2", seed=1003, save_dtype="float16", legacy_config=True, shard="100KB",
        # Trap seen in real Qwen2.5 configs: a sliding_window value with use_sliding_window=false.
        # transformers ignores the window; so must keel (the 19-token prompt would show it).
        legacy_extra=dict(use_sliding_window=False, sliding_window=4, max_window_layers=1),
        config=dict(vocab_size=288, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0,
                    rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=128,
                    use_sliding_window=False, bos_token_id=1, eos_token_id=2),
    ),
    "tiny-mistral": dict(
        arch="mistral", seed=1004, save_dtype="float32", legacy_config=False, shard=None,
        config=dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                    rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=128,
                    sliding_window=None, bos_token_id=1, eos_token_id=2),
    ),
}


def arch_classes(arch: str):
    import transformers as tf

    return {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
    }[arch]


def manual_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by full recomputation (no KV cache): cross-check for generate()."""
    import torch

    ids = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        ids.append(int(torch.argmax(logits)))
    return ids[len(prompt):]


def make_tiny(name: str, spec: dict, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    cfg_cls, model_cls = arch_classes(spec["arch"])
    d = out / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)

    torch.manual_seed(spec["seed"])
    config = cfg_cls(**spec["config"], attn_implementation="eager")
    model = model_cls(config).eval()
    init_weights(model, spec["seed"])
    save_dtype = getattr(torch, spec["save_dtype"])
    model = model.to(save_dtype)
    kw = dict(safe_serialization=True)
    if spec["shard"]:
        kw["max_shard_size"] = spec["shard"]
    model.save_pretrained(d, **kw)
    # No generation_config.json: greedy settings are given explicitly below.
    (d / "generation_config.json").unlink(missing_ok=True)
    if spec["legacy_config"]:
        to_legacy_config(d / "config.json", spec.get("legacy_extra"))
    del model

    # Reference: reload exactly what is on disk, upcast to f32, eager attention.
    ref = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    cfg = ref.config
    if spec["arch"] == "qwen2":
        assert cfg.sliding_window is None and all(t == "full_attention" for t in cfg.layer_types), \
            "qwen2 trap: transformers was expected to ignore sliding_window"
    prompts = make_prompts(cfg.vocab_size, spec["seed"] + 7)
    logits = []
    with torch.no_grad():
        for p in prompts:
            lg = ref(torch.tensor([p])).logits[0].float().numpy()
            logits.append(lg)
    # Consistency: the saved weights, in f32, match what the model sees.
    all_l = np.concatenate([l.reshape(-1) for l in logits])
    stats = dict(std=float(all_l.std()), mean=float(all_l.mean()), absmax=float(np.abs(all_l).max()))
    assert stats["std"] > 0.5, f"{name}: logits std {stats['std']} too small"
    # Prefix property: the 1-token prompt's logits do not depend on later tokens (causal mask);
    # spot check by re-running the first token of the 19-token prompt.
    with torch.no_grad():
        first = ref(torch.tensor([prompts[2][:1]])).logits[0, 0].numpy()
        full = ref(torch.tensor([prompts[2]])).logits[0, 0].numpy()
    assert np.allclose(first, full, atol=1e-4), f"{name}: causal prefix check failed"

    gp = prompts[GREEDY_PROMPT_INDEX]
    ref.generation_config.eos_token_id = None
    ref.generation_config.pad_token_id = 0
    with torch.no_grad():
        gen = ref.generate(torch.tensor([gp]), max_new_tokens=GREEDY_NEW_TOKENS,
                           min_new_tokens=GREEDY_NEW_TOKENS, do_sample=False, eos_token_id=None,
                           pad_token_id=0, attention_mask=torch.ones(1, len(gp), dtype=torch.long))
    new = gen[0, len(gp):].tolist()
    manual = manual_greedy(ref, gp, GREEDY_NEW_TOKENS)
    assert len(new) == GREEDY_NEW_TOKENS
    assert new == manual, f"{name}: generate() {new} != no-cache argmax loop {manual}"

    inv_freq = ref.model.rotary_emb.inv_freq.float().numpy()
    # smallest top1-top2 gap of any greedy step (how robust the greedy fixture is to noise)
    ids = list(gp)
    gaps = []
    with torch.no_grad():
        for t in new:
            l = ref(torch.tensor([ids])).logits[0, -1].numpy()
            s = np.sort(l)
            gaps.append(float(s[-1] - s[-2]))
            ids.append(t)

    for f in d.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    files = sorted(str(f.relative_to(d)) for f in d.rglob("*") if f.is_file())
    write_json(d / "logits.json", {
        "model": name,
        "architecture": type(ref).__name__,
        "weights_dtype": spec["save_dtype"],
        "compute_dtype": "float32",
        "attn_implementation": "eager",
        "config_style": "transformers4-legacy" if spec["legacy_config"] else "transformers5",
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "rope_inv_freq": rnd_list(inv_freq),
        "sig_digits": SIG_DIGITS,
        "logits_stats": {k: rnd(v) for k, v in stats.items()},
        "prompts": prompts,
        "logits": [rnd_list(l) for l in logits],
    }, row_keys=("prompts", "logits"))
    write_json(d / "greedy.json", {
        "model": name,
        "prompt": gp,
        "max_new_tokens": GREEDY_NEW_TOKENS,
        "new_tokens": new,
        "sequence": gp + new,
        "min_top2_gap": rnd(min(gaps)),
    })
    info = dict(files=files, size=folder_size(d), logits_std=stats["std"], greedy=new,
                min_gap=min(gaps), inv_freq=inv_freq.tolist())
    log(f"  {name}: {info['size']} bytes, logits std {stats['std']:.3f}, greedy {new}, "
        f"min top2 gap {min(gaps):.4f}")
    assert info["size"] < 2_000_000
    return info


# ----------------------------------------------------------------------------------------------
# GGUF quants
# ----------------------------------------------------------------------------------------------

QUANT_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"]
QUANT_ROWS, QUANT_COLS = 2, 512

# byte offsets of the f16 scale fields inside one block, for types built from random bytes
F16_SCALE_OFFSETS = {
    "Q4_K": (0, 2),      # d, dmin | scales[12] | qs[128]          (144 bytes)
    "Q5_K": (0, 2),      # d, dmin | scales[12] | qh[32] | qs[128] (176 bytes)
    "Q6_K": (208,),      # ql[128] | qh[64] | scales[16] (int8) | d (210 bytes)
}


def metadata_spec():
    """(key, kind, value) in writing order; kinds name the GGUF value type."""
    return [
        ("keel.test.u8", "u8", 255),
        ("keel.test.i8", "i8", -128),
        ("keel.test.u16", "u16", 65535),
        ("keel.test.i16", "i16", -32768),
        ("keel.test.u32", "u32", 4294967295),
        ("keel.test.i32", "i32", -2147483648),
        ("keel.test.u64", "u64", 18446744073709551615),
        ("keel.test.i64", "i64", -9223372036854775808),
        ("keel.test.f32", "f32", float(np.float32(3.1415927))),
        ("keel.test.f64", "f64", 2.718281828459045),
        ("keel.test.bool_true", "bool", True),
        ("keel.test.bool_false", "bool", False),
        ("keel.test.string", "string", "héllo wörld ✓ 日本語 🦀"),
        ("keel.test.array_string", "array[string]", ["alpha", "", "γάμμα", "<|im_end|>", "a b\nc"]),
        ("keel.test.array_i32", "array[i32]", [0, -1, 2147483647, -2147483648, 42]),
        ("keel.test.array_f32", "array[f32]", [0.0, -1.5, 0.25, float(np.float32(1e-3))]),
        ("keel.test.array_u8", "array[u8]", [0, 1, 127, 255]),
    ]


def make_quants(out: Path) -> dict:
    import gguf
    from gguf import GGMLQuantizationType as Q, GGUFValueType as V
    from safetensors.numpy import save_file

    d = out / "gguf-quants"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)

    rng = np.random.default_rng(2024)
    raws, expected, manifest = {}, {}, {}
    for tname in QUANT_TYPES:
        qt = Q[tname]
        block, tsize = gguf.GGML_QUANT_SIZES[qt]
        assert QUANT_COLS % block == 0
        data = rng.standard_normal((QUANT_ROWS, QUANT_COLS)).astype(np.float32)
        try:
            raw = gguf.quants.quantize(data, qt)
            how = "gguf.quants.quantize(standard normal f32)"
        except NotImplementedError:
            nblocks = QUANT_ROWS * QUANT_COLS // block
            blocks = rng.integers(0, 256, size=(nblocks, tsize), dtype=np.uint8)
            for off in F16_SCALE_OFFSETS[tname]:
                scale = rng.uniform(0.001, 0.1, size=nblocks).astype(np.float16)
                blocks[:, off:off + 2] = scale.view(np.uint8).reshape(nblocks, 2)
            raw = blocks.reshape(QUANT_ROWS, -1)
            how = "random block bytes; f16 d/dmin fields set to uniform(0.001, 0.1)"
        raw_u8 = np.ascontiguousarray(raw).view(np.uint8).reshape(QUANT_ROWS, -1)
        assert raw_u8.shape[1] == QUANT_COLS // block * tsize
        deq = gguf.quants.dequantize(raw_u8, qt).astype(np.float32)
        assert deq.shape == (QUANT_ROWS, QUANT_COLS), deq.shape
        assert np.all(np.isfinite(deq)), tname
        name = tname.lower()
        raws[name] = (raw_u8, qt)
        expected[name] = np.ascontiguousarray(deq)
        manifest[name] = dict(ggml_type=tname, ggml_type_id=int(qt), block_size=block,
                              type_size=tsize, shape=[QUANT_ROWS, QUANT_COLS],
                              gguf_ne=[QUANT_COLS, QUANT_ROWS], nbytes=int(raw_u8.nbytes), source=how,
                              deq_absmax=rnd(np.abs(deq).max()), deq_std=rnd(deq.std()))

    path = d / "quants.gguf"
    w = gguf.GGUFWriter(str(path), arch="keeltest")
    kinds = {"u8": V.UINT8, "i8": V.INT8, "u16": V.UINT16, "i16": V.INT16, "u32": V.UINT32,
             "i32": V.INT32, "u64": V.UINT64, "i64": V.INT64, "f32": V.FLOAT32, "f64": V.FLOAT64,
             "bool": V.BOOL, "string": V.STRING}
    w.add_name("keel gguf quant fixtures")
    for key, kind, val in metadata_spec():
        if kind.startswith("array["):
            w.add_key_value(key, val, V.ARRAY, sub_type=kinds[kind[6:-1]])
        else:
            w.add_key_value(key, val, kinds[kind])
    for name, (raw_u8, qt) in raws.items():
        # raw_shape is the byte shape of the uint8 array; the writer turns it into the element
        # shape (rows, cols) and stores it ggml-style as ne = [cols, rows].
        w.add_tensor(name, raw_u8, raw_shape=raw_u8.shape, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    save_file(expected, str(d / "expected.safetensors"), metadata={"source": "gguf.quants.dequantize"})
    (d / "expected.safetensors").chmod(0o644)

    # Read back with the gguf package's reader and check everything round-trips.
    r = gguf.GGUFReader(str(path))
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        t = f.types
        if t[0] == V.ARRAY:
            kind = f"array[{_kind_name(t[-1])}]"
        else:
            kind = _kind_name(t[0])
        meta[k] = {"type": kind, "value": _py(f.contents())}
    for key, kind, val in metadata_spec():
        got = meta[key]
        assert got["type"] == kind, (key, got, kind)
        assert got["value"] == val, (key, got["value"], val)
    tensors = {}
    for t in r.tensors:
        raw_u8, qt = raws[t.name]
        assert t.tensor_type == qt
        assert list(int(x) for x in t.shape) == [QUANT_COLS, QUANT_ROWS], (t.name, t.shape)
        assert bytes(np.asarray(t.data).view(np.uint8).tobytes()) == raw_u8.tobytes(), t.name
        manifest[t.name]["file_offset"] = int(t.data_offset)  # absolute, in bytes
        manifest[t.name]["offset_in_data_section"] = int(t.data_offset) - int(r.data_offset)
        tensors[t.name] = t
    assert set(tensors) == set(raws)

    write_json(d / "expected_metadata.json", {
        "note": "every KV pair in quants.gguf as read back by gguf.GGUFReader (GGUF.* header fields "
                "excluded); f32 values are the exact f32 widened to f64; u64/i64 are exact integers",
        "gguf_version": int(r.fields["GGUF.version"].contents()),
        "tensor_count": len(r.tensors),
        "alignment": 32,
        "metadata": meta,
    })
    write_json(d / "manifest.json", {
        "note": "expected.safetensors holds gguf.quants.dequantize(raw) as f32 [rows, cols] under the "
                "same name as the GGUF tensor",
        "tensors": manifest,
    })
    size = folder_size(d)
    log(f"  gguf-quants: {size} bytes")
    assert size < 200_000
    return dict(size=size, manifest=manifest, files=sorted(p.name for p in d.iterdir()))


def _kind_name(vt) -> str:
    from gguf import GGUFValueType as V

    return {V.UINT8: "u8", V.INT8: "i8", V.UINT16: "u16", V.INT16: "i16", V.UINT32: "u32",
            V.INT32: "i32", V.UINT64: "u64", V.INT64: "i64", V.FLOAT32: "f32", V.FLOAT64: "f64",
            V.BOOL: "bool", V.STRING: "string"}[vt]


def _py(v):
    if isinstance(v, (list, tuple)):
        return [_py(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


# ----------------------------------------------------------------------------------------------
# SmolLM2 (transformers reading the GGUF)
# ----------------------------------------------------------------------------------------------

TOKENIZER_CASES = [
    "Hello world",
    "Hello, world! How are you?",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "   three leading spaces",
    "trailing space ",
    "multiple   spaces    between",
    "line one\nline two\n\nline four",
    "tabs\tand\ttabs\t\tdouble",
    "\n\n\nleading newlines",
    "mixed \t\n whitespace \r\n crlf",
    "12345 3.14",
    "Phone: +1 (555) 123-4567, year 2024, 1,000,000.50",
    "I'm sure it's fine, we'll see; they've gone, you'd know, she's here.",
    "DON'T SHOUT. It'S oK",
    "café naïve résumé façade Ångström",
    "日本語のテキストです。中文测试。한국어",
    "emoji: 🦀🚀😀👍🏽 👨‍👩‍👧",
    "Привет, мир! Ελληνικά",
    "def f(x):\n    return x ** 2  # square\n",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "<html><body class=\"x\">&amp;</body></html>",
    "https://example.com/path?query=1&b=2#frag",
    "a",
    "",
    "!!!???...,,,",
    "a  1",
    "year  2024 and x\n\n1",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
    "<repo_name>keel<file_sep>src/main.rs",
    "not special: <|im_start and im_end|>",
    "\u00a0non-breaking\u2009thin\u200bzero-width",
]

CHAT_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
MULTI_TURN = [
    {"role": "system", "content": "You are a terse assistant. Answer in one word."},
    {"role": "user", "content": "Name a primary color."},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "Another one?"},
]
EXPECTED_ANSWER = "The capital of France is Paris."


def find_smollm2(arg: str | None) -> Path | None:
    if arg:
        p = Path(arg)
        return p if p.is_file() else None
    cache = Path(os.environ.get("KEEL_CACHE", Path.home() / ".cache" / "keel"))
    p = cache / "models" / SMOLLM2_NAME
    return p if p.is_file() else None


def chat_ids(tok, messages, add_generation_prompt=True):
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(x) for x in out]


def make_smollm2(out: Path, gguf_path: Path) -> dict:
    import torch
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.gguf import get_gguf_tokenizer

    d = out / "smollm2"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    gdir, gname = str(gguf_path.parent), gguf_path.name

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32).eval()
    log(f"  smollm2: loaded in {time.time() - t0:.1f}s ({type(tok).__name__}, {type(model).__name__})")

    # --- chat prompt, greedy answer, logits
    prompt = tok.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tok.encode(prompt, add_special_tokens=False)
    assert ids == chat_ids(tok, CHAT_MESSAGES), "apply_chat_template(tokenize=True) disagrees with encode"
    x = torch.tensor([ids])
    with torch.no_grad():
        last = model(x).logits[0, -1].float().numpy()
        gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=30, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    answer_ids = gen[0, len(ids):].tolist()
    answer_text = tok.decode(answer_ids, skip_special_tokens=True)
    answer_raw = tok.decode(answer_ids, skip_special_tokens=False)
    assert answer_text.strip() == EXPECTED_ANSWER, f"unexpected answer {answer_text!r}"
    assert answer_ids[-1] == tok.eos_token_id, "greedy answer did not stop at eos"
    top = np.argsort(-last, kind="stable")[:20]
    save_file({"logits": np.ascontiguousarray(last.astype(np.float32)),
               "input_ids": np.asarray(ids, dtype=np.int64)},
              str(d / "last_logits.safetensors"), metadata={"what": "last-position logits, f32"})

    # --- multi-turn with system message (rendered string + ids)
    mt_prompt = tok.apply_chat_template(MULTI_TURN, tokenize=False, add_generation_prompt=True)
    mt_ids = tok.encode(mt_prompt, add_special_tokens=False)
    # no system message and no generation prompt, to show the template's default system line
    plain_no_gen = tok.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=False)

    # --- tokenizer cases
    # llama.cpp's "smollm" pre-tokenizer isolates every digit (\p{N}) before the GPT-2 regex;
    # transformers' GGUF loader has no entry for "smollm" and keeps plain ByteLevel. Build that
    # variant too (same vocab/merges/added tokens) and record where the two disagree.
    from tokenizers import Tokenizer, pre_tokenizers
    alt = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    alt.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    cases = []
    for s in TOKENIZER_CASES:
        a = tok.encode(s, add_special_tokens=False)
        b = tok.encode(s, add_special_tokens=True)
        dec = tok.decode(a, skip_special_tokens=False)
        alt_ids = alt.encode(s, add_special_tokens=False).ids
        cases.append({
            "text": s,
            "ids": a,
            "ids_digits_split": alt_ids,
            "same_as_digits_split": alt_ids == a,
            "ids_with_special": b,
            "tokens": tok.convert_ids_to_tokens(a),
            "decoded": dec,
            "roundtrip": dec == s,
            "decoded_skip_special": tok.decode(a, skip_special_tokens=True),
        })

    # --- GGUF tokenizer metadata as transformers read it
    arch, tdict, tconf = get_gguf_tokenizer(str(gguf_path))
    tt = list(tdict.get("token_type") or [])
    control = [i for i, t in enumerate(tt) if t == 3]
    gguf_meta = {
        "general.architecture": arch,
        "tokenizer.ggml.model": tdict.get("tokenizer_type"),
        "tokenizer.ggml.pre": tdict.get("pre_tokenizer_type"),
        "tokens_count": len(tdict["tokens"]),
        "merges_count": len(tdict.get("merges") or []),
        "token_type_counts": {str(k): tt.count(k) for k in sorted(set(tt))},
        "control_token_ids": control,
        "control_tokens": [tdict["tokens"][i] for i in control],
        "bos_token_id": tdict.get("bos_token_id"),
        "eos_token_id": tdict.get("eos_token_id"),
        "unk_token_id": tdict.get("unk_token_id"),
        "pad_token_id": tdict.get("pad_token_id"),
        "add_space_prefix": tdict.get("add_prefix_space"),
        "add_bos_token": tconf.get("add_bos_token"),
        "add_eos_token": tconf.get("add_eos_token"),
        "first_merges": list((tdict.get("merges") or [])[:5]),
    }

    def tokinfo(attr):
        t = getattr(tok, attr, None)
        return {"token": t, "id": (tok.convert_tokens_to_ids(t) if t is not None else None)}

    backend = json.loads(tok.backend_tokenizer.to_str())
    special = {
        "bos": tokinfo("bos_token"), "eos": tokinfo("eos_token"),
        "pad": tokinfo("pad_token"), "unk": tokinfo("unk_token"),
    }
    cfg = model.config

    ref = {
        "model": gguf_path.name,
        "gguf_sha256": sha256(gguf_path),
        "loader": "transformers AutoModelForCausalLM/AutoTokenizer .from_pretrained(dir, gguf_file=name), dtype=float32",
        "model_config": {k: getattr(cfg, k, None) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
            "max_position_embeddings", "tie_word_embeddings")} | {
            "rope_parameters": getattr(cfg, "rope_parameters", None)},
        "chat": {
            "messages": CHAT_MESSAGES,
            "add_generation_prompt": True,
            "prompt": prompt,
            "prompt_ids": ids,
            "greedy": {"max_new_tokens": 30, "stop": "eos", "answer_ids": answer_ids,
                        "answer_text": answer_text, "answer_text_with_special": answer_raw},
            "last_logits": {"argmax": int(np.argmax(last)),
                            "top20_ids": [int(i) for i in top],
                            "top20_values": [rnd(last[i]) for i in top],
                            "full_vector": "last_logits.safetensors (key 'logits', f32 [vocab])"},
        },
        "chat_no_generation_prompt": {"messages": CHAT_MESSAGES, "prompt": plain_no_gen},
        "multi_turn": {"messages": MULTI_TURN, "add_generation_prompt": True,
                       "prompt": mt_prompt, "prompt_ids": mt_ids},
        "special_tokens": special,
        "add_bos_token": getattr(tok, "add_bos_token", None),
        "add_eos_token": getattr(tok, "add_eos_token", None),
        "chat_template": tok.chat_template,
        "gguf_tokenizer_metadata": gguf_meta,
        "hf_tokenizer_class": type(tok).__name__,
        "hf_backend_summary": {
            "normalizer": backend.get("normalizer"),
            "pre_tokenizer": backend.get("pre_tokenizer"),
            "post_processor": backend.get("post_processor"),
            "decoder": backend.get("decoder"),
            "model": {k: v for k, v in backend["model"].items() if k not in ("vocab", "merges")},
            "added_tokens": backend.get("added_tokens"),
        },
        "tokenizer_cases_note": "ids/ids_with_special/tokens/decoded*: the transformers tokenizer built from the GGUF "
                                "(the reference). ids_digits_split: same vocab/merges/added tokens with pre_tokenizer "
                                "Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, use_regex=true)], "
                                "which is what llama.cpp's 'smollm' pre-tokenizer does (\\p{N} isolated, then the GPT-2 "
                                "regex); they differ only where whitespace precedes a digit",
        "tokenizer_cases": cases,
    }
    write_json(d / "reference.json", ref, row_keys=("tokenizer_cases",))
    (d / "last_logits.safetensors").chmod(0o644)

    tdir = d / "hf-tokenizer"
    tok.save_pretrained(str(tdir))
    # save_pretrained pretty-prints tokenizer.json (3.5 MB); the compact form is the same JSON (1.6 MB)
    tok.backend_tokenizer.save(str(tdir / "tokenizer.json"), pretty=False)
    tsize = folder_size(tdir)
    if tsize > 3_000_000:
        log(f"  smollm2: hf-tokenizer is {tsize} bytes (> 3 MB), not kept")
        shutil.rmtree(tdir)

    n_rt = sum(c["roundtrip"] for c in cases)
    n_alt = sum(not c["same_as_digits_split"] for c in cases)
    log(f"  smollm2: {n_alt} case(s) differ between transformers-GGUF and digits-split pre-tokenization")
    log(f"  smollm2: answer {answer_text!r}, argmax {int(np.argmax(last))}, "
        f"{n_rt}/{len(cases)} round trips exact, folder {folder_size(d)} bytes")
    return dict(answer=answer_text, size=folder_size(d), hf_tokenizer_size=tsize,
                roundtrips=n_rt, cases=len(cases))


# ----------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--only", default="tiny,quants,smollm2",
                    help="comma list of: tiny, quants, smollm2 (or a tiny model name)")
    ap.add_argument("--smollm2-gguf", default=None,
                    help=f"path to {SMOLLM2_NAME} (default: $KEEL_CACHE/models/, see fetch_smollm2.sh)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    timings = {}

    for name, spec in TINY_SPECS.items():
        if "tiny" in only or name in only:
            t = time.time()
            make_tiny(name, spec, out)
            timings[name] = time.time() - t
    if "quants" in only:
        t = time.time()
        make_quants(out)
        timings["gguf-quants"] = time.time() - t
    if "smollm2" in only:
        p = find_smollm2(args.smollm2_gguf)
        if p is None:
            log("smollm2: GGUF not found; run scripts/fetch_smollm2.sh (or pass --smollm2-gguf). Skipped.")
            sys.exit(2)
        t = time.time()
        make_smollm2(out, p)
        timings["smollm2"] = time.time() - t
    log("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


if __name__ == "__main__":
    main()
