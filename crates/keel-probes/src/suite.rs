//! The suite file: which probe sets to run, which judges, and the gate a
//! drift report must pass. See `datasets/probes/default.toml`, the suite
//! keel runs when none is given (built into the binary).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;

/// What a well-aligned model does with a set's prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// Harmful: must be refused.
    Refuse,
    /// Safe or benign: must be answered (refusing is over-refusal).
    Answer,
    /// Known answers: judged by exact/contains match.
    Correct,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSpec {
    pub name: String,
    /// JSONL, one `{"prompt": ...}` per line (`"answers": [...]` for
    /// `expect = "correct"`), relative to the suite file.
    pub file: PathBuf,
    pub expect: Expect,
    /// Probe only the first `limit` prompts.
    pub limit: Option<usize>,
}

/// Greedy answers, judged by the refusal matcher (and capability match).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationSpec {
    pub max_new_tokens: usize,
    /// Phrases added to the built-in refusal list.
    #[serde(default)]
    pub extra_refusal_phrases: Vec<String>,
}

/// log P(refusal) − log P(compliance) of the answer's opening, under the
/// chat template, no generation (see `judges/margin.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarginSpec {
    /// Refusal openers ("I'm sorry", "I cannot", ...).
    pub refusal: Vec<String>,
    /// Compliance openers; absent: compliance is any other opening.
    pub compliance: Option<Vec<String>>,
}

/// Per-layer difference of mean residuals, harmful (`refuse` sets) minus
/// harmless (`answer` sets).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectionSpec {
    /// Prompts per side used to fit the direction; the rest are held out
    /// to measure how well it separates (AUROC).
    pub fit_fraction: f64,
}

/// Next-token KL of the adapted model to the base, on the base's answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KlSpec {
    /// Response positions scored on `answer` sets.
    pub response_tokens: usize,
    /// Response positions scored on `refuse` sets: the first few tokens,
    /// where shallow safety alignment lives (Qi et al. 2024).
    pub refuse_first_tokens: usize,
}

impl KlSpec {
    /// Response positions scored on a set that expects `expect` (none on
    /// `correct` sets).
    pub fn positions(&self, expect: Expect) -> usize {
        match expect {
            Expect::Answer => self.response_tokens,
            Expect::Refuse => self.refuse_first_tokens,
            Expect::Correct => 0,
        }
    }
}

/// The largest regressions `keel drift` lets pass (fractions, not points).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Largest fall in refusal rate on a `refuse` set.
    pub refusal_drop: f64,
    /// Largest rise in refusal rate on an `answer` set.
    pub over_refusal_rise: f64,
    /// Largest fall in accuracy on a `correct` set.
    pub capability_drop: f64,
    /// Largest mean KL (nats per token) on an `answer` set.
    pub max_kl: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub name: String,
    /// Seeds the bootstrap: the same inputs give the same report.
    pub seed: u64,
    /// Bootstrap resamples for the 95% intervals.
    pub bootstrap: usize,
    pub generation: Option<GenerationSpec>,
    pub margin: Option<MarginSpec>,
    pub direction: Option<DirectionSpec>,
    pub kl: Option<KlSpec>,
    pub gate: Gate,
    pub sets: Vec<SetSpec>,
    /// Folder the set files are read from (the suite file's).
    #[serde(skip)]
    pub dir: PathBuf,
}

/// One probe prompt.
#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    pub prompt: String,
    /// Accepted answers (`expect = "correct"` sets).
    #[serde(default)]
    pub answers: Vec<String>,
}

/// A set with its prompts read.
#[derive(Debug, Clone)]
pub struct ProbeSet {
    pub name: String,
    pub expect: Expect,
    pub rows: Vec<Row>,
}

const BUILTIN: &[(&str, &str)] = &[
    (
        "default.toml",
        include_str!("../../../datasets/probes/default.toml"),
    ),
    (
        "harmful.jsonl",
        include_str!("../../../datasets/probes/harmful.jsonl"),
    ),
    (
        "xstest-unsafe.jsonl",
        include_str!("../../../datasets/probes/xstest-unsafe.jsonl"),
    ),
    (
        "xstest-safe.jsonl",
        include_str!("../../../datasets/probes/xstest-safe.jsonl"),
    ),
    (
        "benign.jsonl",
        include_str!("../../../datasets/probes/benign.jsonl"),
    ),
    (
        "capability.jsonl",
        include_str!("../../../datasets/probes/capability.jsonl"),
    ),
];

/// The folder name that stands for the built-in suite in paths and reports.
const BUILTIN_DIR: &str = "<builtin>";

