//! The recipe: one TOML file that says what to adapt, on what data, how.
//!
//! [`Recipe::load`] parses a file (plus `--set section.key=value`
//! overrides), refuses unknown keys with a did-you-mean, wrong types and
//! impossible values, and reports every problem with file, line and key.
//! Relative paths resolve against the recipe's folder. The schema is
//! documented in this crate's README.
//!
//! One file per part: [`schema`] (the sections), `parse` (reading and
//! errors), `checks` (impossible values), `overrides` (`--set`) and
//! `locate` (which line a key is on).

mod checks;
mod error;
mod locate;
mod overrides;
mod parse;
pub mod schema;

pub use error::{Error, Problem};
pub use parse::parse_toml;
pub use schema::*;
