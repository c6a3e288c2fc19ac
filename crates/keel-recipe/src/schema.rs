//! The recipe schema, section by section. Every section refuses unknown
//! keys; optional keys say their default here and in the README.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Problem};
use crate::locate::{key_at_line, line_of, line_of_key};

/// `[model]`: what to adapt, where.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// An HF folder or a `.gguf` file.
    pub path: PathBuf,
    #[serde(default)]
    pub device: Device,
    /// Storage type of the frozen base weights.
    #[serde(default)]
    pub base_dtype: Dtype,
    /// Recompute memory-bound activations (elementwise, reshapes) in the
    /// backward pass instead of keeping them: less memory, more time.
    #[serde(default)]
    pub activation_checkpointing: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Flex,
    Wgpu,
    Ndarray,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    F16,
    Bf16,
}

/// `[adapter]`: which modules get which adapter.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Adapter {
    #[serde(default)]
    pub kind: AdapterKind,
    /// Rank and alpha of the low-rank part (not given for `kind = "none"`).
    #[serde(default)]
    pub r: usize,
    #[serde(default)]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub scaling: Scaling,
    #[serde(default)]
    pub init: Init,
    /// Subspace iterations for `init = "pissa"`.
    #[serde(default = "default_pissa_niter")]
    pub pissa_niter: usize,
    /// HF leaf names (`q_proj`) or dotted suffixes; or use `target_regex`.
    #[serde(default)]
    pub targets: Vec<String>,
    /// One regex that must match whole module names.
    pub target_regex: Option<String>,
    /// Only these decoder layers.
    pub layers: Option<Vec<usize>>,
    /// Per-module rank, by pattern (PEFT's `rank_pattern`).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Selective-layer training: modules trained in full, by PEFT's
    /// `modules_to_save` rule (a module whose name ends with an entry).
    #[serde(default)]
    pub modules_to_save: Vec<String>,
    /// Train every RMSNorm weight in full (norms-only tuning with `kind = "none"`).
    #[serde(default)]
    pub train_norms: bool,
    /// Train the last N decoder layers in full.
    pub train_top_layers: Option<usize>,
    /// LISA (Pan et al. 2024): every `lisa_every` steps, train a fresh
    /// random choice of this many decoder layers in full, the rest frozen.
    pub lisa_layers: Option<usize>,
    #[serde(default = "default_lisa_every")]
    pub lisa_every: usize,
}

fn default_lisa_every() -> usize {
    20
}

impl Adapter {
    /// Whether any module is trained in full.
    pub fn trains_full_modules(&self) -> bool {
        !self.modules_to_save.is_empty()
            || self.train_norms
            || self.train_top_layers.is_some()
            || self.lisa_layers.is_some()
    }
}

fn default_pissa_niter() -> usize {
    8
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    #[default]
    Lora,
    Dora,
    /// No low-rank part: only the modules trained in full.
    None,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scaling {
    /// alpha / r
    #[default]
    Standard,
    /// alpha / sqrt(r) (rsLoRA)
    Rs,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    #[default]
    Kaiming,
    Gaussian,
    Pissa,
    Olora,
}

/// `[data]`: the training set and how it becomes token sequences.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// JSONL file.
    pub train: PathBuf,
    pub format: DataFormat,
    /// A separate eval JSONL file; or hold out `eval_fraction` of `train`.
    pub eval: Option<PathBuf>,
    pub eval_fraction: Option<f64>,
    /// Longest sequence in tokens; longer examples are truncated.
    pub max_length: usize,
    /// Concatenate short examples into full-length sequences.
    #[serde(default)]
    pub packing: bool,
    /// Also train on prompt tokens (by default only on answers).
    #[serde(default)]
    pub train_on_prompt: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// `{"text": ...}`: loss on every token.
    Text,
    /// `{"prompt": ..., "completion": ...}`
    PromptCompletion,
    /// `{"instruction": ..., "input": ..., "output": ...}`
    Alpaca,
    /// `{"messages": [{"role": ..., "content": ...}, ...]}` through the model's chat template.
    Chat,
}

