//! Alignment probes and drift reports: `keel probe` and `keel drift`.
//!
//! A [`Suite`] lists probe sets (prompts that must be refused, answered, or
//! answered correctly), the judges to run and the gate a drift report must
//! pass. [`probe`] runs one model over a suite; [`drift`] compares two
//! passes. The judges, one file each under [`judges`], are all offline:
//! a refusal matcher on greedy answers, a log-probability margin, the
//! refusal direction per layer, KL to the base, and capability match.

mod error;
pub mod html;
pub mod judges;
pub mod report;
mod run;
pub mod stats;
pub mod suite;

pub use error::Error;
pub use report::{DriftReport, ProbeReport, Verdict};
pub use run::{BATCH, PromptResult, Side, drift, probe};
pub use suite::{Expect, ProbeSet, Suite};
