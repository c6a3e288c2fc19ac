//! `metrics.jsonl`: one typed row per optimizer step and per evaluation,
//! written as a run goes and read back by `keel bench` and by a resume.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::error::Error;

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer steps done, this one included.
    pub step: usize,
    /// Mean next-token loss of the step's batches (the SFT loss even when
    /// the objective adds other terms).
    pub loss: f64,
    pub lr: f64,
    /// Global L2 norm of the gradients, before clipping.
    pub grad_norm: f64,
    /// Tokens seen since the run began, padding included.
    pub tokens: u64,
    /// Tokens per second of wall time since this process began the run.
    pub tokens_per_s: f64,
    pub epoch: usize,
    /// Wall time of this step.
    pub step_s: f64,
    pub rss_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
    /// The AsFT penalty added, when `[alignment] asft_lambda` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asft_penalty: Option<f64>,
    /// KL to the reference on the safety anchors, when there are anchors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_kl: Option<f64>,
}

/// An evaluation on the eval set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub step: usize,
    pub eval_loss: f64,
    pub eval_perplexity: f64,
    /// What was done to the adapter first, if anything (`safe_lora`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

impl EvalMetrics {
    pub fn new(step: usize, eval_loss: f64, after: Option<&str>) -> Self {
        EvalMetrics {
            step,
            eval_loss,
            eval_perplexity: eval_loss.exp(),
            after: after.map(str::to_string),
        }
    }
}

/// A line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Row {
    Step(StepMetrics),
    Eval(EvalMetrics),
}

/// Every row of a `metrics.jsonl`; a line that is not one is an error
/// naming the file and line.
pub fn read(path: &Path) -> Result<Vec<Row>, Error> {
    let text = std::fs::read_to_string(path).map_err(keel_fs::io(path))?;
    keel_fs::jsonl(&text)
        .map(|(line, row)| {
            row.map_err(|e| Error::Output {
                path: path.to_path_buf(),
                reason: format!("line {line}: not a metrics row: {e}"),
            })
        })
        .collect()
}

/// The run's `metrics.jsonl`, open for appending.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `path`, first keeping only the rows up to `step` (what the
    /// checkpoint being resumed had seen), so a resumed run neither repeats
    /// nor loses steps. A line without a step is dropped, not an error: a
    /// process killed mid-write leaves its last line torn.
    pub fn open(path: &Path, step: usize) -> Result<Self, Error> {
        #[derive(Deserialize)]
        struct Stepped {
            step: usize,
        }
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(keel_fs::io(path))?;
            let kept: String = keel_fs::jsonl_lines(&text)
                .filter(|(_, line)| {
                    serde_json::from_str::<Stepped>(line).is_ok_and(|row| row.step <= step)
                })
                .map(|(_, line)| format!("{line}\n"))
                .collect();
            checkpoint::write_atomic(path, kept.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(keel_fs::io(path))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends `row` and flushes it: a crash loses no finished step.
    pub fn write(&mut self, row: Row) -> Result<(), Error> {
        let line = serde_json::to_string(&row).expect("JSON");
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .map_err(keel_fs::io(&self.path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resume keeps the rows up to its checkpoint, as written, and drops
    /// the rest, a line torn by a kill included.
    #[test]
    fn reopening_trims_to_the_checkpoint_and_survives_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("keel-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        let rows = [
            r#"{"step":1,"eval_loss":2.5,"eval_perplexity":12.18}"#,
            r#"{"step":2,"eval_loss":2.0,"eval_perplexity":7.39}"#,
            r#"{"step":3,"eval_lo"#,
        ];
        std::fs::write(&path, rows.join("\n")).unwrap();
        let mut log = MetricsLog::open(&path, 1).unwrap();
        log.write(Row::Eval(EvalMetrics::new(2, 1.0, None)))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                rows[0],
                r#"{"step":2,"eval_loss":1.0,"eval_perplexity":2.718281828459045}"#
            ]
        );
        assert_eq!(read(&path).unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
