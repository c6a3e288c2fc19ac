//! Text in and out of a model: the tokenizer and the chat template.
//!
//! A [`Tokenizer`] comes from an HF `tokenizer.json`, or is rebuilt from a
//! GGUF file's `tokenizer.ggml.*` metadata as the equivalent `tokenizer.json`
//! (so it encodes exactly as the HF tokenizer does, and `keel convert` can
//! write it out). A [`ChatTemplate`] renders the model's own Jinja template
//! in a sandbox (minijinja: no file or network access, bounded work).

mod chat;
mod error;
mod gguf;
mod tokenizer;

pub use chat::{ChatTemplate, Message};
pub use error::Error;
pub use gguf::tokenizer_json_from_gguf;
pub use tokenizer::Tokenizer;
