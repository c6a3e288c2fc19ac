//! Shared helpers for keel's integration tests: fixture paths, devices, and
//! the switches that turn environment-dependent tests from skips into musts.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{Device, Int, Tensor, TensorData};
use keel_adapters::rng::{Draw, seeded};
use keel_adapters::{AdapterConfig, init_adapter, resolve_targets};
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

/// Every linear projection of a Llama decoder layer, by HF leaf name.
#[allow(dead_code)]
pub const ALL: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

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
    real_model("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// A real model `scripts/fetch_model.py <name>` caches as `file`; when it is
/// missing the test is skipped, loudly, unless `KEEL_REQUIRE_MODELS` is set
/// (CI), and then it fails.
pub fn real_model(name: &str, file: &str) -> Option<PathBuf> {
    let cache = std::env::var_os("KEEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/keel")
        });
    let path = cache.join("models").join(file);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("KEEL_REQUIRE_MODELS").is_none(),
        "KEEL_REQUIRE_MODELS is set but {} is missing: run scripts/fetch_model.py {name}",
        path.display()
    );
    eprintln!(
        "SKIPPED: {name} not at {} (run scripts/fetch_model.py {name})",
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
    build_model(
        &config,
        &weights,
        device,
        keel_model::BaseStorage::Dense(burn::tensor::DType::F32),
    )
    .unwrap()
}

/// Full-sequence logits, flattened `[seq * vocab]`.
pub fn logits(model: &Llama, ids: &[u32], device: &Device) -> Vec<f32> {
    let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    let n = ids.len();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), device);
    model.forward(tokens).try_into_vec_as::<f32>().unwrap()
}

/// The next-token logits after `ids`, on flex.
pub fn last_logits(model: &keel_model::LoadedModel, ids: &[u32]) -> Vec<f32> {
    let device = Device::flex();
    let n = ids.len();
    let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
    let hidden = model.model.forward_hidden(tokens, None).narrow(1, n - 1, 1);
    model.model.logits(hidden).try_into_vec_as::<f32>().unwrap()
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

/// One prompt of a transformers logits fixture, with the float64 logits of
/// the same files (`logits_f64.json`, from `scripts/make_fixtures.py`).
pub struct Reference {
    pub ids: Vec<u32>,
    /// transformers in f32, flattened `[seq * vocab]`.
    pub f32: Vec<f32>,
    /// transformers in f64: the yardstick.
    pub f64: Vec<f64>,
}

impl Reference {
    /// The prompts of `<dir>/logits.json` and `<dir>/logits_f64.json`.
    pub fn read(dir: &str) -> Vec<Reference> {
        let f64_path = fixture(dir).join("logits_f64.json");
        let wide = read_json(&f64_path);
        reference_logits(&fixture(dir).join("logits.json"))
            .into_iter()
            .enumerate()
            .map(|(p, (ids, f32))| {
                assert_eq!(
                    u32s(&wide["prompts"][p]),
                    ids,
                    "{}: prompt {p} differs from logits.json's",
                    f64_path.display()
                );
                let f64: Vec<f64> = wide["logits"][p]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
                    .collect();
                assert_eq!(f64.len(), f32.len(), "{}: prompt {p}", f64_path.display());
                Reference { ids, f32, f64 }
            })
            .collect()
    }

    /// transformers' own f32 error: the largest `|f32 - f64|`.
    pub fn f32_error(&self) -> f64 {
        error(&self.f32, &self.f64).0
    }

    /// Asserts that keel's `got` (all the prompt's logits, or the last
    /// rows of them) is no further from the f64 logits than `factor` times
    /// transformers' own f32 error; returns the ratio.
    pub fn check(&self, got: &[f32], factor: f64, what: &str) -> f64 {
        let want = &self.f64[self.f64.len() - got.len()..];
        let (keel, at) = error(got, want);
        let theirs = self.f32_error();
        // The check must be able to fail: the logits are far from zero.
        assert!(
            want.iter().any(|v| v.abs() > 1.0),
            "{what}: degenerate reference"
        );
        let ratio = keel / theirs;
        eprintln!(
            "{what} ({} tokens): keel {keel:.2e}, transformers {theirs:.2e} from f64 ({ratio:.2}x)",
            self.ids.len()
        );
        assert!(
            ratio <= factor,
            "{what} ({} tokens): keel is {keel:.3e} from the f64 logits at {at} (keel {}, f64 {}), \
             {ratio:.2} times transformers' own f32 error {theirs:.3e}; allowed {factor}x",
            self.ids.len(),
            got[at],
            want[at]
        );
        ratio
    }
}

/// The largest `|a - b|` and where it is.
fn error(a: &[f32], b: &[f64]) -> (f64, usize) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(&x, y)| (f64::from(x) - y).abs())
        .enumerate()
        .fold(
            (0.0, 0),
            |m, (i, d)| {
                if d > m.0 || d.is_nan() { (d, i) } else { m }
            },
        )
}

