//! What `keel inspect` says of a model file or folder: as text
//! ([`Display`](std::fmt::Display)) or as JSON ([`Serialize`]).

use std::fmt;
use std::path::{Path, PathBuf};

use keel_gguf::GgufFile;
use serde::Serialize;

use crate::config::{Config, LayerType, RopeScaling};
use crate::error::Error;
use crate::load::ModelSource;

/// A model's tensors and, where keel runs it, its shape; otherwise why not.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub path: PathBuf,
    pub architecture: String,
    pub parameters: usize,
    /// Bytes of the file, or of the files in the folder.
    pub size_bytes: u64,
    /// Tensor types with how many tensors have each, in order of appearance.
    pub dtypes: Vec<DtypeCount>,
    /// In JSON, a `model` key or a `not_runnable` key.
    #[serde(flatten)]
    pub runnable: Runnable,
}

/// Whether keel runs the model: the shape it runs, or why it cannot.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Runnable {
    Model(ShapeSummary),
    NotRunnable(String),
}

/// How many tensors have a type.
#[derive(Debug, Clone, Serialize)]
pub struct DtypeCount {
    pub dtype: String,
    pub tensors: usize,
}

/// The shape of a model keel runs.
#[derive(Debug, Clone, Serialize)]
pub struct ShapeSummary {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rotary_dim: usize,
    pub vocab: usize,
    pub rope_theta: f64,
    pub rope_scaling: &'static str,
    /// "full in every layer", or which layers slide over how many positions.
    pub attention: String,
    pub tied_embeddings: bool,
    pub chat_template: bool,
    /// The projections adapters can target, by HF name.
    pub linear_modules: Vec<String>,
}

impl ModelSummary {
    /// Describes the model at `path`: a GGUF keel cannot run is still
    /// described, with the reason; anything else that does not open is an
    /// error.
    pub fn of(path: &Path) -> Result<Self, Error> {
        let source = match ModelSource::open(path) {
            Ok(source) => source,
            Err(why) => {
                let Ok(gguf) = GgufFile::open(path) else {
                    return Err(why);
                };
                let arch = gguf
                    .metadata
                    .get("general.architecture")
                    .and_then(|v| v.as_str())
                    .unwrap_or("(none given)")
                    .to_string();
                let tensors = gguf.tensors.iter().map(|t| (t.ggml_type.name(), &t.shape));
                return Self::new(path, arch, tensors, Runnable::NotRunnable(why.to_string()));
            }
        };
        let c = &source.config;
        let shape = ShapeSummary {
            layers: c.num_hidden_layers,
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            rotary_dim: c.rotary_dim,
            vocab: c.vocab_size,
            rope_theta: c.rope_theta,
            rope_scaling: scaling_name(&c.rope_scaling),
            attention: attention(c),
            tied_embeddings: c.tie_word_embeddings,
            chat_template: source.chat_template.is_some(),
            linear_modules: c.linear_modules(),
        };
        let tensors = source.weights.list();
        let tensors = tensors.iter().map(|(_, t, shape)| (t.as_str(), shape));
        let arch = c.architecture.name().to_string();
        Self::new(path, arch, tensors, Runnable::Model(shape))
    }

    fn new<'a>(
        path: &Path,
        architecture: String,
        tensors: impl Iterator<Item = (&'a str, &'a Vec<usize>)>,
        runnable: Runnable,
    ) -> Result<Self, Error> {
        let (mut parameters, mut dtypes) = (0usize, Vec::<DtypeCount>::new());
        for (ty, shape) in tensors {
            parameters += shape.iter().product::<usize>();
            match dtypes.iter_mut().find(|d| d.dtype == ty) {
                Some(d) => d.tensors += 1,
                None => dtypes.push(DtypeCount {
                    dtype: ty.to_string(),
                    tensors: 1,
                }),
            }
        }
        Ok(ModelSummary {
            path: path.to_path_buf(),
            architecture,
            parameters,
            size_bytes: disk_size(path)?,
            dtypes,
            runnable,
        })
    }
}

/// Bytes of a model file, or of the files in a model folder.
fn disk_size(path: &Path) -> Result<u64, Error> {
    let meta = std::fs::metadata(path).map_err(keel_fs::io(path))?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path).map_err(keel_fs::io(path))? {
        let meta = entry
            .and_then(|e| e.metadata())
            .map_err(keel_fs::io(path))?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// "full in every layer", or how many slide, over how many positions, with
/// which RoPE base.
fn attention(c: &Config) -> String {
    let sliding = c
        .layer_types
        .iter()
        .filter(|&&t| t == LayerType::Sliding)
        .count();
    match (sliding, c.sliding_window) {
        (0, _) | (_, None) => "full in every layer".into(),
        (n, Some(window)) => format!(
            "{n} sliding-window layers ({window} positions, RoPE theta {}), {} full",
            c.rope_local_theta.unwrap_or(c.rope_theta),
            c.num_hidden_layers - n
        ),
    }
}

fn scaling_name(s: &RopeScaling) -> &'static str {
    match s {
        RopeScaling::None => "none",
        RopeScaling::Linear { .. } => "linear",
        RopeScaling::Llama3 { .. } => "llama3",
        RopeScaling::Factors(_) => "frequency factors",
        RopeScaling::LongRope { .. } => "longrope",
    }
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dtypes: Vec<String> = self
            .dtypes
            .iter()
            .map(|d| format!("{} x{}", d.dtype, d.tensors))
            .collect();
        writeln!(f, "path:          {}", self.path.display())?;
        writeln!(f, "architecture:  {}", self.architecture)?;
        let p = self.parameters;
        writeln!(f, "parameters:    {p} ({:.1} M)", p as f64 / 1e6)?;
        writeln!(f, "size:          {:.1} MB", self.size_bytes as f64 / 1e6)?;
        writeln!(f, "dtypes:        {}", dtypes.join(", "))?;
        let m = match &self.runnable {
            Runnable::Model(m) => m,
            Runnable::NotRunnable(why) => return writeln!(f, "keel runs it:  no: {why}"),
        };
        writeln!(f, "layers:        {}", m.layers)?;
        writeln!(
            f,
            "hidden:        {} (intermediate {})",
            m.hidden, m.intermediate
        )?;
        writeln!(
            f,
            "heads:         {} query, {} key/value, head_dim {}",
            m.heads, m.kv_heads, m.head_dim
        )?;
        writeln!(f, "vocab:         {}", m.vocab)?;
        let partial = match m.rotary_dim < m.head_dim {
            true => format!(
                ", rotating {} of {} head dimensions",
                m.rotary_dim, m.head_dim
            ),
            false => String::new(),
        };
        writeln!(
            f,
            "rope:          theta {}, scaling {}{partial}",
            m.rope_theta, m.rope_scaling
        )?;
        writeln!(f, "attention:     {}", m.attention)?;
        writeln!(f, "tied embed:    {}", m.tied_embeddings)?;
        let template = if m.chat_template { "yes" } else { "no" };
        writeln!(f, "chat template: {template}")?;
        writeln!(f, "linear modules ({}):", m.linear_modules.len())?;
        for name in &m.linear_modules {
            writeln!(f, "  {name}")?;
        }
        Ok(())
    }
}
