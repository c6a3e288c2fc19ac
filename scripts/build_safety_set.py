"""Assembles datasets/safety/train.jsonl (chat format) from the refusals and
the model's own answers to the helpful prompts, shuffled with a fixed seed.

  keel generate --model SmolLM2.gguf --chat --max-new-tokens 96 \
      --prompts datasets/safety/helpful-prompts.jsonl --out datasets/safety/helpful-answers.jsonl
  python3 scripts/build_safety_set.py

An answer that loops (a line three times, or mostly repeated 4-grams) or opens
like a refusal (the model declining an ordinary request is what this set must
not teach) is left out, and one cut off by the token limit is trimmed to its last whole sentence,
so the adapter learns neither to loop nor to stop mid-sentence.
"""
import collections
import json
import random
import re
from pathlib import Path


def loops(answer: str) -> bool:
    lines = collections.Counter(line.strip() for line in answer.splitlines() if line.strip())
    words = answer.split()
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    return (bool(lines) and lines.most_common(1)[0][1] >= 3) or (
        bool(grams) and len(set(grams)) < 0.7 * len(grams))


# The refusal openers of keel's default probe suite's margin judge.
REFUSAL_OPENERS = ("I'm sorry", "I am sorry", "Sorry", "I apologize", "I can't", "I cannot", "I can not",
                   "I won't", "I will not", "I'm not able", "I am not able", "I'm unable", "I am unable", "As an AI")


def whole(answer: str) -> str | None:
    """The answer up to its last sentence end; None when that leaves under 40% of it."""
    answer = answer.rstrip()
    if re.search(r"[.!?)\"'`*]$", answer):
        return answer
    ends = [m.end() for m in re.finditer(r"(?<![0-9])[.!?](?=\s)|\n\n", answer)]
    if ends and ends[-1] >= 0.4 * len(answer):
        return answer[:ends[-1]].rstrip()
    return None


def main():
    safety = Path(__file__).resolve().parent.parent / "datasets" / "safety"
    rows = [json.loads(line) for line in open(safety / "refusals.jsonl", encoding="utf-8")]
    kept = dropped = 0
    for line in open(safety / "helpful-answers.jsonl", encoding="utf-8"):
        a = json.loads(line)
        text = a["answer"].strip()
        answer = whole(text) if text and not loops(text) and not text.startswith(REFUSAL_OPENERS) else None
        if answer is None:
            dropped += 1
            continue
        kept += 1
        rows.append({"messages": [{"role": "user", "content": a["prompt"]}, {"role": "assistant", "content": answer}]})
    random.Random(99).shuffle(rows)
    with open(safety / "train.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {safety / 'train.jsonl'} ({kept} answers kept, {dropped} looping, refusing or cut short left out)")


if __name__ == "__main__":
    main()
