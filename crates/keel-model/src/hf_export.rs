//! Writing a model as an HF folder that transformers loads:
//! `config.json`, `model.safetensors` (f32), `tokenizer.json`,
//! `tokenizer_config.json`.

use std::path::Path;

use burn::tensor::Tensor;
use safetensors::{Dtype, tensor::TensorView};

use crate::error::Error;
use keel_adapters::Linear;

use crate::llama::Llama;
use crate::load::LoadedModel;

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("model tensors are float")
}

/// Every weight under its HF name, in HF layout (`[out, in]` for linears).
pub fn hf_tensors(model: &Llama) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    let push_linear = |name: String, l: &Linear, out: &mut Vec<_>| {
        let (shape, values) = match &l.quantized {
            // Kept in blocks: what they dequantize to, already [out, in].
            Some(q) => (q.dims().to_vec(), q.dequantize()),
            None => {
                let w = l.weight.val().transpose();
                (w.dims().to_vec(), host(w))
            }
        };
        out.push((format!("{name}.weight"), shape, values));
        if let Some(b) = &l.bias {
            let b = b.val();
            out.push((format!("{name}.bias"), b.dims().to_vec(), host(b)));
        }
    };
    let (shape, values) = match &model.embed_blocks {
        Some(table) => (table.dims().to_vec(), table.dequantize()),
        None => {
            let embed = model.embed_tokens.val();
            (embed.dims().to_vec(), host(embed))
        }
    };
    out.push(("model.embed_tokens.weight".into(), shape, values));
    for (i, layer) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let norm =
            |name: &str, w: Tensor<1>| (format!("{p}.{name}.weight"), w.dims().to_vec(), host(w));
        out.push(norm("input_layernorm", layer.input_layernorm.weight.val()));
        out.push(norm(
            "post_attention_layernorm",
            layer.post_attention_layernorm.weight.val(),
        ));
        for (n, sandwich) in [
            (
                "pre_feedforward_layernorm",
                &layer.pre_feedforward_layernorm,
            ),
            (
                "post_feedforward_layernorm",
                &layer.post_feedforward_layernorm,
            ),
        ] {
            if let Some(sandwich) = sandwich {
                out.push(norm(n, sandwich.weight.val()));
            }
        }
        let a = &layer.self_attn;
        for (n, head_norm) in [("q_norm", &a.q_norm), ("k_norm", &a.k_norm)] {
            if let Some(head_norm) = head_norm {
                out.push(norm(&format!("self_attn.{n}"), head_norm.weight.val()));
            }
        }
    }
    let norm = model.norm.weight.val();
    out.push(("model.norm.weight".into(), norm.dims().to_vec(), host(norm)));
    // Every projection, the LM head included.
    for (name, l) in model.linears() {
        push_linear(name, l, &mut out);
    }
    out
}

/// Writes `model` as an HF folder at `out`. The folder is assembled beside
/// `out` and renamed into place, so a failure leaves nothing half-written;
/// an existing non-empty `out` is refused.
pub fn save_hf_dir(model: &LoadedModel, out: &Path) -> Result<(), Error> {
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(keel_fs::io(out))?
            .next()
            .is_some()
    {
        return Err(Error::BadFile {
            path: out.to_path_buf(),
            reason: "output folder exists and is not empty".into(),
        });
    }
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    let tmp = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let result = write_into(model, &tmp).and_then(|()| {
        if out.exists() {
            std::fs::remove_dir(out).map_err(keel_fs::io(out))?;
        }
        Ok(std::fs::rename(&tmp, out).map_err(keel_fs::io(out))?)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn write_into(model: &LoadedModel, dir: &Path) -> Result<(), Error> {
    // The folder holds base weights only: an adapter still apart would be lost.
    if let Some((name, _)) = model
        .model
        .linears()
        .into_iter()
        .find(|(_, l)| l.adapters.iter().any(|a| a.active && a.merged.is_none()))
    {
        return Err(Error::BadFile {
            path: dir.to_path_buf(),
            reason: format!("module `{name}` has an unmerged adapter; merge it first"),
        });
    }
    std::fs::create_dir_all(dir).map_err(keel_fs::io(dir))?;
    let write = |file: &str, text: String| -> Result<(), Error> {
        let path = dir.join(file);
        Ok(std::fs::write(&path, text).map_err(keel_fs::io(&path))?)
    };
    let config = model.config.to_hf_json().map_err(|reason| Error::Config {
        file: model.path.clone(),
        key: "rope_scaling".into(),
        reason,
    })?;
    write(
        "config.json",
        serde_json::to_string_pretty(&config).expect("JSON"),
    )?;

    let tensors = hf_tensors(&model.model);
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, data)| keel_adapters::host::to_bytes(data))
        .collect();
    let views = tensors.iter().zip(&bytes).map(|((name, shape, _), b)| {
        (
            name.clone(),
            TensorView::new(Dtype::F32, shape.clone(), b).expect("sizes match"),
        )
    });
    let st_path = dir.join("model.safetensors");
    let metadata = Some([("format".to_string(), "pt".to_string())].into());
    safetensors::serialize_to_file(views, metadata, &st_path).map_err(|e| Error::BadFile {
        path: st_path.clone(),
        reason: e.to_string(),
    })?;

    if let Some(tokenizer) = &model.tokenizer {
        write("tokenizer.json", tokenizer.to_json()?)?;
    }
    let mut tok_config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model.config.max_position_embeddings,
        "clean_up_tokenization_spaces": false,
    });
    if let Some(t) = &model.chat_template {
        tok_config["chat_template"] = t.source.clone().into();
        tok_config["bos_token"] = t.bos_token.clone().into();
        tok_config["eos_token"] = t.eos_token.clone().into();
    }
    write(
        "tokenizer_config.json",
        serde_json::to_string_pretty(&tok_config).expect("JSON"),
    )
}
