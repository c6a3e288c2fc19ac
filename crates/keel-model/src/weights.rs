//! Reading weights by their HF name from an HF folder (one or sharded
//! safetensors files) or a GGUF file, as `f32` on the host.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_adapters::QuantBase;
use keel_gguf::{GgufFile, TensorInfo};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::config::{Architecture, Config};
use crate::error::Error;

/// A host tensor: row-major `f32` values and their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A tensor's place in a memory-mapped safetensors file.
pub struct Stored {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Range<usize>,
}

/// Where weights come from.
pub enum WeightSource {
    /// Safetensors files, memory-mapped, and where each tensor lies in them
    /// (headers are parsed once, when the files are opened).
    Safetensors {
        files: Vec<(PathBuf, Mmap)>,
        index: BTreeMap<String, Stored>,
    },
    /// Shared, so that a base kept in its blocks reads them in place.
    Gguf(Arc<GgufFile>),
}

impl WeightSource {
    /// Opens `model.safetensors`, or the shards listed in
    /// `model.safetensors.index.json`, in `dir`.
    pub fn open_hf_dir(dir: &Path) -> Result<Self, Error> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if single.exists() {
            vec!["model.safetensors".into()]
        } else if index_path.exists() {
            read_shard_index(&index_path)?
        } else {
            return Err(Error::BadFile {
                path: dir.to_path_buf(),
                reason: "no model.safetensors or model.safetensors.index.json in this folder"
                    .into(),
            });
        };
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for name in shard_names {
            let path = dir.join(&name);
            let file = std::fs::File::open(&path).map_err(keel_fs::io(&path))?;
            // SAFETY: read-only map of a file we do not modify.
            let map = unsafe { Mmap::map(&file) }.map_err(keel_fs::io(&path))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| Error::BadFile {
                path: path.clone(),
                reason: format!("not a valid safetensors file: {e}"),
            })?;
            for (tensor, view) in st.tensors() {
                let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
                let stored = Stored {
                    file: files.len(),
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    bytes: start..start + view.data().len(),
                };
                if index.insert(tensor.clone(), stored).is_some() {
                    return Err(Error::Tensor {
                        file: path.clone(),
                        tensor,
                        reason: "appears in more than one shard".into(),
                    });
                }
            }
            files.push((path, map));
        }
        Ok(WeightSource::Safetensors { files, index })
    }

    /// The file named in errors about a tensor.
    fn file_for(&self, name: &str) -> PathBuf {
        match self {
            WeightSource::Safetensors { files, index } => index
                .get(name)
                .map(|t| files[t.file].0.clone())
                .unwrap_or_else(|| files[0].0.parent().unwrap_or(Path::new(".")).to_path_buf()),
            WeightSource::Gguf(g) => g.path().to_path_buf(),
        }
    }

    /// Every stored tensor as (name in the file, dtype, shape).
    pub fn list(&self) -> Vec<(String, String, Vec<usize>)> {
        match self {
            WeightSource::Safetensors { index, .. } => index
                .iter()
                .map(|(n, t)| (n.clone(), format!("{:?}", t.dtype), t.shape.clone()))
                .collect(),
            WeightSource::Gguf(g) => g
                .tensors
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        t.ggml_type.name().to_string(),
                        t.shape.clone(),
                    )
                })
                .collect(),
        }
    }

    /// The shape of the tensor HF calls `hf_name`, without reading it.
    fn shape_of(&self, hf_name: &str, config: &Config) -> Option<&[usize]> {
        match self {
            WeightSource::Safetensors { index, .. } => index.get(hf_name).map(|t| &t.shape[..]),
            WeightSource::Gguf(g) => g
                .tensor(&gguf_name(config.architecture, hf_name)?)
                .map(|t| &t.shape[..]),
        }
    }

    /// How many decoder layers the file holds tensors for (the highest
    /// layer index plus one).
    fn layers_present(&self) -> usize {
        let prefix = match self {
            WeightSource::Safetensors { .. } => "model.layers.",
            WeightSource::Gguf(_) => "blk.",
        };
        self.list()
            .iter()
            .filter_map(|(name, _, _)| {
                name.strip_prefix(prefix)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .map(|i| i + 1)
            .max()
            .unwrap_or(0)
    }

    /// Checks, before anything is read, that the file holds every weight
    /// `config` describes, in its shape: a layer count that disagrees is
    /// blamed on `layers_key` in `config_file`; otherwise one error lists
    /// every tensor missing or misshapen.
    pub fn check(
        &self,
        config: &Config,
        config_file: &Path,
        layers_key: &str,
    ) -> Result<(), Error> {
        let present = self.layers_present();
        if present != config.num_hidden_layers {
            return Err(Error::Config {
                file: config_file.to_path_buf(),
                key: layers_key.to_string(),
                reason: format!(
                    "is {}, but the weights hold {present} layers",
                    config.num_hidden_layers
                ),
            });
        }
        let wanted = config.weights();
        let problems: Vec<String> = wanted
            .iter()
            .filter_map(|(name, shape)| match self.shape_of(name, config) {
                None => Some(format!("{name} is missing")),
                Some(s) if s != &shape[..] => Some(format!(
                    "{name} has shape {s:?}, the config implies {shape:?}"
                )),
                Some(_) => None,
            })
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        const SHOWN: usize = 8;
        let more = match problems.len().saturating_sub(SHOWN) {
            0 => String::new(),
            n => format!("; and {n} more"),
        };
        Err(Error::BadFile {
            path: self.file_for(""),
            reason: format!(
                "does not hold the weights its config describes ({} of {} tensors wrong, by their HF names): {}{more}",
                problems.len(),
                wanted.len(),
                problems[..problems.len().min(SHOWN)].join("; ")
            ),
        })
    }

    /// An error about the tensor HF calls `hf_name`.
    pub(crate) fn tensor_error(&self, hf_name: &str) -> impl Fn(String) -> Error {
        let (file, tensor) = (self.file_for(hf_name), hf_name.to_string());
        move |reason| Error::Tensor {
            file: file.clone(),
            tensor: tensor.clone(),
            reason,
        }
    }

    /// The projection HF calls `hf_name`, `[out, in]`, as the GGUF file's
    /// own blocks, read in place (q/k rows that llama.cpp interleaved are
    /// put back in HF's order, a copy of those bytes).
    pub fn blocks(
        &self,
        hf_name: &str,
        shape: [usize; 2],
        config: &Config,
    ) -> Result<QuantBase, Error> {
        let err = self.tensor_error(hf_name);
        let WeightSource::Gguf(g) = self else {
            return Err(err(
                "base_dtype \"gguf\" keeps a GGUF file's blocks, and this model is not a GGUF file (quantize it at load instead: q4_k, q8_0, ...)".into(),
            ));
        };
        let info = gguf_info(g, config, hf_name, &err)?;
        if info.shape != shape {
            return Err(err(format!(
                "has shape {:?}, the config implies {shape:?}",
                info.shape
            )));
        }
        let range = g.tensor_range(info);
        let base = match interleaved_heads(config, hf_name) {
            Some(heads) => {
                let row_bytes = range.len() / shape[0].max(1);
                let bytes = &(**g).as_ref()[range];
                let rows = reorder_qk_rows(shape[0], row_bytes, bytes, heads, QkLayout::ToHf)
                    .map_err(&err)?;
                QuantBase::owned(rows, info.ggml_type, shape)
            }
            None => QuantBase::new(g.clone(), range, info.ggml_type, shape),
        };
        base.map_err(err)
    }

    /// Reads the tensor HF calls `hf_name`, checking its shape.
    pub fn get(
        &self,
        hf_name: &str,
        shape: &[usize],
        config: &Config,
    ) -> Result<HostTensor, Error> {
        let err = self.tensor_error(hf_name);
        let tensor = match self {
            WeightSource::Safetensors { files, index } => {
                let t = index.get(hf_name).ok_or_else(|| err("missing".into()))?;
                let bytes = &files[t.file].1[t.bytes.clone()];
                HostTensor {
                    shape: t.shape.clone(),
                    data: keel_adapters::host::to_f32(t.dtype, bytes).map_err(&err)?,
                }
            }
            WeightSource::Gguf(g) => {
                let info = gguf_info(g, config, hf_name, &err)?;
                let (shape, data) = g.tensor_f32(&info.name).map_err(Error::Gguf)?;
                let data =
                    gguf_layout(config, hf_name, &shape, data, QkLayout::ToHf).map_err(&err)?;
                HostTensor { shape, data }
            }
        };
        if tensor.shape != shape {
            return Err(err(format!(
                "has shape {:?}, the config implies {shape:?}",
                tensor.shape
            )));
        }
        Ok(tensor)
    }
}

/// The GGUF tensor HF calls `hf_name`; `err` says when there is none.
fn gguf_info<'g>(
    g: &'g GgufFile,
    config: &Config,
    hf_name: &str,
    err: &impl Fn(String) -> Error,
) -> Result<&'g TensorInfo, Error> {
    let name = gguf_name(config.architecture, hf_name)
        .ok_or_else(|| err("has no GGUF equivalent".into()))?;
    g.tensor(&name)
        .ok_or_else(|| err(format!("missing (GGUF name `{name}`)")))
}

