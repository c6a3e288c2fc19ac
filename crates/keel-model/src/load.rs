//! Building a [`Llama`] and its tokenizer from an HF folder or a GGUF file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Param;
use burn::tensor::{DType, Device, Tensor, TensorData};
use keel_adapters::QuantBase;
use keel_adapters::peft::AdapterFile;
use keel_gguf::{GgmlType, GgufFile};
use keel_text::{ChatTemplate, Message, Tokenizer};

use crate::config::{Architecture, Config, HfConfig, LayerType};
use crate::error::Error;
use keel_adapters::Linear;

use crate::llama::{Attention, DecoderLayer, Llama, Mlp, RmsNorm, Rope};
use crate::weights::{HostTensor, WeightSource};

/// How the frozen base is stored. Projections are computed with in f32
/// whatever their storage.
///
/// Beside a base in blocks, `keep_dense` names modules kept dense in
/// `dense` by PEFT's module-name rule (`down_proj` is every layer's,
/// `model.layers.0.mlp.down_proj` one; also `lm_head`, `embed_tokens`).
#[derive(Debug, Clone, PartialEq)]
pub enum BaseStorage {
    /// Every large matrix (projections, embeddings) dense in this dtype.
    Dense(DType),
    /// The projections, embeddings and an untied head in the GGUF file's
    /// own blocks, read in place.
    Gguf {
        dense: DType,
        keep_dense: Vec<String>,
    },
    /// The projections quantized to `ty` at load, as llama.cpp's reference
    /// quantization does (a GGUF export holds the same bits; rows the
    /// blocks do not fit take llama.cpp's fallback type); the rest dense in
    /// `dense`.
    Quantize {
        ty: GgmlType,
        dense: DType,
        keep_dense: Vec<String>,
    },
}

impl BaseStorage {
    /// The dtype of the matrices kept dense.
    pub fn dense(&self) -> DType {
        match self {
            BaseStorage::Dense(d) | BaseStorage::Gguf { dense: d, .. } => *d,
            BaseStorage::Quantize { dense, .. } => *dense,
        }
    }

    /// The names `keep_dense` gives, none for a dense base.
    fn keep_dense(&self) -> &[String] {
        match self {
            BaseStorage::Dense(_) => &[],
            BaseStorage::Gguf { keep_dense, .. } | BaseStorage::Quantize { keep_dense, .. } => {
                keep_dense
            }
        }
    }

    /// Whether module `name` (HF's, without `.weight`) is kept dense.
    fn keeps_dense(&self, name: &str) -> bool {
        matches!(self, BaseStorage::Dense(_))
            || self.keep_dense().iter().any(|k| names_module(k, name))
    }
}

/// PEFT's module-name rule: `key` is `name` or its end at a dot.
fn names_module(key: &str, name: &str) -> bool {
    name == key || name.ends_with(&format!(".{key}"))
}

/// Everything needed to run a model: weights on a device, configuration,
/// tokenizer and chat template.
pub struct LoadedModel {
    pub path: PathBuf,
    pub config: Config,
    pub model: Llama,
    /// `None` for a weights-only HF folder (no `tokenizer.json`).
    pub tokenizer: Option<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
}

/// A model on disk, opened and checked, its weights not yet read.
pub struct ModelSource {
    pub path: PathBuf,
    pub config: Config,
    pub weights: WeightSource,
    /// `None` for a weights-only HF folder (no `tokenizer.json`).
    pub tokenizer: Option<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
}

impl ModelSource {
    /// Opens an HF folder (config.json, safetensors, tokenizer.json) or a `.gguf` file.
    pub fn open(path: &Path) -> Result<Self, Error> {
        if path.is_dir() {
            Self::open_hf_dir(path)
        } else {
            Self::open_gguf(path)
        }
    }