impl Suite {
    /// Reads and checks a suite file.
    pub fn load(path: &Path) -> Result<Suite, Error> {
        let text = std::fs::read_to_string(path).map_err(keel_fs::io(path))?;
        Self::parse(&text, path)
    }

    /// keel's default suite, with its probe sets, as built into keel.
    pub fn builtin() -> Suite {
        let path = Path::new(BUILTIN_DIR).join("default.toml");
        Self::parse(BUILTIN[0].1, &path).expect("the built-in suite is valid")
    }

    fn parse(text: &str, path: &Path) -> Result<Suite, Error> {
        let mut suite: Suite = keel_recipe::parse_toml(text, path)?;
        suite.dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let problems = suite.problems();
        if let Some((key, message)) = problems.into_iter().next() {
            return Err(Error::Suite {
                path: path.to_path_buf(),
                key,
                message,
            });
        }
        Ok(suite)
    }

    fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut check = |ok: bool, key: &str, message: String| {
            if !ok {
                out.push((key.to_string(), message));
            }
        };
        check(!self.sets.is_empty(), "sets", "no probe sets".into());
        check(
            self.bootstrap >= 1,
            "bootstrap",
            "must be at least 1".into(),
        );
        for (i, s) in self.sets.iter().enumerate() {
            check(
                !self.sets[..i].iter().any(|o| o.name == s.name),
                "sets.name",
                format!("`{}` is used twice", s.name),
            );
            check(
                s.expect != Expect::Correct || self.generation.is_some(),
                "sets.expect",
                format!(
                    "set `{}` is judged by its answers: add a [generation] section",
                    s.name
                ),
            );
        }
        if let Some(g) = &self.generation {
            check(
                g.max_new_tokens >= 1,
                "generation.max_new_tokens",
                "must be at least 1".into(),
            );
        }
        if let Some(m) = &self.margin {
            check(
                !m.refusal.iter().any(|r| r.is_empty()) && !m.refusal.is_empty(),
                "margin.refusal",
                "needs at least one refusal opener, none of them empty".into(),
            );
            check(
                m.compliance
                    .as_ref()
                    .is_none_or(|c| !c.is_empty() && !c.iter().any(|r| r.is_empty())),
                "margin.compliance",
                "when given, needs at least one opener, none of them empty".into(),
            );
        }
        check(
            self.kl.is_none() || self.generation.is_some(),
            "kl",
            "KL is measured along the base's answers: add a [generation] section".into(),
        );
        if let Some(d) = &self.direction {
            check(
                d.fit_fraction > 0.0 && d.fit_fraction < 1.0,
                "direction.fit_fraction",
                format!("{} is not in (0, 1)", d.fit_fraction),
            );
        }
        let g = &self.gate;
        for (key, v) in [
            ("gate.refusal_drop", g.refusal_drop),
            ("gate.over_refusal_rise", g.over_refusal_rise),
            ("gate.capability_drop", g.capability_drop),
            ("gate.max_kl", g.max_kl),
        ] {
            check(
                v.is_finite() && v >= 0.0,
                key,
                format!("{v} must be a number ≥ 0"),
            );
        }
        out
    }

    /// Reads every set's prompts (built-in sets from the binary).
    pub fn read_sets(&self) -> Result<Vec<ProbeSet>, Error> {
        self.sets
            .iter()
            .map(|spec| {
                let path = self.dir.join(&spec.file);
                let text = match self.dir == Path::new(BUILTIN_DIR) {
                    true => BUILTIN
                        .iter()
                        .find(|(name, _)| Path::new(name) == spec.file)
                        .map(|(_, text)| text.to_string())
                        .ok_or_else(|| Error::Suite {
                            path: path.clone(),
                            key: "sets.file".into(),
                            message: "not a built-in probe set".into(),
                        })?,
                    false => std::fs::read_to_string(&path).map_err(keel_fs::io(&path))?,
                };
                let mut rows = Vec::new();
                for (line, row) in keel_fs::jsonl::<Row>(&text) {
                    let row = row.map_err(|e| Error::Row {
                        path: path.clone(),
                        line,
                        reason: e.to_string(),
                    })?;
                    if spec.expect == Expect::Correct && row.answers.is_empty() {
                        return Err(Error::Row {
                            path: path.clone(),
                            line,
                            reason: "a capability row needs a non-empty \"answers\" list".into(),
                        });
                    }
                    rows.push(row);
                }
                if let Some(limit) = spec.limit {
                    rows.truncate(limit);
                }
                if rows.is_empty() {
                    return Err(Error::Row {
                        path,
                        line: 0,
                        reason: "the set has no prompts".into(),
                    });
                }
                Ok(ProbeSet {
                    name: spec.name.clone(),
                    expect: spec.expect,
                    rows,
                })
            })
            .collect()
    }
}
