#!/usr/bin/env python3
"""Independent sanity check of tests/fixtures/ (no transformers involved).

- tiny-*: a float64 numpy Llama/Qwen2/Mistral forward pass (HF rotate_half RoPE, llama3 scaling,
  GQA, optional q/k/v bias, tied lm_head) over the saved safetensors; compares with logits.json.
- gguf-spm, tiny-qwen2-gguf: the same forward pass over the f32 tensors of the GGUF as stored (llama
  q/k stay permuted and use llama.cpp's adjacent-pair rope); compares with logits.json. gguf-spm's
  tokens/scores/token types are also checked against sentencepiece.model.
- gguf-quants: re-reads quants.gguf with gguf.GGUFReader, dequantizes, compares with expected.safetensors.
- smollm2: checks the greedy answer text and that argmax(last_logits) is the first answer token.

Usage: python3 scripts/check_fixtures.py [fixtures_dir]
"""
import json
import math
import sys
from pathlib import Path

import numpy as np

FIX = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def load_weights(d: Path) -> dict:
    import torch  # safetensors' numpy loader has no bf16; torch reads all three dtypes
    from safetensors.torch import load_file

    w = {}
    for f in sorted(d.glob("*.safetensors")):
        w.update({k: v.float().numpy().astype(np.float64) for k, v in load_file(str(f)).items()})
    return w


