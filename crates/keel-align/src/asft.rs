//! The AsFT regulariser: `λ Σ_modules ‖(I − C)·ΔW‖²_F`, added to the
//! training loss so the update stays in the narrow basin around the
//! alignment direction. For a LoRA, with `D = b − b·C` (keel layout),
//! `‖ΔW·(I − C)‖² = s² · sum((aᵀa) ∘ (D·Dᵀ))`: rank-r products only, and
//! differentiable in `a` and `b`.

use burn::tensor::Tensor;
use keel_adapters::Linear;

use crate::Subspace;

/// The unweighted penalty over every module with adapter `name` and an
/// alignment update; `None` when no module has both.
pub fn penalty(
    linears: &[(String, &Linear)],
    name: &str,
    subspace: &Subspace,
) -> Option<Tensor<1>> {
    linears
        .iter()
        .filter_map(|(module, layer)| {
            let adapter = layer.adapter(name)?;
            let (a, b) = (adapter.a.val(), adapter.b.val());
            let d = b.clone() - subspace.project_b(module, b)?;
            let ata = a.clone().transpose().matmul(a);
            Some(
                ata.mul(d.clone().matmul(d.transpose()))
                    .sum()
                    .mul_scalar(adapter.scale * adapter.scale),
            )
        })
        .reduce(|x, y| x + y)
}
