//! `keel eval`: an adapter's loss and perplexity on a recipe's eval set.

use std::path::PathBuf;

use anyhow::Result;
use keel_recipe::Recipe;

#[derive(clap::Args)]
pub struct Args {
    recipe: PathBuf,
    #[arg(long)]
    adapter: PathBuf,
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let loss = keel_train::eval_adapter(&Recipe::load(&args.recipe, &args.set)?, &args.adapter)?;
    println!(
        "{}",
        serde_json::json!({"eval_loss": loss, "eval_perplexity": loss.exp()})
    );
    Ok(())
}
