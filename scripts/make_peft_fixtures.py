#!/usr/bin/env python3
"""Generate HF PEFT LoRA / DoRA adapter fixtures for keel's adapter tests.

Writes into tests/fixtures/peft/<case>/ (relative to the repo root):

  lora-all/       tiny-llama, r=4, alpha=8, all 7 projections
  lora-patterns/  tiny-llama, q/v/down, r=4, alpha=8, rank_pattern {down_proj: 8},
                  alpha_pattern {v_proj: 32}, layers_to_transform [0, 2] (layers_pattern null)
  rslora/         tiny-llama, use_rslora, r=8, alpha=16, target_modules as a regex string
  dora/           tiny-llama, use_dora, r=4, alpha=8, all 7 projections
  lora-qwen2/     tiny-qwen2 (q/k/v bias, f16 weights upcast to f32), r=4, alpha=8, all 7 projections
  lora-qwen3/     tiny-qwen3 (per-head q/k norm, head_dim != hidden/heads), r=4, alpha=8, all 7 projections
  lora-gemma3/    tiny-gemma3 (sliding layers, GeGLU, (1 + w) norms), r=4, alpha=8, all 7 projections,
                  modules_to_save [pre_feedforward_layernorm]: a Gemma norm trained in full
  lora-phi3/      tiny-phi3, r=4, alpha=8, its four fused-or-not projections (qkv_proj, o_proj,
                  gate_up_proj, down_proj): PEFT adapts the fused ones as single layers
  modules-to-save/ tiny-qwen2, o/up r=4, alpha=8, modules_to_save [model.layers.1.self_attn.q_proj
                  (with its bias), post_attention_layernorm]: modules trained in full

Each folder holds what `PeftModel.save_pretrained` wrote (adapter_config.json,
adapter_model.safetensors; the README.md model card is removed) and logits.json, computed by
reloading the base (float32, eager) + `PeftModel.from_pretrained(base, dir)` from disk; and
logits_f64.json, the same in float64 (the yardstick keel's tests measure f32 rounding against).

PEFT's default init makes lora_B zero (a no-op), so after get_peft_model every lora_A / lora_B
weight is overwritten with seeded N(0, std) values (std per case, chosen so that the adapter moves
the logits clearly); DoRA magnitudes are multiplied by N(1, 0.1); modules_to_save copies get
N(0, saved_std) added.

Two things are normalized after save_pretrained so that re-running gives byte-identical files:
`base_model_name_or_path` is set to the base folder name (not an absolute path), and list-valued
`target_modules` is sorted (PEFT keeps it as a set and writes it in hash order). The file is
re-written in PEFT's own format (json.dumps(indent=2, sort_keys=True)).

Usage:
  python3 scripts/make_peft_fixtures.py [--only lora-all,dora,...] [--fixtures DIR] [--threads 1]
  python3 scripts/make_peft_fixtures.py --f64     # only logits_f64.json of the existing cases
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FIXTURES = REPO / "tests" / "fixtures"
SIG_DIGITS = 7
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# std of the N(0, std) values written into every lora_A / lora_B weight. The tiny bases (weights
# ~N(0, 0.5), hidden 64) are very sensitive: 0.03 already moves the logits by 2-5 (like a real LoRA
# moves SmolLM2's by ~2) and flips a few argmaxes. DoRA's N(1, 0.1) magnitude alone moves them by ~17;
# its larger std 0.06 keeps the direction part visible (a DoRA norm taken from W alone instead of
# W + scale*B@A changes the logits by 1.1, one without `scale` by 0.58).
CASES = {
    "lora-all": dict(
        base="tiny-llama", seed=2001, std=0.03,
        config=dict(r=4, lora_alpha=8, target_modules=ALL7, lora_dropout=0.0),
    ),
    "lora-patterns": dict(
        base="tiny-llama", seed=2002, std=0.04,
        # layers_pattern is left None: PEFT then finds the layer index with the regex
        # r".*?\.[^.]*\.(?P<idx>\d+)\." (first "<name>.<digits>." segment, here "layers.N.").
        config=dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0,
                    rank_pattern={"down_proj": 8}, alpha_pattern={"v_proj": 32}, layers_to_transform=[0, 2]),
    ),
    "rslora": dict(
        base="tiny-llama", seed=2003, std=0.03,
        config=dict(r=8, lora_alpha=16, use_rslora=True, target_modules=r".*\.(q_proj|o_proj|up_proj)",
                    lora_dropout=0.0),
    ),
    "dora": dict(
        base="tiny-llama", seed=2009, std=0.06, magnitude_std=0.1,
        config=dict(r=4, lora_alpha=8, use_dora=True, target_modules=ALL7, lora_dropout=0.0),
    ),
    "lora-qwen2": dict(
        base="tiny-qwen2", seed=2055, std=0.03,
        config=dict(r=4, lora_alpha=8, target_modules=ALL7, lora_dropout=0.0),
    ),
    "lora-qwen3": dict(
        base="tiny-qwen3", seed=2066, std=0.03,
        config=dict(r=4, lora_alpha=8, target_modules=ALL7, lora_dropout=0.0),
    ),
    "lora-gemma3": dict(
        base="tiny-gemma3", seed=2088, std=0.03, saved_std=0.05,
        config=dict(r=4, lora_alpha=8, target_modules=ALL7, lora_dropout=0.0,
                    modules_to_save=["pre_feedforward_layernorm"]),
    ),
    "lora-phi3": dict(
        base="tiny-phi3", seed=2099, std=0.03,
        config=dict(r=4, lora_alpha=8, target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
                    lora_dropout=0.0),
    ),
    "modules-to-save": dict(
        base="tiny-qwen2", seed=2077, std=0.03, saved_std=0.05,
        config=dict(r=4, lora_alpha=8, target_modules=["o_proj", "up_proj"], lora_dropout=0.0,
                    modules_to_save=["model.layers.1.self_attn.q_proj", "post_attention_layernorm"]),
    ),
}


# The JSON conventions (7 significant digits, one row per line) are make_fixtures.py's own.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import (  # noqa: E402
    folder_size, load_f64, log, quiet_torch, rnd, rnd_list, write_f64_logits, write_json,
)


def load_base(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def forward_all(model, prompts) -> list[np.ndarray]:
    import torch

    out = []
    with torch.no_grad():
        for p in prompts:
            out.append(model(torch.tensor([p])).logits[0].float().numpy().astype(np.float64))
    return out


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def normalize_adapter_config(path: Path, base_name: str):
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = base_name
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    # exactly PeftConfig.save_pretrained's format
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def lora_modules_info(peft_model) -> dict:
    """{module path (as in the base model): {r, lora_alpha, scaling, dora}} read back from the
    loaded PEFT model: the ground truth of how PEFT resolved target_modules / patterns."""
    from peft.tuners.lora import LoraLayer

    info = {}
    for name, m in peft_model.base_model.model.named_modules():
        if isinstance(m, LoraLayer) and "default" in m.r:
            info[name] = dict(r=int(m.r["default"]), lora_alpha=float(m.lora_alpha["default"]),
                              scaling=rnd(m.scaling["default"]),
                              dora=bool(m.use_dora.get("default", False)))
    return info


# ----------------------------------------------------------------------------------------------

def make_case(name: str, spec: dict, fixtures: Path) -> dict:
    import peft
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    base_dir = fixtures / spec["base"]
    base_ref = json.loads((base_dir / "logits.json").read_text())
    prompts = base_ref["prompts"]
    d = fixtures / "peft" / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)

    # ---- build: base (f32, eager) + get_peft_model, then non-trivial seeded weights
    torch.manual_seed(spec["seed"])
    base = load_base(base_dir)
    config = LoraConfig(task_type="CAUSAL_LM", **spec["config"])
    model = get_peft_model(base, config)
    g = torch.Generator().manual_seed(spec["seed"])
    n_ab = n_mag = 0
    with torch.no_grad():
        for pname, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if ".lora_A." in pname or ".lora_B." in pname:
                p.copy_(spec["std"] * torch.randn(p.shape, generator=g, dtype=torch.float32))
                n_ab += 1
            elif ".modules_to_save." in pname:
                # the module's trained copy: moved away from the base it starts as
                p.add_(spec["saved_std"] * torch.randn(p.shape, generator=g, dtype=torch.float32))
                n_ab += 1
            elif "lora_magnitude_vector" in pname:
                p.mul_(1.0 + spec.get("magnitude_std", 0.1) * torch.randn(p.shape, generator=g, dtype=torch.float32))
                n_mag += 1
    assert n_ab > 0 and (n_mag > 0) == bool(spec["config"].get("use_dora")), (n_ab, n_mag)
    model.save_pretrained(d)
    (d / "README.md").unlink(missing_ok=True)
    normalize_adapter_config(d / "adapter_config.json", spec["base"])
    del model, base

    # ---- reference: reload base + adapter from disk, exactly as a user would
    base_logits = forward_all(load_base(base_dir), prompts)
    # sanity: the base reproduces its own fixture (7 significant digits)
    base_fix = [np.asarray(l, dtype=np.float64) for l in base_ref["logits"]]
    assert max_abs_diff(base_logits, base_fix) < 1e-4, f"{name}: base does not reproduce {spec['base']}/logits.json"

    base = load_base(base_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = PeftModel.from_pretrained(base, str(d)).eval()
    bad = [w for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert not bad, f"{name}: PeftModel.from_pretrained warned: {[str(w.message) for w in bad]}"
    modules = lora_modules_info(pm)
    logits = forward_all(pm, prompts)
    merged = pm.merge_and_unload()
    merged_logits = forward_all(merged, prompts)

    change = max_abs_diff(logits, base_logits)
    merged_diff = max_abs_diff(logits, merged_logits)
    absmax = max(float(np.abs(l).max()) for l in logits)
    assert change > 0.5, f"{name}: adapter moves logits by only {change}"
    assert absmax < 100, f"{name}: logits absmax {absmax}"
    assert merged_diff < 1e-3, f"{name}: merge_and_unload differs by {merged_diff}"

    gaps = [np.sort(l, axis=-1) for l in logits]
    min_gap = min(float((g[:, -1] - g[:, -2]).min()) for g in gaps)
    argmax_changed = sum(int((a.argmax(-1) != b.argmax(-1)).sum()) for a, b in zip(logits, base_logits))
    n_pos = sum(len(p) for p in prompts)
    write_json(d / "logits.json", {
        "case": name,
        "base": spec["base"],
        "peft_version": peft.__version__,
        "compute_dtype": "float32",
        "attn_implementation": "eager",
        "sig_digits": SIG_DIGITS,
        "init": {"lora_A_B": f"N(0, {spec['std']}) seed {spec['seed']}",
                 "magnitude": "PEFT init * N(1, 0.1)" if n_mag else None},
        "modules": modules,
        "max_change_vs_base": rnd(change),
        "merged_logits_max_diff": rnd(merged_diff),
        "argmax_changed_positions": [argmax_changed, n_pos],
        "logits_absmax": rnd(absmax),
        "min_top2_gap": rnd(min_gap),
        "prompts": prompts,
        "logits": [rnd_list(l) for l in logits],
    }, row_keys=("prompts", "logits"))
    write_f64(name, spec, fixtures)
    for f in d.iterdir():
        f.chmod(0o644)
    size = folder_size(d)
    log(f"  {name}: {len(modules)} adapted modules, max change vs base {change:.4f}, merged diff "
        f"{merged_diff:.3g}, logits absmax {absmax:.2f}, argmax changed {argmax_changed}/{n_pos}, {size} bytes")
    return dict(size=size, change=change, merged_diff=merged_diff)


def write_f64(name: str, spec: dict, fixtures: Path):
    """logits_f64.json: the saved adapter on the base, both in float64."""
    from peft import PeftModel

    d = fixtures / "peft" / name
    model = PeftModel.from_pretrained(load_f64(fixtures / spec["base"], None), str(d)).double().eval()
    write_f64_logits(d, model)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default=str(DEFAULT_FIXTURES),
                    help="fixtures root holding tiny-llama/ and tiny-qwen2/; output goes to <root>/peft/")
    ap.add_argument("--only", default=",".join(CASES), help="comma list of cases: " + ", ".join(CASES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--f64", action="store_true", help="only write logits_f64.json for the existing cases")
    args = ap.parse_args()

    torch = quiet_torch(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    torch.use_deterministic_algorithms(True)

    fixtures = Path(args.fixtures)
    only = [c for c in args.only.split(",") if c]
    unknown = set(only) - set(CASES)
    if unknown:
        ap.error(f"unknown case(s): {sorted(unknown)}")
    if args.f64:
        for name in only:
            write_f64(name, CASES[name], fixtures)
        return
    total = 0
    for name in only:
        t = time.time()
        info = make_case(name, CASES[name], fixtures)
        total += info["size"]
        log(f"    ({time.time() - t:.1f}s)")
    log(f"total {total} bytes")
    assert total < 3_000_000


if __name__ == "__main__":
    main()
