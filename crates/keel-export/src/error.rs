use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Adapter(#[from] keel_adapters::Error),
    #[error(transparent)]
    Model(#[from] keel_model::Error),
    #[error(transparent)]
    Gguf(#[from] keel_gguf::Error),
    #[error("no module has an adapter named `{0}`")]
    NoAdapter(String),
    #[error("{format} export: {reason}")]
    Unsupported {
        format: &'static str,
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |error| Error::Io { path, error }
    }
}
