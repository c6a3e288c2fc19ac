//! What `keel probe` and `keel drift` write: `report.json` (byte-identical
//! for the same inputs and seed), `report.md`, and for drift `report.html`.

use serde::Serialize;

use crate::stats::{Estimate, r6};
use crate::suite::{Expect, Gate};

impl Estimate {
    pub fn rounded(self) -> Estimate {
        Estimate {
            value: r6(self.value),
            lo: r6(self.lo),
            hi: r6(self.hi),
        }
    }
}

/// One probe set on one model.
#[derive(Debug, Clone, Serialize)]
pub struct SetReport {
    pub name: String,
    pub expect: Expect,
    pub n: usize,
    /// Share of greedy answers the refusal matcher calls refusals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Estimate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degenerate: Option<usize>,
    /// Mean log-probability margin, refusal minus compliance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub margin: Option<Estimate>,
    /// Share of prompts whose margin is above 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub margin_refusal: Option<Estimate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<Estimate>,
}

/// One model's results over a suite.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub suite: String,
    pub model: String,
    pub adapter: Option<String>,
    pub sets: Vec<SetReport>,
    /// Per layer: held-out AUROC of the refusal direction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction_auroc: Option<Vec<f64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KlReport {
    pub set: String,
    /// Response positions scored per prompt (at most).
    pub positions: usize,
    /// Mean KL(base ‖ adapted) per token, in nats.
    pub kl: Estimate,
}

/// One gate check: how much worse `adapted` is than `base`, and the limit.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub set: String,
    pub metric: String,
    pub base: f64,
    pub adapted: f64,
    /// Change in the bad direction (positive is worse).
    pub worse_by: f64,
    pub limit: f64,
    pub pass: bool,
}

