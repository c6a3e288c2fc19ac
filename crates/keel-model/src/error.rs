use std::path::PathBuf;

/// Why a model could not be loaded or run. Every variant names the file,
/// key or tensor at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Io(#[from] keel_fs::IoError),
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("{file}: key `{key}`: {reason}")]
    Config {
        file: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{file}: tensor `{tensor}`: {reason}")]
    Tensor {
        file: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error(transparent)]
    Gguf(#[from] keel_gguf::Error),
    #[error(transparent)]
    Text(#[from] keel_text::Error),
    #[error(transparent)]
    Adapter(#[from] keel_adapters::Error),
    #[error("{key}: {reason}")]
    Setting { key: String, reason: String },
    #[error("device `{0}`: {1}")]
    Device(String, String),
}
