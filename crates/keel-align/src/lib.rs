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
//! - [`layers`]: find the layers where harmful and harmless prompts
//!   separate, to keep the adapter off them.
//!
//! When the aligned model is a base plus a safety LoRA, `V = s·B_s·A_s` and
//! nothing is densified: every product is taken through the rank-r factors.

pub mod asft;
pub mod layers;
pub mod safe_lora;
mod subspace;

pub use subspace::Subspace;

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
