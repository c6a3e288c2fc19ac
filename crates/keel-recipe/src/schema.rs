//! The recipe schema, section by section. Every section refuses unknown
//! keys; optional keys say their default here and in the README.

use std::collections::BTreeMap;
use std::path::PathBuf;

use keel_adapter_config::{AdapterConfig, TargetModules, Variant};
use serde::Deserialize;

/// `[model]`: what to adapt, where.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// An HF folder or a `.gguf` file.
    pub path: PathBuf,
    #[serde(default)]
    pub device: Device,
    /// Storage of the frozen base weights: dense in a dtype, the GGUF
    /// file's own blocks, or quantized at load.
    #[serde(default)]
    pub base_dtype: Dtype,
    /// Modules whose weights stay dense (bf16 on the CPU) beside a base in
    /// blocks, by PEFT's module-name rule: `down_proj`,
    /// `model.layers.0.mlp.down_proj`, `lm_head`, `embed_tokens`.
    #[serde(default)]
    pub keep_dense: Vec<String>,
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
    /// The projections in the GGUF file's own blocks (a `.gguf` model
    /// only); on flex the embeddings and an untied head too, on a GPU
    /// those dense in f32.
    Gguf,
    /// The projections quantized at load as llama.cpp does (a K-quant's
    /// rows that its 256-value blocks do not fit take llama.cpp's fallback,
    /// Q5_0 for Q4_K); the embeddings and head dense (bf16 on flex, f32
    /// on a GPU).
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_0")]
    Q4_0,
    #[serde(rename = "q4_k")]
    Q4K,
    #[serde(rename = "q5_k")]
    Q5K,
    #[serde(rename = "q6_k")]
    Q6K,
}

impl Dtype {
    /// Whether the projections are kept in GGUF blocks.
    pub fn in_blocks(self) -> bool {
        !matches!(self, Dtype::F32 | Dtype::F16 | Dtype::Bf16)
    }
}

