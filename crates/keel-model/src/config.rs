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
}

impl Architecture {
    /// HF `model_type`, also GGUF `general.architecture`.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }

    fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// Whether queries and keys are RMS-normalised per head before RoPE (Qwen3).
    pub fn qk_norm(self) -> bool {
        self == Architecture::Qwen3
    }

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            _ => return None,
        })
    }
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
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (Qwen2).
    pub attention_bias: bool,
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
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Qwen2/Qwen3's switch for sliding-window layers, which keel does not run.
    #[serde(default)]
    pub use_sliding_window: bool,
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
            bad(
                "model_type",
                format!(
                    "{:?} is not supported (supported: llama, mistral, qwen2, qwen3)",
                    self.model_type
                ),
            )
        })?;
        if self.hidden_act != "silu" {
            return Err(bad(
                "hidden_act",
                format!("{:?} is not supported (only silu)", self.hidden_act),
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
        let (scaling_key, scaling) = match (&self.rope_scaling, &self.rope_parameters) {
            (Some(v), _) if !v.is_null() => ("rope_scaling", Some(v)),
            (_, Some(v)) if !v.is_null() => ("rope_parameters", Some(v)),
            _ => ("rope_scaling", None),
        };
        let rope_scaling = match scaling {
            None => RopeScaling::None,
            Some(v) => parse_rope_scaling(v).map_err(|r| bad(scaling_key, r))?,
        };
        let rope_theta = match (self.rope_theta, &self.rope_parameters) {
            (Some(t), _) => t,
            (None, Some(p)) => match p.get("rope_theta") {
                None => 10_000.0,
                Some(t) => t.as_f64().ok_or_else(|| {
                    bad("rope_parameters.rope_theta", format!("{t} is not a number"))
                })?,
            },
            (None, None) => 10_000.0,
        };
        let eos_token_ids = match self.eos_token_id {
            None => vec![],
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) => ids,
        };
        let config = Config {
            architecture,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            // Qwen2 always has q/k/v biases and its config does not say so.
            attention_bias: self
                .attention_bias
                .unwrap_or(architecture == Architecture::Qwen2),
            bos_token_id: self.bos_token_id,
            eos_token_ids,
        };
        config
            .validate()
            .map_err(|(key, reason)| bad(key, reason))?;
        Ok(config)
    }
}

fn parse_rope_scaling(v: &Value) -> Result<RopeScaling, String> {
    let num = |key: &str| {
        v.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("`{key}` is missing or not a number"))
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
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        },
        other => {
            return Err(format!(
                "rope_type {other:?} is not supported (supported: default, linear, llama3)"
            ));
        }
    })
}

impl Config {
    /// Checks the shape arithmetic every later step relies on.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key, "must be positive".into()));
            }
        }
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
        if !self.head_dim.is_multiple_of(2) {
            return Err((
                "head_dim",
                format!("{} is odd; RoPE needs pairs", self.head_dim),
            ));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(("rms_norm_eps", "must be positive".into()));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(("rope_theta", "must be positive".into()));
        }
        if let RopeScaling::Factors(f) = &self.rope_scaling
            && f.len() != self.head_dim / 2
        {
            return Err((
                "rope_freqs.weight",
                format!(
                    "has {} factors, head_dim / 2 is {}",
                    f.len(),
                    self.head_dim / 2
                ),
            ));
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
                format!("{arch_name:?} is not supported (supported: llama, mistral, qwen2, qwen3)"),
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
        let rope_scaling = if let Some(info) = gguf.tensor("rope_freqs.weight") {
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
            num_hidden_layers: md.usize(&key("block_count"))?,
            num_attention_heads,
            num_key_value_heads: opt_usize("attention.head_count_kv")?
                .unwrap_or(num_attention_heads),
            head_dim: match opt_usize("attention.key_length")? {
                Some(d) => d,
                None => opt_usize("rope.dimension_count")?
                    .unwrap_or(hidden_size / num_attention_heads.max(1)),
            },
            rms_norm_eps: md.f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: opt_f64("rope.freq_base")?.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: opt_usize("context_length")?.unwrap_or(2048),
            tie_word_embeddings: gguf.tensor("output.weight").is_none(),
            attention_bias: gguf.tensor("blk.0.attn_q.bias").is_some(),
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
        };
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => (*one).into(),
            many => many.into(),
        };
        Ok(serde_json::json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.name(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
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
        }))
    }

    /// HF names of every linear projection, e.g. `model.layers.7.self_attn.q_proj`:
    /// the names adapters target.
    pub fn linear_modules(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(self.num_hidden_layers * 7 + 1);
        for i in 0..self.num_hidden_layers {
            for m in [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
            ] {
                names.push(format!("model.layers.{i}.{m}"));
            }
            for m in ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"] {
                names.push(format!("model.layers.{i}.{m}"));
            }
        }
        if !self.tie_word_embeddings {
            names.push("lm_head".into());
        }
        names
    }

    /// Inverse RoPE frequencies, one per pair of head dimensions, rescaled as
    /// configured (HF `_compute_default_rope_parameters` and friends).
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / d))
            .collect();
        match &self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Factors(factors) => base
                .iter()
                .zip(factors)
                .map(|(f, s)| f / *s as f64)
                .collect(),
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
}
