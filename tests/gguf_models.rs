//! Models and tokenizers read from GGUF files that llama.cpp's own
//! `convert_hf_to_gguf.py` wrote, against HF transformers loading the same
//! files: a Qwen2 (no q/k permutation, biases, byte-level BPE with the
//! `qwen2` split), a Qwen3 (per-head q/k norms), a Phi-3 (fused projections,
//! partial rotary, longrope), and a Llama with a SentencePiece vocabulary
//! (permuted q/k, scores instead of merges, byte fallback, BOS added), also
//! as Phi-3 spells it.

mod common;

use burn::tensor::Device;
use common::{Reference, fixture, logits, read_json, u32s};
use keel_model::LoadedModel;

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

/// Phi-3 as llama.cpp converts it: fused `attn_qkv` and `ffn_up`, half of
/// each head rotated (`rope.dimension_count`), longrope from the
/// `rope_factors_*` tensors and `attn_factor`, against transformers on the
/// folder it was converted from (`tiny-phi3-gguf/hf-config.json`).
#[test]
fn phi3_gguf_logits_match_transformers() {
    check_logits("tiny-phi3-gguf", "tiny-phi3.gguf");
}

#[test]
fn sentencepiece_llama_gguf_logits_match_transformers() {
    check_logits("gguf-spm", "vocab.gguf");
}

fn check_tokenizer(gguf: &str, reference: &str) {
    // The tokenizer alone: a vocabulary-only file has no model to open.
    let file = keel_gguf::GgufFile::open(fixture(gguf)).unwrap();
    let json = keel_text::tokenizer_json_from_gguf(&file.metadata).unwrap();
    let tok = keel_text::Tokenizer::from_json(&json.to_string()).unwrap();
    let reference = read_json(&fixture(reference));
    let cases = reference["tokenizer_cases"].as_array().unwrap();
    assert!(cases.len() >= 10, "{gguf}: too few cases");
    for case in cases {
        let text = case["text"].as_str().unwrap();
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

/// Phi-3's SentencePiece files: the same vocabulary, `▁` prepended by a
/// normalizer, so leading spaces keep one more.
#[test]
fn phi3_tokenizer_rebuilt_from_gguf_encodes_as_transformers() {
    check_tokenizer("gguf-spm/phi3-vocab.gguf", "gguf-spm/phi3-reference.json");
}

#[test]
fn qwen2_tokenizer_rebuilt_from_gguf_encodes_as_transformers() {
    check_tokenizer(
        "tiny-qwen2-gguf/tiny-qwen2.gguf",
        "tiny-qwen2-gguf/reference.json",
    );
}
