//! The alignment matrix `C = V Vᵀ / ‖V‖_F` of each module, kept factored.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};
use keel_adapters::peft::AdapterFile;
use keel_adapters::resolve_targets;

use crate::Error;

/// For one module, `C` acts on a LoRA `b` (`[r, out]`) as
/// `b·C = (b·rt)·g`: `rt` is `[out, q]` and `g` is `[q, out]`, with `q` the
/// rank of the alignment update. Never an `[out, out]` matrix.
#[derive(Debug, Clone)]
struct Factors {
    rt: Tensor<2>,
    g: Tensor<2>,
}

/// The alignment matrices of every module an alignment update touched.
#[derive(Debug, Clone)]
pub struct Subspace {
    modules: BTreeMap<String, Factors>,
}

pub(crate) fn matrix(shape: &[usize], data: &[f32], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data.to_vec(), [shape[0], shape[1]]), device)
}

impl Subspace {
    /// From the safety adapter that aligned the base: per module
    /// `V = s·a_s·b_s` (keel layout), so in HF's layout
    /// `C = V Vᵀ/‖V‖ = s² b_sᵀ (a_sᵀ a_s) b_s / ‖V‖`, and
    /// `b·C = (b·b_sᵀ)·(s² (a_sᵀ a_s) b_s / ‖V‖)`.
    pub fn from_adapter(file: &AdapterFile, device: &Device) -> Result<Subspace, Error> {
        let names: Vec<String> = file.modules.keys().cloned().collect();
        let specs = resolve_targets(&names, &file.config)?;
        let mut modules = BTreeMap::new();
        for (name, w) in &file.modules {
            let spec = specs
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| Error::Module {
                    module: name.clone(),
                    reason: "not targeted by the alignment adapter's own config".into(),
                })?;
            if w.magnitude.is_some() {
                return Err(Error::Module {
                    module: name.clone(),
                    reason: "a DoRA alignment update is not a low-rank delta; merge it and give the aligned checkpoint".into(),
                });
            }
            let a = matrix(&w.a.0, &w.a.1, device);
            let b = matrix(&w.b.0, &w.b.1, device);
            let s2 = spec.scale * spec.scale;
            let ata = a.clone().transpose().matmul(a);
            let bbt = b.clone().matmul(b.clone().transpose());
            // ‖V‖²_F = s² tr((a_sᵀ a_s)(b_s b_sᵀ)).
            let norm = (ata.clone().mul(bbt).sum().into_scalar::<f32>() as f64 * s2).sqrt();
            if !(norm.is_finite() && norm > 0.0) {
                return Err(Error::Module {
                    module: name.clone(),
                    reason: format!("the alignment update has norm {norm}: nothing to anchor to"),
                });
            }
            let g = ata.matmul(b.clone()).mul_scalar(s2 / norm);
            modules.insert(
                name.clone(),
                Factors {
                    rt: b.transpose(),
                    g,
                },
            );
        }
        Ok(Subspace { modules })
    }

    /// `b·C` for `module`, or `None` when the alignment update left it alone.
    pub fn project_b(&self, module: &str, b: Tensor<2>) -> Option<Tensor<2>> {
        let f = self.modules.get(module)?;
        Some(b.matmul(f.rt.clone()).matmul(f.g.clone()))
    }

    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }
}
