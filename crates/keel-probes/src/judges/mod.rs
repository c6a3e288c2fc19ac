//! The judges, one per file. All are offline: no judge LLM.

pub mod capability;
pub mod direction;
pub mod kl;
pub mod margin;
pub mod refusal;
