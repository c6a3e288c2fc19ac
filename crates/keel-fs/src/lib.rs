//! What every keel crate needs from the file system: I/O errors that name
//! the file, and writes that are never seen half-done.

use std::path::{Path, PathBuf};

/// An I/O error and the path it happened at. Its message holds the
/// error's own, so it is not also given as a source (error chains would
/// print it twice).
#[derive(Debug, thiserror::Error)]
#[error("{}: {error}", path.display())]
pub struct IoError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// For `map_err`: the error at `path` (`?` converts it into any error
/// type that wraps an [`IoError`]).
pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> IoError {
    let path = path.into();
    move |error| IoError { path, error }
}

/// Writes `contents` to `path` through a synced temporary file in the same
/// folder and a rename: a crash leaves the old file or the new one, never
/// a mix.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), IoError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    write_synced(&tmp, contents)?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Writes `contents` to `path` and syncs it to disk, without a rename: for
/// callers that put several such files in place together.
pub fn write_synced(path: &Path, contents: &[u8]) -> Result<(), IoError> {
    std::fs::write(path, contents)
        .and_then(|()| std::fs::File::open(path)?.sync_all())
        .map_err(io(path))
}

/// The rows of a JSONL text: each non-blank line with its 1-based number.
pub fn jsonl_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| (i + 1, line))
}

/// The rows of a JSONL text parsed as `T`, with their line numbers (for
/// errors that name the line).
pub fn jsonl<T: serde::de::DeserializeOwned>(
    text: &str,
) -> impl Iterator<Item = (usize, Result<T, serde_json::Error>)> {
    jsonl_lines(text).map(|(line, row)| (line, serde_json::from_str(row)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_names_the_path_on_error() {
        let dir = std::env::temp_dir().join(format!("keel-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.json");
        write_atomic(&file, b"one").unwrap();
        write_atomic(&file, b"two").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file is left"
        );
        let err = write_atomic(&dir.join("missing/b.json"), b"x").unwrap_err();
        assert!(err.to_string().contains("missing/.b.json.tmp"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Blank lines are skipped and the others keep their own numbers.
    #[test]
    fn jsonl_rows_keep_their_line_numbers() {
        let rows: Vec<(usize, Result<u32, _>)> = jsonl("1\n\n  \nx\n3\n").collect();
        let lines: Vec<usize> = rows.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [1, 4, 5]);
        assert!(rows[0].1.as_ref().is_ok_and(|v| *v == 1) && rows[1].1.is_err());
    }
}
