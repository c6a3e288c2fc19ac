//! Modules a selective-layer adapter trains in full: every linear
//! projection and RMSNorm, by HF name. Training one turns its weights into
//! trainable f32 parameters under ids derived from its name, so optimizer
//! state saved in a checkpoint finds them again; freezing keeps the values.

use burn::module::{Param, ParamId};
use burn::tensor::{DType, Tensor, TensorData};
use keel_adapters::peft::AdapterFile;
use keel_adapters::{Error, Linear, SavedModule, host, param_id};

use crate::llama::{Llama, RmsNorm};

/// A module that can be trained in full.
pub enum FullModule<'a> {
    Linear(&'a mut Linear),
    Norm(&'a mut RmsNorm),
}

fn param<const D: usize>(name: &str, part: &str, t: Tensor<D>, train: bool) -> Param<Tensor<D>> {
    Param::initialized(param_id(&[name, part]), t.detach().cast(DType::F32)).set_require_grad(train)
}

fn host_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("float tensor")
}

impl FullModule<'_> {
    /// Makes the weights (and bias) of module `name` trainable, or frozen.
    pub fn set_trainable(&mut self, name: &str, train: bool) {
        match self {
            FullModule::Linear(l) => {
                // Selection::new refuses to train a base kept in blocks.
                debug_assert!(
                    l.quantized.is_none(),
                    "{name}: a base in blocks has no weight to train"
                );
                l.weight = param(name, "weight", l.weight.val(), train);
                if let Some(b) = &l.bias {
                    l.bias = Some(param(name, "bias", b.val(), train));
                }
            }
            FullModule::Norm(n) => n.weight = param(name, "weight", n.weight.val(), train),
        }
    }

    /// The parameters: id, whether a matrix, and name (`weight`, `bias`).
    pub fn param_ids(&self) -> Vec<(ParamId, bool, &'static str)> {
        match self {
            FullModule::Linear(l) => std::iter::once((l.weight.id, true, "weight"))
                .chain(l.bias.as_ref().map(|b| (b.id, false, "bias")))
                .collect(),
            FullModule::Norm(n) => vec![(n.weight.id, false, "weight")],
        }
    }

    pub fn num_params(&self) -> usize {
        match self {
            FullModule::Linear(l) => {
                l.in_features() * l.out_features()
                    + if l.bias.is_some() {
                        l.out_features()
                    } else {
                        0
                    }
            }
            FullModule::Norm(n) => n.weight.dims()[0],
        }
    }

    /// The weights as stored in an adapter, in HF's layout.
    pub fn saved(&self) -> SavedModule {
        match self {
            FullModule::Linear(l) => SavedModule {
                shape: vec![l.out_features(), l.in_features()],
                weight: match &l.quantized {
                    Some(q) => q.dequantize(),
                    None => host::transpose(
                        l.in_features(),
                        l.out_features(),
                        &host_f32(l.weight.val()),
                    ),
                },
                bias: l.bias.as_ref().map(|b| host_f32(b.val())),
            },
            FullModule::Norm(n) => SavedModule {
                shape: n.weight.dims().to_vec(),
                weight: host_f32(n.weight.val()),
                bias: None,
            },
        }
    }

    /// Replaces the weights with `m`'s (frozen), checking the shapes.
    pub fn load(&mut self, name: &str, m: &SavedModule) -> Result<(), Error> {
        let bad = |reason: String| Error::Module {
            module: name.to_string(),
            reason,
        };
        match self {
            FullModule::Linear(l) => {
                let (o, i) = (l.out_features(), l.in_features());
                if m.shape != [o, i] || m.bias.is_some() != l.bias.is_some() {
                    return Err(bad(format!(
                        "saved weight {:?}{} does not fit this model's [{o}, {i}]{}",
                        m.shape,
                        if m.bias.is_some() { " with bias" } else { "" },
                        if l.bias.is_some() { " with bias" } else { "" },
                    )));
                }
                let device = l.weight.val().device();
                let w = TensorData::new(host::transpose(o, i, &m.weight), [i, o]);
                l.weight = param(name, "weight", Tensor::from_data(w, &device), false);
                // The saved module replaces the base, blocks and all.
                l.quantized = None;
                if let Some(b) = &m.bias {
                    let t = Tensor::from_data(TensorData::new(b.clone(), [o]), &device);
                    l.bias = Some(param(name, "bias", t, false));
                }
            }
            FullModule::Norm(n) => {
                if m.shape != n.weight.dims() {
                    return Err(bad(format!(
                        "saved weight {:?} does not fit this model's {:?}",
                        m.shape,
                        n.weight.dims()
                    )));
                }
                let device = n.weight.val().device();
                let t =
                    Tensor::from_data(TensorData::new(m.weight.clone(), m.shape.clone()), &device);
                n.weight = param(name, "weight", t, false);
            }
        }
        Ok(())
    }
}

impl Llama {
    /// The saved form of the named modules.
    pub fn saved_modules(&mut self, names: &[String]) -> Vec<(String, SavedModule)> {
        self.full_modules_mut()
            .into_iter()
            .filter(|(n, _)| names.contains(n))
            .map(|(n, m)| (n, m.saved()))
            .collect()
    }

    /// Attaches adapter `file` as `name`: its low-rank part to the
    /// projections, and the modules it trained in full in place of the
    /// base's (those are not switchable: they replace the base weights,
    /// as a merge would). An adapter made for another base is refused.
    pub fn attach(&mut self, file: &AdapterFile, name: &str) -> Result<(), Error> {
        let fingerprint = self.fingerprint();
        file.attach(name, &mut self.linears_mut(), &fingerprint)?;
        self.load_saved(file)
    }

    /// Puts `file`'s fully trained modules into the model.
    pub fn load_saved(&mut self, file: &AdapterFile) -> Result<(), Error> {
        let mut modules = self.full_modules_mut();
        for (name, m) in &file.saved {
            let Some((_, module)) = modules.iter_mut().find(|(n, _)| n == name) else {
                return Err(Error::Module {
                    module: name.clone(),
                    reason: "is saved in the adapter but this model has no such module".into(),
                });
            };
            module.load(name, m)?;
        }
        Ok(())
    }
}
