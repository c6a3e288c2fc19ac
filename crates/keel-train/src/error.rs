use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Io(#[from] keel_fs::IoError),
    #[error(transparent)]
    Model(#[from] keel_model::Error),
    #[error(transparent)]
    Adapter(#[from] keel_adapters::Error),
    #[error(transparent)]
    Data(#[from] keel_data::Error),
    #[error(transparent)]
    Align(#[from] keel_align::Error),
    #[error(transparent)]
    Text(#[from] keel_text::Error),
    #[error("{path}: {reason}")]
    Output { path: PathBuf, reason: String },
    #[error("{path}: checkpoint unreadable: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("step {step}: {what} is not finite ({value}); stopped, the last good checkpoint is kept{}", .kept.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default())]
    NotFinite {
        step: usize,
        what: String,
        value: f64,
        kept: Option<PathBuf>,
    },
}
