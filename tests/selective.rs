//! Selective-layer adapters on the tiny recipe: norms-only tuning, the top
//! layers, `modules_to_save` beside a LoRA, and LISA, each training exactly
//! its modules (and the adapter storing exactly those), LISA resuming to the
//! same curve, and a module both LoRA-adapted and trained in full refused.

mod common;

use std::path::Path;

use burn::tensor::Device;
use common::{fixture, logits, losses, one_run, temp_dir};
use keel_adapters::peft::AdapterFile;
use keel_model::LoadedModel;
use keel_recipe::Recipe;
use keel_train::RunOptions;

/// The tiny recipe with its LoRA lines replaced by `adapter` (TOML lines of
/// the `[adapter]` table), plus `--set` overrides.
fn recipe(out: &Path, adapter: &str, set: &[&str]) -> Recipe {
    let path = fixture("../../recipes/tiny.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("[adapter]").unwrap();
    let end = text.find("[data]").unwrap();
    let text = format!("{}[adapter]\n{adapter}\n\n{}", &text[..start], &text[end..]);
    let mut set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    set.push(format!("output.dir={}", out.display()));
    set.push("alignment.preset=off".into());
    Recipe::parse(&text, &path, &set).unwrap()
}

const NORMS: [&str; 7] = [
    "model.layers.0.input_layernorm",
    "model.layers.0.post_attention_layernorm",
    "model.layers.1.input_layernorm",
    "model.layers.1.post_attention_layernorm",
    "model.layers.2.input_layernorm",
    "model.layers.2.post_attention_layernorm",
    "model.norm",
];

fn layer_modules(i: usize) -> Vec<String> {
    let mut m: Vec<String> = [
        "mlp.down_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "self_attn.k_proj",
        "self_attn.o_proj",
        "self_attn.q_proj",
        "self_attn.v_proj",
        "input_layernorm",
        "post_attention_layernorm",
    ]
    .iter()
    .map(|n| format!("model.layers.{i}.{n}"))
    .collect();
    m.sort();
    m
}

/// Trains `adapter` for 30 steps; returns the adapter written and the
/// first and last losses, after checking the attached adapter moves the
/// model's logits (what was trained is what was saved).
fn run(tag: &str, adapter: &str) -> (AdapterFile, f64, f64) {
    let dir = temp_dir(tag);
    let r = recipe(&dir, adapter, &["optim.steps=60", "optim.lr=3e-3"]);
    keel_train::train(&r, &RunOptions::default()).unwrap();
    let l = losses(&dir);
    let file = AdapterFile::read(&dir.join("adapter")).unwrap();
    let device = Device::flex();
    let base = LoadedModel::open(&r.model.path, &device).unwrap();
    let mut adapted = LoadedModel::open(&r.model.path, &device).unwrap();
    adapted.model.attach(&file, "default").unwrap();
    let ids = [1u32, 5, 9, 14, 3];
    let (a, b) = (
        logits(&base.model, &ids, &device),
        logits(&adapted.model, &ids, &device),
    );
    let moved = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(
        moved > 1e-2,
        "{tag}: the saved adapter does not change the model ({moved})"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    (file, l[0].1, l.last().unwrap().1)
}

#[test]
fn selective_adapters_train_and_store_exactly_their_modules() {
    let _run = one_run();
    let (file, first, last) = run("sel-norms", "kind = \"none\"\ntrain_norms = true");
    assert!(file.modules.is_empty(), "norms-only has no LoRA part");
    assert_eq!(file.saved.keys().collect::<Vec<_>>(), NORMS, "norms-only");
    assert!(last < first, "norms-only: loss {first} -> {last}");

    let (file, first, last) = run("sel-top", "kind = \"none\"\ntrain_top_layers = 1");
    assert_eq!(
        file.saved.keys().cloned().collect::<Vec<_>>(),
        layer_modules(2),
        "top layer"
    );
    assert!(last < 0.7 * first, "top layer: loss {first} -> {last}");

    let (file, _, last) = run(
        "sel-mts",
        "r = 4\nalpha = 8\ntargets = [\"q_proj\"]\nmodules_to_save = [\"model.layers.0.mlp.down_proj\", \"model.norm\"]",
    );
    assert_eq!(file.modules.len(), 3, "LoRA on q_proj of each layer");
    assert_eq!(
        file.saved.keys().collect::<Vec<_>>(),
        ["model.layers.0.mlp.down_proj", "model.norm"]
    );
    assert_eq!(file.saved["model.layers.0.mlp.down_proj"].shape.len(), 2);
    assert!(last.is_finite());
}

#[test]
fn a_module_both_lora_adapted_and_trained_in_full_is_refused() {
    let _run = one_run();
    let dir = temp_dir("sel-overlap");
    let r = recipe(
        &dir,
        "r = 4\nalpha = 8\ntargets = [\"q_proj\"]\nmodules_to_save = [\"layers.1.self_attn.q_proj\"]",
        &[],
    );
    let err = keel_train::train(&r, &RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.1.self_attn.q_proj") && err.contains("both"),
        "{err}"
    );
    let r = recipe(&dir, "kind = \"none\"\nmodules_to_save = [\"q_prj\"]", &[]);
    let err = keel_train::train(&r, &RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("q_prj") && err.contains("q_proj"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// LISA: one sampled layer at a time, a new one every 4 steps. The adapter
/// holds whole layers (every one trained at some point), and a run stopped
/// mid-period and resumed follows the uninterrupted one exactly.
#[test]
fn lisa_trains_sampled_layers_and_resumes_to_the_same_curve() {
    let _run = one_run();
    let adapter = "kind = \"none\"\nlisa_layers = 1\nlisa_every = 4";
    let set = ["optim.steps=16", "output.save_every=3", "optim.lr=3e-3"];
    let whole = temp_dir("lisa-whole");
    keel_train::train(&recipe(&whole, adapter, &set), &RunOptions::default()).unwrap();
    let parts = temp_dir("lisa-parts");
    let r = recipe(&parts, adapter, &set);
    let stop = RunOptions {
        stop_at: Some(6),
        ..RunOptions::default()
    };
    keel_train::train(&r, &stop).unwrap();
    let resume = RunOptions {
        resume: true,
        ..RunOptions::default()
    };
    keel_train::train(&r, &resume).unwrap();
    assert_eq!(
        losses(&whole),
        losses(&parts),
        "the resumed LISA run differs"
    );
    let (a, b) = (
        AdapterFile::read(&whole.join("adapter")).unwrap(),
        AdapterFile::read(&parts.join("adapter")).unwrap(),
    );
    assert_eq!(a.saved, b.saved, "final modules differ");
    let names: Vec<String> = a.saved.keys().cloned().collect();
    let layers: Vec<usize> = (0..3)
        .filter(|i| names.contains(&format!("model.layers.{i}.mlp.up_proj")))
        .collect();
    let expected: Vec<String> = {
        let mut v: Vec<String> = layers.iter().flat_map(|&i| layer_modules(i)).collect();
        v.sort();
        v
    };
    assert!(!layers.is_empty() && layers.len() <= 3);
    assert_eq!(
        names, expected,
        "LISA stores whole layers, and only those it trained"
    );
    for d in [whole, parts] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
