//! The adapter folded into the base: an HF folder, or a GGUF model written
//! from the base GGUF it came from (its metadata, tokenizer included, kept;
//! every tensor rewritten in f32 or f16, q/k rows back in GGUF's order).

use std::collections::HashMap;
use std::path::Path;

use keel_gguf::{GgmlType, GgufFile, GgufWriter, Value};
use keel_model::{LoadedModel, QkLayout};

use crate::error::Error;
use crate::gguf_lora::GgufDtype;

/// Merges adapter `name`'s low-rank part into the base weights. Modules an
/// adapter trained in full are already in place once it is attached, so an
/// adapter with no low-rank part (`has_lora` false) merges nothing more.
fn merge(model: &mut LoadedModel, name: &str, has_lora: bool) -> Result<(), Error> {
    let mut found = false;
    for (module, layer) in model.model.linears_mut() {
        if layer.adapter(name).is_some() {
            layer.merge(name).map_err(|e| match e {
                keel_adapters::Error::Module { reason, .. } => {
                    keel_adapters::Error::Module { module, reason }
                }
                other => other,
            })?;
            found = true;
        }
    }
    if has_lora && !found {
        return Err(Error::NoAdapter(name.to_string()));
    }
    Ok(())
}

/// Merges adapter `name` into the base and writes the result as an HF
/// folder at `out` (which must not exist or be empty).
pub fn export_merged(
    model: &mut LoadedModel,
    name: &str,
    has_lora: bool,
    out: &Path,
) -> Result<(), Error> {
    merge(model, name, has_lora)?;
    keel_model::save_hf_dir(model, out)?;
    Ok(())
}

/// Merges adapter `name` into the base, which was loaded from the GGUF file
/// `base`, and writes a GGUF model at `out` that llama.cpp and Ollama load
/// as they load `base`.
pub fn export_merged_gguf(
    model: &mut LoadedModel,
    base: &Path,
    name: &str,
    has_lora: bool,
    out: &Path,
    dtype: GgufDtype,
) -> Result<(), Error> {
    merge(model, name, has_lora)?;
    let source = GgufFile::open(base)?;
    let (ty, file_type) = match dtype {
        GgufDtype::F32 => (GgmlType::F32, 0u32),
        GgufDtype::F16 => (GgmlType::F16, 1u32),
    };
    let mut w = GgufWriter::new();
    for (key, value) in source.metadata.iter() {
        match key {
            // Every tensor is now f32 or f16; the writer uses its own alignment.
            "general.file_type" => w.add_metadata(key, Value::U32(file_type)),
            "general.alignment" => {}
            _ => w.add_metadata(key, value.clone()),
        }
    }
    let c = &model.config;
    let mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    for (hf, shape, data) in keel_model::hf_tensors(&model.model) {
        let unsupported = |reason: String| Error::Unsupported {
            format: "gguf",
            reason,
        };
        let gguf = keel_model::gguf_name(c.architecture, &hf)
            .ok_or_else(|| unsupported(format!("tensor `{hf}` has no GGUF name")))?;
        let data = keel_model::gguf_layout(c, &hf, &shape, data, QkLayout::ToGguf)
            .map_err(|reason| unsupported(format!("{hf}: {reason}")))?;
        tensors.insert(gguf, (shape, data));
    }
    // The base's tensor order; every one of them must have been rewritten.
    for info in &source.tensors {
        // What keel does not model (llama3's `rope_freqs`) is copied as is.
        let (shape, data) = match tensors.remove(&info.name) {
            Some(t) => t,
            None => source.tensor_f32(&info.name)?,
        };
        // llama.cpp keeps vectors (norms, biases) in f32.
        let t = if shape.len() == 1 { GgmlType::F32 } else { ty };
        w.add_tensor(&info.name, &shape, &data, t)?;
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(Error::Unsupported {
            format: "gguf",
            reason: format!("tensor `{extra}` is not in the base GGUF"),
        });
    }
    w.write(out)?;
    Ok(())
}