    fn open_hf_dir(dir: &Path) -> Result<Self, Error> {
        let config_path = dir.join("config.json");
        let config = HfConfig::from_file(&config_path)?.into_config(&config_path)?;
        let weights = WeightSource::open_hf_dir(dir)?;
        weights.check(&config, &config_path, "num_hidden_layers")?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = match tokenizer_path.exists() {
            true => Some(Tokenizer::from_file(&tokenizer_path)?),
            false => None,
        };
        let chat_template = read_chat_template(dir)?.or_else(|| builtin_template(&config));
        Ok(ModelSource {
            path: dir.to_path_buf(),
            config,
            weights,
            tokenizer,
            chat_template,
        })
    }

    fn open_gguf(path: &Path) -> Result<Self, Error> {
        let gguf = GgufFile::open(path)?;
        let config = Config::from_gguf(&gguf)?;
        let json = keel_text::tokenizer_json_from_gguf(&gguf.metadata)?;
        let tokenizer = Tokenizer::from_json(&json.to_string())?;
        let tokenizer_ref = &tokenizer;
        let md = &gguf.metadata;
        let token_text = |key: &str| -> Result<String, Error> {
            Ok(match md.get(key) {
                Some(_) => tokenizer_ref
                    .id_to_token(md.usize(key)? as u32)
                    .unwrap_or_default(),
                None => String::new(),
            })
        };
        let chat_template = match md.get("tokenizer.chat_template") {
            Some(_) => Some(ChatTemplate {
                source: md.str("tokenizer.chat_template")?.to_string(),
                bos_token: token_text("tokenizer.ggml.bos_token_id")?,
                eos_token: token_text("tokenizer.ggml.eos_token_id")?,
            }),
            None => builtin_template(&config),
        };
        let weights = WeightSource::Gguf(Arc::new(gguf));
        let layers_key = format!("{}.block_count", config.architecture.name());
        weights.check(&config, path, &layers_key)?;
        Ok(ModelSource {
            path: path.to_path_buf(),
            config,
            weights,
            tokenizer: Some(tokenizer),
            chat_template,
        })
    }

    /// Reads every weight onto `device`, in f32.
    pub fn load(self, device: &Device) -> Result<LoadedModel, Error> {
        self.load_as(device, DType::F32)
    }

    /// Reads every weight onto `device`, the large frozen matrices (linear
    /// weights, embeddings) stored as `base_dtype` to halve their memory;
    /// they are computed with in f32.
    pub fn load_as(self, device: &Device, base_dtype: DType) -> Result<LoadedModel, Error> {
        self.load_with(device, BaseStorage::Dense(base_dtype))
    }

    /// Reads every weight onto `device`, the frozen base stored as
    /// `storage` says.
    pub fn load_with(self, device: &Device, storage: BaseStorage) -> Result<LoadedModel, Error> {
        let model = build_model(&self.config, &self.weights, device, storage)?;
        Ok(LoadedModel {
            path: self.path,
            config: self.config,
            model,
            tokenizer: self.tokenizer,
            chat_template: self.chat_template,
        })
    }
}

impl LoadedModel {
    pub fn open(path: &Path, device: &Device) -> Result<Self, Error> {
        ModelSource::open(path)?.load(device)
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer, Error> {
        require_tokenizer(&self.tokenizer, &self.path)
    }

    /// Token ids of `prompt` as one user turn through the chat template,
    /// ready for the assistant's answer.
    pub fn chat_prompt_ids(&self, prompt: &str) -> Result<Vec<u32>, Error> {
        let template = self.chat_template.as_ref().ok_or_else(|| Error::BadFile {
            path: self.path.clone(),
            reason: "has no chat template".into(),
        })?;
        let text = template.render(&[Message::new("user", prompt)], true)?;
        Ok(self.tokenizer()?.encode(&text, false)?)
    }

    /// The configured EOS ids, plus the chat template's end-of-turn token:
    /// where an answer ends.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids = self.config.eos_token_ids.clone();
        if let Some(eos) = self
            .chat_template
            .as_ref()
            .and_then(|t| self.tokenizer.as_ref()?.token_to_id(&t.eos_token))
        {
            ids.push(eos);
        }
        ids
    }

