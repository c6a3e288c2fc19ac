//! `keel train`: a recipe in, an adapter out.
//!
//! The loop in [`trainer`] trains only adapter parameters (AdamW, with
//! LoRA+'s separate rate for B), on a warmup + cosine/linear schedule, with
//! gradient accumulation and global-norm clipping; evaluates loss and
//! perplexity; stops at the first non-finite loss or gradient, keeping the
//! last good checkpoint. Checkpoints ([`checkpoint`]) hold only what is
//! trained plus optimizer state, data position and step, are written
//! atomically, and resume to the same loss curve. The caller's [`Hooks`]
//! see every step and may stop the run (the binary's Ctrl-C), which writes
//! a checkpoint first. Every run ends with a [`report`].

pub mod bench;
pub mod checkpoint;
mod error;
mod loss;
pub mod metrics;
pub mod report;
mod schedule;
mod selective;
pub mod trainer;

pub use error::Error;
pub use metrics::{EvalMetrics, StepMetrics};
pub use report::RunReport;
pub use schedule::lr_at;
pub use trainer::{Hooks, LossTerm, NanSite, RunOptions, Trainer, eval_adapter, train, train_with};
