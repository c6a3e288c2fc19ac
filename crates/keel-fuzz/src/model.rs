//! Targets for the parsers that live in crates built on Burn: an HF model
//! folder (config.json + safetensors, then loading the weights), a sharded
//! model's index, a PEFT adapter attached to a model, and JSONL data rows.
//! The micro model in `fuzz/micro` (hidden size 8, one layer) is the base.

use std::path::Path;

use burn::tensor::Device;
use keel_adapters::peft::AdapterFile;
use keel_model::{Llama, LoadedModel, ModelSource, ModelSummary};
use keel_recipe::DataFormat;
use keel_text::{ChatTemplate, Tokenizer};

use crate::{fuzz_file, scratch, scratch_dir, split};

/// Opens a model folder and does what `keel inspect` and then loading do
/// with its config: every size in it drives an allocation somewhere here.
fn load(dir: &Path) {
    let _ = ModelSummary::of(dir).map(|s| s.to_string());
    if let Ok(source) = ModelSource::open(dir) {
        let c = &source.config;
        let _ = (c.weights(), c.training_flop_per_token(64, 8));
        let _ = source.load(&Device::flex());
    }
}

/// An HF folder: `config.json` and `model.safetensors` from the input
/// (see [`split`]), opened and its weights loaded.
pub fn hf_model(data: &[u8]) {
    let (config, weights) = split(data);
    scratch("hf/config.json", config);
    scratch("hf/model.safetensors", weights);
    load(&scratch_dir().join("hf"));
}

/// A sharded HF folder: `model.safetensors.index.json` from the input, the
/// micro model's two shards and config beside it.
pub fn safetensors_index(data: &[u8]) {
    for f in [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        let bytes = std::fs::read(fuzz_file(&format!("micro/sharded/{f}"))).expect("fuzz/micro");
        scratch(&format!("index/{f}"), &bytes);
    }
    scratch("index/model.safetensors.index.json", data);
    load(&scratch_dir().join("index"));
}

thread_local! {
    static MICRO: Llama = LoadedModel::open(&fuzz_file("micro"), &Device::flex())
        .expect("fuzz/micro loads")
        .model;
}

/// A PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`
/// from the input), read and attached to the micro model.
pub fn peft_adapter(data: &[u8]) {
    let (config, weights) = split(data);
    scratch("peft/adapter_config.json", config);
    let dir = scratch("peft/adapter_model.safetensors", weights)
        .parent()
        .expect("a folder")
        .to_path_buf();
    if let Ok(file) = AdapterFile::read(&dir) {
        let mut model = MICRO.with(Llama::clone);
        let _ = model.attach(&file, "fuzz");
    }
}

thread_local! {
    static TEXT: (Tokenizer, ChatTemplate) = {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen2-gguf/hf-tokenizer");
        let tokenizer = Tokenizer::from_file(&fixtures.join("tokenizer.json")).expect("fixture tokenizer");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixtures.join("tokenizer_config.json")).expect("fixture")).expect("JSON");
        let template = ChatTemplate {
            source: config["chat_template"].as_str().expect("a chat template").to_string(),
            bos_token: String::new(),
            eos_token: "<|im_end|>".into(),
        };
        (tokenizer, template)
    };
}

/// JSONL rows: the first byte picks the format (and whether prompts are
/// trained on), the rest is the file.
pub fn jsonl(data: &[u8]) {
    let Some((&head, rows)) = data.split_first() else {
        return;
    };
    let format = [
        DataFormat::Text,
        DataFormat::PromptCompletion,
        DataFormat::Alpaca,
        DataFormat::Chat,
    ][head as usize % 4];
    let path = scratch("rows.jsonl", rows);
    TEXT.with(|(tokenizer, template)| {
        let _ =
            keel_data::load_examples(&path, format, tokenizer, Some(template), 64, head & 4 != 0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(target: &str) -> Vec<u8> {
        std::fs::read(fuzz_file(&format!("seeds/{target}/micro"))).expect("committed seed")
    }

    /// The seeds are valid inputs, so fuzzing starts from the code paths
    /// that succeed, not only from the first error.
    #[test]
    fn the_seeds_are_valid_inputs() {
        let hf = seed("hf_model");
        let (config, weights) = split(&hf);
        scratch("seed-hf/config.json", config);
        scratch("seed-hf/model.safetensors", weights);
        ModelSource::open(&scratch_dir().join("seed-hf"))
            .unwrap()
            .load(&Device::flex())
            .unwrap();

        safetensors_index(&seed("safetensors_index"));
        ModelSource::open(&scratch_dir().join("index"))
            .unwrap()
            .load(&Device::flex())
            .unwrap();

        let peft = seed("peft_adapter");
        let (config, weights) = split(&peft);
        scratch("seed-peft/adapter_config.json", config);
        scratch("seed-peft/adapter_model.safetensors", weights);
        let file = AdapterFile::read(&scratch_dir().join("seed-peft")).unwrap();
        assert_eq!(
            file.saved.len(),
            1,
            "post_attention_layernorm, trained in full"
        );
        MICRO.with(Llama::clone).attach(&file, "seed").unwrap();

        for f in 0..4 {
            let rows = std::fs::read(fuzz_file(&format!("seeds/jsonl/format{f}"))).unwrap();
            let path = scratch("seed.jsonl", &rows[1..]);
            let format = [
                DataFormat::Text,
                DataFormat::PromptCompletion,
                DataFormat::Alpaca,
                DataFormat::Chat,
            ][f];
            let got = TEXT
                .with(|(t, c)| keel_data::load_examples(&path, format, t, Some(c), 64, false))
                .unwrap();
            assert!(!got.examples.is_empty(), "format {f}");
        }
    }
}
