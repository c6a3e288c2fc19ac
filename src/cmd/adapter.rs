//! `keel adapter`: adapter tools.

use std::path::PathBuf;

use anyhow::{Context, Result};
use keel_adapters::AdapterSummary;
use keel_adapters::peft::AdapterFile;

use super::print_summary;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Kind, targets, ranks, trainable parameters, size and base model of an adapter folder.
    Info {
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Info { dir, json } => {
            let file = AdapterFile::read(&dir)
                .with_context(|| format!("reading adapter {}", dir.display()))?;
            print_summary(&AdapterSummary::of(&file), json)
        }
    }
}
