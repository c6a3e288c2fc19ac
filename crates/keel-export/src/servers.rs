//! What the inference servers accept, checked at export so a user learns
//! before deploying which server would refuse the adapter, and why.
//! Sources: vLLM's LoRA docs and `vllm/lora` (0.11), TGI's and LoRAX's docs.

use keel_adapters::{AdapterConfig, Variant};
use keel_model::Llama;

/// Modules vLLM applies LoRA to in Llama-family models.
const VLLM_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];
/// vLLM's `--max-lora-rank` default.
const VLLM_DEFAULT_MAX_RANK: usize = 16;
/// The largest `--max-lora-rank` vLLM accepts.
const VLLM_MAX_RANK: usize = 512;

/// Warnings for adapter `cfg` as attached to `model` (one per problem).
pub fn check(cfg: &AdapterConfig, model: &Llama) -> Vec<String> {
    let mut warnings = Vec::new();
    if cfg.variant == Variant::Dora {
        warnings.push(
            "vLLM, TGI and LoRAX do not serve DoRA adapters: export with --format merged for them"
                .to_string(),
        );
    }
    if !cfg.modules_to_save.is_empty() {
        warnings.push(format!(
            "vLLM, TGI and LoRAX load only the LoRA part, not modules trained in full ({:?}): export with --format merged for them",
            cfg.modules_to_save
        ));
    }
    let ranks = model
        .linears()
        .iter()
        .flat_map(|(_, l)| l.adapters.iter().map(|a| a.exported_rank()))
        .max()
        .unwrap_or(cfg.r);
    if ranks > VLLM_MAX_RANK {
        warnings.push(format!(
            "vLLM refuses rank {ranks}: its --max-lora-rank is at most {VLLM_MAX_RANK}"
        ));
    } else if ranks > VLLM_DEFAULT_MAX_RANK {
        warnings.push(format!(
            "vLLM refuses rank {ranks} unless started with --max-lora-rank {} or more (default {VLLM_DEFAULT_MAX_RANK})",
            ranks.next_power_of_two()
        ));
    }
    let others: Vec<String> = model
        .linears()
        .iter()
        .filter(|(_, l)| !l.adapters.is_empty())
        .map(|(n, _)| n.rsplit('.').next().unwrap_or(n).to_string())
        .filter(|leaf| !VLLM_MODULES.contains(&leaf.as_str()))
        .collect();
    if !others.is_empty() {
        warnings.push(format!(
            "vLLM ignores or refuses adapters on {others:?}: it supports {VLLM_MODULES:?}"
        ));
    }
    warnings
}
