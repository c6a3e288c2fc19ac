//! One adapter on one linear layer: LoRA (`s·B(A(x))`) or DoRA.
//!
//! Shapes follow Burn's `[in, out]` convention: A is `[in, r]`, B is
//! `[r, out]` (HF PEFT stores their transposes, `lora_A` `[r, in]` and
//! `lora_B` `[out, r]`). The update is always computed from A and B, never
//! from a dense `A·B`, except for DoRA's weight norm and an explicit merge.

use burn::module::{Module, Param, ParamId};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::Tensor;
use burn::tensor::module::linear;

use keel_adapter_config::Variant;

#[derive(Module, Debug)]
pub struct Adapter {
    #[module(skip)]
    pub name: String,
    pub a: Param<Tensor<2>>,
    pub b: Param<Tensor<2>>,
    /// DoRA's learned per-output magnitude `m`; `None` for LoRA.
    pub magnitude: Option<Param<Tensor<1>>>,
    pub dropout: Dropout,
    pub scale: f64,
    /// Whether this adapter takes part in the forward pass.
    #[module(skip)]
    pub active: bool,
    /// Set while the update is merged into the base weight; for DoRA it
    /// holds the column factors the merge applied, so unmerge can undo them.
    #[module(skip)]
    pub merged: Option<Option<Tensor<2>>>,
    /// PiSSA and OLoRA: the starting A and B, whose update `s·A₀·B₀` was
    /// taken out of the base. Export appends `-A₀·B₀` (a rank-2r LoRA, as
    /// PEFT converts them) so the adapter applies to the original base.
    #[module(skip)]
    pub initial: Option<(Tensor<2>, Tensor<2>)>,
}

/// A parameter id from names: FNV-1a over the parts, the same id in every
/// process and on every platform, so optimizer state saved in a checkpoint
/// finds its parameter again when the run resumes.
pub fn param_id(parts: &[&str]) -> ParamId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.join("\u{1f}").bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    ParamId::from(h)
}

impl Adapter {
    /// A trainable adapter `name` on `module`; its parameter ids derive
    /// from both names ([`param_id`]).
    pub fn new(
        module: &str,
        name: &str,
        a: Tensor<2>,
        b: Tensor<2>,
        magnitude: Option<Tensor<1>>,
        scale: f64,
        dropout: f64,
    ) -> Self {
        let id = |part: &str| param_id(&[module, name, part]);
        Adapter {
            name: name.to_string(),
            a: Param::initialized(id("lora_A"), a).set_require_grad(true),
            b: Param::initialized(id("lora_B"), b).set_require_grad(true),
            magnitude: magnitude
                .map(|m| Param::initialized(id("magnitude"), m).set_require_grad(true)),
            dropout: DropoutConfig::new(dropout).init(),
            scale,
            active: true,
            merged: None,
            initial: None,
        }
    }

    pub fn variant(&self) -> Variant {
        match self.magnitude {
            Some(_) => Variant::Dora,
            None => Variant::Lora,
        }
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[1]
    }

    /// The rank of [`Adapter::factors_on_original_base`].
    pub fn exported_rank(&self) -> usize {
        self.rank() * if self.initial.is_some() { 2 } else { 1 }
    }

    /// A and B as a plain LoRA on the original base: `[A | A₀]` and
    /// `[B ; -B₀]` when the start was taken out of the base, else A and B.
    pub fn factors_on_original_base(&self) -> (Tensor<2>, Tensor<2>) {
        let (a, b) = (self.a.val(), self.b.val());
        match &self.initial {
            Some((a0, b0)) => (
                Tensor::cat(vec![a, a0.clone()], 1),
                Tensor::cat(vec![b, b0.clone().neg()], 0),
            ),
            None => (a, b),
        }
    }

    /// The dense update `s·A·B`, `[in, out]`.
    pub fn delta_weight(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scale)
    }

    /// DoRA's factor per output, `m / ‖W + s·A·B‖` over each output
    /// column, `[1, out]`. The norm is detached, as in the DoRA paper and
    /// PEFT: gradients flow through `m` and the low-rank path only.
    fn dora_factor(&self, magnitude: &Param<Tensor<1>>, weight: &Tensor<2>) -> Tensor<2> {
        let delta = self.delta_weight();
        let norm = (weight.clone().cast(delta.dtype()) + delta)
            .detach()
            .square()
            .sum_dim(0)
            .sqrt();
        magnitude.val().unsqueeze::<2>().div(norm)
    }

    /// This adapter's contribution to `base(x)`, given `x`, the base output
    /// without bias and the frozen base weight as stored (DoRA uses it).
    pub fn forward<const D: usize>(
        &self,
        x: Tensor<D>,
        base: &Tensor<D>,
        weight: &Tensor<2>,
    ) -> Tensor<D> {
        let dropped = self.dropout.forward(x.clone());
        let lora = linear(
            linear(dropped.clone(), self.a.val(), None),
            self.b.val(),
            None,
        )
        .mul_scalar(self.scale);
        let Some(magnitude) = &self.magnitude else {
            return lora;
        };
        // With dropout active the base part also sees the dropped input (PEFT).
        let base = if self.dropout.prob > 0.0 && dropped.device().is_autodiff() {
            crate::frozen::matmul(dropped, weight.clone())
        } else {
            base.clone()
        };
        let factor = self.dora_factor(magnitude, weight).unsqueeze::<D>();
        base.mul(factor.clone().sub_scalar(1.0)) + lora.mul(factor)
    }

    /// The base weight with this adapter merged in, and what unmerge needs.
    pub fn merge_into(&self, weight: Tensor<2>) -> (Tensor<2>, Option<Tensor<2>>) {
        let updated = weight.clone() + self.delta_weight();
        match &self.magnitude {
            None => (updated, None),
            Some(m) => {
                let factor = self.dora_factor(m, &weight);
                (updated.mul(factor.clone()), Some(factor))
            }
        }
    }

    /// Undoes [`Adapter::merge_into`].
    pub fn unmerge_from(&self, weight: Tensor<2>, factor: Option<Tensor<2>>) -> Tensor<2> {
        let weight = match factor {
            Some(f) => weight.div(f),
            None => weight,
        };
        weight - self.delta_weight()
    }
}
