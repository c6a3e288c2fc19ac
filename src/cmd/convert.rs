//! `keel convert`: a GGUF model as an HF folder that transformers loads.

use std::path::PathBuf;

use anyhow::Result;
use keel_model::DeviceChoice;

#[derive(clap::Args)]
pub struct Args {
    model: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let loaded = super::open(&args.model, DeviceChoice::Flex)?;
    keel_model::save_hf_dir(&loaded, &args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
