//! `keel align`: alignment-preservation tools that work on a trained
//! adapter, after the fact.

use std::path::PathBuf;

use anyhow::{Context, Result};
use keel_adapters::DEFAULT_ADAPTER as ADAPTER;
use keel_adapters::peft::AdapterFile;
use keel_align::safemerge::{self, SafetyLora};
use keel_align::{Subspace, safe_lora};
use keel_model::{DeviceChoice, LoadedModel};
use keel_recipe::{SAFEMERGE_THRESHOLD, SAFEMERGE_WEIGHT, SafeLora, SafeMerge};

#[derive(clap::Subcommand)]
pub enum AlignCommand {
    /// Safe LoRA: project the adapter's modules that are far from the
    /// alignment subspace, writing a new adapter folder.
    SafeLora {
        #[command(flatten)]
        pair: Pair,
        /// Project modules whose cos(ΔW, C·ΔW) is below this.
        #[arg(long, conflicts_with = "top_k", required_unless_present = "top_k")]
        threshold: Option<f64>,
        /// Project the k least similar modules.
        #[arg(long)]
        top_k: Option<usize>,
        #[arg(long)]
        out: PathBuf,
    },
    /// SafeMERGE: merge the adapter with a safety LoRA in the modules far
    /// from the alignment subspace, writing a new adapter folder.
    Safemerge {
        #[command(flatten)]
        pair: Pair,
        /// The safety LoRA: trained on safety data on the same model, of the
        /// adapter's rank.
        #[arg(long)]
        safety: PathBuf,
        /// Merge modules whose cos(ΔW, C·ΔW) is below this.
        #[arg(long, default_value_t = SAFEMERGE_THRESHOLD)]
        threshold: f64,
        /// The safety LoRA's weight in the merge, in (0, 1).
        #[arg(long, default_value_t = SAFEMERGE_WEIGHT)]
        weight: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print each module's similarity to the alignment subspace, and the
    /// AsFT penalty of the whole update (JSON).
    Similarity {
        #[command(flatten)]
        pair: Pair,
    },
}

#[derive(clap::Args)]
pub struct Pair {
    /// The aligned base the adapter was trained on.
    #[arg(long)]
    model: PathBuf,
    /// The trained adapter.
    #[arg(long)]
    adapter: PathBuf,
    /// The adapter whose update aligned the base: it defines the subspace.
    #[arg(long)]
    reference: PathBuf,
}

fn open(pair: &Pair) -> Result<(LoadedModel, AdapterFile, Subspace)> {
    let (loaded, file) = super::open_with_adapter(&pair.model, &pair.adapter, DeviceChoice::Flex)?;
    let subspace = super::reference_subspace(&pair.reference, DeviceChoice::Flex)?;
    Ok((loaded, file, subspace))
}

pub fn run(cmd: &AlignCommand) -> Result<()> {
    match cmd {
        AlignCommand::Similarity { pair } => {
            let (loaded, _, subspace) = open(pair)?;
            let linears = loaded.model.linears();
            let modules = safe_lora::report(&linears, ADAPTER, &subspace);
            // What AsFT's regulariser would charge for this update (λ = 1).
            let penalty = keel_align::asft::penalty(&linears, ADAPTER, &subspace)
                .map(|p| p.into_scalar::<f32>() as f64);
            let report = serde_json::json!({"asft_penalty": penalty, "modules": modules});
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        AlignCommand::SafeLora {
            pair,
            threshold,
            top_k,
            out,
        } => {
            let (mut loaded, file, subspace) = open(pair)?;
            let mode =
                SafeLora::from_either(*threshold, *top_k).context("give --threshold or --top-k")?;
            let modules =
                safe_lora::apply(&mut loaded.model.linears_mut(), ADAPTER, &subspace, mode);
            let projected = modules.iter().filter(|m| m.projected).count();
            let report = serde_json::json!({"safe_lora_projected": projected, "modules": modules});
            write(&loaded, &file, pair, out, &report)?;
            println!(
                "projected {projected} of {} modules; wrote {}",
                modules.len(),
                out.display()
            );
        }
        AlignCommand::Safemerge {
            pair,
            safety,
            threshold,
            weight,
            out,
        } => {
            anyhow::ensure!(
                SafeMerge::threshold_ok(*threshold),
                "--threshold {threshold}: a cosine similarity, in [-1, 1]"
            );
            anyhow::ensure!(
                SafeMerge::weight_ok(*weight),
                "--weight {weight}: the safety LoRA's share of the merge, in (0, 1)"
            );
            let (mut loaded, file, subspace) = open(pair)?;
            let device = DeviceChoice::Flex.device()?;
            let safety = SafetyLora::from_adapter(&AdapterFile::read(safety)?, &device)?;
            let modules = safemerge::apply(
                &mut loaded.model.linears_mut(),
                ADAPTER,
                &subspace,
                &safety,
                *threshold,
                *weight,
            )?;
            let merged = modules.iter().filter(|m| m.merged).count();
            let report = serde_json::json!({"safemerge_merged": merged, "modules": modules});
            write(&loaded, &file, pair, out, &report)?;
            println!(
                "merged {merged} of {} modules with the safety LoRA; wrote {}",
                modules.len(),
                out.display()
            );
        }
    }
    Ok(())
}

/// The changed adapter as a PEFT folder, with `alignment.json` beside it.
/// Modules trained in full go out as they came.
fn write(
    loaded: &LoadedModel,
    file: &AdapterFile,
    pair: &Pair,
    out: &std::path::Path,
    report: &serde_json::Value,
) -> Result<()> {
    for w in super::export::peft_folder(loaded, file, &pair.model, out)? {
        eprintln!("warning: {w}");
    }
    std::fs::write(
        out.join("alignment.json"),
        serde_json::to_vec_pretty(report)?,
    )
    .with_context(|| format!("writing {}", out.join("alignment.json").display()))
}