/// Adds adapter "default" to `model` as `cfg` says, then moves B (and DoRA's
/// magnitude) away from their no-op start, standing in for training.
pub fn make_adapter(model: &mut Llama, cfg: &AdapterConfig, seed: u64, b_std: f64) {
    let names: Vec<String> = model.linears().into_iter().map(|(n, _)| n).collect();
    let specs = resolve_targets(&names, cfg).unwrap();
    let mut rng = seeded(seed);
    for (name, layer) in model.linears_mut() {
        if let Some(spec) = specs.iter().find(|s| s.name == name) {
            init_adapter(layer, "default", spec, cfg, &mut rng).unwrap();
            let a = layer.adapters.last_mut().unwrap();
            let device = a.b.val().device();
            let b: Vec<f32> = (0..a.b.dims().iter().product::<usize>())
                .map(|_| (rng.normal() * b_std) as f32)
                .collect();
            // Keeping the ids: two models given the same adapter can then
            // be compared parameter by parameter.
            let b = Tensor::from_data(TensorData::new(b, a.b.dims()), &device);
            a.b = Param::initialized(a.b.id, b).set_require_grad(true);
            if let Some(m) = &a.magnitude {
                let scaled = m.val().mul_scalar(1.1);
                a.magnitude = Some(Param::initialized(m.id, scaled).set_require_grad(true));
            }
        }
    }
}

/// A fresh, empty temporary folder.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `{"prompts": [...], "logits": [[[vocab] per position] per prompt]}`: the
/// fixture schema the Python judges read.
pub fn logits_json(model: &Llama, prompts: &[Vec<u32>], device: &Device) -> serde_json::Value {
    let all: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .map(|ids| {
            let flat = logits(model, ids, device);
            let vocab = flat.len() / ids.len();
            flat.chunks(vocab).map(<[f32]>::to_vec).collect()
        })
        .collect();
    serde_json::json!({"prompts": prompts, "logits": all})
}

/// Runs `scripts/<script>` with `args` when `KEEL_TEST_PYTHON` is set; it
/// must exit 0. Its one-line verdict is echoed.
pub fn python_judge(script: &str, args: &[&std::ffi::OsStr]) {
    if !required("KEEL_TEST_PYTHON", script) {
        return;
    }
    let out = std::process::Command::new("python3")
        .arg(fixture("../../scripts").join(script))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed: {text}");
    eprintln!("{}", text.trim());
}

/// (step, loss) of every training row in a run's metrics.jsonl.
pub fn losses(out: &Path) -> Vec<(u64, f64)> {
    keel_train::metrics::read(&out.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|row| match row {
            keel_train::metrics::Row::Step(m) => Some((m.step as u64, m.loss)),
            keel_train::metrics::Row::Eval(_) => None,
        })
        .collect()
}

/// Burn's CPU random generator is one per process: training runs in
/// parallel test threads would reseed each other's dropout. One at a time.
static ONE_RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn one_run() -> std::sync::MutexGuard<'static, ()> {
    ONE_RUN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every parameter with a gradient in `grads`: its id and the gradient.
pub fn by_param(model: &Llama, grads: &burn::tensor::Gradients) -> Vec<(ParamId, Vec<f32>)> {
    struct Collect<'a>(&'a burn::tensor::Gradients, Vec<(ParamId, Vec<f32>)>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(g) = p.val().grad(self.0) {
                self.1.push((p.id, g.try_into_vec_as::<f32>().unwrap()));
            }
        }
    }
    let mut c = Collect(grads, Vec::new());
    model.visit(&mut c);
    c.1
}