fn read_shard_index(path: &Path) -> Result<Vec<String>, Error> {
    let text = std::fs::read_to_string(path).map_err(keel_fs::io(path))?;
    let bad = |reason: String| Error::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("`weight_map` is missing or not an object".into()))?;
    let mut shards: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("`weight_map.{tensor}` is not a file name")))?;
        // Shards must sit beside the index: no path can lead elsewhere.
        if file.contains(['/', '\\']) || file == ".." || file == "." || file.is_empty() {
            return Err(bad(format!(
                "`weight_map.{tensor}`: {file:?} is not a plain file name"
            )));
        }
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
    }
    if shards.is_empty() {
        return Err(bad("`weight_map` names no tensor".into()));
    }
    Ok(shards)
}

/// HF tensor name to llama.cpp's GGUF name in an `arch` file.
pub fn gguf_name(arch: Architecture, hf: &str) -> Option<String> {
    Some(match hf {
        "model.embed_tokens.weight" => "token_embd.weight".into(),
        "model.norm.weight" => "output_norm.weight".into(),
        "lm_head.weight" => "output.weight".into(),
        _ => {
            let rest = hf.strip_prefix("model.layers.")?;
            let (layer, module) = rest.split_once('.')?;
            layer.parse::<usize>().ok()?;
            let (module, kind) = module.rsplit_once('.')?;
            let short = match module {
                "input_layernorm" => "attn_norm",
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "self_attn.qkv_proj" => "attn_qkv",
                "self_attn.q_norm" => "attn_q_norm",
                "self_attn.k_norm" => "attn_k_norm",
                // Gemma normalises the attention's output with it.
                "post_attention_layernorm" if arch.sandwich_norms() => "post_attention_norm",
                "post_attention_layernorm" => "ffn_norm",
                "pre_feedforward_layernorm" => "ffn_norm",
                "post_feedforward_layernorm" => "post_ffw_norm",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                // Phi-3's fused gate | up keeps the up projection's name.
                "mlp.gate_up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                _ => return None,
            };
            format!("blk.{layer}.{short}.{kind}")
        }
    })
}

