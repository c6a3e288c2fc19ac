"""Assembles datasets/safety/train.jsonl (chat format) from the refusals and
the model's own answers to the helpful prompts, shuffled with a fixed seed.

  keel generate --model SmolLM2.gguf --chat --max-new-tokens 96 \
      --prompts datasets/safety/helpful-prompts.jsonl --out datasets/safety/helpful-answers.jsonl
  python3 scripts/build_safety_set.py
"""
import json
import random
from pathlib import Path

safety = Path(__file__).resolve().parent.parent / "datasets" / "safety"
rows = [json.loads(line) for line in open(safety / "refusals.jsonl", encoding="utf-8")]
for line in open(safety / "helpful-answers.jsonl", encoding="utf-8"):
    a = json.loads(line)
    if a["answer"]:
        rows.append({"messages": [{"role": "user", "content": a["prompt"]}, {"role": "assistant", "content": a["answer"]}]})
random.Random(99).shuffle(rows)
with open(safety / "train.jsonl", "w", encoding="utf-8") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
print(f"wrote {len(rows)} rows to {safety / 'train.jsonl'}")
