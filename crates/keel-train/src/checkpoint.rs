//! Checkpoints: `checkpoints/step-NNNNNNN/` holds the adapter (PEFT
//! format), the optimizer states and `state.json`; `latest` names the newest
//! complete one. Each is assembled under a temporary name and renamed into
//! place, and `latest` is replaced by rename too, so a crash at any moment
//! leaves the previous checkpoint intact and `latest` pointing at a whole one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Where the run stands; everything else a resume needs is in the recipe.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    pub epoch: usize,
    /// Examples of `epoch` already used.
    pub pos: usize,
    pub tokens: u64,
    pub elapsed_s: f64,
}

pub const STATE_FILE: &str = "state.json";
pub const OPTIM_A: &str = "optimizer-a.bpk";
pub const OPTIM_B: &str = "optimizer-b.bpk";
const LATEST: &str = "latest";

pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// Writes `contents` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), Error> {
    Ok(keel_fs::write_atomic(path, contents)?)
}

/// Creates a checkpoint for `state.step`: `fill` writes the adapter and
/// optimizer files into the folder it is given. Returns the final path.
pub fn save(
    out: &Path,
    state: &TrainState,
    fill: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<PathBuf, Error> {
    let root = checkpoints_dir(out);
    std::fs::create_dir_all(&root).map_err(keel_fs::io(&root))?;
    let name = format!("step-{:07}", state.step);
    let tmp = root.join(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(keel_fs::io(&tmp))?;
    fill(&tmp)?;
    let json = serde_json::to_vec_pretty(state).expect("JSON");
    write_atomic(&tmp.join(STATE_FILE), &json)?;
    let dest = root.join(&name);
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(keel_fs::io(&dest))?;
    }
    std::fs::rename(&tmp, &dest).map_err(keel_fs::io(&dest))?;
    write_atomic(&out.join(LATEST), name.as_bytes())?;
    Ok(dest)
}

/// The newest complete checkpoint, if any.
pub fn latest(out: &Path) -> Result<Option<PathBuf>, Error> {
    let path = out.join(LATEST);
    if !path.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&path).map_err(keel_fs::io(&path))?;
    let dir = checkpoints_dir(out).join(name.trim());
    if !dir.join(STATE_FILE).exists() {
        return Err(Error::Checkpoint {
            path: dir,
            reason: "`latest` names a checkpoint that is not there".into(),
        });
    }
    Ok(Some(dir))
}

pub fn read_state(dir: &Path) -> Result<TrainState, Error> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(keel_fs::io(&path))?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        path,
        reason: e.to_string(),
    })
}
