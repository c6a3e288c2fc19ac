//! Shared helpers for keel's integration tests: fixture paths, devices, and
//! the switches that turn environment-dependent tests from skips into musts.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use keel_model::{DeviceChoice, HfConfig, Llama, WeightSource, build_model};

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as u32)
        .collect()
}

/// A test that needs something the machine may lack runs when `var` is set
/// (CI sets it, and then a missing piece fails the test) and is skipped,
/// loudly, otherwise.
pub fn required(var: &str, what: &str) -> bool {
    if std::env::var_os(var).is_some() {
        return true;
    }
    eprintln!("SKIPPED: {what} (set {var}=1 to run; CI does)");
    false
}

/// The wgpu device, when `KEEL_TEST_WGPU` asks for wgpu tests.
pub fn wgpu_device() -> Option<Device> {
    required("KEEL_TEST_WGPU", "wgpu test")
        .then(|| DeviceChoice::Wgpu.device().expect("wgpu device"))
}

/// The real SmolLM2-135M-Instruct GGUF, fetched by `scripts/fetch_smollm2.sh`.
pub fn smollm2() -> Option<PathBuf> {
    let cache = std::env::var_os("KEEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/keel")
        });
    let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("KEEL_REQUIRE_SMOLLM2").is_none(),
        "KEEL_REQUIRE_SMOLLM2 is set but {} is missing: run scripts/fetch_smollm2.sh",
        path.display()
    );
    eprintln!(
        "SKIPPED: SmolLM2 not at {} (run scripts/fetch_smollm2.sh)",
        path.display()
    );
    None
}

/// Largest absolute difference, and where it is.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| ((x - y).abs(), i))
        .fold(
            (0.0, 0),
            |m, d| if d.0 > m.0 || d.0.is_nan() { d } else { m },
        )
}

/// A tiny fixture model (`tests/fixtures/<name>`) on `device`.
pub fn load_tiny(name: &str, device: &Device) -> Llama {
    let dir = fixture(name);
    let config_path = dir.join("config.json");
    let config = HfConfig::from_file(&config_path)
        .unwrap()
        .into_config(&config_path)
        .unwrap();
    let weights = WeightSource::open_hf_dir(&dir).unwrap();
    build_model(&config, &weights, device).unwrap()
}

/// Full-sequence logits, flattened `[seq * vocab]`.
pub fn logits(model: &Llama, ids: &[u32], device: &Device) -> Vec<f32> {
    let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    let n = ids.len();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), device);
    model.forward(tokens).try_into_vec_as::<f32>().unwrap()
}

/// The prompts of a `logits.json` fixture and their flattened logits.
pub fn reference_logits(path: &Path) -> Vec<(Vec<u32>, Vec<f32>)> {
    let json = read_json(path);
    let prompts = json["prompts"].as_array().unwrap();
    prompts
        .iter()
        .enumerate()
        .map(|(p, prompt)| {
            let logits = json["logits"][p]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(f32s)
                .collect();
            (u32s(prompt), logits)
        })
        .collect()
}
