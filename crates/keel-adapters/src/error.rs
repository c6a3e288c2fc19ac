use std::path::PathBuf;

/// Why an adapter could not be built, loaded or saved. Each variant names
/// the file, key, module or tensor at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Io(#[from] keel_fs::IoError),
    #[error("{file}: key `{key}`: {reason}")]
    Config {
        file: String,
        key: String,
        reason: String,
    },
    #[error("target `{target}` matches no module; the model's modules are: {available}")]
    NoMatch { target: String, available: String },
    #[error("{file}: tensor `{tensor}`: {reason}")]
    Tensor {
        file: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("module `{module}`: {reason}")]
    Module { module: String, reason: String },
}

impl From<keel_adapter_config::ConfigError> for Error {
    fn from(e: keel_adapter_config::ConfigError) -> Self {
        Error::Config {
            file: e.file,
            key: e.key,
            reason: e.reason,
        }
    }
}
