#!/usr/bin/env python3
"""Generate keel's reference fixtures from the real reference implementations.

Writes into tests/fixtures/ (relative to the repo root):

  tiny-llama/    tiny random LlamaForCausalLM, f32, untied, transformers-5 style config
  tiny-llama3/   tiny random Llama with llama3 rope scaling, tied embeddings, bf16 weights,
                 legacy (transformers-4 / Hub style) config: rope_theta + rope_scaling + torch_dtype
  tiny-qwen2/    tiny random Qwen2ForCausalLM (qkv bias), f16 weights, sharded safetensors,
                 legacy config with a sliding_window trap (use_sliding_window=false)
  tiny-mistral/  tiny random MistralForCausalLM, f32, sliding_window null
  tiny-qwen3/    tiny random Qwen3ForCausalLM (per-head q/k norm, head_dim 32 != hidden/heads), f32, tied
  tiny-gemma3/   tiny random Gemma3ForCausalLM: 7 layers (6th global, the rest sliding, window 4),
                 local and global RoPE (linear scaling on the global one only), query_pre_attn_scalar
                 != head_dim, GeGLU, four (1 + w) norms per layer, scaled tied embeddings, f32
  tiny-phi3/     tiny random Phi3ForCausalLM: fused qkv_proj and gate_up_proj, half the head dims
                 rotated (partial_rotary_factor 0.5), longrope (short and long factors, attention
                 scaling), a sliding window of 8 on every layer, legacy config, f32
  gguf-quants/   quants.gguf + expected.safetensors (the dequantized values, and NAME.source: what
                 gguf.quants.quantize was given) + expected_metadata.json (+ manifest.json);
                 other.gguf, one IQ2_XXS tensor (a type keel reads the size of, not the values)
  gguf-kquants/  kquants.gguf: Q4_K, Q5_K and Q6_K tensors quantized by llama.cpp itself
                 (ggml_quantize_chunk, through llama-cpp-python's libggml-base) from
                 source.safetensors (needs llama-cpp-python installed)
  smollm2/       reference.json, last_logits.safetensors, hf-tokenizer/  (needs the GGUF from
                 scripts/fetch_smollm2.sh)
  gguf-spm/      vocab.gguf: tokenizer.ggml.model "llama" (SentencePiece BPE + byte fallback, trained
                 here) + a tiny random llama, converted by llama.cpp's convert_hf_to_gguf.py;
                 reference.json (transformers-from-GGUF vs sentencepiece tokenizer cases),
                 logits.json, gguf_metadata.json, sentencepiece.model, hf-tokenizer/
  gguf-spm/phi3-vocab.gguf, phi3-reference.json: vocab.gguf's tokenizer metadata under
                 general.architecture phi3 (tokenizer only), and transformers' phi3 tokenizer on it
                 (the prefix space from a normalizer, not Metaspace: it shows on leading spaces)
  tiny-qwen2-gguf/  tiny-qwen2 converted to an f32 GGUF by convert_hf_to_gguf.py (with a tiny
                 Qwen2-shaped byte-level BPE tokenizer); logits.json, reference.json,
                 gguf_metadata.json, hf-tokenizer/
  tiny-qwen3-gguf/  the same for tiny-qwen3
  tiny-phi3-gguf/  tiny-phi3 converted by llama.cpp (fused attn_qkv and ffn_up, rope.dimension_count,
                 rope_factors_short/long tensors, attn_factor) with a Qwen2-shaped byte-level vocabulary,
                 from a config llama.cpp computes as transformers does (no sliding window, which
                 llama.cpp ignores for phi3; an original context past its padded n_ctx, which picks
                 the factors); logits.json and logits_f64.json from transformers on that source folder
  (the last three need llama.cpp's converter from scripts/fetch_llama_cpp.sh)
  */logits_f64.json  beside each transformers logits.json above: the same prompts in float64, and
                 transformers' own f32 error against them

Every tiny model's logits.json / greedy.json are computed by *reloading the saved folder* with
transformers (dtype=float32, attn_implementation="eager"), so they describe exactly the files on
disk. Deterministic: fixed seeds, single thread; re-running reproduces identical files.

Usage:
  python3 scripts/make_fixtures.py [--only tiny,quants,smollm2,gguf-spm,tiny-qwen2-gguf,f64]
                                   [--smollm2-gguf PATH] [--llama-cpp DIR] [--out DIR]
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

def init_weights(model, seed: int, embed_std: float = 0.5):
    """Large-variance deterministic init so logits are far from zero and mistakes show:
    norms ~ N(1, 0.1), embeddings ~ N(0, embed_std), every other parameter (projections, biases,
    lm_head) ~ N(0, 0.5)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif "embed_tokens" in name:
                p.copy_(embed_std * noise)
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
    if rp.get("rope_type") == "longrope":
        # Phi-3's configs: {"type": "longrope", factors} with the lengths and rotary fraction at the top.
        for key in ("original_max_position_embeddings", "partial_rotary_factor"):
            if key in rp:
                cfg[key] = rp.pop(key)
        rp["type"] = rp.pop("rope_type")
        cfg["rope_scaling"] = rp
    elif rp.get("rope_type", "default") != "default":
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
    # Qwen3: per-head q/k RMSNorm, no biases, head_dim (32) independent of hidden / heads (16),
    # tied embeddings as in Qwen3-0.6B.
    "tiny-qwen3": dict(
        arch="qwen3", seed=1005, save_dtype="float32", legacy_config=False, shard=None,
        config=dict(vocab_size=272, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=1000000.0,
                    rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=128,
                    bos_token_id=1, eos_token_id=2),
    ),
    # Gemma 3 (text): a window of 4 so that the 7- and 19-token prompts and the greedy run slide;
    # every sixth layer global (the default pattern, llama.cpp's too); transformers-5 nested
    # rope_parameters; scores scaled by 24^-0.5, not head_dim^-0.5. Embeddings of std 0.5 / 8, as
    # Gemma multiplies them by sqrt(hidden): larger, each token's own embedding decides the tied
    # head's choice and greedy decoding repeats one token.
    "tiny-gemma3": dict(
        arch="gemma3", seed=1006, embed_std=0.0625, save_dtype="float32", legacy_config=False, shard=None,
        config=dict(vocab_size=264, hidden_size=64, intermediate_size=160, num_hidden_layers=7,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                    query_pre_attn_scalar=24, sliding_window=4,
                    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                        "rope_theta": 1000000.0},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                    rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=128,
                    pad_token_id=0, bos_token_id=2, eos_token_id=1),
    ),
    # Phi-3: qkv_proj and gate_up_proj fused, as PEFT targets them; longrope past
    # original_max_position_embeddings 16 (the 19-token prompt, and the greedy run from its 17th
    # position on), the short factors below it, attention scaling sqrt(1 + ln(128/16) / ln 16); the
    # legacy config Phi-3 checkpoints ship (rope_scaling, top-level original_max_position_embeddings).
    # Past 16 positions transformers' cached generation keeps the earlier keys rotated with the
    # short factors, so it is not a recomputation from scratch: no cross-check against one.
    "tiny-phi3": dict(
        arch="phi3", seed=1007, save_dtype="float32", legacy_config=True, shard=None,
        cache_changes_rope=True,
        config=dict(vocab_size=280, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=0.5,
                    max_position_embeddings=128, original_max_position_embeddings=16,
                    rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                     "short_factor": [1.0, 1.1, 1.5, 2.0],
                                     "long_factor": [1.0, 2.0, 4.0, 8.0]},
                    sliding_window=8, rms_norm_eps=1e-5, tie_word_embeddings=False,
                    pad_token_id=0, bos_token_id=1, eos_token_id=2),
    ),
}