/// `[adapter]`: which modules get which adapter. The low-rank part is
/// read as [`Adapter::config`]; the selective-layer keys stay as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Adapter {
    #[serde(default)]
    pub(crate) kind: AdapterKind,
    /// Rank and alpha of the low-rank part (not given for `kind = "none"`).
    #[serde(default)]
    pub(crate) r: usize,
    #[serde(default)]
    pub(crate) alpha: f64,
    #[serde(default)]
    pub(crate) dropout: f64,
    #[serde(default)]
    pub(crate) scaling: Scaling,
    #[serde(default)]
    pub(crate) init: Init,
    /// Subspace iterations for `init = "pissa"`.
    #[serde(default = "default_pissa_niter")]
    pub(crate) pissa_niter: usize,
    /// HF leaf names (`q_proj`) or dotted suffixes; or use `target_regex`.
    #[serde(default)]
    pub(crate) targets: Vec<String>,
    /// One regex that must match whole module names.
    pub(crate) target_regex: Option<String>,
    /// Only these decoder layers.
    pub(crate) layers: Option<Vec<usize>>,
    /// Per-module rank, by pattern (PEFT's `rank_pattern`).
    #[serde(default)]
    pub(crate) rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub(crate) alpha_pattern: BTreeMap<String, f64>,
    /// The keys above as an adapter configuration, made once the recipe is
    /// checked.
    #[serde(skip)]
    pub(crate) config: Option<AdapterConfig>,
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
    /// The low-rank part: kind, rank, scaling, init and targets. Modules
    /// trained in full are listed when the adapter is written, not here.
    pub fn config(&self) -> &AdapterConfig {
        self.config
            .as_ref()
            .expect("Recipe::parse sets the adapter config of every recipe it returns")
    }

    /// The configuration the `[adapter]` keys state (the checks passed).
    pub(crate) fn to_config(&self) -> AdapterConfig {
        AdapterConfig {
            variant: match self.kind {
                AdapterKind::Lora | AdapterKind::None => Variant::Lora,
                AdapterKind::Dora => Variant::Dora,
            },
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
            scaling: match self.scaling {
                Scaling::Standard => keel_adapter_config::Scaling::Standard,
                Scaling::Rs => keel_adapter_config::Scaling::Rs,
            },
            init: match self.init {
                Init::Kaiming => keel_adapter_config::Init::Kaiming,
                Init::Gaussian => keel_adapter_config::Init::Gaussian,
                Init::Pissa => keel_adapter_config::Init::Pissa {
                    niter: self.pissa_niter,
                },
                Init::Olora => keel_adapter_config::Init::Olora,
            },
            // kind = "none" leaves both empty: no low-rank part.
            targets: match &self.target_regex {
                Some(re) => TargetModules::Regex(re.clone()),
                None => TargetModules::Names(self.targets.clone()),
            },
            layers: self.layers.clone(),
            rank_pattern: self.rank_pattern.clone().into_iter().collect(),
            alpha_pattern: self.alpha_pattern.clone().into_iter().collect(),
            modules_to_save: Vec::new(),
        }
    }

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
pub(crate) enum AdapterKind {
    #[default]
    Lora,
    Dora,
    /// No low-rank part: only the modules trained in full.
    None,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scaling {
    /// alpha / r
    #[default]
    Standard,
    /// alpha / sqrt(r) (rsLoRA)
    Rs,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Init {
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
    pub(crate) length: Option<Length>,
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
    /// The least similar share of the adapted modules (rounded up): what
    /// the recommended preset uses, since it cannot know the count.
    Share(f64),
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

/// `[alignment] preset`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// keel's recommended preservation for the run's situation.
    Recommended,
    /// None: plain adaptation.
    Off,
}

/// Which preservation a run gets, decided once when the recipe is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Applied {
    /// `preset = "off"`.
    Off,
    /// No method named (or `preset = "recommended"`): KL anchors on keel's
    /// safety set, plus Safe LoRA on the least similar fifth of the
    /// modules when a `reference` is given; safety replay instead of
    /// anchors when modules train in full (they cannot be switched off).
    #[default]
    Recommended,
    /// Exactly the methods the recipe names.
    Named,
}

/// A set of examples an alignment method uses.
#[derive(Debug, Clone, PartialEq)]
pub enum SafetySet {
    /// A JSONL file in `[data]`'s format.
    File(PathBuf),
    /// keel's own safety set (chat: harmful requests with refusals,
    /// ordinary ones with answers), built into keel.
    Keel,
}

/// SafeMERGE, decoded from `safemerge_*`.
#[derive(Debug, Clone, PartialEq)]
pub struct SafeMerge {
    /// The safety LoRA: trained on safety data on the model in `[model]`.
    pub adapter: PathBuf,
    /// Merge the modules whose cos(ΔW, C·ΔW) is below this.
    pub threshold: f64,
    /// The safety LoRA's weight in the merge (the task's is `1 − weight`).
    pub weight: f64,
}

impl SafeMerge {
    /// A threshold is a cosine similarity: in [-1, 1].
    pub fn threshold_ok(threshold: f64) -> bool {
        (-1.0..=1.0).contains(&threshold)
    }

    /// A weight is the safety LoRA's share of the merge: in (0, 1).
    pub fn weight_ok(weight: f64) -> bool {
        weight > 0.0 && weight < 1.0
    }
}

/// SafeMERGE's defaults: its authors' code's.
pub const SAFEMERGE_THRESHOLD: f64 = 0.35;
pub const SAFEMERGE_WEIGHT: f64 = 0.2;

/// The recommended preset's weights.
pub const RECOMMENDED_ANCHOR_LAMBDA: f64 = 1.0;
pub const RECOMMENDED_SAFE_LORA_SHARE: f64 = 0.2;
pub const RECOMMENDED_REPLAY_FRACTION: f64 = 0.1;

/// `[alignment]`: keep the base's safety behaviour while adapting.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Alignment {
    /// `recommended` (the default when no method is named) or `off`.
    pub(crate) preset: Option<Preset>,
    /// The preservation this run applies, decided from `preset` and the
    /// methods named once the recipe is checked.
    #[serde(skip)]
    pub applied: Applied,
    /// The PEFT adapter whose update aligned the base (base + it = the
    /// model adapted here): it defines the alignment subspace that Safe
    /// LoRA and AsFT anchor to.
    pub reference: Option<PathBuf>,
    /// Safe LoRA: after training, project the modules whose update has
    /// cosine similarity to its projection below this. Read as `safe_lora`.
    pub(crate) safe_lora_threshold: Option<f64>,
    /// Safe LoRA: after training, project the `k` least similar modules.
    pub(crate) safe_lora_top_k: Option<usize>,
    /// `safe_lora_threshold` or `safe_lora_top_k` (or the preset's share),
    /// decoded once the recipe is checked.
    #[serde(skip)]
    pub safe_lora: Option<SafeLora>,
    /// SafeMERGE: after training, merge the modules far from the alignment
    /// subspace with this safety LoRA. Read as `safemerge`.
    pub(crate) safemerge_adapter: Option<PathBuf>,
    pub(crate) safemerge_threshold: Option<f64>,
    pub(crate) safemerge_weight: Option<f64>,
    /// `safemerge_*`, decoded once the recipe is checked.
    #[serde(skip)]
    pub safemerge: Option<SafeMerge>,
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
    /// Read as `anchor_set`.
    pub(crate) anchors: Option<PathBuf>,
    /// `anchors` (or the preset's keel safety set), decoded once.
    #[serde(skip)]
    pub anchor_set: Option<SafetySet>,
    /// Weight of the anchors' mean KL(reference ‖ model) in the loss.
    #[serde(default)]
    pub anchor_lambda: f64,
    /// Safety replay: examples (in `[data]`'s format) mixed into training.
    /// Read as `replay_set`.
    pub(crate) replay: Option<PathBuf>,
    /// `replay` (or the preset's keel safety set), decoded once.
    #[serde(skip)]
    pub replay_set: Option<SafetySet>,
    /// Share of each epoch's examples drawn from `replay`.
    pub replay_fraction: Option<f64>,
}

