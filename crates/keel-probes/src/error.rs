use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Io(#[from] keel_fs::IoError),
    #[error(transparent)]
    Toml(#[from] keel_recipe::Error),
    #[error("{path}: `{key}`: {message}")]
    Suite {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{path}:{line}: {reason}")]
    Row {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(transparent)]
    Model(#[from] keel_model::Error),
    #[error(transparent)]
    Text(#[from] keel_text::Error),
}