def rope_inv_freq(cfg: dict) -> np.ndarray:
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    rp = cfg.get("rope_parameters") or {**(cfg.get("rope_scaling") or {}), "rope_theta": cfg["rope_theta"]}
    inv = 1.0 / rp["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    if rp.get("rope_type", "default") == "llama3":
        f, lo, hi, om = (rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"],
                         rp["original_max_position_embeddings"])
        wl = 2 * math.pi / inv
        scaled = np.where(wl > om / lo, inv / f, inv)
        smooth = (om / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / f + smooth * scaled
        medium = (wl >= om / hi) & (wl <= om / lo)
        inv = np.where(medium, smoothed, scaled)
    return inv


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def forward(w: dict, cfg: dict, ids: list[int], interleaved: bool = False) -> np.ndarray:
    H, KV, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    hd = cfg.get("head_dim") or D // H
    eps, T = cfg["rms_norm_eps"], len(ids)
    x = w["model.embed_tokens.weight"][ids]
    ang = np.arange(T)[:, None] * rope_inv_freq(cfg)[None]
    ang = np.concatenate([ang, ang], -1)
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(t):  # HF convention: rotate_half over the two halves of head_dim
        if interleaved:  # llama.cpp's "normal" rope: adjacent pairs (2i, 2i+1) share frequency i
            c, s_ = cos[..., :hd // 2], sin[..., :hd // 2]
            a, b = t[..., 0::2], t[..., 1::2]
            out = np.empty_like(t)
            out[..., 0::2], out[..., 1::2] = a * c - b * s_, a * s_ + b * c
            return out
        return t * cos + np.concatenate([-t[..., hd // 2:], t[..., :hd // 2]], -1) * sin

    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."

        def lin(name, h):
            y = h @ w[p + name + ".weight"].T
            b = w.get(p + name + ".bias")
            return y if b is None else y + b

        h = rms(x, w[p + "input_layernorm.weight"], eps)
        q = rope(lin("self_attn.q_proj", h).reshape(T, H, hd).transpose(1, 0, 2))
        k = rope(lin("self_attn.k_proj", h).reshape(T, KV, hd).transpose(1, 0, 2))
        v = lin("self_attn.v_proj", h).reshape(T, KV, hd).transpose(1, 0, 2)
        k, v = np.repeat(k, H // KV, 0), np.repeat(v, H // KV, 0)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd) + np.triu(np.full((T, T), -np.inf), 1)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        x = x + lin("self_attn.o_proj", (s @ v).transpose(1, 0, 2).reshape(T, H * hd))
        h = rms(x, w[p + "post_attention_layernorm.weight"], eps)
        g, u = lin("mlp.gate_proj", h), lin("mlp.up_proj", h)
        x = x + lin("mlp.down_proj", g / (1 + np.exp(-g)) * u)
    x = rms(x, w["model.norm.weight"], eps)
    return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T


GGUF_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
              "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
              "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj"}


def load_gguf(path: Path) -> tuple[dict, dict, str]:
    """HF-named f64 weights and a config dict from an f32 GGUF, tensors exactly as stored: llama.cpp
    keeps q/k of `llama` permuted for its adjacent-pair rope, so the forward uses that rope there."""
    import gguf

    r = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    arch = meta["general.architecture"]
    w = {}
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, (t.name, t.tensor_type)
        a = np.asarray(t.data, dtype=np.float64).reshape([int(x) for x in reversed(t.shape)])
        parts = t.name.split(".")
        if parts[0] == "blk":
            name = f"model.layers.{parts[1]}.{GGUF_NAMES[parts[2]]}.{parts[3]}"
        else:
            name = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                    "output": "lm_head"}[parts[0]] + "." + parts[1]
        w[name] = a
    cfg = {"hidden_size": meta[f"{arch}.embedding_length"], "num_hidden_layers": meta[f"{arch}.block_count"],
           "num_attention_heads": meta[f"{arch}.attention.head_count"],
           "num_key_value_heads": meta[f"{arch}.attention.head_count_kv"],
           "rms_norm_eps": meta[f"{arch}.attention.layer_norm_rms_epsilon"],
           "rope_theta": meta[f"{arch}.rope.freq_base"]}
    return w, cfg, arch


def check_spm_vocab(d: Path) -> bool:
    """gguf-spm: tokens/scores/token types in vocab.gguf against sentencepiece.model, the way
    convert_hf_to_gguf.py maps them (ids listed in tokenizer_config's added_tokens_decoder get score
    -1000 and CONTROL/USER_DEFINED)."""
    import gguf
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(d / "sentencepiece.model"))
    r = gguf.GGUFReader(str(d / "vocab.gguf"))
    f = {k: r.fields[f"tokenizer.ggml.{k}"].contents() for k in ("tokens", "scores", "token_type")}
    overridden = {1: 3, 2: 3, 3: 4}  # <s> </s> CONTROL, <tool> USER_DEFINED
    good = f["tokens"] == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    for i in range(sp.vocab_size()):
        typ = 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
        typ, score = (overridden[i], -1000.0) if i in overridden else (typ, sp.get_score(i))
        good &= f["token_type"][i] == typ and f["scores"][i] == np.float32(score)
    print(f"gguf-spm: vocab.gguf tokens/scores/token_type vs sentencepiece.model {'OK' if good else 'FAIL'}")
    return bool(good)


def main():
    ok = True
    for d in sorted(FIX.glob("*")):
        ref_path = d / "logits.json"
        if not ref_path.is_file():
            continue
        ref = json.loads(ref_path.read_text())
        if "gguf_file" not in ref:
            continue
        w, cfg, arch = load_gguf(d / ref["gguf_file"])
        diff = max(float(np.abs(forward(w, cfg, p, interleaved=(arch == "llama")) - np.array(l)).max())
                   for p, l in zip(ref["prompts"], ref["logits"]))
        idiff = float(np.abs(rope_inv_freq(cfg) - np.array(ref["rope_inv_freq"])).max())
        good = diff < 5e-4 and idiff < 1e-6
        ok &= good
        print(f"{d.name}: numpy f64 on {ref['gguf_file']} ({arch}, rope {'adjacent pairs' if arch == 'llama' else 'halves'})"
              f" vs logits.json max|diff| {diff:.2e}, inv_freq {idiff:.1e} {'OK' if good else 'FAIL'}")
    if (FIX / "gguf-spm" / "sentencepiece.model").is_file():
        ok &= check_spm_vocab(FIX / "gguf-spm")

    for d in sorted(FIX.glob("tiny-*")):
        if not (d / "config.json").is_file():
            continue
        cfg = json.loads((d / "config.json").read_text())
        ref = json.loads((d / "logits.json").read_text())
        w = load_weights(d)
        diff = max(float(np.abs(forward(w, cfg, p) - np.array(l)).max())
                   for p, l in zip(ref["prompts"], ref["logits"]))
        idiff = float(np.abs(rope_inv_freq(cfg) - np.array(ref["rope_inv_freq"])).max())
        good = diff < 5e-4 and idiff < 1e-6
        ok &= good
        print(f"{d.name}: numpy f64 vs logits.json max|diff| {diff:.2e}, inv_freq {idiff:.1e} "
              f"{'OK' if good else 'FAIL'}")

    q = FIX / "gguf-quants"
    if q.exists():
        import gguf
        from safetensors.numpy import load_file

        exp = load_file(str(q / "expected.safetensors"))
        r = gguf.GGUFReader(str(q / "quants.gguf"))
        for t in r.tensors:
            raw = np.asarray(t.data).view(np.uint8).reshape(2, -1)
            deq = gguf.quants.dequantize(raw, t.tensor_type)
            same = np.array_equal(deq.astype(np.float32), exp[t.name])
            ok &= same
            print(f"gguf-quants/{t.name}: {t.tensor_type.name} ne={list(map(int, t.shape))} "
                  f"{'OK' if same else 'FAIL'}")

    s = FIX / "smollm2" / "reference.json"
    if s.exists():
        from safetensors.numpy import load_file

        ref = json.loads(s.read_text())
        lg = load_file(str(FIX / "smollm2" / "last_logits.safetensors"))["logits"]
        g = ref["chat"]["greedy"]
        good = (g["answer_text"] == "The capital of France is Paris."
                and int(np.argmax(lg)) == g["answer_ids"][0] == ref["chat"]["last_logits"]["argmax"])
        ok &= good
        print(f"smollm2: answer {g['answer_text']!r} {'OK' if good else 'FAIL'}")
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
