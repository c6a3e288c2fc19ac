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

fn optional_bool(md: &Metadata, key: &str) -> Result<Option<bool>, Error> {
    md.get(key)
        .map(|_| md.bool(key))
        .transpose()
        .map_err(Error::from)
}

fn tokenizer_error(key: &str, reason: String) -> Error {
    Error::GgufTokenizer {
        key: key.into(),
        reason,
    }
}

/// Builds `tokenizer.json` from GGUF metadata, for `tokenizer.ggml.model`
/// `gpt2` (byte-level BPE: SmolLM, Llama 3, Qwen2) or `llama` (SentencePiece
/// BPE with byte fallback: Llama 2, Mistral, and Gemma's variant of it).
pub fn tokenizer_json_from_gguf(md: &Metadata) -> Result<Value, Error> {
    let model = md.str("tokenizer.ggml.model")?;
    let stored = md.string_array("tokenizer.ggml.tokens")?;
    let arch = md.get("general.architecture").and_then(|v| v.as_str());
    let gemma = model == "llama" && matches!(arch, Some("gemma" | "gemma2" | "gemma3"));
    // Gemma files spell tokens of two or more spaces with spaces, where its
    // tokenizer looks them up as `▁` runs (transformers' `gemma_tokenizer`).
    let spelled: Vec<String> = stored
        .iter()
        .map(|t| match gemma && t.contains(' ') && t.trim().is_empty() {
            true => "\u{2581}".repeat(t.chars().count()),
            false => t.to_string(),
        })
        .collect();
    let tokens: Vec<&str> = spelled.iter().map(String::as_str).collect();
    let types = match md.get("tokenizer.ggml.token_type") {
        Some(_) => md.i64_array("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(tokenizer_error(
            "tokenizer.ggml.token_type",
            format!("has {} entries for {} tokens", types.len(), tokens.len()),
        ));
    }
    let token_at = |key: &str, id: usize| -> Result<&str, Error> {
        tokens.get(id).copied().ok_or_else(|| {
            tokenizer_error(key, format!("{id} is past the {} tokens", tokens.len()))
        })
    };
    let mut special: Vec<usize> = (0..tokens.len())
        .filter(|&i| types[i] == TOKEN_CONTROL)
        .collect();
    let (mut json, add_bos_default) = match model {
        "gpt2" => (byte_level_bpe(md, &tokens)?, false),
        "llama" => {
            // SentencePiece's unknown piece is special too.
            if let Some(unk) = optional_id(md, "tokenizer.ggml.unknown_token_id")? {
                token_at("tokenizer.ggml.unknown_token_id", unk)?;
                special.push(unk);
            }
            let mut json = match gemma {
                true => gemma_bpe(&tokens),
                false => sentencepiece_bpe(md, &tokens)?,
            };
            // Phi-3 prefixes `▁` by a normalizer, not by Metaspace: text
            // starting with spaces keeps one more (transformers' `phi3_tokenizer`).
            if arch == Some("phi3") {
                json["normalizer"] = json!({"type": "Sequence", "normalizers": [
                    {"type": "Prepend", "prepend": "\u{2581}"},
                    {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
                ]});
                json["pre_tokenizer"] = Value::Null;
            }
            (json, true)
        }
        other => {
            return Err(tokenizer_error(
                "tokenizer.ggml.model",
                format!("tokenizer model {other:?} is not supported (gpt2 and llama are)"),
            ));
        }
    };
    let mut added: Vec<usize> = special.clone();
    // A respelled token is found through the vocabulary, not matched whole.
    added.extend(
        (0..tokens.len()).filter(|&i| types[i] == TOKEN_USER_DEFINED && tokens[i] == stored[i]),
    );
    added.sort_unstable();
    added.dedup();
    json["added_tokens"] = added
        .iter()
        .map(|&id| {
            json!({"id": id, "content": tokens[id], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": special.contains(&id)})
        })
        .collect();

    // A BOS token is prepended when the file says so (SentencePiece models
    // default to yes, byte-level ones to no).
    let add_bos = optional_bool(md, "tokenizer.ggml.add_bos_token")?.unwrap_or(add_bos_default);
    if let (true, Some(bos)) = (add_bos, optional_id(md, "tokenizer.ggml.bos_token_id")?) {
        let bos_tok = token_at("tokenizer.ggml.bos_token_id", bos)?;
        let template = json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos_tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos_tok.to_string(): {"id": bos_tok, "ids": [bos], "tokens": [bos_tok]}}});
        json["post_processor"] = match json["post_processor"].take() {
            Value::Null => template,
            other => json!({"type": "Sequence", "processors": [other, template]}),
        };
    }
    Ok(json)
}

