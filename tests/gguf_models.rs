//! Models and tokenizers read from GGUF files that llama.cpp's own
//! `convert_hf_to_gguf.py` wrote, against HF transformers loading the same
//! files: a Qwen2 (no q/k permutation, biases, byte-level BPE with the
//! `qwen2` split), a Qwen3 (per-head q/k norms), and a Llama with a
//! SentencePiece vocabulary (permuted q/k, scores instead of merges, byte
//! fallback, BOS added).

mod common;

use burn::tensor::Device;
use common::{Reference, fixture, logits, read_json, u32s};
use keel_model::{LoadedModel, ModelSource};

/// As for the HF-folder fixtures (`tests/model_logits.rs`): keel's distance
/// from transformers' float64 logits of the same file, as a multiple of
/// transformers' own f32 distance. Worst measured: 2.40 (emulated AVX2).
const FACTOR: f64 = 4.0;

/// `gguf` (a file in fixture folder `dir`) against `dir`'s references.
fn check_logits(dir: &str, gguf: &str) {
    let device = Device::flex();
    let model = LoadedModel::open(&fixture(dir).join(gguf), &device).unwrap();
    for (p, reference) in Reference::read(dir).iter().enumerate() {
        let got = logits(&model.model, &reference.ids, &device);
        reference.check(&got, FACTOR, &format!("{gguf}, prompt {p}"));
    }
}

#[test]
fn qwen2_gguf_logits_match_transformers() {
    check_logits("tiny-qwen2-gguf", "tiny-qwen2.gguf");
}

/// Qwen3 as llama.cpp converts it: per-head q/k norms as `attn_q_norm` and
/// `attn_k_norm`, no q/k permutation, head_dim (32) from `key_length`.
#[test]
fn qwen3_gguf_logits_match_transformers() {
    check_logits("tiny-qwen3-gguf", "tiny-qwen3.gguf");
}

#[test]
fn sentencepiece_llama_gguf_logits_match_transformers() {
    check_logits("gguf-spm", "vocab.gguf");
}

fn check_tokenizer(gguf: &str, reference: &str) {
    let source = ModelSource::open(&fixture(gguf)).unwrap();
    let reference = read_json(&fixture(reference));
    let cases = reference["tokenizer_cases"].as_array().unwrap();
    assert!(cases.len() >= 10, "{gguf}: too few cases");
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let tok = source.tokenizer().unwrap();
        assert_eq!(
            tok.encode(text, false).unwrap(),
            u32s(&case["ids"]),
            "{gguf}: {text:?}"
        );
        if let Some(with) = case.get("ids_with_special").filter(|v| !v.is_null()) {
            assert_eq!(
                tok.encode(text, true).unwrap(),
                u32s(with),
                "{gguf}: {text:?} with special tokens"
            );
        }
        let ids = u32s(&case["ids"]);
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            case["decoded"].as_str().unwrap(),
            "{gguf}: decode {text:?}"
        );
    }
}

#[test]
fn sentencepiece_tokenizer_rebuilt_from_gguf_encodes_as_transformers() {
    check_tokenizer("gguf-spm/vocab.gguf", "gguf-spm/reference.json");
}

#[test]
fn qwen2_tokenizer_rebuilt_from_gguf_encodes_as_transformers() {
    check_tokenizer(
        "tiny-qwen2-gguf/tiny-qwen2.gguf",
        "tiny-qwen2-gguf/reference.json",
    );
}
