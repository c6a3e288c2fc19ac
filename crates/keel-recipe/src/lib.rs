//! The recipe: one TOML file that says what to adapt, on what data, how.
//!
//! [`Recipe::load`] parses a file (plus `--set section.key=value`
//! overrides), refuses unknown keys with a did-you-mean, wrong types and
//! impossible values, and reports every problem with file, line and key.
//! Relative paths resolve against the recipe's folder. The schema is
//! documented in this crate's README.

mod error;
mod locate;
mod schema;

pub use error::{Error, Problem};
pub use schema::*;