def arch_classes(arch: str):
    import transformers as tf

    return {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
        "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM),
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


def write_bf16_input_logits(ref, prompts, path: Path):
    """The logits of a bf16-weight model whose every linear layer (the tied LM
    head included) rounds its input to bf16 and accumulates in f32: what
    keel's bf16 kernel computes for a bf16-stored base."""
    import torch
    hooks = [m.register_forward_pre_hook(lambda _, args: (args[0].to(torch.bfloat16).float(),))
             for m in ref.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        logits = [ref(torch.tensor([p])).logits[0].float().numpy() for p in prompts]
    for h in hooks:
        h.remove()
    write_json(path, {
        "compute": "float32, inputs of every nn.Linear rounded to bfloat16",
        "sig_digits": SIG_DIGITS,
        "prompts": prompts,
        "logits": [rnd_list(l) for l in logits],
    }, row_keys=("prompts", "logits"))


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
    init_weights(model, spec["seed"], spec.get("embed_std", 0.5))
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
    assert new == manual or spec.get("cache_changes_rope"), \
        f"{name}: generate() {new} != no-cache argmax loop {manual}"

    # Gemma 3 keeps one table per layer type: the global one is listed.
    rotary = ref.model.rotary_emb
    inv_freq = getattr(rotary, "inv_freq", getattr(rotary, "full_attention_inv_freq", None)).float().numpy()
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
    if spec["save_dtype"] == "bfloat16":
        write_bf16_input_logits(ref, prompts, d / "logits_bf16.json")
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


F64_SIG_DIGITS = 12
# Folders whose logits.json transformers computed in f32, and how to load the same model: an HF
# folder, or a GGUF file in it.
F64_REFERENCES = {
    "tiny-llama": None, "tiny-llama3": None, "tiny-qwen2": None, "tiny-mistral": None, "tiny-qwen3": None,
    "tiny-gemma3": None, "tiny-phi3": None,
    "gguf-spm": "vocab.gguf", "tiny-qwen2-gguf": "tiny-qwen2.gguf", "tiny-qwen3-gguf": "tiny-qwen3.gguf",
}


def load_f64(d: Path, gguf_file: str | None):
    """The model of folder d (or of the GGUF file in it) in float64, eager attention."""
    import torch
    from transformers import AutoModelForCausalLM

    kw = dict(gguf_file=gguf_file, **gguf_config_override(d / gguf_file)) if gguf_file else {}
    return AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float64, attn_implementation="eager",
                                                **kw).eval()


def write_f64_logits(d: Path, model):
    """logits_f64.json beside d/logits.json: the same prompts through `model`, the same files loaded in
    float64: the yardstick both keel's and the reference's own f32 rounding are measured against
    (keel's tests allow keel a stated multiple of the reference's error, per prompt)."""
    import torch

    f32 = json.loads((d / "logits.json").read_text())
    with torch.no_grad():
        logits = [model(torch.tensor([p])).logits[0].double().numpy() for p in f32["prompts"]]
    errors = [float(np.abs(np.asarray(l32, dtype=np.float64) - l).max())
              for l32, l in zip(f32["logits"], logits)]
    write_json(d / "logits_f64.json", {
        "model": d.name,
        "compute_dtype": "float64",
        "attn_implementation": "eager",
        "sig_digits": F64_SIG_DIGITS,
        "f32_max_abs_error": [float(f"{e:.3g}") for e in errors],
        "prompts": f32["prompts"],
        "logits": [[[float(f"{x:.{F64_SIG_DIGITS}g}") for x in row] for row in l] for l in logits],
    }, row_keys=("prompts", "logits"))
    log(f"  {d.name}: f32 max |error| per prompt vs f64: " + ", ".join(f"{e:.2e}" for e in errors))


# ----------------------------------------------------------------------------------------------
# GGUF quants
# ----------------------------------------------------------------------------------------------

# New types go last: the generator draws from one seeded stream in this order.
QUANT_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K",
               "Q5_0", "Q5_1", "Q2_K", "Q3_K", "IQ4_NL", "IQ4_XS"]
QUANT_ROWS, QUANT_COLS = 2, 512

# byte offsets of the f16 scale fields inside one block, for types built from random bytes
F16_SCALE_OFFSETS = {
    "Q4_K": (0, 2),      # d, dmin | scales[12] | qs[128]          (144 bytes)
    "Q5_K": (0, 2),      # d, dmin | scales[12] | qh[32] | qs[128] (176 bytes)
    "Q6_K": (208,),      # ql[128] | qh[64] | scales[16] (int8) | d (210 bytes)
    "Q2_K": (80, 82),    # scales[16] | qs[64] | d, dmin                    (84 bytes)
    "Q3_K": (108,),      # hmask[32] | qs[64] | scales[12] | d              (110 bytes)
    "IQ4_NL": (0,),      # d | qs[16]                                       (18 bytes)
    "IQ4_XS": (0,),      # d | scales_h (u16) | scales_l[4] | qs[128]       (136 bytes)
}


# K-quant types llama.cpp quantizes to, and the values they are given: rows of 512 (two 256-value
# super-blocks), each row a case its scale search treats differently.
KQUANT_TYPES = ["Q4_K", "Q5_K", "Q6_K"]


def kquant_source() -> np.ndarray:
    rng = np.random.default_rng(2026)
    n = 512
    rows = [
        rng.standard_normal(n),
        rng.standard_normal(n) * 0.02,               # the scale of real weights
        rng.standard_normal(n) * 300.0,
        rng.laplace(size=n),                         # heavy tails
        rng.uniform(1.0, 2.0, n),                    # all positive: the stored minimum is clamped
        -rng.uniform(0.5, 3.0, n),                   # all negative
        np.where(rng.random(n) < 0.02, 40.0, 1.0) * rng.standard_normal(n),  # outliers
        rng.standard_normal(n) * 1e-17,              # below the K-quants' all-zero threshold
    ]
    zero_then_flat = np.zeros(n)
    zero_then_flat[256:] = 0.75                      # an all-zero super-block, then a flat one
    rows.append(zero_then_flat)
    sparse = rng.standard_normal(n)
    sparse[rng.random(n) < 0.8] = 0.0                # mostly zero, so many sub-blocks are all zero
    rows.append(sparse)
    return np.stack(rows).astype(np.float32)


