//! `keel inspect`: what a model file or folder holds, and whether keel runs it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use keel_model::ModelSource;

use super::print_out;

#[derive(clap::Args)]
pub struct Args {
    path: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    inspect(&args.path)
}

fn inspect(path: &Path) -> Result<()> {
    let source = match ModelSource::open(path) {
        Ok(source) => source,
        // A GGUF keel cannot run is still described, with the reason.
        Err(e) => match keel_gguf::GgufFile::open(path) {
            Ok(gguf) => return inspect_gguf(path, &gguf, &e),
            Err(_) => return Err(e).with_context(|| format!("opening {}", path.display())),
        },
    };
    let c = &source.config;
    let tensors = source.weights.list();
    let mut lines = vec![
        format!("path:          {}", path.display()),
        format!("architecture:  {}", c.architecture.name()),
    ];
    lines.extend(tensor_summary(
        path,
        tensors
            .iter()
            .map(|(_, dtype, shape)| (dtype.as_str(), shape)),
    )?);
    let modules = c.linear_modules();
    lines.extend([
        format!("layers:        {}", c.num_hidden_layers),
        format!(
            "hidden:        {} (intermediate {})",
            c.hidden_size, c.intermediate_size
        ),
        format!(
            "heads:         {} query, {} key/value, head_dim {}",
            c.num_attention_heads, c.num_key_value_heads, c.head_dim
        ),
        format!("vocab:         {}", c.vocab_size),
        format!(
            "rope:          theta {}, scaling {}{}",
            c.rope_theta,
            scaling_name(&c.rope_scaling),
            match c.rotary_dim < c.head_dim {
                true => format!(
                    ", rotating {} of {} head dimensions",
                    c.rotary_dim, c.head_dim
                ),
                false => String::new(),
            }
        ),
        format!("attention:     {}", attention_summary(c)),
        format!("tied embed:    {}", c.tie_word_embeddings),
        format!(
            "chat template: {}",
            if source.chat_template.is_some() {
                "yes"
            } else {
                "no"
            }
        ),
        format!("linear modules ({}):", modules.len()),
    ]);
    lines.extend(modules.iter().map(|m| format!("  {m}")));
    print_out(&(lines.join("\n") + "\n"))
}

/// What `keel inspect` can say of a GGUF keel cannot run: its tensors, and why.
fn inspect_gguf(path: &Path, gguf: &keel_gguf::GgufFile, why: &keel_model::Error) -> Result<()> {
    let arch = gguf
        .metadata
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("(none given)");
    let mut lines = vec![
        format!("path:          {}", path.display()),
        format!("architecture:  {arch}"),
    ];
    lines.extend(tensor_summary(
        path,
        gguf.tensors.iter().map(|t| (t.ggml_type.name(), &t.shape)),
    )?);
    lines.push(format!("keel runs it:  no: {why}"));
    print_out(&(lines.join("\n") + "\n"))
}

/// Parameter count, size on disk and tensor types (with their counts) of
/// `(type, shape)` per tensor.
fn tensor_summary<'a>(
    path: &Path,
    tensors: impl Iterator<Item = (&'a str, &'a Vec<usize>)>,
) -> Result<Vec<String>> {
    let (mut params, mut types) = (0usize, Vec::<(&str, usize)>::new());
    for (ty, shape) in tensors {
        params += shape.iter().product::<usize>();
        match types.iter_mut().find(|(t, _)| *t == ty) {
            Some((_, n)) => *n += 1,
            None => types.push((ty, 1)),
        }
    }
    let types: Vec<String> = types.iter().map(|(t, n)| format!("{t} x{n}")).collect();
    Ok(vec![
        format!("parameters:    {params} ({:.1} M)", params as f64 / 1e6),
        format!("size:          {:.1} MB", disk_size(path)? as f64 / 1e6),
        format!("dtypes:        {}", types.join(", ")),
    ])
}

/// Bytes of a model file, or of the files in a model folder.
fn disk_size(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// "all layers full", or how many slide, over how many positions, with
/// which RoPE base.
fn attention_summary(c: &keel_model::Config) -> String {
    let sliding = c
        .layer_types
        .iter()
        .filter(|&&t| t == keel_model::LayerType::Sliding)
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

fn scaling_name(s: &keel_model::RopeScaling) -> &'static str {
    match s {
        keel_model::RopeScaling::None => "none",
        keel_model::RopeScaling::Linear { .. } => "linear",
        keel_model::RopeScaling::Llama3 { .. } => "llama3",
        keel_model::RopeScaling::Factors(_) => "frequency factors",
        keel_model::RopeScaling::LongRope { .. } => "longrope",
    }
}
