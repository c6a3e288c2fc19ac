//! `keel adapter`: adapter tools.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use keel_adapters::peft::AdapterFile;

use super::print_out;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Kind, targets, ranks, trainable parameters, size and base model of an adapter folder.
    Info { dir: PathBuf },
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Info { dir } => adapter_info(&dir),
    }
}

fn adapter_info(dir: &Path) -> Result<()> {
    let file =
        AdapterFile::read(dir).with_context(|| format!("reading adapter {}", dir.display()))?;
    let c = &file.config;
    let params: usize = file
        .modules
        .values()
        .map(|m| m.a.1.len() + m.b.1.len() + m.magnitude.as_ref().map_or(0, Vec::len))
        .chain(
            file.saved
                .values()
                .map(|m| m.weight.len() + m.bias.as_ref().map_or(0, Vec::len)),
        )
        .sum();
    let bytes = std::fs::metadata(dir.join(keel_adapters::peft::WEIGHTS_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    let mut ranks: Vec<usize> = file.modules.values().map(|m| m.a.0[1]).collect();
    ranks.sort_unstable();
    ranks.dedup();
    let mut leaves: Vec<&str> = file
        .modules
        .keys()
        .filter_map(|n| n.rsplit('.').next())
        .collect();
    leaves.sort_unstable();
    leaves.dedup();
    let kind = match (c.variant, c.scaling) {
        _ if !c.has_lora() => "selective (modules trained in full, no LoRA)",
        (keel_adapters::Variant::Dora, _) => "DoRA",
        (_, keel_adapters::Scaling::Rs) => "LoRA (rsLoRA scaling)",
        _ => "LoRA",
    };
    let lines = [
        format!("adapter:       {}", dir.display()),
        format!("kind:          {kind}"),
        format!(
            "modules:       {} ({})",
            file.modules.len(),
            leaves.join(", ")
        ),
        format!(
            "layers:        {}",
            c.layers
                .as_ref()
                .map_or("all".to_string(), |l| format!("{l:?}"))
        ),
        format!(
            "ranks:         {ranks:?} (r = {}, alpha = {})",
            c.r, c.alpha
        ),
        format!(
            "trained fully: {}",
            if file.saved.is_empty() {
                "none".to_string()
            } else {
                format!("{} ({:?})", file.saved.len(), file.config.modules_to_save)
            }
        ),
        format!("parameters:    {params} trainable"),
        format!("size:          {bytes} bytes"),
        format!(
            "base model:    {}",
            file.base_model.as_deref().unwrap_or("(not recorded)")
        ),
        format!(
            "fingerprint:   {}",
            file.base_fingerprint.as_deref().unwrap_or("(not recorded)")
        ),
    ];
    print_out(&(lines.join("\n") + "\n"))
}