/// Which way to convert tensors between HF's layout and llama.cpp's (q/k
/// rows in rotate-half or interleaved order, Gemma's norms as `w` or
/// `1 + w`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkLayout {
    /// GGUF rows to HF rows (loading).
    ToHf,
    /// HF rows to GGUF rows (exporting), llama.cpp's `permute`.
    ToGguf,
}

/// llama.cpp's converter interleaves the rows of q/k projections (and of
/// LoRA B for them) for its RoPE: within each head, GGUF row `2j + t` is HF
/// row `t * head_dim/2 + j`.
pub fn reorder_qk_rows<T: Copy + Default>(
    rows: usize,
    cols: usize,
    data: &[T],
    n_heads: usize,
    to: QkLayout,
) -> Result<Vec<T>, String> {
    if n_heads == 0 || !rows.is_multiple_of(2 * n_heads) {
        return Err(format!(
            "{rows} rows do not split into {n_heads} heads of pairs"
        ));
    }
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = vec![T::default(); data.len()];
    for h in 0..n_heads {
        for j in 0..half {
            for t in 0..2 {
                let gguf = h * head_dim + 2 * j + t;
                let hf = h * head_dim + t * half + j;
                let (src, dst) = match to {
                    QkLayout::ToHf => (gguf, hf),
                    QkLayout::ToGguf => (hf, gguf),
                };
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// The heads of a q/k projection whose rows llama.cpp's converter
/// interleaved (`llama` and `mistral` files); `None` for any other tensor.
fn interleaved_heads(config: &Config, hf_name: &str) -> Option<usize> {
    let interleaved = matches!(
        config.architecture,
        Architecture::Llama | Architecture::Mistral
    );
    let heads = match hf_name.rsplit('.').nth(1).unwrap_or_default() {
        "q_proj" => config.num_attention_heads,
        "k_proj" => config.num_key_value_heads,
        _ => 0,
    };
    (interleaved && heads > 0).then_some(heads)
}

/// Converts the values of tensor `hf_name` between llama.cpp's layout and
/// HF's, in the direction `to`: llama.cpp's converter interleaves q/k rows
/// for its RoPE in `llama` files, and stores Gemma's norm weights `w` as
/// the `1 + w` they scale by.
pub fn gguf_layout(
    config: &Config,
    hf_name: &str,
    shape: &[usize],
    mut data: Vec<f32>,
    to: QkLayout,
) -> Result<Vec<f32>, String> {
    let module = hf_name.rsplit('.').nth(1).unwrap_or_default();
    if let Some(heads) = interleaved_heads(config, hf_name) {
        let rows = shape.first().copied().unwrap_or(0);
        let cols: usize = shape.iter().skip(1).product();
        data = reorder_qk_rows(rows, cols, &data, heads, to)?;
    }
    let offset = config.architecture.norm_offset();
    if offset != 0.0 && module.ends_with("norm") {
        let shift = match to {
            QkLayout::ToHf => -offset,
            QkLayout::ToGguf => offset,
        };
        data.iter_mut().for_each(|v| *v += shift);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names() {
        let llama = Architecture::Llama;
        assert_eq!(
            gguf_name(llama, "model.layers.12.self_attn.q_proj.bias").unwrap(),
            "blk.12.attn_q.bias"
        );
        assert_eq!(
            gguf_name(llama, "model.layers.0.mlp.down_proj.weight").unwrap(),
            "blk.0.ffn_down.weight"
        );
        assert_eq!(gguf_name(llama, "lm_head.weight").unwrap(), "output.weight");
        assert!(gguf_name(llama, "model.layers.x.mlp.down_proj.weight").is_none());
        // The same HF name is another tensor in a Gemma 3 file.
        let norm = "model.layers.3.post_attention_layernorm.weight";
        assert_eq!(gguf_name(llama, norm).unwrap(), "blk.3.ffn_norm.weight");
        assert_eq!(
            gguf_name(Architecture::Gemma3, norm).unwrap(),
            "blk.3.post_attention_norm.weight"
        );
    }

    /// llama.cpp's permute, written as its Python does, then inverted.
    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (n_heads, head_dim, cols) = (2, 6, 3);
        let rows = n_heads * head_dim;
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        // reshape(n_head, 2, head_dim/2, cols).swapaxes(1, 2)
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..n_heads {
            for t in 0..2 {
                for j in 0..head_dim / 2 {
                    let src = h * head_dim + t * head_dim / 2 + j;
                    let dst = h * head_dim + j * 2 + t;
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(
            reorder_qk_rows(rows, cols, &hf, n_heads, QkLayout::ToGguf).unwrap(),
            gguf
        );
        let back = reorder_qk_rows(rows, cols, &gguf, n_heads, QkLayout::ToHf).unwrap();
        assert_eq!(back, hf);
    }
}