def make_kquants(out: Path) -> None:
    """llama.cpp's own K-quantization (ggml_quantize_chunk without an importance matrix, which is
    what llama-quantize does without --imatrix), through the libggml-base that llama-cpp-python
    built, of kquant_source(); written as tensors of a GGUF beside source.safetensors."""
    import ctypes

    import gguf
    import llama_cpp
    from gguf import GGMLQuantizationType as Q
    from safetensors.numpy import save_file

    d = out / "gguf-kquants"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    ggml = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
    ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    src = np.ascontiguousarray(kquant_source())
    rows, cols = src.shape
    w = gguf.GGUFWriter(str(d / "kquants.gguf"), arch="keeltest")
    w.add_name("keel K-quant fixtures: llama.cpp's ggml_quantize_chunk of source.safetensors")
    manifest = {}
    for tname in KQUANT_TYPES:
        qt = Q[tname]
        block, tsize = gguf.GGML_QUANT_SIZES[qt]
        raw = np.zeros((rows, cols // block * tsize), dtype=np.uint8)
        written = ggml.ggml_quantize_chunk(int(qt), src.ctypes.data, raw.ctypes.data, 0, rows, cols, None)
        assert written == raw.nbytes, (tname, written, raw.nbytes)
        deq = gguf.quants.dequantize(raw, qt)
        rel = float(np.abs(deq - src).max(axis=1).max() / np.abs(src).max())
        w.add_tensor(tname.lower(), raw, raw_shape=raw.shape, raw_dtype=qt)
        manifest[tname.lower()] = dict(ggml_type=tname, shape=[rows, cols], nbytes=int(raw.nbytes),
                                       max_error_over_max_value=rnd(rel))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file({"source": src}, str(d / "source.safetensors"), metadata={"source": "kquant_source()"})
    (d / "source.safetensors").chmod(0o644)
    manifest["made_by"] = (f"ggml_quantize_chunk(type, source, dst, 0, {rows}, {cols}, imatrix=NULL) from "
                           f"llama-cpp-python {llama_cpp.__version__}'s libggml-base")
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"gguf-kquants: {', '.join(KQUANT_TYPES)} of {rows}x{cols} values")


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
        # An all-zero block: its scale is 0 (what 1/d does then matters).
        data[1, :block] = 0.0
        try:
            raw = gguf.quants.quantize(data, qt)
            how = "gguf.quants.quantize(standard normal f32, the second row's first block zero)"
            # What was quantized, for keel's own quantization to match bit for bit.
            expected[f"{tname.lower()}.source"] = data
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

    # A type keel knows the size of but cannot dequantize: the file must still open.
    other = gguf.GGUFWriter(str(d / "other.gguf"), arch="keeltest")
    other_block, other_size = gguf.GGML_QUANT_SIZES[Q.IQ2_XXS]
    other_raw = rng.integers(0, 256, size=(QUANT_ROWS, QUANT_COLS // other_block * other_size), dtype=np.uint8)
    other.add_tensor("iq2_xxs", other_raw, raw_shape=other_raw.shape, raw_dtype=Q.IQ2_XXS)
    other.write_header_to_file()
    other.write_kv_data_to_file()
    other.write_tensors_to_file()
    other.close()

    save_file(expected, str(d / "expected.safetensors"), metadata={"source": "gguf.quants.dequantize"})
    (d / "expected.safetensors").chmod(0o644)

    # Read back with the gguf package's reader and check everything round-trips.
    r = gguf.GGUFReader(str(path))
    meta = gguf_fields(r)
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
# GGUFs written by llama.cpp's own converter (convert_hf_to_gguf.py; scripts/fetch_llama_cpp.sh)
# ----------------------------------------------------------------------------------------------

LLAMA_CPP_PYTHON_VERSION = "0.3.36"


def find_llama_cpp(arg: str | None) -> Path | None:
    if arg:
        p = Path(arg)
    else:
        cache = Path(os.environ.get("KEEL_CACHE", Path.home() / ".cache" / "keel"))
        p = cache / "llama.cpp" / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"
    return p if (p / "convert_hf_to_gguf.py").is_file() else None


# Runs convert_hf_to_gguf.main() in a child process, with llama.cpp's own gguf-py first on the path
# (what the script does by itself). With a non-empty `pre`, a vocabulary whose pre-tokenizer hash
# the converter does not know gets `pre` as tokenizer.ggml.pre instead of the NotImplementedError
# it would raise (hashes are only ever registered for real Hub models, by
# convert_hf_to_gguf_update.py). A hash it does know must give `pre`.
_CONVERT_DRIVER = r'''
import sys
llama_cpp, pre, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, llama_cpp)
sys.argv = ["convert_hf_to_gguf.py"] + argv
import convert_hf_to_gguf as c
if pre:
    from conversion import base
    orig = base.TextModel.get_vocab_base_pre
    def get_vocab_base_pre(self, tokenizer):
        try:
            res = orig(self, tokenizer)
        except NotImplementedError:
            print(f"keel: unregistered pre-tokenizer hash; writing tokenizer.ggml.pre = {pre!r}", file=sys.stderr)
            return pre
        if res != pre:
            raise SystemExit(f"keel: converter recognised pre-tokenizer {res!r}, expected {pre!r}")
        return res
    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
c.main()
'''


def run_convert_hf_to_gguf(llama_cpp: Path, hf_dir: Path, outfile: Path, pre: str = "") -> dict:
    import re
    import subprocess

    cmd = [sys.executable, "-c", _CONVERT_DRIVER, str(llama_cpp), pre,
           str(hf_dir), "--outfile", str(outfile), "--outtype", "f32"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    env.pop("NO_LOCAL_GGUF", None)
    p = subprocess.run(cmd, cwd=str(hf_dir.parent), env=env, capture_output=True, text=True)
    if p.returncode != 0:
        log(p.stdout[-4000:], p.stderr[-8000:])
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {hf_dir} (rc {p.returncode})")
    m = re.search(r"chkhsh:\s+([0-9a-f]{64})", p.stderr)
    # the log, without the per-tensor lines and with the (temporary) paths cut to file names
    lines = [l.replace(str(outfile), outfile.name).replace(str(hf_dir), hf_dir.name)
             for l in p.stderr.splitlines() if l.startswith(("INFO:hf-to-gguf", "INFO:gguf")) and " --> " not in l]
    return dict(chkhsh=m.group(1) if m else None,
                forced_pre="unregistered pre-tokenizer hash" in p.stderr, log=lines)


def gguf_fields(r) -> dict:
    """Every KV pair of an open gguf.GGUFReader (GGUF.* header fields excluded) as {key: {type,
    value}}; f32 values are the exact f32 widened to f64."""
    from gguf import GGUFValueType as V

    meta = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        t = f.types
        kind = f"array[{_kind_name(t[-1])}]" if t[0] == V.ARRAY else _kind_name(t[0])
        v = _py(f.contents())
        if kind in ("f32", "array[f32]"):
            v = [float(np.float32(x)) for x in v] if isinstance(v, list) else float(np.float32(v))
        meta[k] = {"type": kind, "value": v}
    return meta


def quiet_torch(threads: int):
    """Imports torch and transformers offline, silent and on `threads` threads; returns torch."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    return torch


def gguf_dump(path: Path) -> dict:
    """Every KV pair (GGUF.* header fields excluded) and every tensor's type and ne, as read back
    by gguf.GGUFReader (the PyPI package, not the converter's copy)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    meta = gguf_fields(r)
    tensors = {t.name: {"ggml_type": t.tensor_type.name, "ne": [int(x) for x in t.shape],
                        "nbytes": int(t.n_bytes)} for t in r.tensors}
    return dict(gguf_version=int(r.fields["GGUF.version"].contents()), tensor_count=len(r.tensors),
                alignment=int(meta.get("general.alignment", {}).get("value", 32)), metadata=meta,
                tensors=tensors)


def write_gguf_metadata(path: Path, dump: dict, note: str):
    write_json(path, {"note": note, **dump})


def backend_summary(tok) -> dict:
    backend = json.loads(tok.backend_tokenizer.to_str())
    model = backend["model"]
    merges = model.get("merges") or []
    return {
        "normalizer": backend.get("normalizer"),
        "pre_tokenizer": backend.get("pre_tokenizer"),
        "post_processor": backend.get("post_processor"),
        "decoder": backend.get("decoder"),
        "model": {k: v for k, v in model.items() if k not in ("vocab", "merges")}
                 | {"vocab_size": len(model.get("vocab") or {}), "merges_count": len(merges),
                    "first_merges": merges[:12]},
        "added_tokens": backend.get("added_tokens"),
    }


def save_hf_tokenizer(tok, tdir: Path) -> int:
    tok.save_pretrained(str(tdir))
    tok.backend_tokenizer.save(str(tdir / "tokenizer.json"), pretty=False)
    for f in tdir.iterdir():
        f.chmod(0o644)
    return folder_size(tdir)


def gguf_config_override(gguf_path: Path) -> dict:
    """transformers' GGUF loader ignores `qwen3.attention.key_length` and assumes head_dim 128 (right
    for every released Qwen3, wrong for tiny-qwen3's 32): take the config from the HF folder the
    GGUF was converted from, tiny-qwen3/, named by the fixture folder."""
    from transformers import AutoConfig

    if gguf_path.name != "tiny-qwen3.gguf":
        return {}
    return dict(config=AutoConfig.from_pretrained(str(gguf_path.parent.parent / "tiny-qwen3")))


def gguf_logits(gguf_path: Path, prompts: list[list[int]], ref_dir: Path | None):
    """Full-sequence logits from transformers loading the GGUF (f32, eager); with `ref_dir`, also the
    largest difference from the HF folder the GGUF was converted from (same prompts)."""
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                             dtype=torch.float32, attn_implementation="eager",
                                             **gguf_config_override(gguf_path)).eval()
    with torch.no_grad():
        logits = [m(torch.tensor([p])).logits[0].float().numpy() for p in prompts]
    diff = None
    if ref_dir is not None:
        ref = AutoModelForCausalLM.from_pretrained(str(ref_dir), dtype=torch.float32,
                                                   attn_implementation="eager").eval()
        with torch.no_grad():
            diff = max(float(np.abs(ref(torch.tensor([p])).logits[0].float().numpy() - l).max())
                       for p, l in zip(prompts, logits))
    return m, logits, diff


def logits_json(name: str, model, gguf_name: str, prompts, logits, extra: dict) -> dict:
    all_l = np.concatenate([l.reshape(-1) for l in logits])
    stats = dict(std=float(all_l.std()), mean=float(all_l.mean()), absmax=float(np.abs(all_l).max()))
    assert stats["std"] > 0.5, f"{name}: logits std {stats['std']} too small"
    cfg = model.config
    return {
        "model": name,
        "gguf_file": gguf_name,
        "architecture": type(model).__name__,
        "weights_dtype": "float32",
        "compute_dtype": "float32",
        "attn_implementation": "eager",
        "loader": "transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=float32, "
                  "attn_implementation='eager')",
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "rope_inv_freq": rnd_list(model.model.rotary_emb.inv_freq.float().numpy()),
        **extra,
        "sig_digits": SIG_DIGITS,
        "logits_stats": {k: rnd(v) for k, v in stats.items()},
        "prompts": prompts,
        "logits": [rnd_list(l) for l in logits],
    }


# --- gguf-spm: tokenizer.ggml.model = "llama" (SentencePiece BPE, scores, byte fallback) ----------

SPM_VOCAB_SIZE = 480  # 3 specials + <tool> + 256 <0xNN> byte pieces + 220 learned (~140 chars, ~80 merges)

# Written for this fixture. Characters seen here become pieces (character_coverage 1.0); the
# tokenizer cases below use others (Hangul, Cyrillic, emoji, 猫...) to force byte fallback.
SPM_TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! Hello there, how are you today?",
    "I think the weather is nice and the sun is shining.",
    "She sells sea shells by the sea shore in the summer.",
    "We went to the market and bought apples, bread and cheese.",
    "The numbers 12345 and 67890 appear in the year 2024 and 1999.",
    "A café in Paris serves crème brûlée and a naïve résumé.",
    "Ångström, façade, jalapeño, über, smörgåsbord and déjà vu.",
    "日本語の文章です。東京は大きい都市です。",
    "中文的句子。我们在学习语言模型。",
    "Tokenizers split text into pieces, and models learn from those pieces.",
    "The model reads the text, and then it writes the next token.",
    "Programming in Rust is fun; the compiler helps you write safe code.",
    'fn main() { println!("hello"); }',
    "if x > 10 then return x * 2 else return x + 1",
    "Good morning, good evening, and good night to everyone here.",
    "The children played in the garden while their parents talked.",
    "This is a small training text for a tiny tokenizer model.",
    "Learning, learned, learner, learns: the root is always learn.",
    "Running, runner, runs, ran: the verb changes its form.",
    "def add(a, b):",
    "    return a + b",
    '    if a  >  b:  print("a  is  bigger")',
    "        nested  code  uses  eight  spaces",
    "Two  spaces  between  words  and   three   here.",
    "Call the <tool> when you need it: <tool> search.",
]

# Llama 2's trainer settings (model_type BPE, byte_fallback, split_digits, identity normalization,
# add_dummy_prefix, no whitespace cleanup, whitespace-only pieces allowed, unk/bos/eos = 0/1/2, no
# pad), on a tiny vocabulary. <tool> is a user-defined symbol (id 3), matched whole in text.
SPM_TRAINER = dict(
    model_type="bpe", vocab_size=SPM_VOCAB_SIZE, byte_fallback=True, split_digits=True,
    character_coverage=1.0, add_dummy_prefix=True, remove_extra_whitespaces=False,
    normalization_rule_name="identity", allow_whitespace_only_pieces=True,
    split_by_unicode_script=True, split_by_number=True, split_by_whitespace=True,
    treat_whitespace_as_suffix=False, max_sentence_length=4192,
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1, user_defined_symbols=["<tool>"],
    num_threads=1, minloglevel=2,
)

SPM_CASES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Hello  world",
    " leading space",
    "   three leading spaces",
    "trailing space ",
    "multiple   spaces    between",
    " ",
    "  ",
    "",
    "a",
    "line one\nline two\n\nline four",
    "\n\nleading newlines",
    "ends with newline\n",
    "tabs\tand\ttabs",
    "12345 3.14",
    "year 2024, 1,000,000.50",
    "café naïve résumé façade Ångström",
    "crème brûlée déjà vu",
    "日本語の文章です。",
    "東京は大きい都市です",
    "猫が好きです",
    "한국어 텍스트",
    "Привет, мир!",
    "emoji: 🦀🚀😀👍🏽",
    "def add(a, b):\n    return a + b\n",
    'fn main() { println!("hello"); }',
    "Learning learner learned: tokenizers learn pieces.",
    "<s>",
    "<s>Hello</s>",
    "text </s> more",
    "<unk> literal",
    "use <tool> here",
    "<tool><tool>x",
    "\u2581 literal metaspace",
    "\u00a0non-breaking\u2009thin",
    "e\u0301 combining acute",
]


def train_spm() -> bytes:
    import io
    import sentencepiece as spm

    f = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SPM_TRAIN_TEXT), model_writer=f, **SPM_TRAINER)
    return f.getvalue()


