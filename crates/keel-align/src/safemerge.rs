//! SafeMERGE (Djuhera et al. 2025, "SafeMERGE: Preserving Safety Alignment
//! in Fine-Tuned Large Language Models via Selective Layer-Wise Model
//! Merging"): after training, in each module whose update has left the
//! alignment subspace (Safe LoRA's cos(ΔW, C·ΔW) below a threshold), merge
//! the task LoRA with a safety LoRA, one trained on safety data on the same
//! aligned model; the other modules keep the task LoRA. The merge is the
//! authors' (their code calls PEFT's linear merge): A and B each become
//! `√((1−w)·s_t)·X_t + √(w·s_s)·X_s` at scale 1, so the update is
//! `(1−w)·ΔW_t + w·ΔW_s` plus the cross terms that merging the factors
//! separately brings. The ranks must agree, as PEFT's linear merge needs.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor};
use keel_adapters::Linear;
use keel_adapters::peft::AdapterFile;
use keel_adapters::resolve_targets;
use serde::Serialize;

use crate::subspace::matrix;
use crate::{Error, Subspace, adapter_mut, safe_lora, set_factor};

/// The safety LoRA's factors per module, keel's layout (`a` `[in, r]`, `b`
/// `[r, out]`), with its scale.
pub struct SafetyLora {
    modules: BTreeMap<String, (Tensor<2>, Tensor<2>, f64)>,
}

impl SafetyLora {
    pub fn from_adapter(file: &AdapterFile, device: &Device) -> Result<Self, Error> {
        let names: Vec<String> = file.modules.keys().cloned().collect();
        let specs = resolve_targets(&names, &file.config)?;
        let mut modules = BTreeMap::new();
        for (name, w) in &file.modules {
            let bad = |reason: &str| Error::Module {
                module: name.clone(),
                reason: format!("{}: {reason}", file.dir.display()),
            };
            let spec = specs
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| bad("not targeted by the safety adapter's own config"))?;
            if w.magnitude.is_some() {
                return Err(bad(
                    "a DoRA safety adapter has no factors to merge linearly",
                ));
            }
            let (a, b) = (
                matrix(&w.a.0, &w.a.1, device),
                matrix(&w.b.0, &w.b.1, device),
            );
            modules.insert(name.clone(), (a, b, spec.scale));
        }
        Ok(SafetyLora { modules })
    }

    /// Whether adapter `name` can be merged with this one: plain LoRA
    /// factors of the same shapes in every module both adapt. The trainer
    /// asks before training, so a mismatch costs no run.
    pub fn check(&self, linears: &[(String, &Linear)], name: &str) -> Result<(), Error> {
        for (module, layer) in linears {
            let (Some(adapter), Some((a_s, b_s, _))) =
                (layer.adapter(name), self.modules.get(module))
            else {
                continue;
            };
            let bad = |reason: String| Error::Module {
                module: module.clone(),
                reason,
            };
            if adapter.magnitude.is_some() || adapter.initial.is_some() {
                return Err(bad("SafeMERGE merges plain LoRA factors; a DoRA, PiSSA or OLoRA adapter has others".into()));
            }
            let (a_t, b_t) = (adapter.a.dims(), adapter.b.dims());
            if a_t != a_s.dims() || b_t != b_s.dims() {
                return Err(bad(format!(
                    "the adapter's factors are {a_t:?} and {b_t:?}, the safety LoRA's {:?} and {:?}: SafeMERGE merges LoRAs of one rank",
                    a_s.dims(),
                    b_s.dims()
                )));
            }
        }
        Ok(())
    }
}

/// One module's similarity to the alignment subspace, and whether it was
/// merged with the safety LoRA.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleMerge {
    pub module: String,
    /// cos(ΔW, C·ΔW) of the task update.
    pub similarity: f64,
    pub merged: bool,
}

/// Merges adapter `name` with `safety` in the modules whose similarity is
/// below `threshold`, the safety LoRA weighted `weight` (the task `1 −
/// weight`). A module the safety LoRA does not adapt is left as it is.
pub fn apply(
    linears: &mut [(String, &mut Linear)],
    name: &str,
    subspace: &Subspace,
    safety: &SafetyLora,
    threshold: f64,
    weight: f64,
) -> Result<Vec<ModuleMerge>, Error> {
    let view: Vec<(String, &Linear)> = linears.iter().map(|(n, l)| (n.clone(), &**l)).collect();
    safety.check(&view, name)?;
    let sims = safe_lora::similarities(&view, name, subspace);
    let mut out = Vec::with_capacity(sims.len());
    for (module, similarity, _) in sims {
        let merge = similarity < threshold;
        let safe = safety.modules.get(&module).filter(|_| merge);
        if let Some((a_s, b_s, s_s)) = safe {
            let adapter = adapter_mut(linears, &module, name);
            let (a_t, b_t) = (adapter.a.val(), adapter.b.val());
            // The merged factors at scale 1, divided by √s_t so the
            // adapter's own scale s_t gives the same update.
            let s_t = adapter.scale;
            let (ct, cs) = ((1.0 - weight).sqrt(), (weight * s_s / s_t).sqrt());
            let mix = |t: Tensor<2>, s: &Tensor<2>| t.mul_scalar(ct).add(s.clone().mul_scalar(cs));
            let (a, b) = (mix(a_t, a_s), mix(b_t, b_s));
            set_factor(&mut adapter.a, a);
            set_factor(&mut adapter.b, b);
        }
        out.push(ModuleMerge {
            module,
            similarity,
            merged: safe.is_some(),
        });
    }
    Ok(out)
}
