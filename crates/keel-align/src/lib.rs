//! Alignment-preserving adaptation.
//!
//! The safety behaviour of an aligned model lives, to first order, in the
//! update that aligned it: `V = W_aligned − W_base` per weight matrix. Its
//! alignment matrix `C = V Vᵀ / ‖V‖_F` ([`Subspace`]) is what the methods
//! here keep a domain adapter's update `ΔW` close to:
//!
//! - [`safe_lora`]: after training, project the modules whose update is far
//!   from that subspace, `ΔW ← C ΔW` (Hsu et al. 2024, "Safe LoRA").
//! - [`asft`]: during training, penalise the part of the update outside
//!   it, `λ Σ ‖(I − C) ΔW‖²_F` (AsFT, "Anchoring Safety During LLM
//!   Fine-Tuning Within Narrow Safety Basin", 2025).
//!
//! - [`safemerge`]: after training, merge the modules whose update is far
//!   from it with a safety LoRA (Djuhera et al. 2025, "SafeMERGE").
//!
//! - [`layers`]: find the layers where harmful and harmless prompts
//!   separate, to keep the adapter off them.
//!
//! When the aligned model is a base plus a safety LoRA, `V = s·B_s·A_s` and
//! nothing is densified: every product is taken through the rank-r factors.

pub mod asft;
pub mod layers;
pub mod safe_lora;
pub mod safemerge;
mod subspace;

pub use subspace::Subspace;

/// Adapter `name` of `module`, which the caller found among `linears`.
pub(crate) fn adapter_mut<'a>(
    linears: &'a mut [(String, &mut keel_adapters::Linear)],
    module: &str,
    name: &str,
) -> &'a mut keel_adapters::Adapter {
    let (_, layer) = linears
        .iter_mut()
        .find(|(n, _)| n == module)
        .expect("a module listed from these linears");
    layer
        .adapters
        .iter_mut()
        .find(|a| a.name == name)
        .expect("a module with this adapter")
}

/// Replaces a factor by `value` as a fresh leaf, so the result can still
/// be trained or saved.
pub(crate) fn set_factor(
    factor: &mut burn::module::Param<burn::tensor::Tensor<2>>,
    value: burn::tensor::Tensor<2>,
) {
    *factor = burn::module::Param::initialized(factor.id, value.detach())
        .set_require_grad(factor.is_require_grad());
}

/// keel's safety set (`datasets/safety/train.jsonl`, chat): 360 AdvBench
/// requests with refusals and ordinary requests with SmolLM2-Instruct's
/// own answers. The recommended preset's KL anchors (or replay) use it; the
/// probe sets' prompts are held apart from it.
pub const SAFETY_SET: &str = include_str!("../../../datasets/safety/train.jsonl");

/// keel's layout: a LoRA update is `ΔW = s·a·b` with `a` `[in, r]` and `b`
/// `[r, out]` (HF's weight is the transpose, `[out, in]`, so HF's `C·ΔW`
/// is keel's `ΔW·C`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Adapter(#[from] keel_adapters::Error),
    #[error(transparent)]
    Probes(#[from] keel_probes::Error),
    #[error("module `{module}`: {reason}")]
    Module { module: String, reason: String },
}

#[cfg(test)]
mod tests;
