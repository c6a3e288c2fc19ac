#!/usr/bin/env python3
"""The HF PEFT side of `keel bench train`: the same workload in transformers +
PEFT on PyTorch. LoRA r16, alpha 32, dropout 0 on q,k,v,o,gate,up,down;
AdamW lr 1e-4; random tokens, `--batch` x `--seq`; `--warmup` untimed steps,
then `--steps` timed ones. Prints one JSON line with the same keys as keel's.

usage: python3 benchmarks/peft_reference.py --model HF_DIR [--dtype fp32|bf16]
       [--gradient-checkpointing] [--seq 256] [--batch 4] [--warmup 2] [--steps 8]

Needs scripts/requirements-ref.txt (torch, transformers, peft). HF_DIR is an HF
folder of the model: `keel convert SmolLM2.gguf --out DIR` gives the very
weights keel trains.
"""
import argparse
import json
import os
import resource
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.utils import logging  # noqa: E402

logging.set_verbosity_error()

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
p.add_argument("--gradient-checkpointing", action="store_true")
p.add_argument("--seq", type=int, default=256)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--steps", type=int, default=8)
a = p.parse_args()

dtype = torch.float32 if a.dtype == "fp32" else torch.bfloat16
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
if a.gradient_checkpointing:
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets,
                                         task_type="CAUSAL_LM"))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
g = torch.Generator().manual_seed(0)
data = torch.randint(0, model.config.vocab_size, (a.warmup + a.steps, a.batch, a.seq), generator=g)
times = []
for i in range(a.warmup + a.steps):
    t0 = time.perf_counter()
    loss = model(input_ids=data[i], labels=data[i]).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i >= a.warmup:
        times.append(time.perf_counter() - t0)
step_s = statistics.median(times)
print(json.dumps({
    "tool": "peft", "model": a.model, "device": "cpu", "base_dtype": a.dtype,
    "activation_checkpointing": a.gradient_checkpointing, "seq": a.seq, "batch": a.batch,
    "timed_steps": len(times), "step_s": step_s, "tokens_per_s": a.batch * a.seq / step_s,
    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "torch_threads": torch.get_num_threads(),
}))