def spm_hf_folder(d: Path, sp_bytes: bytes, seed: int) -> dict:
    """The HF folder llama.cpp converts: a tiny random LlamaForCausalLM (f32) plus a Llama-2-style
    tokenizer (tokenizer.model, tokenizer.json, tokenizer_config.json)."""
    import sentencepiece as spm
    import torch
    from tokenizers import AddedToken
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    d.mkdir(parents=True)
    (d / "tokenizer.model").write_bytes(sp_bytes)
    sp = spm.SentencePieceProcessor(model_proto=sp_bytes)
    n = sp.vocab_size()
    # tokenizer.json: what the converter reads from it is the added tokens (to resolve the
    # bos/eos/unk strings of tokenizer_config.json to ids) and the post-processor (<s> $A: BOS on).
    # transformers 5 cannot convert tokenizer.model without protobuf, so it is built from the pieces
    # the way its SentencePiece extractor does (merges from scores). The converter does not read it.
    pieces = [sp.id_to_piece(i) for i in range(n)]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = generate_merges(vocab, {p: sp.get_score(i) for i, p in enumerate(pieces)})
    tok = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False, legacy=False)
    tok.add_tokens([AddedToken("<tool>", special=False, normalized=False)])
    tok.save_pretrained(str(d))
    # tokenizer_config.json as Llama 2's (transformers 4 era), with add_prefix_space set so that the
    # converter writes tokenizer.ggml.add_space_prefix. added_tokens_decoder lists <s> and </s>
    # (special -> CONTROL), and <tool> (not special -> USER_DEFINED); <unk> is left out so that it
    # keeps SentencePiece's own type, UNKNOWN (Llama 2's own file also lists it, which would make
    # it CONTROL).
    def entry(content, special):
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": special}
    (d / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": True,
        "added_tokens_decoder": {"1": entry("<s>", True), "2": entry("</s>", True), "3": entry("<tool>", False)},
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 128,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
    }, indent=2) + "\n")

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()
    init_weights(model, seed)
    model.save_pretrained(d, safe_serialization=True)
    (d / "generation_config.json").unlink(missing_ok=True)
    return dict(vocab_size=n, merges=len(merges))