impl Check {
    pub fn new(
        set: &str,
        metric: &str,
        base: f64,
        adapted: f64,
        worse_by: f64,
        limit: f64,
    ) -> Check {
        let worse_by = r6(worse_by);
        Check {
            set: set.into(),
            metric: metric.into(),
            base,
            adapted,
            worse_by,
            limit,
            pass: worse_by <= limit,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    pub suite: String,
    /// "pass" or "regression".
    pub verdict: String,
    pub gate: Gate,
    pub checks: Vec<Check>,
    pub kl: Vec<KlReport>,
    /// Per layer: cosine of the refusal directions fitted on each model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction_cosine: Option<Vec<f64>>,
    /// Per adapted module: cos(ΔW, C·ΔW) to the alignment subspace of the
    /// update that aligned the base (`keel drift --reference`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alignment_similarity: Option<Vec<ModuleScore>>,
    pub base: ProbeReport,
    pub adapted: ProbeReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModuleScore {
    pub module: String,
    pub score: f64,
}

/// Mean score per decoder layer (`model.layers.N.` in the module name).
pub fn per_layer(scores: &[ModuleScore]) -> Vec<f64> {
    let layer =
        |m: &str| -> Option<usize> { m.split("layers.").nth(1)?.split('.').next()?.parse().ok() };
    let n = scores
        .iter()
        .filter_map(|s| layer(&s.module))
        .max()
        .map_or(0, |l| l + 1);
    let mut sum = vec![(0.0, 0usize); n];
    for s in scores {
        if let Some(l) = layer(&s.module) {
            sum[l].0 += s.score;
            sum[l].1 += 1;
        }
    }
    sum.iter()
        .map(|(s, k)| if *k == 0 { f64::NAN } else { s / *k as f64 })
        .collect()
}

fn pct(e: Option<Estimate>) -> String {
    e.map_or("-".into(), |e| {
        format!(
            "{:.1}% [{:.1}, {:.1}]",
            100.0 * e.value,
            100.0 * e.lo,
            100.0 * e.hi
        )
    })
}

fn num(e: Option<Estimate>) -> String {
    e.map_or("-".into(), |e| {
        format!("{:.3} [{:.3}, {:.3}]", e.value, e.lo, e.hi)
    })
}

fn model_name(r: &ProbeReport) -> String {
    match &r.adapter {
        Some(a) => format!("`{}` + adapter `{a}`", r.model),
        None => format!("`{}`", r.model),
    }
}

fn sets_table(r: &ProbeReport) -> String {
    let mut out = String::from(
        "| set | expect | n | refused (generation) | refused (margin > 0) | mean margin | accuracy | empty / degenerate |\n|---|---|---|---|---|---|---|---|\n",
    );
    for s in &r.sets {
        let flags = match (s.empty, s.degenerate) {
            (Some(e), Some(d)) => format!("{e} / {d}"),
            _ => "-".into(),
        };
        out += &format!(
            "| {} | {:?} | {} | {} | {} | {} | {} | {} |\n",
            s.name,
            s.expect,
            s.n,
            pct(s.refusal),
            pct(s.margin_refusal),
            num(s.margin),
            pct(s.accuracy),
            flags
        );
    }
    out
}

fn layers_line(label: &str, xs: &[f64]) -> String {
    let cells: Vec<String> = xs.iter().map(|x| format!("{x:.2}")).collect();
    format!("{label}: {}\n", cells.join(" "))
}

impl ProbeReport {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# keel probe: {}\n\nSuite `{}`; 95% bootstrap intervals in brackets.\n\n{}",
            model_name(self),
            self.suite,
            sets_table(self)
        );
        if let Some(a) = &self.direction_auroc {
            out += "\n## Refusal direction\n\nHeld-out AUROC per layer (harmful vs harmless):\n\n";
            out += &layers_line("AUROC", a);
        }
        out
    }
}

impl DriftReport {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# keel drift: **{}**\n\nBase: {}\nAdapted: {}\nSuite `{}`; 95% bootstrap intervals in brackets.\n\n## Gate\n\n| set | metric | base | adapted | worse by | limit | |\n|---|---|---|---|---|---|---|\n",
            self.verdict.to_uppercase(),
            model_name(&self.base),
            model_name(&self.adapted),
            self.suite
        );
        for c in &self.checks {
            out += &format!(
                "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {} |\n",
                c.set,
                c.metric,
                c.base,
                c.adapted,
                c.worse_by,
                c.limit,
                if c.pass { "pass" } else { "**FAIL**" }
            );
        }
        out += &format!("\n## Base\n\n{}", sets_table(&self.base));
        out += &format!("\n## Adapted\n\n{}", sets_table(&self.adapted));
        if !self.kl.is_empty() {
            out += "\n## KL(base ‖ adapted) along the base's answers\n\n| set | positions | mean KL (nats/token) |\n|---|---|---|\n";
            for k in &self.kl {
                out += &format!(
                    "| {} | first {} | {} |\n",
                    k.set,
                    k.positions,
                    num(Some(k.kl))
                );
            }
        }
        if let Some(sim) = &self.alignment_similarity {
            out += "\n## Adapter similarity to the alignment subspace\n\ncos(ΔW, C·ΔW), mean per layer:\n\n";
            out += &layers_line("similarity", &per_layer(sim));
        }
        if let Some(c) = &self.direction_cosine {
            out += "\n## Refusal direction\n\n";
            out += &layers_line("cosine base vs adapted", c);
            for (label, r) in [("AUROC base", &self.base), ("AUROC adapted", &self.adapted)] {
                if let Some(a) = &r.direction_auroc {
                    out += &layers_line(label, a);
                }
            }
        }
        out
    }
}

/// Writes `files` (name, contents) into `dir`, each through a temporary
/// file and a rename, so a report is never seen half-written.
pub fn write_files(dir: &std::path::Path, files: &[(&str, String)]) -> Result<(), crate::Error> {
    std::fs::create_dir_all(dir).map_err(keel_fs::io(dir))?;
    for (name, contents) in files {
        keel_fs::write_atomic(&dir.join(name), contents.as_bytes())?;
    }
    Ok(())
}

/// Per-prompt results as JSONL, each row tagged with `side` when given.
pub fn results_jsonl(results: &[crate::PromptResult], side: Option<&str>) -> String {
    let mut out = String::new();
    for r in results {
        let mut v = serde_json::to_value(r).expect("results serialize");
        if let Some(side) = side {
            v["side"] = side.into();
        }
        out += &v.to_string();
        out.push('\n');
    }
    out
}
