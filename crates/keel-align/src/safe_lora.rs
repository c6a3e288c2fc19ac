//! Safe LoRA (Hsu et al. 2024, "Safe LoRA: the Silver Lining of Reducing
//! Safety Risks when Finetuning Large Language Models"): after training,
//! compare each module's update `ΔW` with its projection `C·ΔW` onto the
//! alignment subspace; where they are dissimilar (cosine below a threshold,
//! or the `k` least similar modules), replace the update by the projection.
//! For a LoRA, `C·ΔW` is again a LoRA with the same `a` and `b·C`, so the
//! result exports like any adapter. Cost: a few rank-r products per module.

use burn::tensor::Tensor;
use keel_adapters::Linear;
use keel_recipe::SafeLora;
use serde::Serialize;

use crate::{Subspace, adapter_mut, set_factor};

/// One module's similarity to the alignment subspace.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleSimilarity {
    pub module: String,
    /// cos(ΔW, C·ΔW) in the Frobenius inner product.
    pub similarity: f64,
    pub projected: bool,
}

/// ⟨a·x, a·y⟩_F for `x`, `y` `[r, out]`: `sum((aᵀa) ∘ (x·yᵀ))`, rank-r sized.
fn inner(ata: &Tensor<2>, x: &Tensor<2>, y: &Tensor<2>) -> f64 {
    ata.clone()
        .mul(x.clone().matmul(y.clone().transpose()))
        .sum()
        .into_scalar::<f32>() as f64
}

/// Per module with adapter `name` and an alignment update: cos(ΔW, C·ΔW)
/// and the projected `b`.
pub(crate) fn similarities(
    linears: &[(String, &Linear)],
    name: &str,
    subspace: &Subspace,
) -> Vec<(String, f64, Tensor<2>)> {
    linears
        .iter()
        .filter_map(|(module, layer)| {
            let adapter = layer.adapter(name)?;
            let (a, b) = (adapter.a.val(), adapter.b.val());
            let projected = subspace.project_b(module, b.clone())?;
            let ata = a.clone().transpose().matmul(a);
            let cos = inner(&ata, &b, &projected)
                / (inner(&ata, &b, &b) * inner(&ata, &projected, &projected)).sqrt();
            Some((module.clone(), cos, projected))
        })
        .collect()
}

/// How similar each module's update is to the alignment subspace, without
/// changing anything (what the drift report shows).
pub fn report(
    linears: &[(String, &Linear)],
    name: &str,
    subspace: &Subspace,
) -> Vec<ModuleSimilarity> {
    similarities(linears, name, subspace)
        .into_iter()
        .map(|(module, similarity, _)| ModuleSimilarity {
            module,
            similarity,
            projected: false,
        })
        .collect()
}

/// Projects adapter `name`'s modules as `mode` says; returns every
/// module's similarity and whether it was projected.
pub fn apply(
    linears: &mut [(String, &mut Linear)],
    name: &str,
    subspace: &Subspace,
    mode: SafeLora,
) -> Vec<ModuleSimilarity> {
    let view: Vec<(String, &Linear)> = linears.iter().map(|(n, l)| (n.clone(), &**l)).collect();
    let sims = similarities(&view, name, subspace);
    let mut order: Vec<usize> = (0..sims.len()).collect();
    // NaN (a zero update) sorts last: nothing to project.
    order.sort_by(|&i, &j| sims[i].1.total_cmp(&sims[j].1).then(i.cmp(&j)));
    let top = |k: usize, i: usize| order.iter().take(k).any(|&o| o == i);
    let chosen: Vec<bool> = (0..sims.len())
        .map(|i| match mode {
            SafeLora::Threshold(t) => sims[i].1 < t,
            SafeLora::TopK(k) => top(k, i),
            SafeLora::Share(f) => top((f * sims.len() as f64).ceil() as usize, i),
        })
        .collect();
    let mut out = Vec::with_capacity(sims.len());
    for ((module, similarity, projected), project) in sims.into_iter().zip(chosen) {
        if project {
            set_factor(&mut adapter_mut(linears, &module, name).b, projected);
        }
        out.push(ModuleSimilarity {
            module,
            similarity,
            projected: project,
        });
    }
    out
}
