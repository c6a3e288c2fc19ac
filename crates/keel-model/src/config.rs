//! Model configuration: one runtime [`Config`], resolved from an HF
//! `config.json` ([`HfConfig`]) or from GGUF metadata.

use std::path::Path;

use keel_gguf::GgufFile;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;

/// The decoder families keel runs. They share one implementation and differ
/// only in the options below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    /// Gemma 3's text model: GeGLU, scaled embeddings, norms before and
    /// after attention and MLP, sliding-window layers with their own RoPE.
    Gemma3,
    /// Phi-3: q/k/v and gate/up projections fused, partial rotary, longrope.
    Phi3,
}

const SUPPORTED: &str = "llama, mistral, qwen2, qwen3, gemma3, phi3";

impl Architecture {
    /// GGUF `general.architecture` (llama.cpp's name).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Gemma3 => "gemma3",
            Architecture::Phi3 => "phi3",
        }
    }

    /// HF `model_type`.
    fn hf_model_type(self) -> &'static str {
        match self {
            Architecture::Gemma3 => "gemma3_text",
            other => other.name(),
        }
    }

    fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
            Architecture::Gemma3 => "Gemma3ForCausalLM",
            Architecture::Phi3 => "Phi3ForCausalLM",
        }
    }

    /// Whether q, k and v are one projection (`qkv_proj`, rows q | k | v)
    /// and gate and up one (`gate_up_proj`, rows gate | up), as in Phi-3:
    /// PEFT adapts them fused.
    pub fn fused_projections(self) -> bool {
        self == Architecture::Phi3
    }

    /// Whether HF's `sliding_window` makes every layer slide (Mistral,
    /// Phi-3; Qwen2 only with `use_sliding_window`, which keel refuses).
    fn honours_sliding_window(self) -> bool {
        matches!(self, Architecture::Mistral | Architecture::Phi3)
    }

    /// Whether queries and keys are RMS-normalised per head before RoPE.
    pub fn qk_norm(self) -> bool {
        matches!(self, Architecture::Qwen3 | Architecture::Gemma3)
    }

    /// What every RMSNorm weight is offset by: Gemma stores `w` and scales
    /// by `1 + w` (GGUF files store `1 + w`).
    pub fn norm_offset(self) -> f32 {
        match self {
            Architecture::Gemma3 => 1.0,
            _ => 0.0,
        }
    }

    /// Gemma's layer: norms after attention and after the MLP too, and the
    /// MLP's own input norm (`pre_feedforward_layernorm`).
    pub fn sandwich_norms(self) -> bool {
        self == Architecture::Gemma3
    }

    /// The MLP's gate activation.
    pub fn activation(self) -> Activation {
        match self {
            Architecture::Gemma3 => Activation::GeluTanh,
            _ => Activation::Silu,
        }
    }

    /// Gemma multiplies the embeddings by `sqrt(hidden_size)`.
    pub fn scales_embeddings(self) -> bool {
        self == Architecture::Gemma3
    }

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            // GGUF says gemma3, HF's text model gemma3_text.
            "gemma3" | "gemma3_text" => Architecture::Gemma3,
            "phi3" => Architecture::Phi3,
            _ => return None,
        })
    }
}

/// The MLP's gate activation, with its HF name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (`silu`).
    Silu,
    /// GeGLU with tanh-approximated GELU (`gelu_pytorch_tanh`).
    GeluTanh,
}

impl Activation {
    fn hf_name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        }
    }
}

/// The attention a decoder layer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// Every earlier position.
    Full,
    /// Only the last `sliding_window` positions, with the local RoPE.
    Sliding,
}

impl LayerType {
    fn hf_name(self) -> &'static str {
        match self {
            LayerType::Full => "full_attention",
            LayerType::Sliding => "sliding_attention",
        }
    }
}

/// What a config number sizes, for its upper bound: far above any released
/// model's, so a number past it is a damaged or hostile file, refused before
/// it sizes an allocation (the weights present are checked next, by
/// `WeightSource::check`).
#[derive(Debug, Clone, Copy)]
enum Size {
    Layers,
    /// hidden, intermediate, head_dim
    Width,
    Heads,
    /// vocab, positions
    Count,
}

impl Size {
    fn limit(self) -> usize {
        match self {
            Size::Layers => 1 << 12,
            Size::Width => 1 << 20,
            Size::Heads => 1 << 14,
            Size::Count => 1 << 30,
        }
    }

    /// `value`, if within the bound.
    fn check(self, value: usize) -> Result<usize, String> {
        match value <= self.limit() {
            true => Ok(value),
            false => Err(format!(
                "{value} is past keel's bound, {}: the file is damaged",
                self.limit()
            )),
        }
    }
}

