//! `keel bench`: benchmarks, not tests; figures as JSON.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use keel_model::{DeviceChoice, Sampling};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Training tokens/s and peak RSS on the fixed LoRA workload
    /// (`benchmarks/peft_reference.py` runs the same one in HF PEFT).
    Train(TrainArgs),
    /// Prefill and decode tokens/s and peak RSS.
    Generate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "flex")]
        device: DeviceChoice,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
    },
}

#[derive(clap::Args)]
pub struct TrainArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "flex")]
    device: String,
    /// Storage of the frozen base: f32, f16, bf16, gguf (the file's own blocks), or quantized at
    /// load: q8_0, q6_k, q5_k, q4_k or q4_0.
    #[arg(long, default_value = "f32")]
    base_dtype: String,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 8)]
    steps: usize,
    #[arg(long)]
    activation_checkpointing: bool,
    /// Scratch folder for the generated data and run.
    #[arg(long, default_value = "runs/bench-train")]
    work: PathBuf,
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Train(a) => {
            let opts = keel_train::bench::BenchOptions {
                model: a.model,
                device: a.device,
                base_dtype: a.base_dtype,
                seq: a.seq,
                batch: a.batch,
                warmup: a.warmup,
                steps: a.steps,
                activation_checkpointing: a.activation_checkpointing,
            };
            let report = keel_train::bench::bench_train(&opts, &a.work)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Generate {
            model,
            device,
            prompt_tokens,
            new_tokens,
        } => bench_generate(&model, device, prompt_tokens, new_tokens),
    }
}

fn bench_generate(
    model: &Path,
    device: DeviceChoice,
    prompt_tokens: usize,
    new_tokens: usize,
) -> Result<()> {
    let loaded = super::open(model, device)?;
    let vocab = loaded.config.vocab_size as u32;
    // A fixed pseudo-random prompt: the figures must not depend on the text.
    let prompt: Vec<u32> = (0..prompt_tokens as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let greedy = Sampling::default();
    // Warm-up: kernels compile and caches fill outside the timed runs.
    keel_model::generate(
        &loaded.model,
        &prompt[..8.min(prompt.len())],
        2,
        &greedy,
        &[],
        |_| {},
    );
    let t0 = Instant::now();
    keel_model::generate(&loaded.model, &prompt, 1, &greedy, &[], |_| {});
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let out = keel_model::generate(&loaded.model, &prompt, new_tokens + 1, &greedy, &[], |_| {});
    let decode = (t1.elapsed().as_secs_f64() - prefill).max(1e-9);
    let report = serde_json::json!({
        "model": model.display().to_string(),
        "device": device.to_string(),
        "prompt_tokens": prompt_tokens,
        "prefill_tokens_per_s": prompt_tokens as f64 / prefill,
        "decode_tokens": out.len() - 1,
        "decode_tokens_per_s": (out.len() - 1) as f64 / decode,
        "peak_rss_bytes": keel_train::report::peak_rss_bytes(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
