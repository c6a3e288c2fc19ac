//! Selective-layer training: which modules the run trains in full at each
//! step. A fixed set (`modules_to_save`, every norm with `train_norms`, the
//! last N layers with `train_top_layers`) plus, with LISA, a fresh random
//! choice of whole layers every `lisa_every` steps. Modules are switched on
//! and off in the model; the adapter stores every module trained so far.

use std::collections::BTreeSet;

use burn::module::ParamId;
use keel_adapters::rng;
use keel_adapters::{ModuleSpec, layer_index, resolve_saved};
use keel_model::{FullModule, Llama};
use keel_recipe::Recipe;

use crate::error::Error;

pub struct Selection {
    fixed: BTreeSet<String>,
    /// LISA: (layers trained at a time, steps between choices).
    lisa: Option<(usize, usize)>,
    n_layers: usize,
    seed: u64,
    /// Every module trained so far: what the adapter stores.
    pub touched: BTreeSet<String>,
    active: BTreeSet<String>,
}

impl Selection {
    /// The recipe's selection on `model`, whose LoRA modules are `lora`.
    pub fn new(recipe: &Recipe, model: &mut Llama, lora: &[ModuleSpec]) -> Result<Self, Error> {
        let a = &recipe.adapter;
        let n_layers = model.layers.len();
        let modules = model.full_modules_mut();
        let names: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
        let norms = modules
            .iter()
            .filter(|(_, m)| matches!(m, FullModule::Norm(_)))
            .map(|(n, _)| n.clone());
        let saved: BTreeSet<String> = resolve_saved(&names, &a.modules_to_save)?
            .into_iter()
            .collect();
        let mut fixed = saved.clone();
        if a.train_norms {
            fixed.extend(norms);
        }
        if let Some(k) = a.train_top_layers {
            let first = n_layers.saturating_sub(k);
            fixed.extend(
                names
                    .iter()
                    .filter(|n| layer_index(n).is_some_and(|i| i >= first))
                    .cloned(),
            );
        }
        let bad = |key: &str, reason: String| {
            Error::Adapter(keel_adapters::Error::Config {
                file: "recipe".into(),
                key: format!("adapter.{key}"),
                reason,
            })
        };
        if let Some(both) = lora.iter().find(|s| fixed.contains(&s.name)) {
            return Err(bad(
                "modules_to_save",
                format!(
                    "`{}` is both a LoRA target and trained in full: choose one",
                    both.name
                ),
            ));
        }
        // A projection kept in blocks has no dense weight to train; LISA
        // may pick any layer.
        let in_blocks = modules.iter().find_map(|(n, m)| match m {
            FullModule::Linear(l) if a.lisa_layers.is_some() || fixed.contains(n) => {
                l.quantized.as_ref().map(|q| (n, q.ggml_type()))
            }
            _ => None,
        });
        if let Some((name, ty)) = in_blocks {
            let key = if saved.contains(name) {
                "modules_to_save"
            } else if fixed.contains(name) {
                "train_top_layers"
            } else {
                "lisa_layers"
            };
            return Err(bad(
                key,
                format!(
                    "`{name}` is kept in {} blocks (model.base_dtype), so it cannot be trained in full: use a dense base_dtype, or train only norms",
                    ty.name()
                ),
            ));
        }
        if let Some(n) = a.lisa_layers.filter(|n| *n > n_layers) {
            return Err(bad(
                "lisa_layers",
                format!("{n} is more than the model's {n_layers} layers"),
            ));
        }
        Ok(Selection {
            touched: fixed.clone(),
            fixed,
            lisa: a.lisa_layers.map(|n| (n, a.lisa_every)),
            n_layers,
            seed: recipe.optim.seed,
            active: BTreeSet::new(),
        })
    }

    /// LISA's layers for the period holding `step`: a function of the seed
    /// and the period, so a resumed run draws the same ones.
    fn lisa_layers(&self, step: usize) -> Vec<usize> {
        let Some((n, every)) = self.lisa else {
            return Vec::new();
        };
        let mut rng = rng::seeded(self.seed ^ 0x4C15_A000 ^ (step / every) as u64);
        rng::index::sample(&mut rng, self.n_layers, n.min(self.n_layers)).into_vec()
    }

    /// Whether LISA starts a new period at `step`: its optimizer state is
    /// then started afresh, as LISA's algorithm restarts AdamW each period.
    pub fn new_period(&self, step: usize) -> bool {
        self.lisa
            .is_some_and(|(_, every)| step > 0 && step.is_multiple_of(every))
    }

    /// Trains exactly the modules due at `step`, freezing the others it
    /// trained before; returns whether the set changed.
    pub fn update(&mut self, model: &mut Llama, step: usize) -> bool {
        let layers = self.lisa_layers(step);
        let mut modules = model.full_modules_mut();
        let due: BTreeSet<String> = modules
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.fixed.contains(*n) || layer_index(n).is_some_and(|i| layers.contains(&i))
            })
            .cloned()
            .collect();
        if due == self.active {
            return false;
        }
        for (name, module) in modules.iter_mut() {
            match (due.contains(name), self.active.contains(name)) {
                (true, false) => module.set_trainable(name, true),
                (false, true) => module.set_trainable(name, false),
                _ => {}
            }
        }
        self.touched.extend(due.iter().cloned());
        self.active = due;
        true
    }

    /// The trained parameters: (id, whether a matrix, name).
    pub fn param_ids(&self, model: &mut Llama) -> Vec<(ParamId, bool, String)> {
        model
            .full_modules_mut()
            .iter()
            .filter(|(n, _)| self.active.contains(n))
            .flat_map(|(n, m)| {
                m.param_ids()
                    .into_iter()
                    .map(move |(id, matrix, part)| (id, matrix, format!("{n}.{part}")))
            })
            .collect()
    }

    /// Parameters trained at a time.
    pub fn num_params(&self, model: &mut Llama) -> usize {
        model
            .full_modules_mut()
            .iter()
            .filter(|(n, _)| self.active.contains(n))
            .map(|(_, m)| m.num_params())
            .sum()
    }
}
