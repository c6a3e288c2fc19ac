//! `keel inspect`: what a model file or folder holds, and whether keel runs it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use keel_model::ModelSummary;

use super::print_summary;

#[derive(clap::Args)]
pub struct Args {
    path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let summary =
        ModelSummary::of(&args.path).with_context(|| format!("opening {}", args.path.display()))?;
    print_summary(&summary, args.json)
}
