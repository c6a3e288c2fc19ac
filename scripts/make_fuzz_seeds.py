#!/usr/bin/env python3
"""Seeds for the model fuzz targets (crates/keel-fuzz, feature `model`): a
micro Llama (hidden 8, one layer; fuzz/micro/, also the base the adapter
target attaches to, split into two shards with an index), a PEFT adapter
for it saved by PEFT itself, and JSONL rows of each format. Small on purpose:
the fuzzer runs faster on small inputs.

usage: python3 scripts/make_fuzz_seeds.py   (needs torch, transformers, peft)
"""
import json
import struct
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
MICRO = FUZZ / "micro"


def pack(a: bytes, b: bytes) -> bytes:
    """Two files in one input: a little-endian u32 length, then both."""
    return struct.pack("<I", len(a)) + a + b


def main():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=16, max_position_embeddings=32, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    MICRO.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(MICRO, safe_serialization=True)
    for extra in ("generation_config.json",):
        (MICRO / extra).unlink(missing_ok=True)
    config = (MICRO / "config.json").read_bytes()
    weights = (MICRO / "model.safetensors").read_bytes()

    corpus = lambda t: (FUZZ / "seeds" / t).mkdir(parents=True, exist_ok=True) or FUZZ / "seeds" / t
    (corpus("hf_model") / "micro").write_bytes(pack(config, weights))

    # The same weights in two shards, and the index naming them.
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    (MICRO / "sharded").mkdir(exist_ok=True)
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, MICRO / "sharded" / shard, metadata={"format": "pt"})
    (MICRO / "sharded" / "config.json").write_bytes(config)
    index = {"metadata": {"total_size": sum(v.numel() * 4 for v in state.values())},
             "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (corpus("safetensors_index") / "micro").write_text(json.dumps(index, indent=2, sort_keys=True))

    # A PEFT adapter on the micro model, as PEFT saves it.
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                  modules_to_save=["post_attention_layernorm"]))
    with tempfile.TemporaryDirectory() as d:
        peft_model.save_pretrained(d)
        a = (Path(d) / "adapter_config.json").read_bytes()
        b = (Path(d) / "adapter_model.safetensors").read_bytes()
    (corpus("peft_adapter") / "micro").write_bytes(pack(a, b))

    rows = {
        0: '{"text": "The cat sat."}\n{"text": ""}\n',
        1: '{"prompt": "2+2=", "completion": "4"}\n',
        2: '{"instruction": "Add", "input": "2 and 2", "output": "4"}\n{"instruction": "Hi", "output": "Hello"}\n',
        3: '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}\n',
    }
    for fmt, text in rows.items():
        (corpus("jsonl") / f"format{fmt}").write_bytes(bytes([fmt]) + text.encode())


if __name__ == "__main__":
    main()
