#!/usr/bin/env python3
"""The SafeMERGE fixture: what SafeMERGE's own code (aladinD/SafeMERGE: utils.py's
compute_safelora_cos, then PEFT's add_weighted_adapter with combination_type="linear", per module)
makes of keel's PEFT fixtures on tiny-llama:

  task       tests/fixtures/peft/lora-all   r=4, alpha=8, all 7 projections
  reference  tests/fixtures/peft/rslora     the alignment update V = s·B·A (q/o/up_proj only)
  safety     tests/fixtures/peft/safemerge/safety/   written here: r=4, alpha=16, all 7, seeded

Writes tests/fixtures/peft/safemerge/:
  safety/          the safety LoRA (PeftModel.save_pretrained)
  merged/          the adapter SafeMERGE gives: PEFT's linear merge of task and safety weighted
                   [1 - w, w] in each module whose cos(C·ΔW, ΔW) < threshold (C = V Vᵀ / ‖V‖_F),
                   [1, 0] (the task LoRA) elsewhere, including modules V leaves alone (SafeMERGE's
                   code would zero those; keel keeps the task's update there)
  safemerge.json   the threshold (midway between the two middle similarities, so about half the
                   compared modules merge), the weight 0.2, and per module its similarity and
                   whether it merged

usage: python3 scripts/make_safemerge_fixture.py
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import quiet_torch, rnd, write_json  # noqa: E402
from make_peft_fixtures import ALL7, load_base, normalize_adapter_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PEFT = REPO / "tests" / "fixtures" / "peft"
BASE = REPO / "tests" / "fixtures" / "tiny-llama"
WEIGHT = 0.2
SEED, STD = 2121, 0.03


def delta(layer, adapter):
    """B·A of one adapter in a PEFT LoRA layer, float64 (the scale does not change a cosine)."""
    return layer.lora_B[adapter].weight.double() @ layer.lora_A[adapter].weight.double()


def main():
    torch = quiet_torch(1)
    import peft
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora import LoraLayer

    torch.use_deterministic_algorithms(True)
    out = PEFT / "safemerge"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    # The safety LoRA: seeded weights, as make_peft_fixtures.py makes its cases.
    model = get_peft_model(load_base(BASE), LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=16,
                                                        target_modules=ALL7, lora_dropout=0.0))
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(STD * torch.randn(p.shape, generator=g, dtype=torch.float32))
    model.save_pretrained(out / "safety")
    (out / "safety" / "README.md").unlink(missing_ok=True)
    normalize_adapter_config(out / "safety" / "adapter_config.json", "tiny-llama")

    pm = PeftModel.from_pretrained(load_base(BASE), str(PEFT / "lora-all"), adapter_name="task")
    pm.load_adapter(str(out / "safety"), adapter_name="safety")
    pm.load_adapter(str(PEFT / "rslora"), adapter_name="reference")
    layers = {n.removeprefix("base_model.model."): m for n, m in pm.named_modules()
              if isinstance(m, LoraLayer) and "task" in m.lora_A}

    # SafeMERGE's criterion, per module the alignment update touches.
    sims = {}
    for name, layer in layers.items():
        if "reference" not in layer.lora_A:
            continue
        v = delta(layer, "reference")
        c = v @ v.T / torch.linalg.norm(v)
        dw = delta(layer, "task")
        sims[name] = float(torch.nn.functional.cosine_similarity((c @ dw).flatten(), dw.flatten(), dim=0))
    ordered = sorted(sims.values())
    k = len(ordered) // 2
    threshold = (ordered[k - 1] + ordered[k]) / 2
    merged = {n for n, s in sims.items() if s < threshold}

    pm.add_weighted_adapter(["task", "safety"], [1 - WEIGHT, WEIGHT], "mix", combination_type="linear")
    pm.add_weighted_adapter(["task", "safety"], [1.0, 0.0], "safemerge", combination_type="linear")
    with torch.no_grad():
        for name in merged:
            for side in (layers[name].lora_A, layers[name].lora_B):
                side["safemerge"].weight.copy_(side["mix"].weight)
    pm.save_pretrained(out / "tmp", selected_adapters=["safemerge"])
    shutil.move(out / "tmp" / "safemerge", out / "merged")
    shutil.rmtree(out / "tmp")
    (out / "merged" / "README.md").unlink(missing_ok=True)
    normalize_adapter_config(out / "merged" / "adapter_config.json", "tiny-llama")

    write_json(out / "safemerge.json", {
        "peft_version": peft.__version__,
        "threshold": threshold,
        "weight": WEIGHT,
        "modules": {n: {"similarity": rnd(sims[n]), "merged": n in merged} for n in sorted(sims)},
    })
    for f in out.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    print(f"{len(merged)} of {len(sims)} compared modules merged (threshold {threshold:.6f}); wrote {out}")


if __name__ == "__main__":
    main()
