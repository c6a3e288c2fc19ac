//! `keel recipe`: recipe tools.

use std::path::PathBuf;

use anyhow::Result;
use keel_recipe::Recipe;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Validate a recipe: unknown keys, wrong types and impossible values, with file, line and key.
    Check {
        recipe: PathBuf,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        set: Vec<String>,
    },
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Check { recipe, set } => {
            let parsed = Recipe::load(&recipe, &set)?;
            println!("{}: ok", recipe.display());
            println!("alignment: {}", parsed.alignment.describe());
            Ok(())
        }
    }
}