    /// Reads a PEFT adapter folder and attaches it as `name`, refusing one
    /// made for another base.
    pub fn attach_adapter(&mut self, dir: &Path, name: &str) -> Result<(), Error> {
        self.model.attach(&AdapterFile::read(dir)?, name)?;
        Ok(())
    }
}

impl ModelSource {
    pub fn tokenizer(&self) -> Result<&Tokenizer, Error> {
        require_tokenizer(&self.tokenizer, &self.path)
    }
}

fn require_tokenizer<'a>(t: &'a Option<Tokenizer>, path: &Path) -> Result<&'a Tokenizer, Error> {
    t.as_ref().ok_or_else(|| Error::BadFile {
        path: path.to_path_buf(),
        reason: "has no tokenizer.json: it holds weights only".into(),
    })
}

/// The template of a model whose file has none, where its family has one.
fn builtin_template(config: &Config) -> Option<ChatTemplate> {
    (config.architecture == Architecture::Gemma3).then(ChatTemplate::gemma3)
}

/// The chat template of an HF folder, from `tokenizer_config.json` or, as
/// transformers 5 saves it, `chat_template.jinja`, with the special tokens it
/// uses. No template is not an error: base models have none.
fn read_chat_template(dir: &Path) -> Result<Option<ChatTemplate>, Error> {
    let path = &dir.join("tokenizer_config.json");
    let jinja = dir.join("chat_template.jinja");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(keel_fs::io(path))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::BadFile {
        path: path.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })?;
    // Special tokens are strings or `{"content": ...}` objects.
    let token = |key: &str| -> String {
        match json.get(key) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or_default()
                .to_string(),
            None => String::new(),
        }
    };
    let source = match json.get("chat_template") {
        None | Some(serde_json::Value::Null) if jinja.exists() => {
            std::fs::read_to_string(&jinja).map_err(keel_fs::io(&jinja))?
        }
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) => s.clone(),
        // A list of named templates: use the one named "default".
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| Error::Config {
                file: path.to_path_buf(),
                key: "chat_template".into(),
                reason: "a list of templates without one named \"default\"".into(),
            })?
            .to_string(),
        Some(_) => {
            return Err(Error::Config {
                file: path.to_path_buf(),
                key: "chat_template".into(),
                reason: "is neither a string nor a list of named templates".into(),
            });
        }
    };
    Ok(Some(ChatTemplate {
        source,
        bos_token: token("bos_token"),
        eos_token: token("eos_token"),
    }))
}

/// Loads the tensor HF calls `name` as `[rows, cols]` on the device,
/// transposed to Burn's `[in, out]` when `transpose` is set.
fn tensor2(
    w: &WeightSource,
    cfg: &Config,
    name: &str,
    shape: [usize; 2],
    transpose: bool,
    (device, dtype): (&Device, DType),
) -> Result<Tensor<2>, Error> {
    let HostTensor { data, .. } = w.get(name, &shape, cfg)?;
    let [rows, cols] = shape;
    let (data, shape) = match transpose {
        true => (
            keel_adapters::host::transpose(rows, cols, &data),
            [cols, rows],
        ),
        false => (data, shape),
    };
    Ok(Tensor::from_data(
        TensorData::new(data, shape),
        (device, dtype),
    ))
}

/// The base model is never trained: its parameters hold no gradient.
fn frozen<const D: usize>(t: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(t).set_require_grad(false)
}

fn tensor1(
    w: &WeightSource,
    cfg: &Config,
    name: &str,
    len: usize,
    device: &Device,
) -> Result<Tensor<1>, Error> {
    let t = w.get(name, &[len], cfg)?;
    Ok(Tensor::from_data(TensorData::new(t.data, [len]), device))
}

