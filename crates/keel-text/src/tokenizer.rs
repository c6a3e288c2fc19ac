use std::path::Path;

use crate::error::Error;

/// A token's byte range in the encoded text.
pub type Span = (usize, usize);

/// A tokenizer with the model's special-token ids resolved.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Loads an HF `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(keel_fs::io(path))?;
        Self::from_json(&text).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    pub fn from_json(json: &str) -> Result<Self, Error> {
        // JSON syntax first: tokenizers 0.22 panics on some syntax errors
        // inside a component (`expect("Helper")` in its decoder helper).
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::Tokenizer(format!("not JSON: {e}")))?;
        // And it may still panic on a malformed component.
        let inner = guarded("reading it", || {
            serde_json::from_value::<tokenizers::Tokenizer>(value).map_err(|e| e.to_string())
        })?;
        Ok(Tokenizer { inner })
    }

    /// The tokenizer as `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String, Error> {
        self.inner
            .to_string(true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Encodes `text`; special-token strings in it become their ids.
    /// `add_special` adds what the post-processor adds (e.g. a BOS token).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, Error> {
        guarded("encoding", || {
            self.inner
                .encode(text, add_special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| e.to_string())
        })
    }

    /// Like [`Tokenizer::encode`], with each token's byte range in `text`.
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special: bool,
    ) -> Result<Vec<(u32, Span)>, Error> {
        let enc = guarded("encoding", || {
            self.inner
                .encode(text, add_special)
                .map_err(|e| e.to_string())
        })?;
        Ok(enc
            .get_ids()
            .iter()
            .copied()
            .zip(enc.get_offsets().iter().copied())
            .collect())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, Error> {
        guarded("decoding", || {
            self.inner
                .decode(ids, skip_special)
                .map_err(|e| e.to_string())
        })
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Runs a call into the `tokenizers` crate, which panics on some malformed
/// tokenizer files (found by fuzzing, in parsing and in encoding): a bad
/// file is an error here, never a crash.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, Error> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(Error::Tokenizer),
        Err(_) => Err(Error::Tokenizer(format!(
            "the tokenizer is malformed: the tokenizers crate failed {what}"
        ))),
    }
}
