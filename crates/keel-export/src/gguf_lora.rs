//! GGUF LoRA adapters, laid out as llama.cpp's `convert_lora_to_gguf.py`
//! writes them and `llama-adapter.cpp` reads them: `general.type =
//! adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and per module
//! `blk.N.<tensor>.weight.lora_a` (PEFT's `lora_A`, `[r, in]`) and `.lora_b`
//! (`lora_B`, `[out, r]`), with q/k `lora_b` rows interleaved like the base
//! q/k weights of a `llama` GGUF.

use std::path::Path;

use keel_adapters::{AdapterConfig, Variant};
use keel_gguf::{GgmlType, GgufWriter, Value};
use keel_model::{Architecture, Config, Llama, QkLayout};

use crate::error::Error;

/// Storage type of the adapter tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufDtype {
    #[default]
    F32,
    F16,
}

/// Writes adapter `name` of `model` as a GGUF LoRA file at `out`; returns notes
/// on what had to be adjusted.
pub fn export_gguf_lora(
    model: &Llama,
    config: &Config,
    name: &str,
    cfg: &AdapterConfig,
    out: &Path,
    dtype: GgufDtype,
) -> Result<Vec<String>, Error> {
    if !cfg.modules_to_save.is_empty() {
        return Err(Error::Unsupported {
            format: "gguf",
            reason: format!(
                "a GGUF LoRA holds only lora_a/lora_b, not modules trained in full ({:?}): export with --format merged instead",
                cfg.modules_to_save
            ),
        });
    }
    if cfg.variant == Variant::Dora {
        return Err(Error::Unsupported {
            format: "gguf",
            reason: "llama.cpp has no DoRA; export with --format merged instead".into(),
        });
    }
    let arch = match config.architecture {
        // llama.cpp's converter writes Mistral checkpoints as `llama`.
        Architecture::Llama | Architecture::Mistral => "llama",
        other => other.name(),
    };
    let ty = match dtype {
        GgufDtype::F32 => GgmlType::F32,
        GgufDtype::F16 => GgmlType::F16,
    };
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String(arch.into()));
    w.add_metadata("general.type", Value::String("adapter".into()));
    w.add_metadata("adapter.type", Value::String("lora".into()));
    // PiSSA and OLoRA go out as the rank-2r LoRA on the original base.
    let cfg = &cfg.on_original_base();
    w.add_metadata("adapter.lora.alpha", Value::F32(cfg.alpha as f32));
    let mut notes = Vec::new();
    let mut count = 0;
    for (module, layer) in model.linears() {
        let Some(adapter) = layer.adapter(name) else {
            continue;
        };
        let base = keel_model::gguf_name(config.architecture, &format!("{module}.weight"))
            .ok_or_else(|| Error::Unsupported {
                format: "gguf",
                reason: format!("module `{module}` has no GGUF tensor name"),
            })?;
        let (a, b) = adapter.factors_on_original_base();
        let r = a.dims()[1];
        let (d_in, d_out) = (layer.in_features(), layer.out_features());
        // llama.cpp scales by alpha / r; any other factor (rsLoRA, alpha
        // patterns) is folded into B.
        let fold = adapter.scale / (cfg.alpha / r as f64);
        if (fold - 1.0).abs() > 1e-12 && notes.is_empty() {
            notes.push(
                "the LoRA scale differs from alpha/r (rsLoRA or alpha_pattern): folded into lora_b"
                    .into(),
            );
        }
        let a: Vec<f32> = a.try_into_vec_as().expect("float");
        let b: Vec<f32> = b.mul_scalar(fold).try_into_vec_as().expect("float");
        let lora_a = keel_adapters::host::transpose(d_in, r, &a);
        // lora_b's rows are the base weight's: laid out as llama.cpp lays it out.
        let lora_b = keel_adapters::host::transpose(r, d_out, &b);
        let lora_b = keel_model::gguf_layout(
            config,
            &format!("{module}.weight"),
            &[d_out, r],
            lora_b,
            QkLayout::ToGguf,
        )
        .map_err(|reason| Error::Unsupported {
            format: "gguf",
            reason: format!("{module}: {reason}"),
        })?;
        w.add_tensor(&format!("{base}.lora_a"), &[r, d_in], &lora_a, ty)?;
        w.add_tensor(&format!("{base}.lora_b"), &[d_out, r], &lora_b, ty)?;
        count += 1;
    }
    if count == 0 {
        return Err(Error::NoAdapter(name.to_string()));
    }
    w.write(out)?;
    Ok(notes)
}
