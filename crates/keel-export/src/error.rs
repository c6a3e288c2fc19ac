#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Io(#[from] keel_fs::IoError),
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
