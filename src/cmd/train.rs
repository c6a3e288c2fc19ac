//! `keel train`: a recipe in, an adapter out, with a progress bar and
//! Ctrl-C as a clean stop.

use std::path::PathBuf;

use anyhow::Result;
use keel_recipe::Recipe;
use keel_train::{NanSite, RunOptions};

use crate::progress;

#[derive(clap::Args)]
pub struct Args {
    recipe: PathBuf,
    /// Override a recipe key, e.g. --set optim.lr=1e-4 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Continue the run in the output folder from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Replace a previous run in the output folder.
    #[arg(long)]
    overwrite: bool,
    /// Debugging: make the loss or a gradient NaN at a step (`loss@5`,
    /// `grad@5`) to see the run stop and keep its last good checkpoint.
    #[arg(long, hide = true, value_parser = parse_nan_site)]
    debug_inject_nan: Option<(usize, NanSite)>,
}

pub fn run(args: Args) -> Result<()> {
    let recipe = Recipe::load(&args.recipe, &args.set)?;
    eprintln!("alignment: {}", recipe.alignment.describe());
    let opts = RunOptions {
        resume: args.resume,
        overwrite: args.overwrite,
        stop_at: None,
        debug_nan: args.debug_inject_nan,
    };
    let report = keel_train::train_with(&recipe, &opts, &mut progress::Training::new()?)?;
    println!("{}", report.table());
    println!("adapter: {}", recipe.output.dir.join("adapter").display());
    Ok(())
}

/// `loss@N` or `grad@N`.
fn parse_nan_site(s: &str) -> Result<(usize, NanSite), String> {
    let (site, step) = s.split_once('@').ok_or("expected loss@STEP or grad@STEP")?;
    let step: usize = step
        .parse()
        .map_err(|_| format!("`{step}` is not a step number"))?;
    match site {
        "loss" => Ok((step, NanSite::Loss)),
        "grad" => Ok((step, NanSite::Gradient)),
        other => Err(format!("`{other}`: expected loss or grad")),
    }
}