/// `[optim]`: the optimisation.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Optim {
    pub lr: f64,
    /// LoRA+: B's learning rate is `lr * lora_plus_ratio` (1 = plain LoRA).
    #[serde(default = "one")]
    pub lora_plus_ratio: f64,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub warmup_steps: usize,
    /// Passes over the training set; or give `steps`. Read as [`Optim::length`].
    pub(crate) epochs: Option<f64>,
    pub(crate) steps: Option<usize>,
    /// `steps` or `epochs`, decoded once the recipe is checked.
    #[serde(skip)]
    length: Option<Length>,
    pub batch_size: usize,
    #[serde(default = "one_usize")]
    pub grad_accum: usize,
    /// Clip the global gradient norm to this.
    pub max_grad_norm: Option<f64>,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub seed: u64,
}

/// How long a run trains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Length {
    /// Optimizer steps.
    Steps(usize),
    /// Passes over the training set (fractions allowed).
    Epochs(f64),
}

impl Optim {
    /// How long the run trains (the checks require `steps` or `epochs`).
    pub fn length(&self) -> Length {
        self.length
            .expect("Recipe::parse sets the length of every recipe it returns")
    }
}

/// Which modules Safe LoRA projects onto the alignment subspace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SafeLora {
    /// Those whose update's cosine similarity to its projection is below this.
    Threshold(f64),
    /// The `k` least similar.
    TopK(usize),
}

impl SafeLora {
    /// From a threshold or a top-k, the threshold first; none from neither.
    pub fn from_either(threshold: Option<f64>, top_k: Option<usize>) -> Option<Self> {
        match (threshold, top_k) {
            (Some(t), _) => Some(SafeLora::Threshold(t)),
            (None, Some(k)) => Some(SafeLora::TopK(k)),
            (None, None) => None,
        }
    }
}

fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    #[default]
    Cosine,
}

/// `[eval]`
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Eval {
    /// Evaluate every N optimizer steps (and at the end); none: only at the end.
    pub every: Option<usize>,
}

/// `[output]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub dir: PathBuf,
    /// Write a checkpoint every N optimizer steps (and at the end).
    pub save_every: Option<usize>,
}

/// `[alignment]`: keep the base's safety behaviour while adapting.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Alignment {
    /// The PEFT adapter whose update aligned the base (base + it = the
    /// model adapted here): it defines the alignment subspace that Safe
    /// LoRA and AsFT anchor to.
    pub reference: Option<PathBuf>,
    /// Safe LoRA: after training, project the modules whose update has
    /// cosine similarity to its projection below this. Read as `safe_lora`.
    pub(crate) safe_lora_threshold: Option<f64>,
    /// Safe LoRA: after training, project the `k` least similar modules.
    pub(crate) safe_lora_top_k: Option<usize>,
    /// `safe_lora_threshold` or `safe_lora_top_k`, decoded once the recipe
    /// is checked.
    #[serde(skip)]
    pub safe_lora: Option<SafeLora>,
    /// AsFT: weight of `Σ ‖(I − C)·ΔW‖²` in the training loss.
    #[serde(default)]
    pub asft_lambda: f64,
    /// Token-wise constrained SFT (Qi et al. 2024): each answer token's loss
    /// is held near the reference (the model with the adapter off), hardest
    /// on the first tokens.
    #[serde(default)]
    pub constrained_sft: bool,
    /// Keep the adapter off the `k` layers where harmful and harmless
    /// prompts separate best (refusal-direction AUROC on the base).
    pub exclude_safety_layers: Option<usize>,
    /// KL anchors: examples (in `[data]`'s format) on whose answer tokens
    /// the model is held to the reference (itself with the adapter off).
    pub anchors: Option<PathBuf>,
    /// Weight of the anchors' mean KL(reference ‖ model) in the loss.
    #[serde(default)]
    pub anchor_lambda: f64,
    /// Safety replay: examples (in `[data]`'s format) mixed into training.
    pub replay: Option<PathBuf>,
    /// Share of each epoch's examples drawn from `replay`.
    pub replay_fraction: Option<f64>,
}

impl Alignment {
    /// Whether any method needs the alignment subspace.
    pub fn needs_reference(&self) -> bool {
        self.safe_lora_threshold.is_some()
            || self.safe_lora_top_k.is_some()
            || self.asft_lambda > 0.0
    }
}

