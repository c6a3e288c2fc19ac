//! What `keel adapter info` says of an adapter folder: as text
//! ([`Display`](std::fmt::Display)) or as JSON ([`Serialize`]).

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::peft::{AdapterFile, WEIGHTS_FILE};
use keel_adapter_config::{Scaling, Variant};

#[derive(Debug, Clone, Serialize)]
pub struct AdapterSummary {
    pub dir: PathBuf,
    /// LoRA, DoRA, LoRA with rsLoRA scaling, or selective.
    pub kind: &'static str,
    pub modules: usize,
    /// The module names' last parts (`q_proj`, ...), each once.
    pub targets: Vec<String>,
    /// The layers adapted; `None` is all.
    pub layers: Option<Vec<usize>>,
    /// The ranks stored, each once.
    pub ranks: Vec<usize>,
    pub r: usize,
    pub alpha: f64,
    /// `modules_to_save` as the config gives it (names or name endings).
    pub modules_to_save: Vec<String>,
    /// The modules trained in full, by name.
    pub saved_modules: Vec<String>,
    pub trainable_params: usize,
    pub size_bytes: u64,
    pub base_model: Option<String>,
    pub base_fingerprint: Option<String>,
}

impl AdapterSummary {
    pub fn of(file: &AdapterFile) -> Self {
        let c = &file.config;
        let trainable_params = file
            .modules
            .values()
            .map(|m| m.a.1.len() + m.b.1.len() + m.magnitude.as_ref().map_or(0, Vec::len))
            .chain(
                file.saved
                    .values()
                    .map(|m| m.weight.len() + m.bias.as_ref().map_or(0, Vec::len)),
            )
            .sum();
        let mut ranks: Vec<usize> = file.modules.values().map(|m| m.a.0[1]).collect();
        ranks.sort_unstable();
        ranks.dedup();
        let mut targets: Vec<String> = file
            .modules
            .keys()
            .filter_map(|n| n.rsplit('.').next())
            .map(str::to_string)
            .collect();
        targets.sort_unstable();
        targets.dedup();
        let kind = match (c.variant, c.scaling) {
            _ if !c.has_lora() => "selective (modules trained in full, no LoRA)",
            (Variant::Dora, _) => "DoRA",
            (_, Scaling::Rs) => "LoRA (rsLoRA scaling)",
            _ => "LoRA",
        };
        AdapterSummary {
            dir: file.dir.clone(),
            kind,
            modules: file.modules.len(),
            targets,
            layers: c.layers.clone(),
            ranks,
            r: c.r,
            alpha: c.alpha,
            modules_to_save: c.modules_to_save.clone(),
            saved_modules: file.saved.keys().cloned().collect(),
            trainable_params,
            size_bytes: std::fs::metadata(file.dir.join(WEIGHTS_FILE)).map_or(0, |m| m.len()),
            base_model: file.base_model.clone(),
            base_fingerprint: file.base_fingerprint.clone(),
        }
    }
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let recorded = |v: &Option<String>| v.clone().unwrap_or("(not recorded)".into());
        writeln!(f, "adapter:       {}", self.dir.display())?;
        writeln!(f, "kind:          {}", self.kind)?;
        writeln!(
            f,
            "modules:       {} ({})",
            self.modules,
            self.targets.join(", ")
        )?;
        let layers = self
            .layers
            .as_ref()
            .map_or("all".into(), |l| format!("{l:?}"));
        writeln!(f, "layers:        {layers}")?;
        writeln!(
            f,
            "ranks:         {:?} (r = {}, alpha = {})",
            self.ranks, self.r, self.alpha
        )?;
        let saved = match self.saved_modules.len() {
            0 => "none".to_string(),
            n => format!("{n} ({:?})", self.modules_to_save),
        };
        writeln!(f, "trained fully: {saved}")?;
        writeln!(f, "parameters:    {} trainable", self.trainable_params)?;
        writeln!(f, "size:          {} bytes", self.size_bytes)?;
        writeln!(f, "base model:    {}", recorded(&self.base_model))?;
        writeln!(f, "fingerprint:   {}", recorded(&self.base_fingerprint))
    }
}
