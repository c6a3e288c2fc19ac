use std::fmt;
use std::path::PathBuf;

/// An error reading a GGUF file: what went wrong, and in which file.
#[derive(Debug)]
pub struct Error {
    pub path: Option<PathBuf>,
    pub kind: ErrorKind,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a GGUF file (magic bytes are {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (only 2 and 3 are)")]
    UnsupportedVersion(u32),
    #[error("file is truncated: {field} needs {need} bytes at offset {offset}, the file has {len}")]
    Truncated {
        field: String,
        offset: u64,
        need: u64,
        len: u64,
    },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("metadata key `{0}` is missing")]
    MissingKey(String),
    #[error("metadata key `{key}` holds {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("tensor `{tensor}` has ggml type {type_id} ({name}), which keel cannot dequantize")]
    UnsupportedType {
        tensor: String,
        type_id: u32,
        name: &'static str,
    },
    #[error("no tensor named `{0}`")]
    MissingTensor(String),
}

impl Error {
    pub fn new(kind: ErrorKind) -> Self {
        Error { path: None, kind }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::new(ErrorKind::Invalid {
            field: field.into(),
            reason: reason.into(),
        })
    }

    pub(crate) fn with_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path.get_or_insert_with(|| path.into());
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}: {}", path.display(), self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

/// No `source()`: the message already includes the I/O error, and error
/// reporters that walk the chain would print it twice.
impl std::error::Error for Error {}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error::new(kind)
    }
}