/// A checked recipe, paths resolved against the recipe's folder.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub model: Model,
    pub adapter: Adapter,
    pub data: Data,
    pub optim: Optim,
    #[serde(default)]
    pub eval: Eval,
    pub output: Output,
    #[serde(default)]
    pub alignment: Alignment,
}

/// Adds a did-you-mean to serde's "unknown field `x`, expected one of ..."
/// and "unknown variant" messages.
fn with_suggestion(message: &str) -> String {
    let ticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    match ticked.split_first() {
        Some((unknown, expected)) if message.starts_with("unknown") && !expected.is_empty() => {
            let best = expected
                .iter()
                .min_by_key(|e| strsim::levenshtein(unknown, e))
                .expect("non-empty");
            if strsim::levenshtein(unknown, best) <= (best.len() / 2).max(2) {
                format!("{message}; did you mean `{best}`?")
            } else {
                message.to_string()
            }
        }
        _ => message.to_string(),
    }
}

/// Parses an override value as TOML, or as a bare string when it is not
/// TOML (`--set model.path=runs/x`).
fn override_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("just parsed"),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// A recipe path: `~/` is the home folder, a relative path is relative to
/// the recipe's folder.
fn resolve(recipe_dir: &Path, p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => recipe_dir.join(p),
    }
}

/// Deserializes TOML `text` (the contents of `path`) into any keel schema,
/// with recipe-grade errors: line, dotted key, did-you-mean.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, Error> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        let key = line
            .and_then(|l| key_at_line(text, l))
            .unwrap_or_else(|| "-".into());
        Error {
            file: path.to_path_buf(),
            problems: vec![Problem {
                line,
                key,
                message: with_suggestion(e.message().trim()),
            }],
        }
    })
}