/// Builds the model from `cfg`, reading every weight from `w` onto `device`.
pub fn build_model(
    cfg: &Config,
    w: &WeightSource,
    device: &Device,
    storage: BaseStorage,
) -> Result<Llama, Error> {
    let hidden = cfg.hidden_size;
    let q_dim = cfg.num_attention_heads * cfg.head_dim;
    let kv_dim = cfg.num_key_value_heads * cfg.head_dim;
    let base_dtype = storage.dense();
    let mut modules = cfg.linear_modules();
    modules.push("model.embed_tokens".into());
    if let Some(key) = storage
        .keep_dense()
        .iter()
        .find(|k| !modules.iter().any(|m| names_module(k, m)))
    {
        let mut leaves: Vec<&str> = modules
            .iter()
            .filter_map(|m| m.rsplit('.').next())
            .collect();
        leaves.sort_unstable();
        leaves.dedup();
        return Err(Error::Setting {
            key: "model.keep_dense".into(),
            reason: format!(
                "`{key}` names no module of this model (it has {})",
                leaves.join(", ")
            ),
        });
    }
    let bias_of = |name: &str, bias: bool, d_out: usize| match bias {
        true => tensor1(w, cfg, &format!("{name}.bias"), d_out, device).map(Some),
        false => Ok(None),
    };
    let dense = |name: &str, d_in: usize, d_out: usize, bias: bool| -> Result<Linear, Error> {
        let weight = format!("{name}.weight");
        let weight = tensor2(w, cfg, &weight, [d_out, d_in], true, (device, base_dtype))?;
        Ok(Linear::frozen(weight, bias_of(name, bias, d_out)?))
    };
    let linear = |name: &str, d_in: usize, d_out: usize, bias: bool| -> Result<Linear, Error> {
        let weight = format!("{name}.weight");
        let in_blocks = !storage.keeps_dense(name);
        let base = match &storage {
            BaseStorage::Gguf { .. } if in_blocks => w.blocks(&weight, [d_out, d_in], cfg)?,
            BaseStorage::Quantize { ty, .. } if in_blocks => {
                let ty = ty.for_row_of(d_in);
                let HostTensor { data, .. } = w.get(&weight, &[d_out, d_in], cfg)?;
                let bad = w.tensor_error(&weight);
                let bytes = keel_gguf::quantize(ty, &data).map_err(|e| bad(e.kind.to_string()))?;
                QuantBase::owned(bytes, ty, [d_out, d_in]).map_err(bad)?
            }
            _ => return dense(name, d_in, d_out, bias),
        };
        Ok(Linear::quantized(base, bias_of(name, bias, d_out)?, device))
    };
    let norm_of = |name: &str, len: usize| -> Result<RmsNorm, Error> {
        Ok(RmsNorm {
            weight: frozen(tensor1(w, cfg, &format!("{name}.weight"), len, device)?),
            eps: cfg.rms_norm_eps,
            offset: cfg.architecture.norm_offset(),
        })
    };
    let norm = |name: &str| norm_of(name, hidden);
    let sandwich_norm = |name: String| -> Result<Option<RmsNorm>, Error> {
        match cfg.architecture.sandwich_norms() {
            true => norm(&name).map(Some),
            false => Ok(None),
        }
    };
    // The attention kernels scale scores by 1/sqrt(head_dim).
    let q_scale = (cfg.query_pre_attn_scalar != cfg.head_dim)
        .then(|| (cfg.head_dim as f64 / cfg.query_pre_attn_scalar as f64).sqrt());
    let head_norm = |name: String| -> Result<Option<RmsNorm>, Error> {
        match cfg.architecture.qk_norm() {
            true => norm_of(&name, cfg.head_dim).map(Some),
            false => Ok(None),
        }
    };
    // Phi-3 fuses q/k/v and gate/up into one projection each; the others
    // keep them apart.
    let fused = cfg.architecture.fused_projections();
    let input_proj = |wanted: bool, name: String, d_out: usize, bias: bool| match wanted {
        true => linear(&name, hidden, d_out, bias).map(Some),
        false => Ok(None),
    };
    let inter = cfg.intermediate_size;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let b = cfg.attention_bias;
        layers.push(DecoderLayer {
            input_layernorm: norm(&format!("{p}.input_layernorm"))?,
            self_attn: Attention {
                q_proj: input_proj(!fused, format!("{p}.self_attn.q_proj"), q_dim, b)?,
                k_proj: input_proj(!fused, format!("{p}.self_attn.k_proj"), kv_dim, b)?,
                v_proj: input_proj(!fused, format!("{p}.self_attn.v_proj"), kv_dim, b)?,
                qkv_proj: input_proj(
                    fused,
                    format!("{p}.self_attn.qkv_proj"),
                    q_dim + 2 * kv_dim,
                    b,
                )?,
                o_proj: linear(&format!("{p}.self_attn.o_proj"), q_dim, hidden, false)?,
                q_norm: head_norm(format!("{p}.self_attn.q_norm"))?,
                k_norm: head_norm(format!("{p}.self_attn.k_norm"))?,
                n_heads: cfg.num_attention_heads,
                n_kv_heads: cfg.num_key_value_heads,
                head_dim: cfg.head_dim,
                window: match cfg.layer_types[i] {
                    LayerType::Full => None,
                    LayerType::Sliding => cfg.sliding_window,
                },
                q_scale,
            },
            post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm"))?,
            pre_feedforward_layernorm: sandwich_norm(format!("{p}.pre_feedforward_layernorm"))?,
            post_feedforward_layernorm: sandwich_norm(format!("{p}.post_feedforward_layernorm"))?,
            mlp: Mlp {
                gate_proj: input_proj(!fused, format!("{p}.mlp.gate_proj"), inter, false)?,
                up_proj: input_proj(!fused, format!("{p}.mlp.up_proj"), inter, false)?,
                gate_up_proj: input_proj(fused, format!("{p}.mlp.gate_up_proj"), 2 * inter, false)?,
                down_proj: linear(&format!("{p}.mlp.down_proj"), inter, hidden, false)?,
                activation: cfg.architecture.activation(),
            },
        });
    }
    // On the CPU a GGUF file's embeddings (and untied head) stay in its
    // blocks too: the lookup reads rows and the fused head multiplies by
    // them. A GPU would get the whole table dequantized and uploaded for
    // every product, each decoded token's included, so there they are
    // dense. Quantizing at load leaves them dense, as llama.cpp gives them
    // types of their own.
    let in_file =
        matches!(storage, BaseStorage::Gguf { .. }) && device.clone().inner() == Device::flex();
    let embeddings_in_file = in_file && !storage.keeps_dense("model.embed_tokens");
    let embed_name = "model.embed_tokens.weight";
    let (embed, embed_blocks) = match embeddings_in_file {
        true => {
            let table = w.blocks(embed_name, [cfg.vocab_size, hidden], cfg)?;
            (Tensor::zeros([0, 0], device), Some(table))
        }
        false => {
            let shape = [cfg.vocab_size, hidden];
            let table = tensor2(w, cfg, embed_name, shape, false, (device, base_dtype))?;
            (table, None)
        }
    };
    // Some tied checkpoints still store lm_head.weight; untied ones must.
    let lm_head = match (cfg.tie_word_embeddings, in_file) {
        (true, _) => None,
        (false, true) => Some(linear("lm_head", hidden, cfg.vocab_size, false)?),
        (false, false) => Some(dense("lm_head", hidden, cfg.vocab_size, false)?),
    };
    Ok(Llama {
        embed_tokens: frozen(embed),
        embed_blocks,
        layers,
        norm: norm("model.norm")?,
        lm_head,
        rope: Rope::new(cfg, LayerType::Full),
        rope_local: cfg
            .rope_local_theta
            .map(|_| Rope::new(cfg, LayerType::Sliding)),
        embed_scale: cfg
            .architecture
            .scales_embeddings()
            .then(|| (hidden as f64).sqrt() as f32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers 5 saves the template beside `tokenizer_config.json`.
    #[test]
    fn chat_template_from_a_jinja_file() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/smollm2/hf-tokenizer");
        let t = read_chat_template(&dir).unwrap().expect("a template");
        assert_eq!(
            (t.bos_token.as_str(), t.eos_token.as_str()),
            ("<|im_start|>", "<|im_end|>")
        );
        let text = t
            .render(&[keel_text::Message::new("user", "hi")], true)
            .unwrap();
        assert!(
            text.ends_with("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
            "{text}"
        );
    }
}
