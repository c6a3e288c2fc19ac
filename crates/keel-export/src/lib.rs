//! Getting an adapter out of keel and into the servers people deploy to.
//!
//! - [`export_peft`]: an HF PEFT folder (HF PEFT, vLLM, TGI, LoRAX load it);
//! - [`export_gguf_lora`]: a GGUF LoRA adapter as llama.cpp's
//!   `convert_lora_to_gguf.py` writes it (`llama-cli --lora`, Ollama `ADAPTER`);
//! - [`export_merged`]: the adapter folded into the base, as an HF folder;
//!   [`export_merged_gguf`]: the same as a GGUF model (f32, f16, Q8_0 or
//!   Q4_K_M) made from the base GGUF it came from.
//!
//! Each export reports, as warnings, which servers would refuse the
//! adapter and why ([`servers`]).

mod error;
mod gguf_lora;
mod merged;
pub mod servers;

use std::path::Path;

use keel_adapters::{AdapterConfig, SavedModule};
use keel_model::Llama;

pub use error::Error;
pub use gguf_lora::{GgufDtype, export_gguf_lora};
pub use merged::{MergedGguf, export_merged, export_merged_gguf};

/// Writes adapter `name` of `model`, with the modules it trained in full
/// (`saved`, PEFT's `modules_to_save`), as a PEFT folder at `out` (created
/// if needed) and returns the servers' warnings.
pub fn export_peft(
    model: &Llama,
    name: &str,
    cfg: &AdapterConfig,
    saved: &[(String, SavedModule)],
    base_model: &str,
    out: &Path,
) -> Result<Vec<String>, Error> {
    if !cfg.has_lora() {
        return Err(Error::Unsupported {
            format: "peft",
            reason: "this adapter only trains modules in full, and PEFT loads no LoRA config without target modules: export with --format merged".into(),
        });
    }
    std::fs::create_dir_all(out).map_err(keel_fs::io(out))?;
    keel_adapters::peft::write(
        out,
        name,
        cfg,
        &model.linears(),
        saved,
        base_model,
        &model.fingerprint(),
    )?;
    Ok(servers::check(cfg, model))
}
