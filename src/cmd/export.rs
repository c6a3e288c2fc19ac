//! `keel export`: an adapter for a server, as a PEFT folder, a GGUF LoRA
//! or a model with the adapter merged in.

use std::path::{Path, PathBuf};

use anyhow::Result;
use keel_adapters::DEFAULT_ADAPTER as ADAPTER;
use keel_adapters::peft::AdapterFile;
use keel_model::{DeviceChoice, LoadedModel};

#[derive(clap::Args)]
pub struct Args {
    /// The base model the adapter was made for (HF folder or .gguf).
    #[arg(long)]
    model: PathBuf,
    /// A PEFT-format adapter folder (keel's own adapters are in this format).
    #[arg(long)]
    adapter: PathBuf,
    #[arg(long, value_enum)]
    format: ExportFormat,
    #[arg(long)]
    out: PathBuf,
    /// Tensor types of a GGUF adapter (f32 or f16) or merged GGUF model
    /// (also q8_0 or q4_k_m, quantized as llama-quantize does).
    #[arg(long, value_enum, default_value = "f32")]
    gguf_dtype: GgufDtypeArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// HF PEFT folder (HF PEFT, vLLM, TGI, LoRAX).
    Peft,
    /// GGUF LoRA adapter (llama.cpp `--lora`, Ollama `ADAPTER`).
    Gguf,
    /// The adapter merged into the base: an HF folder, or a GGUF model
    /// (f32, f16, q8_0 or q4_k_m, `--gguf-dtype`) when the base and `--out`
    /// are `.gguf`.
    Merged,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum GgufDtypeArg {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_k_m")]
    Q4KM,
}

fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn lora_dtype(d: GgufDtypeArg) -> Result<keel_export::GgufDtype> {
    match d {
        GgufDtypeArg::F32 => Ok(keel_export::GgufDtype::F32),
        GgufDtypeArg::F16 => Ok(keel_export::GgufDtype::F16),
        GgufDtypeArg::Q8_0 | GgufDtypeArg::Q4KM => anyhow::bail!(
            "--gguf-dtype: a GGUF LoRA adapter is written in f32 or f16 (llama.cpp applies it to any base); q8_0 and q4_k_m are for --format merged"
        ),
    }
}

fn merged_types(d: GgufDtypeArg) -> keel_export::MergedGguf {
    match d {
        GgufDtypeArg::F32 => keel_export::MergedGguf::F32,
        GgufDtypeArg::F16 => keel_export::MergedGguf::F16,
        GgufDtypeArg::Q8_0 => keel_export::MergedGguf::Q8_0,
        GgufDtypeArg::Q4KM => keel_export::MergedGguf::Q4KM,
    }
}

pub fn run(args: Args) -> Result<()> {
    let Args {
        model,
        adapter,
        format,
        out,
        gguf_dtype: dtype,
    } = &args;
    let (model, out, dtype) = (model.as_path(), out.as_path(), *dtype);
    let gguf_out = match format {
        ExportFormat::Gguf => true,
        ExportFormat::Merged => is_gguf(model) && is_gguf(out),
        ExportFormat::Peft => false,
    };
    if !gguf_out && !matches!(dtype, GgufDtypeArg::F32) {
        anyhow::bail!(
            "--gguf-dtype: only a GGUF output takes it (--format gguf, or --format merged with a .gguf model and --out)"
        );
    }
    let (mut loaded, file) = super::open_with_adapter(model, adapter, DeviceChoice::Flex)?;
    let warnings = match *format {
        ExportFormat::Peft => peft_folder(&loaded, &file, model, out)?,
        ExportFormat::Gguf => {
            let dtype = lora_dtype(dtype)?;
            let mut notes = keel_export::export_gguf_lora(
                &loaded.model,
                &loaded.config,
                ADAPTER,
                &file.config,
                out,
                dtype,
            )?;
            notes.extend(keel_export::servers::check(&file.config, &loaded.model));
            notes
        }
        ExportFormat::Merged if is_gguf(model) && is_gguf(out) => {
            keel_export::export_merged_gguf(
                &mut loaded,
                model,
                ADAPTER,
                file.config.has_lora(),
                out,
                merged_types(dtype),
            )?;
            Vec::new()
        }
        ExportFormat::Merged => {
            keel_export::export_merged(&mut loaded, ADAPTER, file.config.has_lora(), out)?;
            Vec::new()
        }
    };
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    println!("wrote {}", out.display());
    Ok(())
}

/// Writes the default adapter of `loaded`, attached from `file` (and maybe
/// changed since, as Safe LoRA does), as a PEFT folder in `out`, with the
/// modules `file` trains in full and its base model's name (`model`'s path
/// where it records none). Returns the servers' warnings.
pub fn peft_folder(
    loaded: &LoadedModel,
    file: &AdapterFile,
    model: &Path,
    out: &Path,
) -> Result<Vec<String>> {
    let base_name = file
        .base_model
        .clone()
        .unwrap_or_else(|| model.display().to_string());
    let saved: Vec<_> = file.saved.clone().into_iter().collect();
    Ok(keel_export::export_peft(
        &loaded.model,
        ADAPTER,
        &file.config,
        &saved,
        &base_name,
        out,
    )?)
}
