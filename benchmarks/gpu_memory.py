#!/usr/bin/env python3
"""GPU memory of LoRA training on a base kept in GGUF blocks (issue 22), computed: the largest
Llama / Qwen size that trains in 8, 12 and 16 GB at seq 2048, batch 1, r16 on all seven
projections, activation checkpointing, AdamW.

What keel's wgpu path holds on the device (crates/keel-adapters/src/gpu_blocks.rs, keel-model):
  - the base: the projections' blocks (llama.cpp's Q4_K_M mix; their bytes, as in the file), uploaded
    once, and one layer's weight at a time dequantized to f32 by a CubeCL kernel for each product
    (largest projection);
  - the embeddings, and an untied head, dense in f32 on the device (a lookup and the head's product
    read them whole);
  - LoRA: f32 parameters, gradients and AdamW's two moments (16 bytes a parameter);
  - activations, with checkpointing: each layer's input (seq x hidden f32), plus one layer's
    recomputed working set: attention a block of 256 queries at a time (keel-model's
    attention/chunked.rs: scores, probabilities and, in backward, their gradients, [heads, 256, seq]
    each, 4 of them), the MLP four [seq, intermediate] tensors;
  - the head, 256 rows at a time (keel-model's head/chunked.rs): a chunk's [256, vocab] logits,
    exponentials and probabilities (f32, 3 of them), and each row's gradient, [seq, hidden], kept.
An allocator overhead factor (pages kept for reuse, padding) multiplies the sum; it is measured on
lavapipe by `keel bench train --device wgpu` (docs/performance-quantized.md) and given as
--overhead.

    python3 benchmarks/gpu_memory.py [--overhead 1.3]   # prints a markdown table
"""
import argparse

GB = 1e9
# (name, hidden, intermediate, layers, heads, kv heads, vocab, tied)
MODELS = [
    ("Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 151936, True),
    ("Qwen2.5-1.5B", 1536, 8960, 28, 12, 2, 151936, True),
    ("Llama-3.2-3B", 3072, 8192, 28, 24, 8, 128256, True),
    ("Qwen2.5-3B", 2048, 11008, 36, 16, 2, 151936, True),
    ("Qwen2.5-7B", 3584, 18944, 28, 28, 4, 152064, False),
    ("Llama-3.1-8B", 4096, 14336, 32, 32, 8, 128256, False),
    ("Qwen2.5-14B", 5120, 13824, 48, 40, 8, 152064, False),
]
Q4_K, Q6_K, Q5_0, Q8_0 = 144 / 256, 210 / 256, 22 / 32, 34 / 32  # bytes per value


def more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def per_value(cols: int, wanted: float) -> float:
    """llama.cpp's fallback when 256-value blocks do not fit a row."""
    if cols % 256 == 0:
        return wanted
    return Q5_0 if wanted == Q4_K else Q8_0


def estimate(hidden, inter, layers, heads, kv, vocab, tied, seq=2048, rank=16):
    d = hidden // heads
    shapes = {  # (out, in)
        "q": (heads * d, hidden), "k": (kv * d, hidden), "v": (kv * d, hidden), "o": (hidden, heads * d),
        "gate": (inter, hidden), "up": (inter, hidden), "down": (hidden, inter),
    }
    blocks = 0.0
    for i in range(layers):
        for name, (o, n) in shapes.items():
            q = Q6_K if name in ("v", "down") and more_bits(i, layers) else Q4_K
            blocks += o * n * per_value(n, q)
    head = vocab * hidden * per_value(hidden, Q6_K)
    embed = 0 if tied else vocab * hidden * per_value(hidden, Q4_K)
    file_bytes = blocks + head + embed
    lora = layers * sum(rank * (o + n) for o, n in shapes.values())
    f32 = 4
    block = min(seq, 256)
    parts = {
        "base blocks": blocks,
        "one layer's weight, dequantized": max(o * n for o, n in shapes.values()) * f32,
        "embeddings (and untied head), f32": vocab * hidden * f32 * (1 if tied else 2),
        "LoRA + AdamW": lora * 16,
        "layer inputs": layers * seq * hidden * f32,
        "one layer recomputed": (4 * heads * block * seq + 4 * seq * inter + 6 * seq * hidden) * f32,
        "head activations": (3 * block * vocab + seq * hidden) * f32,
    }
    return file_bytes, sum(parts.values()), parts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--overhead", type=float, default=1.3)
    ap.add_argument("--seq", type=int, default=2048)
    args = ap.parse_args()
    print(f"| model | Q4_K_M file | device memory at seq {args.seq} (x{args.overhead} overhead) | fits 8 / 12 / 16 GB |")
    print("|---|---|---|---|")
    for name, *cfg in MODELS:
        file_bytes, total, _ = estimate(*cfg, seq=args.seq)
        need = total * args.overhead
        fits = " / ".join("yes" if need <= g * GB else "no" for g in (8, 12, 16))
        print(f"| {name} | {file_bytes / GB:.2f} GB | {need / GB:.2f} GB | {fits} |")


if __name__ == "__main__":
    main()