fn vocab_map(tokens: &[&str]) -> serde_json::Map<String, Value> {
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        vocab.entry(tok.to_string()).or_insert(json!(id));
    }
    vocab
}

/// Byte-level BPE with the merges stored in the file.
fn byte_level_bpe(md: &Metadata, tokens: &[&str]) -> Result<Value, Error> {
    let merges = md.string_array("tokenizer.ggml.merges")?;
    if let Some(bad) = merges.iter().find(|m| m.split(' ').count() != 2) {
        return Err(tokenizer_error(
            "tokenizer.ggml.merges",
            format!("merge {bad:?} is not two tokens separated by one space"),
        ));
    }
    let pre = match md.get("tokenizer.ggml.pre") {
        Some(_) => md.str("tokenizer.ggml.pre")?,
        None => "default",
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre)?,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            // Llama 3 looks a whole word up in the vocabulary before merging.
            "ignore_merges": matches!(pre, "llama-bpe" | "llama3" | "smaug-bpe"),
            "vocab": vocab_map(tokens), "merges": merges,
        },
    }))
}

/// SentencePiece BPE as transformers rebuilds it from a GGUF
/// (`integrations/gguf`): llama.cpp stores scores, not merges, so every
/// split of a token into two vocabulary pieces becomes a merge ranked by
/// that token's score; a `▁` is prepended to the first word; unknown bytes
/// fall back to `<0xNN>` tokens.
fn sentencepiece_bpe(md: &Metadata, tokens: &[&str]) -> Result<Value, Error> {
    let scores = md.f32_array("tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(tokenizer_error(
            "tokenizer.ggml.scores",
            format!("has {} entries for {} tokens", scores.len(), tokens.len()),
        ));
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab_map(tokens), "merges": merges_from_scores(tokens, &scores),
        },
    }))
}

/// Gemma's tokenizer (transformers' `GemmaTokenizer`, as rebuilt from a
/// GGUF): spaces become `▁` with no prefix and no split, and merges follow
/// the tokens' order in the file, not their scores.
fn gemma_bpe(tokens: &[&str]) -> Value {
    let ranks: Vec<f32> = (0..tokens.len()).map(|i| -(i as f32)).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab_map(tokens), "merges": merges_from_scores(tokens, &ranks),
        },
    })
}

/// transformers' `generate_merges`: for each token in id order, its splits
/// into two vocabulary pieces (ordered by the pieces' ids), then all of
/// them stably sorted by (score, left length, right length), descending.
/// Lengths count characters, and -0.0 ties with 0.0, as in Python.
fn merges_from_scores(tokens: &[&str], scores: &[f32]) -> Vec<[String; 2]> {
    let mut ids: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        ids.insert(t, id);
    }
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for (tok, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(&str, &str, f32)> = tok
            .char_indices()
            .skip(1)
            .map(|(i, _)| (&tok[..i], &tok[i..], score))
            .filter(|(l, r, _)| ids.contains_key(l) && ids.contains_key(r))
            .collect();
        local.sort_by_key(|(l, r, _)| (ids[l], ids[r]));
        merges.extend(local);
    }
    // -0.0 is made 0.0 (they tie in Python); `total_cmp` keeps the order
    // total when a file holds NaN scores (a partial order makes sort panic:
    // found by fuzzing).
    let score = |s: f32| if s == 0.0 { 0.0 } else { s };
    merges.sort_by(|a, b| {
        let key = |m: &(&str, &str, f32)| (score(m.2), m.0.chars().count(), m.1.chars().count());
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| [l.to_string(), r.to_string()])
        .collect()
}
