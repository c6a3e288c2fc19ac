//! The adaptable linear layer: a frozen base weight plus named adapters.

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor};

use crate::error::Error;
use crate::frozen::{self, QuantBase};
use crate::lora::Adapter;

/// `y = x·W + b + Σ adapter(x)` over the active, unmerged adapters. `W` is
/// `[in, out]` (Burn's layout; HF stores `[out, in]`) and never trained: it
/// holds no gradient and no optimizer state.
#[derive(Module, Debug)]
pub struct Linear {
    /// The base weight; empty (`[0, 0]`) when it is kept in GGUF blocks.
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub adapters: Vec<Adapter>,
    /// The base weight in its GGUF blocks, never dense: LoRA trains on it;
    /// what needs `W` itself (DoRA, PiSSA/OLoRA, merging) is refused.
    #[module(skip)]
    pub quantized: Option<QuantBase>,
}

impl Linear {
    /// A frozen layer from `weight` `[in, out]` and an optional bias.
    pub fn frozen(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Linear {
            weight: Param::from_tensor(weight).set_require_grad(false),
            bias: bias.map(|b| Param::from_tensor(b).set_require_grad(false)),
            adapters: Vec::new(),
            quantized: None,
        }
    }

    /// A frozen layer whose weight stays in its GGUF blocks, on `device`.
    pub fn quantized(base: QuantBase, bias: Option<Tensor<1>>, device: &Device) -> Self {
        Linear {
            quantized: Some(base),
            ..Self::frozen(Tensor::zeros([0, 0], device), bias)
        }
    }

    pub fn in_features(&self) -> usize {
        match &self.quantized {
            Some(q) => q.dims()[1],
            None => self.weight.dims()[0],
        }
    }

    pub fn out_features(&self) -> usize {
        match &self.quantized {
            Some(q) => q.dims()[0],
            None => self.weight.dims()[1],
        }
    }

    /// Why `what` cannot be done when the base weight is kept in blocks.
    pub(crate) fn needs_dense(&self, what: &str) -> Result<(), String> {
        match &self.quantized {
            Some(q) => Err(format!(
                "{what} needs the dense base weight; this one is kept in {} blocks",
                q.ggml_type().name()
            )),
            None => Ok(()),
        }
    }

    /// The base weight in `dtype`, for merging into (a half-precision base
    /// is stored in half).
    fn weight_as(&self, dtype: DType) -> Tensor<2> {
        self.weight.val().cast(dtype)
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let base = match &self.quantized {
            Some(q) => frozen::quant_matmul(x.clone(), q),
            None => frozen::matmul(x.clone(), self.weight.val()),
        };
        let mut out = base.clone();
        for adapter in self.live_adapters() {
            out = out + adapter.forward(x.clone(), &base, &self.weight.val());
        }
        match &self.bias {
            Some(b) => out + b.val().unsqueeze::<D>(),
            None => out,
        }
    }

    /// The adapters the forward pass adds: active and not merged.
    pub fn live_adapters(&self) -> impl Iterator<Item = &Adapter> {
        self.adapters
            .iter()
            .filter(|a| a.active && a.merged.is_none())
    }

    pub fn adapter(&self, name: &str) -> Option<&Adapter> {
        self.adapters.iter().find(|a| a.name == name)
    }

    pub fn adapter_mut(&mut self, name: &str) -> Option<&mut Adapter> {
        self.adapters.iter_mut().find(|a| a.name == name)
    }

    fn adapter_index(&self, name: &str) -> Result<usize, Error> {
        self.adapters
            .iter()
            .position(|a| a.name == name)
            .ok_or_else(|| Error::Module {
                module: String::new(),
                reason: format!("has no adapter named `{name}`"),
            })
    }

    /// Adds an adapter; its shapes must fit this layer and its name be new.
    pub fn add_adapter(&mut self, adapter: Adapter) -> Result<(), Error> {
        let bad = |reason: String| Error::Module {
            module: String::new(),
            reason,
        };
        if self.adapter(&adapter.name).is_some() {
            return Err(bad(format!(
                "already has an adapter named `{}`",
                adapter.name
            )));
        }
        let [a_in, r] = adapter.a.dims();
        let [b_r, b_out] = adapter.b.dims();
        if a_in != self.in_features() || b_out != self.out_features() || b_r != r {
            return Err(bad(format!(
                "adapter `{}` has A [{a_in}, {r}] and B [{b_r}, {b_out}]; this layer is [{} in, {} out]",
                adapter.name,
                self.in_features(),
                self.out_features()
            )));
        }
        if adapter.magnitude.is_some() {
            self.needs_dense("DoRA").map_err(bad)?;
        }
        if let Some(m) = &adapter.magnitude
            && m.dims()[0] != self.out_features()
        {
            return Err(bad(format!(
                "DoRA magnitude has {} entries for {} outputs",
                m.dims()[0],
                self.out_features()
            )));
        }
        self.adapters.push(adapter);
        Ok(())
    }

    pub fn remove_adapter(&mut self, name: &str) -> Result<Adapter, Error> {
        let i = self.adapter_index(name)?;
        if self.adapters[i].merged.is_some() {
            self.unmerge(name)?;
        }
        Ok(self.adapters.remove(i))
    }

    /// Makes exactly the named adapters active.
    pub fn set_active(&mut self, names: &[&str]) {
        for a in &mut self.adapters {
            a.active = names.contains(&a.name.as_str());
        }
    }

    /// Folds the adapter into the base weight: the forward pass then costs
    /// no more than the base model's. Merging twice is a no-op.
    pub fn merge(&mut self, name: &str) -> Result<(), Error> {
        let i = self.adapter_index(name)?;
        if self.adapters[i].merged.is_some() {
            return Ok(());
        }
        self.needs_dense("merging an adapter")
            .map_err(|reason| Error::Module {
                module: String::new(),
                reason,
            })?;
        let stored = self.weight.val().dtype();
        let (weight, factor) = self.adapters[i].merge_into(self.weight_as(DType::F32));
        self.weight = Param::from_tensor(weight.cast(stored)).set_require_grad(false);
        self.adapters[i].merged = Some(factor);
        Ok(())
    }

    /// Takes a merged adapter back out of the base weight.
    pub fn unmerge(&mut self, name: &str) -> Result<(), Error> {
        let i = self.adapter_index(name)?;
        let Some(factor) = self.adapters[i].merged.take() else {
            return Ok(());
        };
        let stored = self.weight.val().dtype();
        let weight = self.adapters[i].unmerge_from(self.weight_as(DType::F32), factor);
        self.weight = Param::from_tensor(weight.cast(stored)).set_require_grad(false);
        Ok(())
    }
}
