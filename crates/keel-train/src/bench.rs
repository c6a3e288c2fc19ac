//! `keel bench train`: the fixed workload keel is compared with HF PEFT on
//! (`benchmarks/peft_reference.py` runs the same one): LoRA r16, alpha 32
//! on all seven projections, AdamW, random-token sequences of `seq` tokens
//! in batches of `batch`; `warmup` untimed steps, then `steps` timed ones.
//! It runs the real trainer on a generated recipe, so what it measures is
//! what `keel train` does.

use std::path::{Path, PathBuf};

use keel_adapters::rng::{self, RngExt};
use keel_model::{DeviceChoice, ModelSource};
use keel_recipe::Recipe;
use serde::Serialize;

use crate::metrics::{self, Row};
use crate::{Error, RunOptions, report, train};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model: PathBuf,
    /// `flex`, `wgpu` or `ndarray`.
    pub device: String,
    /// `f32`, `f16` or `bf16`: the frozen base's storage.
    pub base_dtype: String,
    pub seq: usize,
    pub batch: usize,
    pub warmup: usize,
    pub steps: usize,
    pub activation_checkpointing: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub tool: &'static str,
    pub model: String,
    pub device: String,
    pub base_dtype: String,
    pub activation_checkpointing: bool,
    /// The CPU tier keel's kernels ran with (`KEEL_CPU`); Burn's f32
    /// products through `gemm` always use the CPU's best.
    pub cpu_tier: &'static str,
    /// How a bf16 base was multiplied (`KEEL_BF16`): `widen` or `dot`.
    pub bf16_product: &'static str,
    pub seq: usize,
    pub batch: usize,
    pub timed_steps: usize,
    /// Median wall time of a timed step.
    pub step_s: f64,
    pub tokens_per_s: f64,
    /// [`keel_model::Config::training_flop_per_token`] of this workload, in GFLOP.
    pub model_gflop_per_token: f64,
    /// Model FLOPs done per second: how close the run comes to the CPU's limit.
    pub model_gflops: f64,
    pub peak_rss_bytes: Option<u64>,
    /// On a GPU: the bytes its allocator held at the end of the run. Its
    /// pools keep the pages they made, so this is the most the run held at
    /// once, padding and pages kept for reuse included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_reserved_bytes: Option<u64>,
    /// On a GPU: the pools' peak pages times their page size (allocations
    /// that own their page are not counted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_pool_peak_bytes: Option<u64>,
}

/// Random token ids decoded to text, long enough that every example is cut
/// to exactly `seq` tokens when read back.
fn random_text(source: &ModelSource, rows: usize, seq: usize) -> Result<String, Error> {
    let tokenizer = source.tokenizer()?;
    let vocab = tokenizer.vocab_size() as u32;
    let mut rng = rng::seeded(0);
    let mut out = String::new();
    for _ in 0..rows {
        let ids: Vec<u32> = (0..2 * seq).map(|_| rng.random_range(0..vocab)).collect();
        out += &serde_json::json!({"text": tokenizer.decode(&ids, true)?}).to_string();
        out.push('\n');
    }
    Ok(out)
}

/// The workload's LoRA rank (PEFT's reference uses the same).
const RANK: usize = 16;

pub fn bench_train(o: &BenchOptions, work: &Path) -> Result<BenchReport, Error> {
    std::fs::create_dir_all(work).map_err(keel_fs::io(work))?;
    // The recipe resolves relative paths against its own folder.
    let work = &std::fs::canonicalize(work).map_err(keel_fs::io(work))?;
    let model = std::fs::canonicalize(&o.model).map_err(keel_fs::io(&o.model))?;
    let data = work.join("data.jsonl");
    let rows = o.batch * (o.warmup + o.steps);
    let source = ModelSource::open(&model)?;
    keel_fs::write_atomic(&data, random_text(&source, rows, o.seq)?.as_bytes())?;
    let gflop_per_token = source.config.training_flop_per_token(o.seq, RANK) / 1e9;
    drop(source);
    let recipe = serde_json::json!({
        "model": {
            "path": model,
            "device": o.device,
            "base_dtype": o.base_dtype,
            "activation_checkpointing": o.activation_checkpointing,
        },
        "adapter": {
            "r": RANK,
            "alpha": 32,
            "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        },
        "data": {"train": data, "format": "text", "max_length": o.seq},
        "optim": {
            "lr": 1e-4,
            "schedule": "constant",
            "steps": o.warmup + o.steps,
            "batch_size": o.batch,
            "seed": 0,
        },
        "output": {"dir": work.join("run")},
    });
    let recipe_text = toml::to_string(&recipe).expect("tables of plain values are TOML");
    let recipe_path = work.join("bench.toml");
    let recipe = Recipe::parse(&recipe_text, &recipe_path, &[]).map_err(|e| Error::Output {
        path: recipe_path.clone(),
        reason: e.to_string(),
    })?;
    let opts = RunOptions {
        overwrite: true,
        ..RunOptions::default()
    };
    train(&recipe, &opts)?;
    let mut times: Vec<f64> = metrics::read(&work.join("run/metrics.jsonl"))?
        .into_iter()
        .filter_map(|row| match row {
            Row::Step(m) if m.step > o.warmup => Some(m.step_s),
            _ => None,
        })
        .collect();
    times.sort_by(f64::total_cmp);
    // The trainer's device, whose allocator outlives the run.
    let gpu = match o.device.parse::<DeviceChoice>()? {
        DeviceChoice::Wgpu => Some(DeviceChoice::Wgpu.device()?),
        _ => None,
    };
    let gpu_reserved_bytes = gpu
        .as_ref()
        .and_then(|d| d.memory_pool_usage())
        .map(|u| u.bytes_reserved);
    let gpu_pool_peak_bytes = gpu
        .as_ref()
        .and_then(|d| d.memory_pool_report())
        .map(|pools| pools.iter().map(|p| p.page_size * p.pages_peak).sum());
    let step_s = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let tokens_per_s = (o.batch * o.seq) as f64 / step_s;
    Ok(BenchReport {
        tool: "keel",
        model: o.model.display().to_string(),
        device: o.device.clone(),
        base_dtype: o.base_dtype.clone(),
        activation_checkpointing: o.activation_checkpointing,
        cpu_tier: keel_gemm::tier().name(),
        bf16_product: keel_gemm::bf16_product().name(),
        seq: o.seq,
        batch: o.batch,
        timed_steps: times.len(),
        step_s,
        tokens_per_s,
        model_gflop_per_token: gflop_per_token,
        model_gflops: gflop_per_token * tokens_per_s,
        peak_rss_bytes: report::peak_rss_bytes(),
        gpu_reserved_bytes,
        gpu_pool_peak_bytes,
    })
}
