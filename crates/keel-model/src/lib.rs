//! The Llama-family decoder keel adapts: configuration, weight loading from
//! HF folders and GGUF files, and generation with a KV cache.

mod attention;
mod config;
mod device;
mod error;
mod generate;
mod head;
mod hf_export;
mod llama;
mod load;
mod selective;
mod summary;
mod swiglu;
mod weights;

pub use config::{Activation, Architecture, Config, HfConfig, LayerType, RopeScaling};
pub use device::DeviceChoice;
pub use error::Error;
pub use generate::{
    Sampling, decode, generate, generate_batch, last_logits, prefill, token_tensor,
};
pub use head::gather_log_probs;
pub use hf_export::{hf_tensors, save_hf_dir};
pub use keel_adapters::Linear;
pub use llama::{Attention, DecoderLayer, KvCache, Llama, Mlp, RmsNorm, Rope};
pub use load::{BaseStorage, LoadedModel, ModelSource, build_model};
pub use selective::FullModule;
pub use summary::{DtypeCount, ModelSummary, Runnable, ShapeSummary};
pub use weights::{HostTensor, QkLayout, WeightSource, gguf_layout, gguf_name, reorder_qk_rows};
