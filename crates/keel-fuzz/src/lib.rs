//! The fuzz targets: each takes arbitrary bytes, feeds them to one of keel's
//! parsers of outside data as a user's file would reach it, and must return
//! (an `Err` is fine) without panicking, hanging or allocating more than
//! the input justifies. `fuzz/` drives them with libFuzzer; the test below
//! replays the committed corpora and every crash ever found on stable Rust.

use std::path::{Path, PathBuf};

use keel_text::{ChatTemplate, Message, Tokenizer};

#[cfg(feature = "model")]
mod model;
#[cfg(feature = "model")]
pub use model::{hf_model, jsonl, peft_adapter, safetensors_index};

/// A target: its name (the corpus folder) and its body.
pub type Target = (&'static str, fn(&[u8]));

pub const TARGETS: &[Target] = &[
    ("gguf", gguf),
    ("recipe", recipe),
    ("tokenizer_json", tokenizer_json),
    ("chat_template", chat_template),
    #[cfg(feature = "model")]
    ("hf_model", hf_model),
    #[cfg(feature = "model")]
    ("safetensors_index", safetensors_index),
    #[cfg(feature = "model")]
    ("peft_adapter", peft_adapter),
    #[cfg(feature = "model")]
    ("jsonl", jsonl),
];

/// A file in this process's scratch folder holding `data`: the parsers
/// under test read files, as they do for users.
fn scratch(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("scratch folder");
    }
    std::fs::write(&path, data).expect("scratch file");
    path
}

fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("keel-fuzz-{}", std::process::id()))
}

/// Two files in one input: a little-endian u32 length (modulo what is
/// there), the first file, then the second.
#[cfg(feature = "model")]
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 4 {
        return (data, &[]);
    }
    let n = u32::from_le_bytes(data[..4].try_into().expect("4 bytes")) as usize % (data.len() - 3);
    data[4..].split_at(n)
}

/// `fuzz/<rel>`: files the targets build on (the micro model).
#[cfg(feature = "model")]
fn fuzz_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(rel)
}

fn messages() -> Vec<Message> {
    vec![
        Message::new("system", "Be brief."),
        Message::new("user", "Hi {{ there }} <|im_end|>"),
        Message::new("assistant", "Hello."),
        Message::new("user", "Bye"),
    ]
}

/// A GGUF file: header, metadata, tensor table; then what keel builds from
/// them: the tokenizer.json rebuild, the chat template, and every small
/// tensor dequantized.
pub fn gguf(data: &[u8]) {
    abort_on_panics_outside_tokenizers();
    let Ok(g) = keel_gguf::GgufFile::open(scratch("x.gguf", data)) else {
        return;
    };
    for info in &g.tensors {
        if info.n_bytes <= 1 << 20 {
            let _ = g.tensor_f32(&info.name);
        }
    }
    // Loading the rebuilt JSON is the tokenizer_json target's work: here it
    // compiled the pre-tokenizer's regex on every input, two thirds of the time.
    let _ = keel_text::tokenizer_json_from_gguf(&g.metadata);
    if let Some(source) = g
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
    {
        let template = ChatTemplate {
            source: source.to_string(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        };
        let _ = template.render(&messages(), true);
    }
}

/// A recipe TOML file, with one command-line override.
pub fn recipe(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = keel_recipe::Recipe::parse(
        text,
        Path::new("fuzz/recipe.toml"),
        &["optim.lr=1e-4".into()],
    );
}

/// Under libFuzzer every panic aborts, even one keel catches. keel turns
/// panics inside the `tokenizers` crate into errors (`Tokenizer::from_json`),
/// so those unwind to keel's handler; any other panic still aborts.
fn abort_on_panics_outside_tokenizers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            if info
                .location()
                .is_some_and(|l| l.file().contains("/tokenizers-"))
            {
                return;
            }
            eprintln!("{info}");
            std::process::abort();
        }));
    });
}

/// A `tokenizer.json`, then a round trip through it.
pub fn tokenizer_json(data: &[u8]) {
    abort_on_panics_outside_tokenizers();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Tokenizer::from_json(text) {
        let ids = t
            .encode("Hello, wörld! <|im_start|> 123", true)
            .unwrap_or_default();
        let _ = t.decode(&ids, true);
    }
}

/// A chat template (a Jinja program from a model file): rendered under
/// minijinja's fuel limit, with the sandbox keel gives it.
pub fn chat_template(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let template = ChatTemplate {
        source: text.to_string(),
        bos_token: "<s>".into(),
        eos_token: "</s>".into(),
    };
    let _ = template.render(&messages(), true);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays every committed input: `fuzz/seeds/<target>` (from real
    /// files), `fuzz/replay/<target>` (kept from the campaign's minimized
    /// corpus) and `fuzz/regressions/<target>` (every crash found).
    #[test]
    fn committed_corpora_replay_without_a_crash() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
        for &(name, target) in TARGETS {
            let mut seeds = 0;
            for kind in ["seeds", "replay", "regressions"] {
                let Ok(entries) = std::fs::read_dir(root.join(kind).join(name)) else {
                    continue;
                };
                for entry in entries {
                    target(&std::fs::read(entry.unwrap().path()).unwrap());
                    seeds += (kind == "seeds") as usize;
                }
            }
            assert!(seeds > 0, "target {name} has no seeds in fuzz/seeds/{name}");
        }
    }
}
