use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// 1-based line in the file, when the key is written there.
    pub line: Option<usize>,
    /// Dotted key, e.g. `optim.lr`.
    pub key: String,
    pub message: String,
}

/// Everything wrong with a recipe, reported at once.
#[derive(Debug)]
pub struct Error {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p.line {
                Some(line) => write!(
                    f,
                    "{}:{line}: {}: {}",
                    self.file.display(),
                    p.key,
                    p.message
                )?,
                None => write!(f, "{}: {}: {}", self.file.display(), p.key, p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {}