/// Gemma 3's layers: every `pattern`-th is global, the rest slide.
fn layer_pattern(n_layers: usize, pattern: usize) -> Vec<LayerType> {
    (0..n_layers)
        .map(|i| match (i + 1).is_multiple_of(pattern.max(1)) {
            true => LayerType::Full,
            false => LayerType::Sliding,
        })
        .collect()
}

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's piecewise rescaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Per-frequency divisors, as GGUF stores Llama 3 scaling (`rope_freqs.weight`).
    Factors(Vec<f32>),
    /// Phi-3's: per-frequency divisors for sequences up to
    /// `original_max_position_embeddings`, others past it, and cos and sin
    /// scaled by `attention_factor`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: usize,
        attention_factor: f64,
    },
}

/// A layer's RoPE: inverse frequencies of the rotated dimension pairs; with
/// longrope, those used once a sequence is longer than `long.0` positions;
/// and the factor cos and sin are scaled by.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeFrequencies {
    pub inv_freq: Vec<f64>,
    pub long: Option<(usize, Vec<f64>)>,
    pub scale: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// How many of each head's dimensions RoPE rotates (the first ones;
    /// all but in Phi-3 variants with `partial_rotary_factor`).
    pub rotary_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (Qwen2).
    pub attention_bias: bool,
    /// Each decoder layer's attention; all [`LayerType::Full`] but in Gemma 3.
    pub layer_types: Vec<LayerType>,
    /// How many positions a [`LayerType::Sliding`] layer sees, its own included.
    pub sliding_window: Option<usize>,
    /// RoPE base of the sliding layers (no rescaling), where it differs.
    pub rope_local_theta: Option<f64>,
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5`
    /// (`head_dim` but in Gemma).
    pub query_pre_attn_scalar: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// `eos_token_id` is an int or a list of ints in HF configs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// The fields of an HF `config.json` that keel reads. Unknown fields are
/// ignored: HF configs carry many that do not change the computation.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<Value>,
    /// transformers 5 moves `rope_theta` and the scaling into this object.
    pub rope_parameters: Option<Value>,
    /// Phi-3's longrope and rotary fraction, at the top level in its configs.
    pub original_max_position_embeddings: Option<usize>,
    pub partial_rotary_factor: Option<f64>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Gemma's name for `hidden_act`.
    pub hidden_activation: Option<String>,
    /// Qwen2/Qwen3's switch for sliding-window layers, which keel does not run.
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Gemma 3: the window, and which layers use it (`layer_types`, or
    /// older configs' `sliding_window_pattern`).
    pub sliding_window: Option<Value>,
    pub layer_types: Option<Vec<String>>,
    pub sliding_window_pattern: Option<usize>,
    /// Gemma 3's RoPE base for sliding layers, before transformers 5.
    pub rope_local_base_freq: Option<f64>,
    pub query_pre_attn_scalar: Option<usize>,
    pub final_logit_softcapping: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<OneOrMany>,
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

impl HfConfig {
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(keel_fs::io(path))?;
        serde_json::from_str(&text).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            reason: format!("not a valid HF config: {e}"),
        })
    }

    /// Checks the values and resolves defaults; `file` names the source in errors.
    pub fn into_config(self, file: &Path) -> Result<Config, Error> {
        let bad = |key: &str, reason: String| Error::Config {
            file: file.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let architecture = Architecture::parse(&self.model_type).ok_or_else(|| {
            let hint = match self.model_type.as_str() {
                "gemma3" => " (a multimodal Gemma 3: keel runs its text model, gemma3_text)",
                _ => "",
            };
            bad(
                "model_type",
                format!(
                    "{:?} is not supported{hint} (supported: {SUPPORTED})",
                    self.model_type
                ),
            )
        })?;
        let (act_key, act) = match &self.hidden_activation {
            Some(a) => ("hidden_activation", a.as_str()),
            None => ("hidden_act", self.hidden_act.as_str()),
        };
        let activation = architecture.activation();
        if act != activation.hf_name() {
            return Err(bad(
                act_key,
                format!(
                    "{act:?} is not supported for {} (only {})",
                    self.model_type,
                    activation.hf_name()
                ),
            ));
        }
        if self.mlp_bias {
            return Err(bad("mlp_bias", "MLP biases are not supported".into()));
        }
        if self.use_sliding_window {
            return Err(bad(
                "use_sliding_window",
                "sliding-window attention layers are not supported".into(),
            ));
        }
        for (key, cap) in [
            ("final_logit_softcapping", self.final_logit_softcapping),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
        ] {
            if let Some(cap) = cap {
                return Err(bad(key, format!("{cap}: soft-capping is not supported")));
            }
        }
        // transformers 5 gives Gemma 3 one set of RoPE parameters per layer type.
        let (full_rope, local_rope) = match &self.rope_parameters {
            Some(p) if p.get("full_attention").is_some() => {
                (p.get("full_attention"), p.get("sliding_attention"))
            }
            p => (p.as_ref(), None),
        };
        let (scaling_key, scaling) = match (&self.rope_scaling, full_rope) {
            (Some(v), _) if !v.is_null() => ("rope_scaling", Some(v)),
            (_, Some(v)) if !v.is_null() => ("rope_parameters", Some(v)),
            _ => ("rope_scaling", None),
        };
        let rope_scaling = match scaling {
            None => RopeScaling::None,
            Some(v) => parse_rope_scaling(
                v,
                self.max_position_embeddings,
                self.original_max_position_embeddings,
            )
            .map_err(|r| bad(scaling_key, r))?,
        };
        let partial_rotary_factor = match (self.partial_rotary_factor, full_rope) {
            (Some(f), _) => f,
            (None, Some(p)) => p
                .get("partial_rotary_factor")
                .and_then(Value::as_f64)
                .unwrap_or(1.0),
            (None, None) => 1.0,
        };
        if !(partial_rotary_factor > 0.0 && partial_rotary_factor <= 1.0) {
            return Err(bad(
                "partial_rotary_factor",
                format!("{partial_rotary_factor} is not in (0, 1]"),
            ));
        }
        let theta_of = |p: &Value| -> Result<Option<f64>, Error> {
            match p.get("rope_theta") {
                None => Ok(None),
                Some(t) => t.as_f64().map(Some).ok_or_else(|| {
                    bad("rope_parameters.rope_theta", format!("{t} is not a number"))
                }),
            }
        };
        let rope_theta = match (self.rope_theta, full_rope) {
            (Some(t), _) => t,
            (None, Some(p)) => theta_of(p)?.unwrap_or(10_000.0),
            (None, None) => 10_000.0,
        };
        let window_of = |w: &Value| -> Result<usize, Error> {
            w.as_u64()
                .filter(|&w| w > 0)
                .map(|w| w as usize)
                .ok_or_else(|| bad("sliding_window", format!("{w} is not a positive integer")))
        };
        // Checked before it sizes the list of layer kinds below.
        Size::Layers
            .check(self.num_hidden_layers)
            .map_err(|reason| bad("num_hidden_layers", reason))?;
        let (layer_types, sliding_window, rope_local_theta) = match architecture {
            Architecture::Gemma3 => {
                let layer_types = match &self.layer_types {
                    Some(types) => types
                        .iter()
                        .map(|t| match t.as_str() {
                            "full_attention" => Ok(LayerType::Full),
                            "sliding_attention" => Ok(LayerType::Sliding),
                            other => Err(bad(
                                "layer_types",
                                format!(
                                    "{other:?} is neither full_attention nor sliding_attention"
                                ),
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    None => layer_pattern(
                        self.num_hidden_layers,
                        self.sliding_window_pattern.unwrap_or(6),
                    ),
                };
                if let Some(v) = local_rope
                    && parse_rope_scaling(v, 0, None) != Ok(RopeScaling::None)
                {
                    return Err(bad(
                        "rope_parameters.sliding_attention",
                        "RoPE scaling on sliding layers is not supported".into(),
                    ));
                }
                let local = match local_rope {
                    Some(p) => theta_of(p)?,
                    None => self.rope_local_base_freq,
                };
                let window = match &self.sliding_window {
                    None => 4096,
                    Some(w) => window_of(w)?,
                };
                (layer_types, Some(window), Some(local.unwrap_or(10_000.0)))
            }
            arch => {
                let window = match (&self.sliding_window, arch.honours_sliding_window()) {
                    (Some(w), true) if !w.is_null() => Some(window_of(w)?),
                    _ => None,
                };
                let kind = match window {
                    Some(_) => LayerType::Sliding,
                    None => LayerType::Full,
                };
                (vec![kind; self.num_hidden_layers], window, None)
            }
        };
        let eos_token_ids = match self.eos_token_id {
            None => vec![],
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) => ids,
        };
        let head_dim = self
            .head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1));
        let config = Config {
            architecture,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim,
            rotary_dim: (head_dim as f64 * partial_rotary_factor) as usize,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            // Qwen2 always has q/k/v biases and its config does not say so.
            attention_bias: self
                .attention_bias
                .unwrap_or(architecture == Architecture::Qwen2),
            layer_types,
            sliding_window,
            rope_local_theta,
            query_pre_attn_scalar: self.query_pre_attn_scalar.unwrap_or(head_dim),
            bos_token_id: self.bos_token_id,
            eos_token_ids,
        };
        config
            .validate()
            .map_err(|(key, reason)| bad(key, reason))?;
        Ok(config)
    }
}

/// The scaling object of an HF config; `max_positions` and the top-level
/// `original_max_position_embeddings` (which wins) complete longrope's.
fn parse_rope_scaling(
    v: &Value,
    max_positions: usize,
    original_max: Option<usize>,
) -> Result<RopeScaling, String> {
    let num = |key: &str| {
        v.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("`{key}` is missing or not a number"))
    };
    let factors = |key: &str| -> Result<Vec<f64>, String> {
        v.get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
            .ok_or_else(|| format!("`{key}` is missing or not a list of numbers"))
    };
    // Older configs say `type`, newer ones `rope_type`; transformers 5's
    // `rope_parameters` may hold only `rope_theta`.
    let kind = match v.get("rope_type").or_else(|| v.get("type")) {
        Some(k) => k.as_str().ok_or("`rope_type` is not a string")?,
        None if v.get("factor").is_none() => "default",
        None => return Err("`rope_type` is missing".into()),
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: num("factor")?,
        },
        // Phi-3's older names for it.
        "longrope" | "su" => {
            let original = match original_max {
                Some(o) => o,
                None => num("original_max_position_embeddings")? as usize,
            };
            if original == 0 {
                return Err("`original_max_position_embeddings` must be positive".into());
            }
            let factor = match v.get("factor") {
                Some(_) => num("factor")?,
                None => max_positions as f64 / original as f64,
            };
            let attention_factor = match v.get("attention_factor") {
                Some(_) => num("attention_factor")?,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
            };
            RopeScaling::LongRope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                original_max_position_embeddings: original,
                attention_factor,
            }
        }
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        },
        other => {
            return Err(format!(
                "rope_type {other:?} is not supported (supported: default, linear, llama3, longrope)"
            ));
        }
    })
}

impl Config {
    /// Checks the shape arithmetic every later step relies on.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let sizes = [
            ("vocab_size", self.vocab_size, Size::Count),
            ("hidden_size", self.hidden_size, Size::Width),
            ("intermediate_size", self.intermediate_size, Size::Width),
            ("num_hidden_layers", self.num_hidden_layers, Size::Layers),
            ("num_attention_heads", self.num_attention_heads, Size::Heads),
            ("num_key_value_heads", self.num_key_value_heads, Size::Heads),
            ("head_dim", self.head_dim, Size::Width),
            (
                "query_pre_attn_scalar",
                self.query_pre_attn_scalar,
                Size::Width,
            ),
        ];
        for (key, value, size) in sizes {
            if value == 0 {
                return Err((key, "must be positive".into()));
            }
            size.check(value).map_err(|reason| (key, reason))?;
        }
        // Zero where a model does not say how long its context is.
        Size::Count
            .check(self.max_position_embeddings)
            .map_err(|reason| ("max_position_embeddings", reason))?;
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err((
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !self.rotary_dim.is_multiple_of(2)
            || self.rotary_dim == 0
            || self.rotary_dim > self.head_dim
        {
            return Err((
                "partial_rotary_factor",
                format!(
                    "rotates {} of {} head dimensions; RoPE needs pairs",
                    self.rotary_dim, self.head_dim
                ),
            ));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(("rms_norm_eps", "must be positive".into()));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(("rope_theta", "must be positive".into()));
        }
        if self.layer_types.len() != self.num_hidden_layers {
            return Err((
                "layer_types",
                format!(
                    "lists {} layers, num_hidden_layers is {}",
                    self.layer_types.len(),
                    self.num_hidden_layers
                ),
            ));
        }
        if self.layer_types.contains(&LayerType::Sliding) && self.sliding_window.is_none() {
            return Err(("sliding_window", "sliding layers need a window".into()));
        }
        let pairs = self.rotary_dim / 2;
        let lengths: Vec<(&'static str, usize)> = match &self.rope_scaling {
            RopeScaling::Factors(f) => vec![("rope_freqs.weight", f.len())],
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                ..
            } => vec![
                ("rope_scaling.short_factor", short_factor.len()),
                ("rope_scaling.long_factor", long_factor.len()),
            ],
            _ => vec![],
        };
        for (key, len) in lengths {
            if len != pairs {
                return Err((
                    key,
                    format!("has {len} factors, the rotated dimensions make {pairs} pairs"),
                ));
            }
        }
        Ok(())
    }

    /// Reads the configuration from GGUF metadata (`{arch}.*` keys) and the
    /// tensor table (tied embeddings, biases, RoPE factors).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Config, Error> {
        let md = &gguf.metadata;
        let bad = |key: &str, reason: String| Error::Config {
            file: gguf.path().to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let arch_name = md.str("general.architecture")?;
        let architecture = Architecture::parse(arch_name).ok_or_else(|| {
            bad(
                "general.architecture",
                format!("{arch_name:?} is not supported (supported: {SUPPORTED})"),
            )
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let opt_usize = |k: &str| -> Result<Option<usize>, Error> {
            let k = key(k);
            md.get(&k)
                .map(|_| md.usize(&k))
                .transpose()
                .map_err(Error::from)
        };
        let opt_f64 = |k: &str| -> Result<Option<f64>, Error> {
            let k = key(k);
            md.get(&k)
                .map(|_| md.f64(&k))
                .transpose()
                .map_err(Error::from)
        };
        let hidden_size = md.usize(&key("embedding_length"))?;
        let num_attention_heads = md.usize(&key("attention.head_count"))?;
        let vocab_size = match opt_usize("vocab_size")? {
            Some(v) => v,
            None => md.array("tokenizer.ggml.tokens")?.len(),
        };
        let factors = |name: &str| -> Result<Option<Vec<f64>>, Error> {
            match gguf.tensor(name) {
                Some(_) => Ok(Some(
                    gguf.tensor_f32(name)?
                        .1
                        .into_iter()
                        .map(f64::from)
                        .collect(),
                )),
                None => Ok(None),
            }
        };
        let long_factor = factors("rope_factors_long.weight")?;
        let rope_scaling = if let Some(long_factor) = long_factor {
            let short_factor = factors("rope_factors_short.weight")?.ok_or_else(|| {
                bad(
                    "rope_factors_short.weight",
                    "missing beside rope_factors_long.weight".into(),
                )
            })?;
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings: md
                    .usize(&key("rope.scaling.original_context_length"))?,
                attention_factor: opt_f64("rope.scaling.attn_factor")?.unwrap_or(1.0),
            }
        } else if let Some(info) = gguf.tensor("rope_freqs.weight") {
            let (_, factors) = gguf.tensor_f32(&info.name)?;
            RopeScaling::Factors(factors)
        } else {
            match md.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
                None | Some("none") => RopeScaling::None,
                Some("linear") => RopeScaling::Linear {
                    factor: md.f64(&key("rope.scaling.factor"))?,
                },
                Some(other) => {
                    return Err(bad(
                        &key("rope.scaling.type"),
                        format!("{other:?} is not supported (supported: none, linear)"),
                    ));
                }
            }
        };
        // Checked before it sizes the list of layer kinds below.
        let num_hidden_layers = Size::Layers
            .check(md.usize(&key("block_count"))?)
            .map_err(|reason| bad(&key("block_count"), reason))?;
        let rope_dims = opt_usize("rope.dimension_count")?;
        // Phi-3 may rotate part of each head: its rope.dimension_count is
        // what rotates, not the head's size.
        let (head_dim, rotary_dim) = match (opt_usize("attention.key_length")?, architecture) {
            (Some(d), Architecture::Phi3) => (d, rope_dims.unwrap_or(d)),
            (None, Architecture::Phi3) => {
                let d = hidden_size / num_attention_heads.max(1);
                (d, rope_dims.unwrap_or(d))
            }
            (Some(d), _) => (d, d),
            (None, _) => {
                let d = rope_dims.unwrap_or(hidden_size / num_attention_heads.max(1));
                (d, d)
            }
        };
        if let Some(cap) = opt_f64("final_logit_softcapping")? {
            return Err(bad(
                &key("final_logit_softcapping"),
                format!("{cap}: soft-capping is not supported"),
            ));
        }
        // Phi-3 files say `sliding_window`, and llama.cpp does not slide
        // (ggml-org/llama.cpp#13676): keel runs the file as llama.cpp does.
        // What llama.cpp assumes for Gemma 3, where the file is silent: every
        // sixth layer global, a local RoPE base of 10000, and scores scaled
        // by head_dim but in the 27B model (62 layers), which uses
        // hidden / heads.
        let (layer_types, sliding_window, rope_local_theta, query_pre_attn_scalar) =
            match (architecture, opt_usize("attention.sliding_window")?) {
                (Architecture::Gemma3, window) => (
                    match window {
                        Some(_) => layer_pattern(num_hidden_layers, 6),
                        None => vec![LayerType::Full; num_hidden_layers],
                    },
                    window,
                    Some(10_000.0),
                    match num_hidden_layers {
                        62 => hidden_size / num_attention_heads.max(1),
                        _ => head_dim,
                    },
                ),
                _ => (
                    vec![LayerType::Full; num_hidden_layers],
                    None,
                    None,
                    head_dim,
                ),
            };
        let token_id = |k: &str| -> Result<Option<u32>, Error> {
            md.get(k)
                .map(|_| md.usize(k).map(|v| v as u32))
                .transpose()
                .map_err(Error::from)
        };
        let config = Config {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: md.usize(&key("feed_forward_length"))?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: opt_usize("attention.head_count_kv")?
                .unwrap_or(num_attention_heads),
            head_dim,
            rotary_dim,
            rms_norm_eps: md.f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: opt_f64("rope.freq_base")?.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: opt_usize("context_length")?.unwrap_or(2048),
            tie_word_embeddings: gguf.tensor("output.weight").is_none(),
            attention_bias: gguf.tensor("blk.0.attn_q.bias").is_some(),
            layer_types,
            sliding_window,
            rope_local_theta,
            query_pre_attn_scalar,
            bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_ids: token_id("tokenizer.ggml.eos_token_id")?
                .into_iter()
                .collect(),
        };
        config.validate().map_err(|(k, reason)| bad(k, reason))?;
        Ok(config)
    }

    /// The equivalent HF `config.json` (for `keel convert`).
    pub fn to_hf_json(&self) -> Result<Value, String> {
        let rope_scaling = match &self.rope_scaling {
            RopeScaling::None => Value::Null,
            RopeScaling::Linear { factor } => {
                serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => serde_json::json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
            RopeScaling::Factors(_) => {
                return Err(
                    "GGUF RoPE frequency factors (rope_freqs.weight) have no HF config equivalent"
                        .into(),
                );
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                attention_factor,
                ..
            } => serde_json::json!({
                "rope_type": "longrope", "short_factor": short_factor,
                "long_factor": long_factor, "attention_factor": attention_factor,
            }),
        };
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => (*one).into(),
            many => many.into(),
        };
        let mut json = serde_json::json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.hf_model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.architecture.activation().hf_name(),
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": false,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": "float32",
        });
        if let RopeScaling::LongRope {
            original_max_position_embeddings,
            ..
        } = &self.rope_scaling
        {
            json["original_max_position_embeddings"] = (*original_max_position_embeddings).into();
        }
        if self.rotary_dim != self.head_dim {
            json["partial_rotary_factor"] = (self.rotary_dim as f64 / self.head_dim as f64).into();
        }
        if self.architecture.honours_sliding_window() {
            json["sliding_window"] = self.sliding_window.into();
        }
        if self.architecture == Architecture::Gemma3 {
            let types: Vec<&str> = self.layer_types.iter().map(|t| t.hf_name()).collect();
            let gemma = serde_json::json!({
                "hidden_activation": self.architecture.activation().hf_name(),
                "layer_types": types,
                "sliding_window": self.sliding_window,
                "rope_local_base_freq": self.rope_local_theta,
                "query_pre_attn_scalar": self.query_pre_attn_scalar,
                "final_logit_softcapping": null,
                "attn_logit_softcapping": null,
            });
            for (k, v) in gemma.as_object().expect("an object") {
                json[k] = v.clone();
            }
        }
        Ok(json)
    }

    /// HF names of every linear projection, e.g. `model.layers.7.self_attn.q_proj`:
    /// the names adapters target.
    pub fn linear_modules(&self) -> Vec<String> {
        let per_layer: &[&str] = match self.architecture.fused_projections() {
            true => &[
                "self_attn.qkv_proj",
                "self_attn.o_proj",
                "mlp.gate_up_proj",
                "mlp.down_proj",
            ],
            false => &[
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ],
        };
        let mut names = Vec::with_capacity(self.num_hidden_layers * per_layer.len() + 1);
        for i in 0..self.num_hidden_layers {
            for m in per_layer {
                names.push(format!("model.layers.{i}.{m}"));
            }
        }
        if !self.tie_word_embeddings {
            names.push("lm_head".into());
        }
        names
    }

    /// `(in, out)` features of each layer's seven projections: q, k, v, o,
    /// gate, up, down (Phi-3's fused ones are these, stacked).
    pub fn projection_shapes(&self) -> [(usize, usize); 7] {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let i = self.intermediate_size;
        [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
    }

    /// Every weight the model reads, by HF name, with its stored shape
    /// (`[out, in]` for a projection): what must be present in a file
    /// before anything is read from it.
    pub fn weights(&self) -> Vec<(String, Vec<usize>)> {
        let [(h, q), (_, kv), _, _, (_, i), _, _] = self.projection_shapes();
        let mut out: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![self.vocab_size, h]),
            ("model.norm.weight".into(), vec![h]),
        ];
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".into(), vec![self.vocab_size, h]));
        }
        let arch = self.architecture;
        for l in 0..self.num_hidden_layers {
            let mut add = |name: &str, shape: Vec<usize>| {
                out.push((format!("model.layers.{l}.{name}"), shape));
            };
            let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
            if arch.sandwich_norms() {
                norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
            }
            for norm in norms {
                add(&format!("{norm}.weight"), vec![h]);
            }
            let inputs: &[(&str, usize)] = match arch.fused_projections() {
                true => &[("self_attn.qkv_proj", q + 2 * kv)],
                false => &[
                    ("self_attn.q_proj", q),
                    ("self_attn.k_proj", kv),
                    ("self_attn.v_proj", kv),
                ],
            };
            for &(name, rows) in inputs {
                add(&format!("{name}.weight"), vec![rows, h]);
                if self.attention_bias {
                    add(&format!("{name}.bias"), vec![rows]);
                }
            }
            if arch.qk_norm() {
                add("self_attn.q_norm.weight", vec![self.head_dim]);
                add("self_attn.k_norm.weight", vec![self.head_dim]);
            }
            add("self_attn.o_proj.weight", vec![h, q]);
            match arch.fused_projections() {
                true => add("mlp.gate_up_proj.weight", vec![2 * i, h]),
                false => {
                    add("mlp.gate_proj.weight", vec![i, h]);
                    add("mlp.up_proj.weight", vec![i, h]);
                }
            }
            add("mlp.down_proj.weight", vec![h, i]);
        }
        out
    }

    /// Model FLOPs of one training token in sequences of `seq`, counted as
    /// MFU counts them (recomputation excluded): the forward product and the
    /// input gradient of every frozen weight, LM head included (2 + 2 per
    /// weight); attention over the keys each position sees (4 per key and
    /// head dimension forward, twice that backward); a rank-`lora_rank`
    /// LoRA on all seven projections (forward, both weight gradients and
    /// the input gradient: 6 per rank and feature).
    pub fn training_flop_per_token(&self, seq: usize, lora_rank: usize) -> f64 {
        let shapes = self.projection_shapes();
        let frozen: usize = shapes.iter().map(|(i, o)| i * o).sum::<usize>()
            * self.num_hidden_layers
            + self.hidden_size * self.vocab_size;
        let lora: usize = shapes.iter().map(|(i, o)| i + o).sum::<usize>() * self.num_hidden_layers;
        let keys_seen =
            |window: usize| (1..=seq).map(|p| p.min(window)).sum::<usize>() as f64 / seq as f64;
        let attention: f64 = self
            .layer_types
            .iter()
            .map(|t| match (t, self.sliding_window) {
                (LayerType::Sliding, Some(w)) => keys_seen(w),
                _ => keys_seen(seq),
            })
            .sum::<f64>()
            * (self.num_attention_heads * self.head_dim) as f64;
        4.0 * frozen as f64 + 12.0 * attention + 6.0 * (lora_rank * lora) as f64
    }

    /// The RoPE of `layer`'s attention: inverse frequencies, one per pair of
    /// rotated dimensions, rescaled as configured (HF
    /// `_compute_default_rope_parameters` and friends); sliding layers use
    /// the local base, unscaled, where there is one.
    pub fn rope_frequencies(&self, layer: LayerType) -> RopeFrequencies {
        let (theta, scaling) = match (layer, self.rope_local_theta) {
            (LayerType::Sliding, Some(local)) => (local, &RopeScaling::None),
            _ => (self.rope_theta, &self.rope_scaling),
        };
        let d = self.rotary_dim as f64;
        let base: Vec<f64> = (0..self.rotary_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / d))
            .collect();
        let divided = |by: &[f64]| base.iter().zip(by).map(|(f, s)| f / s).collect();
        let inv_freq = match scaling {
            RopeScaling::None => base.clone(),
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Factors(factors) => base
                .iter()
                .zip(factors)
                .map(|(f, s)| f / *s as f64)
                .collect(),
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            } => {
                return RopeFrequencies {
                    inv_freq: divided(short_factor),
                    long: Some((*original_max_position_embeddings, divided(long_factor))),
                    scale: *attention_factor,
                };
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_ctx,
            } => {
                let low_wavelen = old_ctx / low_freq_factor;
                let high_wavelen = old_ctx / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_ctx / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        };
        RopeFrequencies {
            inv_freq,
            long: None,
            scale: 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen3_json() -> Value {
        serde_json::json!({
            "model_type": "qwen3", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 8, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
            "tie_word_embeddings": true, "use_sliding_window": false,
        })
    }

    fn parse(json: Value) -> Result<Config, Error> {
        serde_json::from_value::<HfConfig>(json)
            .unwrap()
            .into_config(Path::new("config.json"))
    }

    /// Qwen3's head_dim is its own (8, not 16 / 4), its q/k norms follow
    /// from the architecture, and `keel convert`'s config reads back the same.
    #[test]
    fn qwen3_config_round_trips() {
        let config = parse(qwen3_json()).unwrap();
        assert_eq!(
            (config.architecture, config.head_dim, config.attention_bias),
            (Architecture::Qwen3, 8, false)
        );
        assert!(config.architecture.qk_norm());
        assert_eq!(parse(config.to_hf_json().unwrap()).unwrap(), config);
    }

    fn gemma3_json() -> Value {
        serde_json::json!({
            "model_type": "gemma3_text", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 7, "num_attention_heads": 4, "num_key_value_heads": 1,
            "head_dim": 8, "query_pre_attn_scalar": 6, "sliding_window": 4,
            "hidden_activation": "gelu_pytorch_tanh",
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        })
    }

    /// transformers 5's per-layer-type RoPE: the global layers' scaled, the
    /// sliding ones' on their own base; without `layer_types` every sixth
    /// layer is global; `keel convert`'s (older-style) config reads back
    /// the same.
    #[test]
    fn gemma3_config_round_trips() {
        let config = parse(gemma3_json()).unwrap();
        let (full, sliding) = (LayerType::Full, LayerType::Sliding);
        assert_eq!(
            config.layer_types,
            [sliding, sliding, sliding, sliding, sliding, full, sliding]
        );
        assert_eq!(config.rope_scaling, RopeScaling::Linear { factor: 8.0 });
        assert_eq!(
            (config.rope_theta, config.rope_local_theta),
            (1e6, Some(1e4))
        );
        assert_eq!(
            config.rope_frequencies(full).inv_freq[1],
            1e6f64.powf(-0.25) / 8.0
        );
        assert_eq!(
            config.rope_frequencies(sliding).inv_freq[1],
            1e4f64.powf(-0.25)
        );
        assert_eq!(parse(config.to_hf_json().unwrap()).unwrap(), config);
    }

    /// Gemma 2's soft-capping, and an activation the architecture does not
    /// use, are refused naming the key.
    #[test]
    fn gemma3_refusals_name_the_key() {
        for (key, value) in [
            ("final_logit_softcapping", Value::from(30.0)),
            ("hidden_activation", Value::from("silu")),
        ] {
            let mut json = gemma3_json();
            json[key] = value;
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    /// Phi-3's legacy config: longrope with the top-level original context,
    /// the attention factor transformers derives, half the head rotated,
    /// every layer sliding; fused projections named as PEFT targets them;
    /// `keel convert`'s config reads back the same.
    #[test]
    fn phi3_config_round_trips() {
        let json = serde_json::json!({
            "model_type": "phi3", "vocab_size": 32, "hidden_size": 32, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "partial_rotary_factor": 0.5, "max_position_embeddings": 128,
            "original_max_position_embeddings": 16, "sliding_window": 8, "rope_theta": 1e4,
            "rope_scaling": {"type": "longrope", "short_factor": [1.0, 2.0], "long_factor": [3.0, 4.0]},
        });
        let config = parse(json).unwrap();
        assert_eq!((config.head_dim, config.rotary_dim), (8, 4));
        assert_eq!(config.layer_types, [LayerType::Sliding; 2]);
        let freqs = config.rope_frequencies(LayerType::Sliding);
        assert_eq!(freqs.inv_freq, [1.0, 0.01 / 2.0]);
        assert_eq!(freqs.long, Some((16, vec![1.0 / 3.0, 0.01 / 4.0])));
        assert_eq!(freqs.scale, (1.0 + 8f64.ln() / 16f64.ln()).sqrt());
        assert_eq!(
            config.linear_modules()[..4],
            [
                "model.layers.0.self_attn.qkv_proj",
                "model.layers.0.self_attn.o_proj",
                "model.layers.0.mlp.gate_up_proj",
                "model.layers.0.mlp.down_proj"
            ]
        );
        assert_eq!(parse(config.to_hf_json().unwrap()).unwrap(), config);
    }

    /// Sliding-window layers would silently compute something else: refused,
    /// naming the key.
    #[test]
    fn sliding_window_layers_are_refused() {
        let mut json = qwen3_json();
        json["use_sliding_window"] = true.into();
        let err = parse(json).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("use_sliding_window"),
            "{err}"
        );
    }

    /// A fixture folder's config and weights.
    fn fixture(name: &str) -> (Config, crate::weights::WeightSource) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(name);
        let path = dir.join("config.json");
        let c = HfConfig::from_file(&path)
            .unwrap()
            .into_config(&path)
            .unwrap();
        (c, crate::weights::WeightSource::open_hf_dir(&dir).unwrap())
    }

    /// `Config::weights()` (what `WeightSource::check` asks of a file) is
    /// exactly what transformers saved for each fixture architecture, names
    /// and shapes: the list cannot drift from the models keel loads.
    #[test]
    fn weights_list_what_transformers_saves() {
        for name in [
            "tiny-llama",
            "tiny-llama3",
            "tiny-mistral",
            "tiny-qwen2",
            "tiny-qwen3",
            "tiny-gemma3",
            "tiny-phi3",
        ] {
            let (c, weights) = fixture(name);
            let mut saved: Vec<(String, Vec<usize>)> = weights
                .list()
                .into_iter()
                .map(|(n, _, shape)| (n, shape))
                .collect();
            let mut wanted = c.weights();
            saved.sort();
            wanted.sort();
            assert_eq!(wanted, saved, "{name}");
        }
    }

    /// The FLOP count against the fixtures' stored weights (Gemma 3's sliding
    /// layers, Phi-3's fused projections) and a pair-by-pair count of the
    /// keys each position attends to.
    #[test]
    fn training_flops_follow_the_stored_weights() {
        for name in ["tiny-gemma3", "tiny-phi3", "tiny-llama"] {
            let (c, weights) = fixture(name);
            let (mut params, mut features) = (c.vocab_size * c.hidden_size, 0);
            for (tensor, _, shape) in weights.list() {
                if tensor.contains(".layers.") && tensor.ends_with("proj.weight") {
                    params += shape[0] * shape[1];
                    features += shape[0] + shape[1];
                }
            }
            if c.architecture.fused_projections() {
                // qkv (three projections) and gate_up (two) count their input once.
                features += c.num_hidden_layers * 3 * c.hidden_size;
            }
            let seq = 9;
            let mut pairs = 0;
            for t in &c.layer_types {
                let window = match (t, c.sliding_window) {
                    (LayerType::Sliding, Some(w)) => w,
                    _ => usize::MAX,
                };
                pairs += (0..seq)
                    .flat_map(|q| (0..=q).map(move |k| q - k < window))
                    .filter(|&seen| seen)
                    .count();
            }
            let heads = (c.num_attention_heads * c.head_dim) as f64;
            let want = 4.0 * params as f64 + 12.0 * heads * pairs as f64 / seq as f64;
            let got = c.training_flop_per_token(seq, 0);
            assert!((got - want).abs() < 1e-9 * want, "{name}: {got} vs {want}");
            let lora = c.training_flop_per_token(seq, 3) - got;
            assert!(
                (lora - 18.0 * features as f64).abs() < 1e-6,
                "{name}: LoRA {lora}"
            );
        }
    }
}
