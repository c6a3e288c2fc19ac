#!/usr/bin/env python3
"""Soak benchmark: the tiny recipe for 2,000 steps on flex and 200 on wgpu
(lavapipe without a GPU); peak RSS (VmHWM, from each metrics.jsonl row) at
step 100 and at the end must differ by less than 5%. Prints the figures and
writes docs/reliability-soak.md.

usage: python3 scripts/soak.py [--flex-steps 2000] [--wgpu-steps 200]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def keel():
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/keel-target"))
    return str(target / "debug" / "keel")


def soak(device, steps, work):
    out = Path(work) / device
    cmd = [keel(), "train", str(ROOT / "recipes/tiny.toml"), "--overwrite", "--set", f"output.dir={out}",
           "--set", f"optim.steps={steps}", "--set", f'model.device="{device}"',
           "--set", f"output.save_every={max(steps // 4, 1)}", "--set", f"eval.every={max(steps // 4, 1)}"]
    t = time.time()
    env = {**os.environ, "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", "/tmp")}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.time() - t
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    peak = {r["step"]: r["peak_rss_bytes"] for r in rows if "peak_rss_bytes" in r}
    rss = {r["step"]: r["rss_bytes"] for r in rows if "rss_bytes" in r}
    early = min(100, steps // 2)
    growth = peak[steps] / peak[early] - 1
    return dict(device=device, steps=steps, wall_s=wall, early=early, peak_early=peak[early], peak_end=peak[steps],
                rss_early=rss[early], rss_end=rss[steps], growth=growth)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flex-steps", type=int, default=2000)
    ap.add_argument("--wgpu-steps", type=int, default=200)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="keel-soak-")
    rows = [soak("flex", args.flex_steps, work), soak("wgpu", args.wgpu_steps, work)]
    mib = lambda b: f"{b / 1048576:.1f} MiB"
    lines = [
        "# Soak figures",
        "",
        "Written by `scripts/soak.py`; do not edit by hand. The tiny recipe, checkpoints and eval every quarter",
        "of the run; peak RSS is the process's VmHWM as logged in metrics.jsonl. Target: < 5% growth.",
        "",
        "| device | steps | wall time | peak RSS at step N₀ | peak RSS at the end | growth | RSS now, at N₀ / at the end |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['device']} | {r['steps']} | {r['wall_s']:.0f} s | {mib(r['peak_early'])} (N₀ = {r['early']}) | "
                     f"{mib(r['peak_end'])} | {100 * r['growth']:+.2f}% | {mib(r['rss_early'])} / {mib(r['rss_end'])} |")
    text = "\n".join(lines) + "\n"
    (ROOT / "docs" / "reliability-soak.md").write_text(text)
    print(text)
    sys.exit(0 if all(abs(r["growth"]) < 0.05 for r in rows) else 1)


if __name__ == "__main__":
    main()
