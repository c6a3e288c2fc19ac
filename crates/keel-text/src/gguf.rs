//! Rebuilds an HF `tokenizer.json` from GGUF `tokenizer.ggml.*` metadata,
//! choosing the pre-tokenizer by `tokenizer.ggml.pre` as llama.cpp does, so
//! that the result encodes as the model's original HF tokenizer.

use keel_gguf::Metadata;
use serde_json::{Value, json};

use crate::error::Error;

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// Llama 3's split: numbers in groups of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: every digit on its own.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split_then_bytes(pattern: &str) -> Value {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
        byte_level(false),
    ]})
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str) -> Result<Value, Error> {
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        // SmolLM, StarCoder: every digit alone, then GPT-2's split.
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        "llama-bpe" | "llama3" | "smaug-bpe" => split_then_bytes(LLAMA3_SPLIT),
        "qwen2" => split_then_bytes(QWEN2_SPLIT),
        other => {
            return Err(Error::GgufTokenizer {
                key: "tokenizer.ggml.pre".into(),
                reason: format!(
                    "pre-tokenizer {other:?} is not supported (supported: default, gpt2, smollm, starcoder, refact, llama-bpe, qwen2)"
                ),
            });
        }
    })
}

fn optional_id(md: &Metadata, key: &str) -> Result<Option<usize>, Error> {
    md.get(key)
        .map(|_| md.usize(key))
        .transpose()
        .map_err(Error::from)
}

/// Builds `tokenizer.json` for a GGUF whose `tokenizer.ggml.model` is `gpt2`
/// (byte-level BPE, as in SmolLM, Llama 3, Qwen2).
pub fn tokenizer_json_from_gguf(md: &Metadata) -> Result<Value, Error> {
    let model = md.str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(Error::GgufTokenizer {
            key: "tokenizer.ggml.model".into(),
            reason: format!(
                "tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")"
            ),
        });
    }
    let tokens = md.string_array("tokenizer.ggml.tokens")?;
    let merges = md.string_array("tokenizer.ggml.merges")?;
    let types = match md.get("tokenizer.ggml.token_type") {
        Some(_) => md.i64_array("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(Error::GgufTokenizer {
            key: "tokenizer.ggml.token_type".into(),
            reason: format!("has {} entries for {} tokens", types.len(), tokens.len()),
        });
    }
    if let Some(bad) = merges.iter().find(|m| m.split(' ').count() != 2) {
        return Err(Error::GgufTokenizer {
            key: "tokenizer.ggml.merges".into(),
            reason: format!("merge {bad:?} is not two tokens separated by one space"),
        });
    }
    let pre = match md.get("tokenizer.ggml.pre") {
        Some(_) => md.str("tokenizer.ggml.pre")?,
        None => "default",
    };

    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        vocab.entry(tok.to_string()).or_insert(json!(id));
    }
    let added: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, t))| **t == TOKEN_CONTROL || **t == TOKEN_USER_DEFINED)
        .map(|(id, (tok, t))| {
            json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": *t != TOKEN_CONTROL, "special": *t == TOKEN_CONTROL})
        })
        .collect();

    let bos = optional_id(md, "tokenizer.ggml.bos_token_id")?;
    let add_bos = match md.get("tokenizer.ggml.add_bos_token") {
        Some(_) => md.bool("tokenizer.ggml.add_bos_token")?,
        None => false,
    };
    let post_processor = match (add_bos, bos) {
        (true, Some(bos)) => {
            let bos_tok = tokens.get(bos).ok_or_else(|| Error::GgufTokenizer {
                key: "tokenizer.ggml.bos_token_id".into(),
                reason: format!("{bos} is past the {} tokens", tokens.len()),
            })?;
            json!({"type": "Sequence", "processors": [
                {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
                {"type": "TemplateProcessing",
                 "single": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                 "pair": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                          {"SpecialToken": {"id": bos_tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                 "special_tokens": {bos_tok.to_string(): {"id": bos_tok, "ids": [bos], "tokens": [bos_tok]}}},
            ]})
        }
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        }
    };

    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre)?,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            // Llama 3 looks a whole word up in the vocabulary before merging.
            "ignore_merges": matches!(pre, "llama-bpe" | "llama3" | "smaug-bpe"),
            "vocab": vocab, "merges": merges,
        },
    }))
}