impl Recipe {
    /// Reads, overrides (`section.key=value`), checks and resolves a recipe.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Recipe, Error> {
        let fail = |problems: Vec<Problem>| Error {
            file: path.to_path_buf(),
            problems,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(vec![Problem {
                line: None,
                key: "-".into(),
                message: e.to_string(),
            }])
        })?;
        Self::parse(&text, path, overrides)
    }

    /// As [`Recipe::load`], from text; `path` names the file and anchors relative paths.
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Recipe, Error> {
        let fail = |problems: Vec<Problem>| Error {
            file: path.to_path_buf(),
            problems,
        };
        // Parsed from the text first, so errors carry lines.
        let parsed: Recipe = parse_toml(text, path)?;
        let mut recipe = match overrides.is_empty() {
            true => parsed,
            false => {
                let mut table: toml::Table = toml::from_str(text).expect("parsed above");
                for o in overrides {
                    let problem = |message: String| Problem {
                        line: None,
                        key: format!("--set {o}"),
                        message,
                    };
                    let (key, value) = o
                        .split_once('=')
                        .ok_or_else(|| fail(vec![problem("expected section.key=value".into())]))?;
                    let parts: Vec<&str> = key.trim().split('.').collect();
                    let (last, sections) = parts.split_last().expect("split gives one part");
                    let mut t = &mut table;
                    for s in sections {
                        t = t
                            .entry(s.to_string())
                            .or_insert_with(|| toml::Value::Table(Default::default()))
                            .as_table_mut()
                            .ok_or_else(|| {
                                fail(vec![problem(format!("`{s}` is not a section"))])
                            })?;
                    }
                    t.insert(last.to_string(), override_value(value.trim()));
                }
                Recipe::deserialize(table).map_err(|e| {
                    let key = format!("--set {}", overrides.join(" --set "));
                    fail(vec![Problem {
                        line: None,
                        key,
                        message: with_suggestion(e.message().trim()),
                    }])
                })?
            }
        };
        let problems = recipe.problems();
        if !problems.is_empty() {
            let problems = problems
                .into_iter()
                .map(|(key, message)| Problem {
                    line: line_of_key(text, &key),
                    key,
                    message,
                })
                .collect();
            return Err(fail(problems));
        }
        recipe.optim.length = match (recipe.optim.steps, recipe.optim.epochs) {
            (Some(steps), _) => Some(Length::Steps(steps)),
            (None, epochs) => epochs.map(Length::Epochs),
        };
        let al = &mut recipe.alignment;
        al.safe_lora = SafeLora::from_either(al.safe_lora_threshold, al.safe_lora_top_k);
        let dir = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut recipe.model.path,
            &mut recipe.data.train,
            &mut recipe.output.dir,
        ] {
            *p = resolve(dir, p);
        }
        for p in [
            &mut recipe.data.eval,
            &mut recipe.alignment.reference,
            &mut recipe.alignment.replay,
            &mut recipe.alignment.anchors,
        ]
        .into_iter()
        .flatten()
        {
            *p = resolve(dir, p);
        }
        Ok(recipe)
    }

    /// Every impossible value, as (dotted key, message).
    fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut check = |ok: bool, key: &str, message: String| {
            if !ok {
                out.push((key.to_string(), message));
            }
        };
        let a = &self.adapter;
        if a.kind == AdapterKind::None {
            check(
                a.r == 0 && a.alpha == 0.0 && a.targets.is_empty() && a.target_regex.is_none(),
                "adapter.kind",
                "\"none\" trains no low-rank adapter: remove r, alpha and targets".into(),
            );
            check(
                a.trains_full_modules(),
                "adapter.kind",
                "\"none\" needs modules to train in full: modules_to_save, train_norms, train_top_layers or lisa_layers".into(),
            );
        } else {
            check(a.r >= 1, "adapter.r", "the rank must be at least 1".into());
            check(
                a.alpha.is_finite() && a.alpha > 0.0,
                "adapter.alpha",
                format!("{} must be a positive number", a.alpha),
            );
            check(
                a.targets.is_empty() != a.target_regex.is_none(),
                "adapter.targets",
                "give either `targets` (module names) or `target_regex`, not both and not neither"
                    .into(),
            );
        }
        check(
            a.train_top_layers != Some(0),
            "adapter.train_top_layers",
            "must be at least 1".into(),
        );
        check(
            a.lisa_layers != Some(0),
            "adapter.lisa_layers",
            "must be at least 1".into(),
        );
        check(
            a.lisa_every >= 1,
            "adapter.lisa_every",
            "must be at least 1".into(),
        );
        check(
            a.lisa_layers.is_none() || a.kind == AdapterKind::None,
            "adapter.lisa_layers",
            "LISA trains whole layers: use it with kind = \"none\"".into(),
        );
        check(
            (0.0..1.0).contains(&a.dropout),
            "adapter.dropout",
            format!("{} is not in [0, 1)", a.dropout),
        );
        check(
            a.target_regex.is_none() || a.layers.is_none(),
            "adapter.layers",
            "needs `targets`, not `target_regex` (as in PEFT)".into(),
        );
        for (k, r) in &a.rank_pattern {
            check(
                *r >= 1,
                "adapter.rank_pattern",
                format!("`{k}` = {r}: the rank must be at least 1"),
            );
        }
        check(
            a.pissa_niter >= 1,
            "adapter.pissa_niter",
            "must be at least 1".into(),
        );
        let d = &self.data;
        check(
            d.max_length >= 2,
            "data.max_length",
            format!("{} is too short to train on (at least 2)", d.max_length),
        );
        check(
            !(d.eval.is_some() && d.eval_fraction.is_some()),
            "data.eval_fraction",
            "give `eval` or `eval_fraction`, not both".into(),
        );
        if let Some(f) = d.eval_fraction {
            check(
                f > 0.0 && f < 1.0,
                "data.eval_fraction",
                format!("{f} is not in (0, 1)"),
            );
        }
        let o = &self.optim;
        check(
            o.lr.is_finite() && o.lr > 0.0,
            "optim.lr",
            format!("{} must be a positive number", o.lr),
        );
        check(
            o.lora_plus_ratio.is_finite() && o.lora_plus_ratio > 0.0,
            "optim.lora_plus_ratio",
            format!("{} must be positive", o.lora_plus_ratio),
        );
        check(
            o.epochs.is_some() != o.steps.is_some(),
            "optim.epochs",
            "give either `epochs` or `steps`".into(),
        );
        if let Some(e) = o.epochs {
            check(
                e.is_finite() && e > 0.0,
                "optim.epochs",
                format!("{e} must be positive"),
            );
        }
        check(
            o.steps != Some(0),
            "optim.steps",
            "must be at least 1".into(),
        );
        check(
            o.batch_size >= 1,
            "optim.batch_size",
            "must be at least 1".into(),
        );
        check(
            o.grad_accum >= 1,
            "optim.grad_accum",
            "must be at least 1".into(),
        );
        if let Some(n) = o.max_grad_norm {
            check(
                n.is_finite() && n > 0.0,
                "optim.max_grad_norm",
                format!("{n} must be positive"),
            );
        }
        check(
            o.weight_decay >= 0.0,
            "optim.weight_decay",
            format!("{} must not be negative", o.weight_decay),
        );
        check(
            (0.0..1.0).contains(&o.beta1),
            "optim.beta1",
            format!("{} is not in [0, 1)", o.beta1),
        );
        check(
            (0.0..1.0).contains(&o.beta2),
            "optim.beta2",
            format!("{} is not in [0, 1)", o.beta2),
        );
        check(
            o.eps > 0.0,
            "optim.eps",
            format!("{} must be positive", o.eps),
        );
        check(
            self.eval.every != Some(0),
            "eval.every",
            "must be at least 1".into(),
        );
        check(
            self.output.save_every != Some(0),
            "output.save_every",
            "must be at least 1".into(),
        );
        let al = &self.alignment;
        check(
            al.reference.is_some() || !al.needs_reference(),
            "alignment.reference",
            "Safe LoRA and AsFT need the adapter that aligned the base (`reference`)".into(),
        );
        check(
            !(a.trains_full_modules() && (al.constrained_sft || al.anchors.is_some())),
            "alignment.constrained_sft",
            "constrained SFT and anchors compare with the model's adapter switched off, which modules trained in full cannot be: use a LoRA alone".into(),
        );
        check(
            !(a.kind == AdapterKind::None && (al.needs_reference() || al.exclude_safety_layers.is_some())),
            "alignment",
            "Safe LoRA, AsFT and safety-layer exclusion act on a low-rank adapter, and kind = \"none\" has none".into(),
        );
        check(
            al.safe_lora_threshold.is_none() || al.safe_lora_top_k.is_none(),
            "alignment.safe_lora_top_k",
            "give `safe_lora_threshold` or `safe_lora_top_k`, not both".into(),
        );
        check(
            al.safe_lora_threshold
                .is_none_or(|t| (-1.0..=1.0).contains(&t)),
            "alignment.safe_lora_threshold",
            "a cosine similarity: must be in [-1, 1]".into(),
        );
        check(
            al.asft_lambda.is_finite() && al.asft_lambda >= 0.0,
            "alignment.asft_lambda",
            format!("{} must be a number ≥ 0", al.asft_lambda),
        );
        check(
            al.anchor_lambda.is_finite() && al.anchor_lambda >= 0.0,
            "alignment.anchor_lambda",
            format!("{} must be a number ≥ 0", al.anchor_lambda),
        );
        check(
            al.anchors.is_some() == (al.anchor_lambda > 0.0),
            "alignment.anchor_lambda",
            "`anchors` and a positive `anchor_lambda` go together".into(),
        );
        check(
            al.replay.is_some() == al.replay_fraction.is_some(),
            "alignment.replay_fraction",
            "`replay` and `replay_fraction` go together".into(),
        );
        check(
            al.replay_fraction.is_none_or(|f| f > 0.0 && f < 1.0),
            "alignment.replay_fraction",
            "must be in (0, 1)".into(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[model]
path = "model.gguf"

[adapter]
r = 8
alpha = 16
targets = ["q_proj", "v_proj"]

[data]
train = "train.jsonl"
format = "chat"
max_length = 256

[optim]
lr = 2e-4
epochs = 2
batch_size = 4

[output]
dir = "runs/x"
"#;

    fn err(text: &str, overrides: &[&str]) -> String {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Recipe::parse(text, Path::new("recipes/r.toml"), &o)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn good_recipe_resolves_paths_and_defaults() {
        let r = Recipe::parse(GOOD, Path::new("recipes/r.toml"), &[]).unwrap();
        assert_eq!(r.model.path, Path::new("recipes/model.gguf"));
        assert_eq!(r.optim.schedule, Schedule::Cosine);
        assert_eq!((r.optim.grad_accum, r.optim.eps), (1, 1e-8));
    }

    #[test]
    fn unknown_key_has_line_and_suggestion() {
        let text = GOOD.replace("lr = 2e-4", "lrr = 2e-4");
        let e = err(&text, &[]);
        assert!(
            e.contains("recipes/r.toml:16") && e.contains("did you mean `lr`?"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_the_key_and_line() {
        let e = err(&GOOD.replace("r = 8", "r = \"eight\""), &[]);
        assert!(e.contains(":6:") && e.contains("adapter.r"), "{e}");
    }

    /// `steps` or `epochs`, and a Safe LoRA threshold or top-k, come out
    /// of the parse as one typed value each.
    #[test]
    fn either_or_keys_are_decoded_once() {
        let parse = |text: &str, set: &[&str]| {
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            Recipe::parse(text, Path::new("r.toml"), &set).unwrap()
        };
        let r = parse(GOOD, &[]);
        assert_eq!(
            (r.optim.length(), r.alignment.safe_lora),
            (Length::Epochs(2.0), None)
        );
        let r = parse(
            &GOOD.replace("epochs = 2", "steps = 7"),
            &["alignment.reference=ref", "alignment.safe_lora_top_k=3"],
        );
        assert_eq!(
            (r.optim.length(), r.alignment.safe_lora),
            (Length::Steps(7), Some(SafeLora::TopK(3)))
        );
    }

    /// A comment after a section header leaves the keys under it found.
    #[test]
    fn keys_under_a_commented_header_keep_their_lines() {
        let text = GOOD.replace("[adapter]", "[adapter] # the LoRA");
        let e = err(&text.replace("r = 8", "r = \"eight\""), &[]);
        assert!(e.contains(":6:") && e.contains("adapter.r"), "{e}");
        let e = err(&text.replace("r = 8", "r = 0"), &[]);
        assert!(e.contains(":6:") && e.contains("adapter.r"), "{e}");
    }

    #[test]
    fn unknown_variant_is_suggested() {
        let e = err(&GOOD.replace("format = \"chat\"", "format = \"chta\""), &[]);
        assert!(e.contains("did you mean `chat`?"), "{e}");
    }

    #[test]
    fn impossible_values_are_all_reported_with_lines() {
        let e = err(
            &GOOD
                .replace("r = 8", "r = 0")
                .replace("lr = 2e-4", "lr = -1.0"),
            &[],
        );
        assert!(
            e.contains(":6: adapter.r: the rank must be at least 1"),
            "{e}"
        );
        assert!(e.contains(":16: optim.lr:"), "{e}");
    }

    #[test]
    fn overrides_apply_and_are_checked() {
        let o = vec!["optim.lr=1e-4".to_string(), "output.dir=runs/y".to_string()];
        let r = Recipe::parse(GOOD, Path::new("r.toml"), &o).unwrap();
        assert_eq!(
            (r.optim.lr, r.output.dir.as_path()),
            (1e-4, Path::new("runs/y"))
        );
        let e = err(GOOD, &["optim.lrr=1"]);
        assert!(
            e.contains("--set") && e.contains("did you mean `lr`?"),
            "{e}"
        );
    }

    #[test]
    fn selective_keys_are_checked() {
        let e = err(GOOD, &["adapter.kind=\"none\""]);
        assert!(
            e.contains("adapter.kind") && e.contains("remove r, alpha and targets"),
            "{e}"
        );
        assert!(e.contains("needs modules to train in full"), "{e}");
        let e = err(GOOD, &["adapter.lisa_layers=2"]);
        assert!(
            e.contains("adapter.lisa_layers") && e.contains("kind = \"none\""),
            "{e}"
        );
        let e = err(
            GOOD,
            &["adapter.train_norms=true", "alignment.constrained_sft=true"],
        );
        assert!(e.contains("alignment.constrained_sft"), "{e}");
    }
}