impl Alignment {
    /// Whether any method needs the alignment subspace.
    pub fn needs_reference(&self) -> bool {
        self.safe_lora_threshold.is_some()
            || self.safe_lora_top_k.is_some()
            || self.safemerge_adapter.is_some()
            || self.asft_lambda > 0.0
    }

    /// The methods the recipe names, by key.
    pub(crate) fn named_methods(&self) -> Vec<&'static str> {
        [
            ("safe_lora_threshold", self.safe_lora_threshold.is_some()),
            ("safe_lora_top_k", self.safe_lora_top_k.is_some()),
            ("safemerge_adapter", self.safemerge_adapter.is_some()),
            ("asft_lambda", self.asft_lambda > 0.0),
            ("constrained_sft", self.constrained_sft),
            (
                "exclude_safety_layers",
                self.exclude_safety_layers.is_some(),
            ),
            ("anchors", self.anchors.is_some()),
            ("replay", self.replay.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, named)| named.then_some(key))
        .collect()
    }

    /// What the run applies, in words, for the terminal and the run report.
    pub fn describe(&self) -> String {
        let set = |s: &SafetySet| match s {
            SafetySet::Keel => "keel's safety set".to_string(),
            SafetySet::File(p) => p.display().to_string(),
        };
        let mut methods = Vec::new();
        if let Some(s) = &self.anchor_set {
            methods.push(format!(
                "KL anchors on {} (λ = {})",
                set(s),
                self.anchor_lambda
            ));
        }
        if let (Some(s), Some(f)) = (&self.replay_set, self.replay_fraction) {
            methods.push(format!("replay of {} ({:.0}%)", set(s), 100.0 * f));
        }
        if self.constrained_sft {
            methods.push("token-wise constrained SFT".into());
        }
        if self.asft_lambda > 0.0 {
            methods.push(format!("AsFT (λ = {})", self.asft_lambda));
        }
        if let Some(k) = self.exclude_safety_layers {
            methods.push(format!("adapter off the {k} safety layers"));
        }
        match self.safe_lora {
            Some(SafeLora::Threshold(t)) => methods.push(format!("Safe LoRA below similarity {t}")),
            Some(SafeLora::TopK(k)) => {
                methods.push(format!("Safe LoRA on the {k} least similar modules"))
            }
            Some(SafeLora::Share(f)) => methods.push(format!(
                "Safe LoRA on the least similar {:.0}% of modules",
                100.0 * f
            )),
            None => {}
        }
        if let Some(m) = &self.safemerge {
            methods.push(format!(
                "SafeMERGE with {} below similarity {} (weight {})",
                m.adapter.display(),
                m.threshold,
                m.weight
            ));
        }
        let what = match self.applied {
            Applied::Off => "off (preset = \"off\")",
            Applied::Recommended => "recommended",
            Applied::Named => "as named",
        };
        match methods.is_empty() {
            true => what.to_string(),
            false => format!("{what}: {}", methods.join(", ")),
        }
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