def diff_note(tok, a: list[int], b: list[int]) -> str:
    """Where the transformers ids `a` and the sentencepiece ids `b` first part ways."""
    if a == b:
        return ""
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    ta, tb = tok.convert_ids_to_tokens(a[i:i + 4]), tok.convert_ids_to_tokens(b[i:i + 4])
    return f"from position {i}: transformers {ta} vs sentencepiece {tb}"


def make_gguf_spm(out: Path, llama_cpp: Path) -> dict:
    import tempfile

    import sentencepiece as spm
    from transformers import AutoTokenizer
    from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer

    seed = 1005
    d = out / "gguf-spm"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)

    sp_bytes = train_spm()
    assert sp_bytes == train_spm(), "sentencepiece training is not deterministic"
    sp = spm.SentencePieceProcessor(model_proto=sp_bytes)
    assert sp.vocab_size() == SPM_VOCAB_SIZE
    assert [sp.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<tool>"]
    assert sp.is_unknown(0) and sp.is_control(1) and sp.is_control(2) and sp.is_byte(4)
    (d / "sentencepiece.model").write_bytes(sp_bytes)

    with tempfile.TemporaryDirectory(prefix="keel-gguf-spm-") as tmp:
        hf = Path(tmp) / "tiny-llama-spm"
        info = spm_hf_folder(hf, sp_bytes, seed)
        conv = run_convert_hf_to_gguf(llama_cpp, hf, d / "vocab.gguf")
        gpath = d / "vocab.gguf"
        gpath.chmod(0o644)

        dump = gguf_dump(gpath)
        meta = dump["metadata"]
        assert meta["tokenizer.ggml.model"]["value"] == "llama"
        assert meta["tokenizer.ggml.tokens"]["value"] == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
        write_gguf_metadata(d / "gguf_metadata.json", dump,
                            "every KV pair in vocab.gguf as read back by gguf.GGUFReader (GGUF.* header fields "
                            "excluded; f32 values are the exact f32 widened to f64) and every tensor's ggml type "
                            "and ne; written by llama.cpp's convert_hf_to_gguf.py (llama-cpp-python "
                            f"{LLAMA_CPP_PYTHON_VERSION}) --outtype f32 from a tiny LlamaForCausalLM + Llama-2-style "
                            "SentencePiece tokenizer")

        tok = AutoTokenizer.from_pretrained(str(d), gguf_file="vocab.gguf")
        cases = []
        for s in SPM_CASES:
            ids = tok.encode(s, add_special_tokens=False)
            ids_special = tok.encode(s, add_special_tokens=True)
            sp_ids = sp.encode(s)
            dec = tok.decode(ids, skip_special_tokens=False)
            cases.append({
                "text": s,
                "ids": ids,
                "ids_with_special": ids_special,
                "tokens": tok.convert_ids_to_tokens(ids),
                "decoded": dec,
                "roundtrip": dec == s,
                "decoded_with_special": tok.decode(ids_special, skip_special_tokens=False),
                "decoded_with_special_skip_special": tok.decode(ids_special, skip_special_tokens=True),
                "sp_ids": sp_ids,
                "sp_pieces": sp.id_to_piece(sp_ids),
                "sp_decoded": sp.decode(sp_ids),
                "same_as_sp": ids == sp_ids,
                "disagreement": diff_note(tok, ids, sp_ids),
            })

        arch, tdict, tconf = get_gguf_tokenizer(str(gpath))
        # Does transformers look at tokenizer.ggml.add_space_prefix? Build the backend again with the
        # flag flipped and compare.
        flipped = dict(tdict, add_prefix_space=not tdict.get("add_prefix_space", True))
        space_prefix_ignored = (convert_gguf_tokenizer(arch, flipped)[0].to_str()
                                == convert_gguf_tokenizer(arch, tdict)[0].to_str())
        prompts = [tok.encode("The quick brown fox", add_special_tokens=True),
                   np.random.default_rng(seed + 7).integers(0, SPM_VOCAB_SIZE, size=9).tolist()]
        model, logits, diff = gguf_logits(gpath, prompts, hf)
    assert diff < 1e-4, f"gguf-spm: GGUF logits differ from the HF folder's by {diff}"

    write_json(d / "logits.json", logits_json(
        "gguf-spm", model, "vocab.gguf", prompts, logits,
        {"max_abs_diff_vs_hf_folder": rnd(diff),
         "prompt_texts": ["The quick brown fox (add_special_tokens=True)", "random ids"]}),
        row_keys=("prompts", "logits"))

    n_same = sum(c["same_as_sp"] for c in cases)
    ref = {
        "gguf_file": "vocab.gguf",
        "gguf_sha256": sha256(gpath),
        "sentencepiece_model": "sentencepiece.model",
        "sentencepiece_trainer": {k: v for k, v in SPM_TRAINER.items() if k not in ("num_threads", "minloglevel")},
        "converter": f"llama.cpp convert_hf_to_gguf.py (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist) --outtype f32",
        "converter_log": conv["log"],
        "loader": "transformers AutoTokenizer.from_pretrained(dir, gguf_file='vocab.gguf')",
        "hf_tokenizer_class": type(tok).__name__,
        "special_tokens": {k: {"token": getattr(tok, f"{k}_token"), "id": getattr(tok, f"{k}_token_id")}
                           for k in ("bos", "eos", "unk", "pad")},
        "add_bos_token": tok.add_bos_token,
        "add_eos_token": tok.add_eos_token,
        "gguf_tokenizer_config": {k: v for k, v in tconf.items()},
        "gguf_add_space_prefix": tdict.get("add_prefix_space"),
        "add_space_prefix_ignored_by_transformers": space_prefix_ignored,
        "hf_backend_summary": backend_summary(tok),
        "tokenizer_cases_note": "ids/ids_with_special/tokens/decoded*: the transformers tokenizer built from the GGUF. "
                                "ids = encode(add_special_tokens=False), ids_with_special = encode(add_special_tokens=True); "
                                "decoded = decode(ids), decoded_with_special[_skip_special] = decode(ids_with_special, "
                                "skip_special_tokens=False|True). sp_*: the original sentencepiece processor "
                                "(sentencepiece.model): sp.encode(text) (no BOS), its pieces and sp.decode. "
                                "disagreement: first position where ids and sp_ids differ",
        "tokenizer_cases_agree": f"{n_same}/{len(cases)}",
        "disagreement_causes": [
            "dummy prefix: sentencepiece (add_dummy_prefix) always puts U+2581 before the text. transformers' "
            "Metaspace(prepend_scheme='first') adds it only to the first piece of the text and only if that piece does "
            "not already start with U+2581 after spaces are replaced, so a text starting with a space (or with a literal "
            "U+2581) gets one U+2581 fewer, and text right after a special/added token gets none",
            "special tokens: transformers matches <s>, </s>, <unk> (special) and <tool> (added, not special) as whole "
            "tokens anywhere in the text; sentencepiece never matches control symbols (<s>, </s>) or <unk> in text and "
            "spells them with pieces and byte fallback (< is not in this vocabulary); it does match user-defined <tool>",
            "llama.cpp (src/llama-vocab.cpp, SPM branch; not run here) adds the space before the first text fragment and "
            "before every text fragment that follows a special/user-defined token, whatever the text starts with",
        ],
        "tokenizer_cases": cases,
    }
    write_json(d / "reference.json", ref, row_keys=("tokenizer_cases",))
    tsize = save_hf_tokenizer(tok, d / "hf-tokenizer")
    size = folder_size(d)
    log(f"  gguf-spm: vocab.gguf {gpath.stat().st_size} bytes, {n_same}/{len(cases)} cases agree with "
        f"sentencepiece, GGUF vs HF-folder logits max diff {diff:.2e}, hf-tokenizer {tsize} bytes, folder {size} bytes")
    assert gpath.stat().st_size < 1_000_000
    return dict(size=size, agree=n_same, cases=len(cases), diff=diff, info=info)


# --- tiny-qwen2-gguf: a non-llama architecture converted by llama.cpp -----------------------------

QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 285, 286, 287, as in Qwen2 (last)
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN2_CASES = [
    "Hello world",
    "Hello  world  again",
    " leading space",
    "line one\nline two\n\n",
    "12345 3.14",
    "I'm sure it's fine",
    "café naïve",
    "e\u0301 combining acute",
    "日本語",
    "<|im_start|>user\nhi<|im_end|>\n",
    "text<|endoftext|>more",
]


def qwen2_tokenizer(vocab_size: int):
    """A byte-level BPE shaped like Qwen2's tokenizer.json (NFC, the Qwen2 split regex then
    ByteLevel without its own regex, ByteLevel decoder/post-processor), trained on SPM_TRAIN_TEXT to
    exactly vocab_size - 3 entries, then <|endoftext|> <|im_start|> <|im_end|> as special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, \
        processors, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tk = Tokenizer(models.BPE(dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tk.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(QWEN2_SPECIALS), min_frequency=2,
                                  show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(SPM_TRAIN_TEXT * 3, trainer)
    assert tk.get_vocab_size() == vocab_size - len(QWEN2_SPECIALS), tk.get_vocab_size()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN2_SPECIALS])
    assert tk.get_vocab_size() == vocab_size
    return tk


def make_qwen_gguf(out: Path, llama_cpp: Path, family: str = "qwen2") -> dict:
    """tiny-{family}-gguf/: tests/fixtures/tiny-{family} (qwen2 or qwen3) converted by llama.cpp."""
    import tempfile

    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    name = f"tiny-{family}"
    src = out / name
    if not (src / "logits.json").is_file():
        raise SystemExit(f"{name}-gguf needs tests/fixtures/{name} (run --only {name} first)")
    src_logits = json.loads((src / "logits.json").read_text())
    d = out / f"{name}-gguf"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    gpath = d / f"{name}.gguf"

    with tempfile.TemporaryDirectory(prefix=f"keel-{family}-gguf-") as tmp:
        hf = Path(tmp) / name
        shutil.copytree(src, hf, ignore=shutil.ignore_patterns("*.json"))
        if (src / "model.safetensors.index.json").is_file():
            shutil.copy(src / "model.safetensors.index.json", hf)
        cfg = json.loads((src / "config.json").read_text())
        n_vocab = cfg["vocab_size"]
        # bos/eos as in Qwen2.5-Instruct's config.json (<|endoftext|>, <|im_end|>) instead of the
        # tiny model's placeholder 1/2 (byte tokens here). Only the tokenizer metadata reads them.
        cfg.update(bos_token_id=n_vocab - 3, eos_token_id=n_vocab - 1)
        (hf / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        tk = qwen2_tokenizer(n_vocab)
        assert tk.to_str() == qwen2_tokenizer(n_vocab).to_str(), "BPE training is not deterministic"
        tk.save(str(hf / "tokenizer.json"))
        (hf / "tokenizer_config.json").write_text(json.dumps({
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": {str(tk.token_to_id(t)): {
                "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                "special": True} for t in QWEN2_SPECIALS},
            "bos_token": None,
            "chat_template": QWEN2_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 128,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        }, indent=2) + "\n")
        conv = run_convert_hf_to_gguf(llama_cpp, hf, gpath, pre="qwen2")
        gpath.chmod(0o644)
        tdir = d / "hf-tokenizer"
        tdir.mkdir()
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(hf / f, tdir / f)
            (tdir / f).chmod(0o644)

    dump = gguf_dump(gpath)
    meta = dump["metadata"]
    assert meta["general.architecture"]["value"] == family
    assert meta["tokenizer.ggml.pre"]["value"] == "qwen2"
    write_gguf_metadata(d / "gguf_metadata.json", dump,
                        f"every KV pair in {gpath.name} as read back by gguf.GGUFReader (GGUF.* header fields "
                        "excluded; f32 values are the exact f32 widened to f64) and every tensor's ggml type and "
                        "ne; written by llama.cpp's convert_hf_to_gguf.py (llama-cpp-python "
                        f"{LLAMA_CPP_PYTHON_VERSION}) --outtype f32 from tests/fixtures/{name} plus "
                        "hf-tokenizer/; tokenizer.ggml.pre forced to 'qwen2' (hash not registered)")

    prompts = src_logits["prompts"]
    model, logits, _ = gguf_logits(gpath, prompts, None)
    diff = max(float(np.abs(np.asarray(a, dtype=np.float64) - l).max())
               for a, l in zip(src_logits["logits"], logits))
    assert diff < 1e-4, f"{name}-gguf: logits differ from {name}/logits.json by {diff}"

    # Tokenizer: transformers' GGUF rebuild vs the tokenizer.json it was converted from.
    tok = AutoTokenizer.from_pretrained(str(d), gguf_file=gpath.name)
    orig = Tokenizer.from_file(str(d / "hf-tokenizer" / "tokenizer.json"))
    cases = []
    for s in QWEN2_CASES:
        ids = tok.encode(s, add_special_tokens=False)
        oids = orig.encode(s, add_special_tokens=False).ids
        cases.append({"text": s, "ids": ids, "tokens": tok.convert_ids_to_tokens(ids),
                      "decoded": tok.decode(ids, skip_special_tokens=False),
                      "ids_tokenizer_json": oids, "same_as_tokenizer_json": ids == oids})

    write_json(d / "logits.json", logits_json(
        f"{name}-gguf", model, gpath.name, prompts, logits,
        {"source": f"tests/fixtures/{name} ({TINY_SPECS[name]['save_dtype'].replace('float', 'f')} weights, "
                   "upcast exactly to f32 by the converter)",
         f"max_abs_diff_vs_{name.replace('-', '_')}_logits_json": rnd(diff)}), row_keys=("prompts", "logits"))
    write_json(d / "reference.json", {
        "gguf_file": gpath.name,
        "gguf_sha256": sha256(gpath),
        "converter": f"llama.cpp convert_hf_to_gguf.py (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist) --outtype f32",
        "pre_tokenizer_note": "llama.cpp names a BPE pre-tokenizer by the sha256 of the token ids its fixed check text "
                              "encodes to, so only vocabularies registered from real Hub models are recognised; this "
                              "288-token vocabulary has the hash below, which no model has. The converter would raise "
                              "NotImplementedError; make_fixtures.py wraps get_vocab_base_pre to write 'qwen2' for it "
                              "(hf-tokenizer/tokenizer.json uses Qwen2's own split regex, so the name is right)",
        "pre_tokenizer_chkhsh": conv["chkhsh"],
        "pre_tokenizer_forced": conv["forced_pre"],
        "converter_log": conv["log"],
        "hf_tokenizer_class": type(tok).__name__,
        "special_tokens": {k: {"token": getattr(tok, f"{k}_token"), "id": getattr(tok, f"{k}_token_id")}
                           for k in ("bos", "eos", "unk", "pad")},
        "add_bos_token": tok.add_bos_token,
        "add_eos_token": tok.add_eos_token,
        "hf_backend_summary": backend_summary(tok),
        "tokenizer_cases_note": "ids/tokens/decoded: transformers' tokenizer built from the GGUF, add_special_tokens=False; "
                                "ids_tokenizer_json: the tokenizers library on hf-tokenizer/tokenizer.json (the source). "
                                "The GGUF rebuild has no NFC normalizer",
        "tokenizer_cases": cases,
    }, row_keys=("tokenizer_cases",))
    size = folder_size(d)
    n_same = sum(c["same_as_tokenizer_json"] for c in cases)
    log(f"  {name}-gguf: {gpath.name} {gpath.stat().st_size} bytes, logits max diff vs {name} {diff:.2e}, "
        f"chkhsh {conv['chkhsh']}, {n_same}/{len(cases)} tokenizer cases same as tokenizer.json, folder {size} bytes")
    assert gpath.stat().st_size < 1_000_000
    return dict(size=size, diff=diff)


def make_phi3_vocab(out: Path) -> dict:
    """gguf-spm/phi3-vocab.gguf: vocab.gguf's general.* and tokenizer.* metadata, architecture phi3,
    no tensors; phi3-reference.json: transformers' tokenizer from it on vocab.gguf's cases."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter
    from transformers import AutoTokenizer

    d = out / "gguf-spm"
    src = d / "vocab.gguf"
    if not src.is_file():
        raise SystemExit("gguf-spm-phi3 needs tests/fixtures/gguf-spm (run --only gguf-spm first)")
    dst = d / "phi3-vocab.gguf"
    r = GGUFReader(str(src))
    w = GGUFWriter(str(dst), "phi3")
    for key, field in r.fields.items():
        if key == "general.architecture" or not key.startswith(("general.", "tokenizer.")):
            continue
        if field.types[0] == GGUFValueType.ARRAY:
            w.add_key_value(key, field.contents(), field.types[0], sub_type=field.types[-1])
        else:
            w.add_key_value(key, field.contents(), field.types[0])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    dst.chmod(0o644)
    tok = AutoTokenizer.from_pretrained(str(d), gguf_file=dst.name)
    texts = [c["text"] for c in json.loads((d / "reference.json").read_text())["tokenizer_cases"]]
    texts += ["  two leading spaces", " one leading space", "a  b"]
    cases = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        cases.append({"text": text, "ids": ids, "ids_with_special": tok.encode(text),
                      "tokens": tok.convert_ids_to_tokens(ids),
                      "decoded": tok.decode(ids, skip_special_tokens=False)})
    write_json(d / "phi3-reference.json", {
        "gguf_file": dst.name,
        "source": "vocab.gguf's general.* and tokenizer.* metadata, general.architecture phi3, no tensors",
        "loader": "transformers AutoTokenizer.from_pretrained(dir, gguf_file=name): integrations/gguf "
                  "phi3_tokenizer (normalizer Prepend('▁') + Replace(' ', '▁'), no pre-tokenizer)",
        "hf_backend_summary": backend_summary(tok),
        "tokenizer_cases": cases,
    }, row_keys=("tokenizer_cases",))
    log(f"  gguf-spm/phi3-vocab.gguf: {dst.stat().st_size} bytes, {len(cases)} cases")
    return dict(cases=len(cases))


PHI3_GGUF_CONFIG = dict(sliding_window=None, original_max_position_embeddings=512,
                        max_position_embeddings=2048)


def make_phi3_gguf(out: Path, llama_cpp: Path) -> dict:
    """tiny-phi3-gguf/: tiny-phi3's weights under PHI3_GGUF_CONFIG, converted by llama.cpp.

    transformers' GGUF loader drops longrope (its factors tensors, attn_factor) and llama.cpp
    ignores phi3's sliding window and picks long or short factors by its context size (padded to
    256), not by sequence length: under this config they compute the same thing, so the reference
    is transformers on the source folder. (llama.cpp itself, llama-cpp-python 0.3.36, refuses this
    tiny byte-level vocabulary under phi3, "unordered_map::at" while loading it, though it loads the
    same vocabulary under qwen2: it is not run here.)"""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    src = out / "tiny-phi3"
    if not (src / "logits.json").is_file():
        raise SystemExit("tiny-phi3-gguf needs tests/fixtures/tiny-phi3 (run --only tiny-phi3 first)")
    prompts = json.loads((src / "logits.json").read_text())["prompts"]
    d = out / "tiny-phi3-gguf"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    gpath = d / "tiny-phi3.gguf"
    with tempfile.TemporaryDirectory(prefix="keel-phi3-gguf-") as tmp:
        hf = Path(tmp) / "tiny-phi3"
        shutil.copytree(src, hf, ignore=shutil.ignore_patterns("*.json"))
        cfg = json.loads((src / "config.json").read_text())
        n_vocab = cfg["vocab_size"]
        cfg.update(PHI3_GGUF_CONFIG, bos_token_id=n_vocab - 3, eos_token_id=n_vocab - 1, pad_token_id=n_vocab - 3)
        (hf / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        tk = qwen2_tokenizer(n_vocab)
        tk.save(str(hf / "tokenizer.json"))
        # GPT2Tokenizer: the converter's byte-level path (Phi-4's), not SentencePiece.
        (hf / "tokenizer_config.json").write_text(json.dumps({
            "add_bos_token": False, "bos_token": None, "eos_token": "<|im_end|>",
            "chat_template": QWEN2_CHAT_TEMPLATE, "model_max_length": 2048,
            "tokenizer_class": "GPT2Tokenizer", "unk_token": None,
        }, indent=2) + "\n")
        conv = run_convert_hf_to_gguf(llama_cpp, hf, gpath, pre="qwen2")
        gpath.chmod(0o644)
        shutil.copy(hf / "config.json", d / "hf-config.json")
        (d / "hf-config.json").chmod(0o644)
        model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            logits = [model(torch.tensor([p])).logits[0].float().numpy() for p in prompts]
        assert model.model.rotary_emb.attention_scaling != 1.0
        write_json(d / "logits.json", logits_json(
            "tiny-phi3-gguf", model, gpath.name, prompts, logits,
            {"loader": "transformers AutoModelForCausalLM.from_pretrained on the folder the GGUF was converted "
                       "from (hf-config.json), dtype=float32, attn_implementation='eager'"}),
            row_keys=("prompts", "logits"))
        write_f64_logits(d, AutoModelForCausalLM.from_pretrained(
            str(hf), dtype=torch.float64, attn_implementation="eager").eval())
    dump = gguf_dump(gpath)
    meta = dump["metadata"]
    assert meta["general.architecture"]["value"] == "phi3"
    assert {t for t in dump["tensors"]} >= {"blk.0.attn_qkv.weight", "rope_factors_long.weight"}, list(dump["tensors"])[:8]
    write_gguf_metadata(d / "gguf_metadata.json", dump,
                        "every KV pair in tiny-phi3.gguf as read back by gguf.GGUFReader and every tensor's ggml "
                        "type and ne; written by llama.cpp's convert_hf_to_gguf.py (llama-cpp-python "
                        f"{LLAMA_CPP_PYTHON_VERSION}) --outtype f32 from tiny-phi3's weights with hf-config.json")
    log(f"  tiny-phi3-gguf: {gpath.stat().st_size} bytes, chkhsh {conv['chkhsh']}")
    return dict(size=folder_size(d))


# ----------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--only", default="tiny,quants,kquants,smollm2,gguf-spm,gguf-spm-phi3,tiny-qwen2-gguf,tiny-qwen3-gguf,"
                                      "tiny-phi3-gguf,f64",
                    help="comma list of: tiny, quants, kquants (llama.cpp's K-quantization), smollm2, gguf-spm, tiny-qwen2-gguf (or a tiny model "
                         "name), f64 (only the float64 logits of the existing f32 references)")
    ap.add_argument("--smollm2-gguf", default=None,
                    help=f"path to {SMOLLM2_NAME} (default: $KEEL_CACHE/models/, see fetch_smollm2.sh)")
    ap.add_argument("--llama-cpp", default=None,
                    help="folder holding llama.cpp's convert_hf_to_gguf.py, conversion/ and gguf-py/ (default: "
                         f"$KEEL_CACHE/llama.cpp/llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}/, see fetch_llama_cpp.sh)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    torch = quiet_torch(args.threads)
    torch.use_deterministic_algorithms(True)
    import transformers

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
    if "kquants" in only:
        make_kquants(out)
    missing = False
    if "gguf-spm-phi3" in only:
        make_phi3_vocab(out)
    if "smollm2" in only:
        p = find_smollm2(args.smollm2_gguf)
        if p is None:
            log("smollm2: GGUF not found; run scripts/fetch_smollm2.sh (or pass --smollm2-gguf). Skipped.")
            missing = True
        else:
            t = time.time()
            make_smollm2(out, p)
            timings["smollm2"] = time.time() - t
    for name, make in (("gguf-spm", make_gguf_spm), ("tiny-qwen2-gguf", make_qwen_gguf),
                       ("tiny-qwen3-gguf", lambda o, lc: make_qwen_gguf(o, lc, "qwen3")),
                       ("tiny-phi3-gguf", make_phi3_gguf)):
        if name not in only:
            continue
        lc = find_llama_cpp(args.llama_cpp)
        if lc is None:
            log(f"{name}: llama.cpp converter not found; run scripts/fetch_llama_cpp.sh (or pass --llama-cpp). Skipped.")
            missing = True
            continue
        t = time.time()
        make(out, lc)
        timings[name] = time.time() - t
    # After the f32 references they are measured against.
    for name, gguf_file in F64_REFERENCES.items():
        if "f64" in only or name in only or ("tiny" in only and name in TINY_SPECS):
            if (out / name / "logits.json").is_file():
                write_f64_logits(out / name, load_f64(out / name, gguf_file))
    log("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    if missing:
        sys.exit(2)


if __name__ == "__main__":
    main()
