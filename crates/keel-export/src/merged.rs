//! The adapter folded into the base: an HF folder, or a GGUF model written
//! from the base GGUF it came from (its metadata, tokenizer included, kept;
//! every tensor rewritten in f32, f16, or quantized as `llama-quantize`
//! would (Q8_0, Q4_K_M); q/k rows back in GGUF's order).

use std::collections::HashMap;
use std::path::Path;

use keel_gguf::{GgmlType, GgufFile, GgufWriter, Value};
use keel_model::{LoadedModel, QkLayout};

use crate::error::Error;

/// The tensor types of a merged GGUF model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MergedGguf {
    #[default]
    F32,
    F16,
    /// Every matrix Q8_0, as `llama-quantize ... Q8_0`.
    Q8_0,
    /// llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for the head (or tied
    /// embeddings) and for `attn_v` (or a fused `attn_qkv`, which llama.cpp
    /// treats as one) and `ffn_down` in the layers it gives more bits.
    Q4KM,
}

impl MergedGguf {
    /// llama.cpp's `general.file_type` (`llama_ftype`).
    fn file_type(self) -> u32 {
        match self {
            MergedGguf::F32 => 0,
            MergedGguf::F16 => 1,
            MergedGguf::Q8_0 => 7,
            MergedGguf::Q4KM => 15,
        }
    }

    /// Picks each tensor's type as llama.cpp's `llama_tensor_get_type`
    /// does for this mix (no importance matrix), its fallback for rows its
    /// blocks do not fit included; tensors are given in file order.
    fn picker(self, layers: usize, tied: bool) -> impl FnMut(&str, &[usize]) -> GgmlType {
        // llama.cpp counts each kind's tensors in file order and gives more
        // bits by that count, not by block number (a file whose blocks sort
        // as text, 0, 1, 10, 11, ..., gets them in other layers).
        let mut seen: HashMap<String, usize> = HashMap::new();
        move |name, shape| {
            // llama.cpp quantizes only matrices named `*weight`, never norms.
            let matrix =
                shape.len() == 2 && name.ends_with("weight") && !name.contains("_norm.weight");
            if !matrix {
                return GgmlType::F32;
            }
            let kind = name.rsplit('.').nth(1).unwrap_or("");
            let count = seen.entry(kind.to_string()).or_default();
            let i = *count;
            *count += 1;
            // llama.cpp's `use_more_bits`.
            let more_bits = i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;
            let head = kind == "output" || (tied && kind == "token_embd");
            let ty = match self {
                MergedGguf::F32 => return GgmlType::F32,
                MergedGguf::F16 => return GgmlType::F16,
                MergedGguf::Q8_0 => GgmlType::Q8_0,
                MergedGguf::Q4KM if head => GgmlType::Q6K,
                MergedGguf::Q4KM => match kind {
                    "attn_v" | "attn_qkv" | "ffn_down" if more_bits => GgmlType::Q6K,
                    _ => GgmlType::Q4K,
                },
            };
            let cols = shape[1];
            match head && !cols.is_multiple_of(ty.block_len()) {
                // llama.cpp's head falls back to Q8_0, not Q6_K's 32-value twin.
                true => GgmlType::Q8_0.for_row_of(cols),
                false => ty.for_row_of(cols),
            }
        }
    }
}

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
    types: MergedGguf,
) -> Result<(), Error> {
    merge(model, name, has_lora)?;
    let source = GgufFile::open(base)?;
    let mut w = GgufWriter::new();
    for (key, value) in source.metadata.iter() {
        match key {
            // Every tensor is rewritten; the writer uses its own alignment.
            "general.file_type" => w.add_metadata(key, Value::U32(types.file_type())),
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
    let tied = source.tensor("output.weight").is_none();
    let mut type_of = types.picker(model.config.num_hidden_layers, tied);
    // The base's tensor order; every one of them must have been rewritten.
    for info in &source.tensors {
        // What keel does not model (llama3's `rope_freqs`) is copied as is.
        let (shape, data) = match tensors.remove(&info.name) {
            Some(t) => t,
            None => source.tensor_f32(&info.name)?,
        };
        w.add_tensor(&info.name, &shape, &data, type_of(&info.name, &shape))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The types of a 24-layer model's tensors, in file order, for `mix`.
    fn types(mix: MergedGguf, hidden: usize, tied: bool, qkv: bool) -> Vec<(String, GgmlType)> {
        let mut pick = mix.picker(24, tied);
        let mut out = Vec::new();
        let mut add = |name: String, shape: &[usize]| {
            let ty = pick(&name, shape);
            out.push((name, ty));
        };
        add("token_embd.weight".into(), &[1000, hidden]);
        if !tied {
            add("output.weight".into(), &[1000, hidden]);
        }
        for i in 0..24 {
            add(format!("blk.{i}.attn_norm.weight"), &[hidden]);
            match qkv {
                true => add(format!("blk.{i}.attn_qkv.weight"), &[3 * hidden, hidden]),
                false => add(format!("blk.{i}.attn_v.weight"), &[hidden, hidden]),
            }
            add(format!("blk.{i}.ffn_down.weight"), &[hidden, 4 * hidden]);
        }
        out
    }

    fn of(types: &[(String, GgmlType)], name: &str) -> GgmlType {
        types.iter().find(|(n, _)| n == name).expect(name).1
    }

    /// llama.cpp's Q4_K_M choices: Q6_K for the head (the embeddings when
    /// tied) and for attn_v / attn_qkv / ffn_down in the first and last
    /// eighth and every third layer between, Q4_K elsewhere; a head whose
    /// rows 256-value blocks do not fit is Q8_0, other matrices take the
    /// 32-value fallback, and F16 where that does not fit either.
    #[test]
    fn q4_k_m_picks_llama_cpp_types() {
        let t = types(MergedGguf::Q4KM, 512, false, false);
        assert_eq!(of(&t, "output.weight"), GgmlType::Q6K);
        assert_eq!(of(&t, "token_embd.weight"), GgmlType::Q4K);
        assert_eq!(of(&t, "blk.0.attn_norm.weight"), GgmlType::F32);
        let more = [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23];
        for i in 0..24 {
            let want = if more.contains(&i) {
                GgmlType::Q6K
            } else {
                GgmlType::Q4K
            };
            assert_eq!(of(&t, &format!("blk.{i}.attn_v.weight")), want, "layer {i}");
            assert_eq!(
                of(&t, &format!("blk.{i}.ffn_down.weight")),
                want,
                "layer {i}"
            );
        }
        let t = types(MergedGguf::Q4KM, 512, true, true);
        assert_eq!(of(&t, "token_embd.weight"), GgmlType::Q6K);
        assert_eq!(of(&t, "blk.5.attn_qkv.weight"), GgmlType::Q6K);
        assert_eq!(of(&t, "blk.6.attn_qkv.weight"), GgmlType::Q4K);
        // Qwen2.5-0.5B's 896-value rows.
        let t = types(MergedGguf::Q4KM, 896, false, false);
        assert_eq!(of(&t, "output.weight"), GgmlType::Q8_0);
        assert_eq!(of(&t, "token_embd.weight"), GgmlType::Q5_0);
        assert_eq!(of(&t, "blk.0.attn_v.weight"), GgmlType::Q8_0);
        assert_eq!(of(&t, "blk.3.attn_v.weight"), GgmlType::Q5_0);
        let t = types(MergedGguf::Q8_0, 100, false, false);
        assert_eq!(of(&t, "blk.0.attn_v.weight"), GgmlType::F16);
        assert_eq!(of(&t, "output.weight"), GgmlType::F16);
    }
}
