#!/usr/bin/env python3
"""Fault injection for `keel train`: kill -9 at random moments, SIGINT and
SIGTERM, a full disk and a read-only output folder, on the tiny recipe.
Prints its figures and writes them to docs/reliability-faults.md.

usage: python3 scripts/fault_harness.py [--trials 20] [--kills 3] [--seed 1]
(needs a built keel: $CARGO_TARGET_DIR/debug/keel; the disk tests need root
to mount a tmpfs and are skipped without it)

kill -9: each trial runs the recipe (checkpoint every step, so kills land in
checkpoint writes too), sends SIGKILL at up to --kills random moments, each
followed by `keel train --resume`, and lets the last run finish. After every
kill, every checkpoint on disk must load (`keel adapter info` reads its
adapter, its state.json parses, its optimizer files are there), and the
finished run must equal an uninterrupted one: the adapter file byte for
byte, and metrics.jsonl with every step exactly once and the same losses.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny.toml"
STEPS = 60
SETS = [f"optim.steps={STEPS}", "output.save_every=1", "eval.every=20"]


def keel():
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/keel-target"))
    return str(target / "debug" / "keel")


def train_cmd(out, resume):
    cmd = [keel(), "train", str(RECIPE), "--set", f"output.dir={out}"]
    for s in SETS:
        cmd += ["--set", s]
    return cmd + (["--resume"] if resume else ["--overwrite"])


def start(out, resume):
    return subprocess.Popen(train_cmd(out, resume), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", "/tmp")})


def losses(out):
    rows = []
    for line in (Path(out) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            rows.append((row["step"], row["loss"]))
    return rows


def check_checkpoints(out):
    """Every checkpoint folder on disk loads; returns how many there are."""
    root = Path(out) / "checkpoints"
    if not root.exists():
        return 0
    n = 0
    for ck in sorted(root.iterdir()):
        if ck.name.startswith("."):  # a write in progress, never named by `latest`
            continue
        n += 1
        state = json.loads((ck / "state.json").read_text())
        assert state["step"] == int(ck.name.split("-")[1]), ck
        for f in ("optimizer-a.bpk", "optimizer-b.bpk"):
            assert (ck / f).stat().st_size > 0, ck / f
        r = subprocess.run([keel(), "adapter", "info", str(ck)], capture_output=True, text=True)
        assert r.returncode == 0, f"{ck}: {r.stderr}"
    latest = Path(out) / "latest"
    if latest.exists():
        assert (root / latest.read_text().strip() / "state.json").exists(), "latest names a missing checkpoint"
    return n


def run_to_end(out, resume):
    p = start(out, resume)
    _, err = p.communicate()
    assert p.returncode == 0, err.decode()[-2000:]


def kill_trials(args, reference, duration):
    rng = random.Random(args.seed)
    ok, kills, in_write = 0, 0, 0
    failures = []
    for t in range(args.trials):
        out = Path(args.work) / f"trial-{t}"
        resume = False
        try:
            for _ in range(rng.randint(1, args.kills)):
                p = start(out, resume)
                time.sleep(rng.uniform(0.05, duration * 0.9))
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                    kills += 1
                    in_write += any(x.name.startswith(".") for x in (out / "checkpoints").glob(".*")) \
                        if (out / "checkpoints").exists() else 0
                else:
                    p.communicate()
                check_checkpoints(out)
                resume = True
            run_to_end(out, resume)
            check_checkpoints(out)
            same_adapter = (out / "adapter/adapter_model.safetensors").read_bytes() == reference["adapter"]
            got = losses(out)
            steps_ok = [s for s, _ in got] == list(range(1, STEPS + 1))
            same_losses = got == reference["losses"]
            assert same_adapter, "final adapter differs from the uninterrupted run's"
            assert steps_ok, f"metrics steps {[s for s, _ in got][:80]}"
            assert same_losses, "loss curve differs"
            ok += 1
        except AssertionError as e:
            failures.append(f"trial {t}: {e}")
        shutil.rmtree(out, ignore_errors=True)
    return dict(trials=args.trials, passed=ok, kills=kills, kills_mid_checkpoint=in_write, failures=failures)


def signal_trials(reference, duration, work):
    out_rows = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        out = Path(work) / f"sig-{sig.name}"
        p = start(out, False)
        time.sleep(duration * 0.6)
        sent = time.time()
        p.send_signal(sig)
        _, err = p.communicate()
        took = time.time() - sent
        latest = (out / "latest").read_text().strip() if (out / "latest").exists() else None
        n = check_checkpoints(out)
        run_to_end(out, True)
        same = (out / "adapter/adapter_model.safetensors").read_bytes() == reference["adapter"]
        out_rows.append(dict(signal=sig.name, exit_code=p.returncode, exit_s=round(took, 3), checkpoint=latest,
                             checkpoints=n, resumed_equal=same))
        shutil.rmtree(out, ignore_errors=True)
    return out_rows


def disk_trials(work):
    """A 1 MiB tmpfs fills after a few checkpoints; a read-only one refuses the first write."""
    if os.geteuid() != 0:
        return [dict(case="disk", skipped="needs root to mount a tmpfs")]
    rows = []
    for case, opts in (("disk full (1 MiB tmpfs)", "size=1m"), ("read-only folder", "ro,size=1m")):
        mnt = Path(work) / case.split()[0]
        mnt.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], check=True)
        try:
            out = mnt / "run"
            p = start(out, False)
            _, err = p.communicate()
            err = err.decode().strip().splitlines()
            message = next((l for l in err if l.startswith("error")), err[-1] if err else "")
            n = check_checkpoints(out) if out.exists() else 0
            latest = (out / "latest").read_text().strip() if (out / "latest").exists() else None
            rows.append(dict(case=case, exit_code=p.returncode, message=message[:300], checkpoints_intact=n,
                             latest=latest))
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    args.work = tempfile.mkdtemp(prefix="keel-faults-")
    ref_dir = Path(args.work) / "reference"
    t0 = time.time()
    run_to_end(ref_dir, False)
    duration = time.time() - t0
    reference = dict(adapter=(ref_dir / "adapter/adapter_model.safetensors").read_bytes(), losses=losses(ref_dir))

    kills = kill_trials(args, reference, duration)
    signals = signal_trials(reference, duration, args.work)
    disk = disk_trials(args.work)
    shutil.rmtree(args.work, ignore_errors=True)

    lines = [
        "# Fault injection figures",
        "",
        "Written by `scripts/fault_harness.py`; do not edit by hand.",
        f"Recipe: `recipes/tiny.toml` with `{' '.join(SETS)}` (an uninterrupted run takes {duration:.1f} s here).",
        "",
        "## kill -9 and resume",
        "",
        f"- trials passed: **{kills['passed']}/{kills['trials']}** (each: up to 3 SIGKILLs at random moments,"
        " `--resume` after each, then run to the end)",
        f"- SIGKILLs sent: {kills['kills']}, of which {kills['kills_mid_checkpoint']} left a checkpoint"
        " half-written (a `.step-N.partial` folder, never named by `latest`)",
        "- checked after every kill: every checkpoint on disk loads; at the end: the adapter equals the uninterrupted"
        " run's byte for byte, metrics.jsonl holds steps 1..N once each with the same losses",
    ]
    lines += [f"- FAILED {f}" for f in kills["failures"]]
    lines += ["", "## SIGINT / SIGTERM", "", "| signal | exit code | exit time after the signal | checkpoint written | resumed run equals the uninterrupted one |", "|---|---|---|---|---|"]
    for r in signals:
        lines.append(f"| {r['signal']} | {r['exit_code']} | {r['exit_s']:.2f} s | {r['checkpoint']} | {r['resumed_equal']} |")
    lines += ["", "## Disk", "", "| case | exit code | message | checkpoints on disk, all loading | `latest` |", "|---|---|---|---|---|"]
    for r in disk:
        if "skipped" in r:
            lines.append(f"| {r['case']} | skipped: {r['skipped']} | | | |")
        else:
            lines.append(f"| {r['case']} | {r['exit_code']} | `{r['message']}` | {r['checkpoints_intact']} | {r['latest']} |")
    text = "\n".join(lines) + "\n"
    (ROOT / "docs" / "reliability-faults.md").write_text(text)
    print(text)
    ok = kills["passed"] == kills["trials"] and all(r["exit_code"] == 0 and r["resumed_equal"] for r in signals) \
        and all("skipped" in r or (r["exit_code"] != 0 and r["message"].startswith("error")) for r in disk)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
