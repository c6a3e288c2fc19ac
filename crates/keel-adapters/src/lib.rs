//! Parameter-efficient adapters for linear layers.
//!
//! [`Linear`] is the layer every adaptable projection of a keel model is
//! made of: a frozen base weight plus any number of named [`Adapter`]s,
//! computed as `base(x) + Σ delta_i(x)` and never through a dense merged
//! weight unless asked to [`Linear::merge`]. [`AdapterConfig`] says which
//! modules get which adapter (PEFT's semantics: leaf names or a regex,
//! `layers_to_transform`, `rank_pattern` / `alpha_pattern`); [`peft`] reads
//! and writes HF PEFT's on-disk format. Selective-layer adapters train whole
//! modules instead ([`resolve_saved`], saved as PEFT's `modules_to_save`).

mod error;
pub mod frozen;
#[cfg(feature = "wgpu")]
mod gpu_blocks;
pub mod host;
mod init;
mod linear;
mod lora;
pub mod peft;
pub mod rng;
mod selective;
mod summary;
mod target;

pub use keel_adapter_config::{AdapterConfig, ConfigError, Init, Scaling, TargetModules, Variant};

/// The name an adapter read from or written to a PEFT folder has inside a
/// model (PEFT's own default adapter name).
pub const DEFAULT_ADAPTER: &str = "default";
pub use error::Error;
pub use frozen::QuantBase;
pub use init::init_adapter;
pub use linear::Linear;
pub use lora::{Adapter, param_id};
pub use selective::{SavedModule, resolve_saved};
pub use summary::AdapterSummary;
pub use target::{ModuleSpec, layer_index, resolve_targets};
