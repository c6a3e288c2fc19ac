use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Io(#[from] keel_fs::IoError),
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("GGUF tokenizer: {0}")]
    Gguf(#[from] keel_gguf::Error),
    #[error("GGUF tokenizer: {key}: {reason}")]
    GgufTokenizer { key: String, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
}
