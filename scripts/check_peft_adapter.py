#!/usr/bin/env python3
"""Interop judge for PEFT adapters that keel exports.

  python3 scripts/check_peft_adapter.py BASE_DIR ADAPTER_DIR KEEL_LOGITS_JSON [--tolerance 1e-4]

Loads the base model the way a user would (`AutoModelForCausalLM.from_pretrained(BASE_DIR,
dtype=float32, attn_implementation="eager")`) and the adapter with
`PeftModel.from_pretrained(base, ADAPTER_DIR)`, then checks:

  1. load: PEFT raises nothing and emits no warning. Warnings are errors here; the only ones let
     through are API-deprecation categories (DeprecationWarning, FutureWarning,
     PendingDeprecationWarning), which describe the library versions, not the adapter (with the
     pinned versions, transformers' "`is_gradient_checkpointing` is deprecated" FutureWarning fires
     on every PeftModel construction). This catches "Found missing adapter keys ...", "Unexpected
     keyword arguments ... for class LoraConfig" (unknown adapter_config.json keys), and unmatched
     rank_pattern / alpha_pattern keys; a wrong `r` makes torch raise "size mismatch".
  2. keys: `PeftModel.from_pretrained` warns about missing keys only, and drops the load result
     that lists unexpected ones. So the adapter is loaded a second time with
     `model.load_adapter(ADAPTER_DIR, adapter_name="keel_check")`, whose returned load result
     (`missing_keys`, `unexpected_keys`) must both be empty; and the tensor names in
     adapter_model.safetensors must equal the keys PEFT itself would save for this config
     (`get_peft_model_state_dict`), with equal shapes.
  3. numbers, on the prompts in KEEL_LOGITS_JSON ({"prompts": [[ids]...], "logits": [[[vocab]
     per position] per prompt]}): max |PEFT - keel| <= tolerance, argmax equal at every position,
     and the adapter matters: max |PEFT adapter - PEFT base (adapter disabled)| > 10 x tolerance.

Prints one summary line (PASS/FAIL with the numbers) on stdout; exit status 0 only if every check
passes, 1 if a check fails, 2 for bad arguments or unreadable input.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

ALLOWED_WARNING_CATEGORIES = (DeprecationWarning, FutureWarning, PendingDeprecationWarning)
CHECK_ADAPTER_NAME = "keel_check"


def die(msg: str, code: int = 2):
    print(f"ERROR: {msg}", flush=True)
    sys.exit(code)


class StrictWarnings:
    """Context manager: every warning raises, except the API-deprecation categories, which are
    recorded (and reported) instead."""

    def __init__(self):
        self.ignored: list[str] = []

    def __enter__(self):
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        self._old_show = warnings.showwarning
        warnings.simplefilter("error")
        for cat in ALLOWED_WARNING_CATEGORIES:
            warnings.simplefilter("always", cat)

        def show(message, category, filename, lineno, file=None, line=None):
            self.ignored.append(f"{category.__name__}: {str(message).splitlines()[0][:120]}")

        warnings.showwarning = show
        return self

    def __exit__(self, *exc):
        warnings.showwarning = self._old_show
        return self._cm.__exit__(*exc)


def read_keel_logits(path: Path):
    try:
        obj = json.loads(path.read_text())
    except Exception as e:  # noqa: BLE001
        die(f"cannot read {path}: {e}")
    prompts, logits = obj.get("prompts"), obj.get("logits")
    if not isinstance(prompts, list) or not isinstance(logits, list) or not prompts:
        die(f"{path}: needs non-empty 'prompts' and 'logits' lists")
    if len(prompts) != len(logits):
        die(f"{path}: {len(prompts)} prompts but {len(logits)} logits entries")
    arrs = []
    for i, (p, l) in enumerate(zip(prompts, logits)):
        if not p or not all(isinstance(t, int) and t >= 0 for t in p):
            die(f"{path}: prompt {i} is not a non-empty list of token ids")
        a = np.asarray(l, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != len(p):
            die(f"{path}: logits[{i}] has shape {a.shape}, expected [{len(p)}, vocab]")
        if not np.isfinite(a).all():
            die(f"{path}: logits[{i}] has non-finite values")
        arrs.append(a)
    return prompts, arrs


def forward_all(model, prompts) -> list[np.ndarray]:
    import torch

    out = []
    with torch.no_grad():
        for p in prompts:
            out.append(model(torch.tensor([p])).logits[0].float().numpy().astype(np.float64))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base_dir")
    ap.add_argument("adapter_dir")
    ap.add_argument("keel_logits_json")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max abs logit difference (default 1e-4)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    tol = args.tolerance
    base_dir, adapter_dir = Path(args.base_dir), Path(args.adapter_dir)
    if not (base_dir / "config.json").is_file():
        die(f"{base_dir} has no config.json")
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter_dir / f).is_file():
            die(f"{adapter_dir} has no {f}")
    prompts, keel = read_keel_logits(Path(args.keel_logits_json))

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_fixtures import quiet_torch

    torch = quiet_torch(args.threads)
    import transformers
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()

    failures: list[str] = []
    name = adapter_dir.name

    def one_line(msg: str) -> str:
        return " ".join(msg.split())

    def fail_now(msg: str):
        print(f"FAIL {name}: {one_line(msg)}", flush=True)
        sys.exit(1)

    # ---- 1. load, as a user would; warnings are errors
    try:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                    attn_implementation="eager").eval()
    except Exception as e:  # noqa: BLE001
        die(f"cannot load base {base_dir}: {type(e).__name__}: {e}")
    sw = StrictWarnings()
    try:
        with sw:
            model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    except Warning as w:
        fail_now(f"PeftModel.from_pretrained warned ({type(w).__name__}, turned into an error): "
                 f"{str(w)[:600]}")
    except Exception as e:  # noqa: BLE001
        fail_now(f"PeftModel.from_pretrained raised {type(e).__name__}: {str(e)[:600]}")

    # ---- 3. numbers (before anything else touches the model)
    vocab = model.config.vocab_size
    for i, a in enumerate(keel):
        if a.shape[1] != vocab:
            fail_now(f"keel logits[{i}] have {a.shape[1]} columns, the model's vocab is {vocab}")
        if max(prompts[i]) >= vocab:
            fail_now(f"prompt {i} has a token id >= vocab {vocab}")
    ref = forward_all(model, prompts)
    with model.disable_adapter():
        base_logits = forward_all(model, prompts)

    diff = max(float(np.abs(r - k).max()) for r, k in zip(ref, keel))
    effect = max(float(np.abs(r - b).max()) for r, b in zip(ref, base_logits))
    keel_effect = max(float(np.abs(k - b).max()) for k, b in zip(keel, base_logits))
    n_pos = sum(len(p) for p in prompts)
    mism = [(i, j) for i, (r, k) in enumerate(zip(ref, keel))
            for j in np.nonzero(r.argmax(-1) != k.argmax(-1))[0].tolist()]
    if diff > tol:
        failures.append(f"max |PEFT - keel| = {diff:.3g} > tolerance {tol:g}")
    if mism:
        failures.append(f"argmax differs at {len(mism)} position(s) (prompt, pos): {mism[:8]}")
    if not effect > 10 * tol:
        failures.append(f"adapter does not visibly matter: max |adapter - base| = {effect:.3g} "
                        f"<= 10 x tolerance ({10 * tol:g})")

    # ---- 2. keys: the adapter file vs what PEFT expects / reports
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        file_shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    with warnings.catch_warnings():
        # save_embedding_layers="auto" looks for base_model_name_or_path's config.json to see whether the
        # vocabulary changed; a relative or missing name only makes it warn and assume it did not.
        warnings.filterwarnings("ignore", message="Could not find a config file")
        expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model, adapter_name="default").items()}
    missing = sorted(set(expected) - set(file_shapes))
    unexpected = sorted(set(file_shapes) - set(expected))
    bad_shape = sorted(k for k in set(expected) & set(file_shapes) if expected[k] != file_shapes[k])
    if missing:
        failures.append(f"{len(missing)} tensor(s) PEFT expects are not in the file: {missing[:4]}")
    if unexpected:
        failures.append(f"{len(unexpected)} tensor(s) in the file that PEFT does not use: {unexpected[:4]}")
    if bad_shape:
        failures.append(f"shape mismatch: {[(k, file_shapes[k], expected[k]) for k in bad_shape[:4]]}")
    try:
        with sw:
            res = model.load_adapter(str(adapter_dir), adapter_name=CHECK_ADAPTER_NAME)
        if res.missing_keys:
            failures.append(f"load_adapter reports missing keys: {list(res.missing_keys)[:4]}")
        if res.unexpected_keys:
            failures.append(f"load_adapter reports unexpected keys: {list(res.unexpected_keys)[:4]}")
    except Warning as w:
        failures.append(f"load_adapter warned ({type(w).__name__}): {str(w)[:300]}")
    except Exception as e:  # noqa: BLE001
        failures.append(f"load_adapter raised {type(e).__name__}: {str(e)[:300]}")

    summary = (f"{name}: positions={n_pos} vocab={vocab} max_abs_diff={diff:.3g} (tol {tol:g}) "
               f"argmax_mismatch={len(mism)}/{n_pos} adapter_effect={effect:.4g} "
               f"keel_effect={keel_effect:.4g} tensors={len(file_shapes)}")
    if sw.ignored:
        summary += f" ignored_warnings={len(set(sw.ignored))}"
    if failures:
        print(f"FAIL {summary} | " + one_line(" ; ".join(failures)), flush=True)
        sys.exit(1)
    print(f"PASS {summary}", flush=True)


if __name__ == "__main__":
    main()
