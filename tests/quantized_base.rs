//! A frozen base kept in GGUF blocks (`base_dtype = "gguf"`, or quantized at
//! load): the same outputs and LoRA gradients as the dequantized base,
//! training through the recipe, and clear refusals of what needs the base
//! dense.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use common::{ALL, by_param, fixture, losses, make_adapter, max_abs_diff, one_run, temp_dir};
use keel_adapters::AdapterConfig;
use keel_gguf::{GgmlType, GgufFile, GgufWriter};
use keel_model::{BaseStorage, ModelSource};
use keel_recipe::Recipe;
use keel_train::RunOptions;

/// The tiny Qwen2 GGUF (untied head) with its projections stored as Q8_0
/// (attention) and Q4_0 (MLP) by keel's writer, its embeddings as Q8_0,
/// the rest as they were.
fn quantized_tiny(dir: &Path) -> PathBuf {
    quantized_fixture(dir, "tiny-qwen2")
}

/// `model`'s fixture GGUF quantized as [`quantized_tiny`] says.
fn quantized_fixture(dir: &Path, model: &str) -> PathBuf {
    let source = GgufFile::open(fixture(&format!("{model}-gguf/{model}.gguf"))).unwrap();
    let mut w = GgufWriter::new();
    for (key, value) in source.metadata.iter() {
        w.add_metadata(key, value.clone());
    }
    for t in &source.tensors {
        let (shape, values) = source.tensor_f32(&t.name).unwrap();
        let ty = match t.name.as_str() {
            n if n.contains("attn_") && n.ends_with(".weight") && !n.contains("norm") => {
                GgmlType::Q8_0
            }
            n if n.contains("ffn_") && !n.contains("norm") => GgmlType::Q4_0,
            "token_embd.weight" => GgmlType::Q8_0,
            _ => t.ggml_type,
        };
        w.add_tensor(&t.name, &shape, &values, ty).unwrap();
    }
    let path = dir.join(format!("{model}-q.gguf"));
    w.write(&path).unwrap();
    path
}

/// The model kept in blocks (projections, embeddings, and the head: tied
/// for Qwen3, untied for Qwen2) and the model dequantized to f32 give the
/// same logits, the same target log-probabilities (the fused head), and the
/// same gradient for every LoRA parameter.
#[test]
fn blocks_give_the_dequantized_base_outputs_and_gradients() {
    let _run = one_run();
    let dir = temp_dir("quantized-grads");
    for (model, untied) in [("tiny-qwen2", 1), ("tiny-qwen3", 0)] {
        let path = quantized_fixture(&dir, model);
        let types: Vec<&str> = GgufFile::open(&path)
            .unwrap()
            .tensors
            .iter()
            .map(|t| t.ggml_type.name())
            .collect();
        assert!(
            types.contains(&"Q8_0") && types.contains(&"Q4_0"),
            "{types:?}"
        );

        let device = Device::flex().autodiff();
        let ids: Vec<i64> = (0..2 * 20).map(|i| (i * 37 % 250) as i64).collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 20]), &device);
        let targets = tokens.clone().flip([1]);
        let run = |storage: BaseStorage| {
            let mut loaded = ModelSource::open(&path)
                .unwrap()
                .load_with(&device, storage)
                .unwrap();
            make_adapter(
                &mut loaded.model,
                &AdapterConfig::lora(4, 8.0, &ALL),
                3,
                0.1,
            );
            let model = &loaded.model;
            let hidden = model.forward_hidden(tokens.clone(), None);
            let logits = model.logits(hidden.clone());
            let log_p = model.target_log_probs(hidden, targets.clone());
            let objective = logits.clone().powf_scalar(2.0).mean() - log_p.clone().mean();
            let grads = objective.backward();
            let linears = model.linears();
            let kept = linears
                .iter()
                .filter(|(_, l)| l.quantized.is_some())
                .count()
                + usize::from(model.embed_blocks.is_some());
            let values = |t: Tensor<3>| t.detach().into_data().try_to_vec::<f32>().unwrap();
            let log_p = log_p.detach().into_data().try_to_vec::<f32>().unwrap();
            (kept, values(logits), log_p, by_param(model, &grads))
        };
        let (kept, logits, log_p, grads) = run(BaseStorage::Gguf {
            dense: DType::F32,
            keep_dense: Vec::new(),
        });
        let (dense_kept, want_logits, want_log_p, want_grads) = run(BaseStorage::Dense(DType::F32));
        // Three layers of seven projections, the embeddings and an untied
        // head; the projections each with A and B.
        assert_eq!((kept, dense_kept), (7 * 3 + 1 + untied, 0), "{model}");
        for (what, got, want) in [
            ("logits", &logits, &want_logits),
            ("log p", &log_p, &want_log_p),
        ] {
            let (diff, at) = max_abs_diff(got, want);
            assert!(diff <= 1e-4, "{model}: {what} differ by {diff} at {at}");
        }
        assert_eq!(grads.len(), 2 * 7 * 3);
        assert_eq!(grads.len(), want_grads.len());
        for (id, got) in &grads {
            let (_, want) = want_grads
                .iter()
                .find(|(i, _)| i == id)
                .expect("the same parameters");
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let (diff, _) = max_abs_diff(got, want);
            assert!(
                diff <= 1e-4 * scale.max(1e-3),
                "{model} {id}: {diff} of {scale}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// In a `llama` GGUF, llama.cpp interleaved the q/k rows for its RoPE: the
/// blocks read in place come back in HF's row order, the values the dense
/// reader gives, for every projection of every layer.
#[test]
fn llama_q_k_blocks_come_back_in_hf_row_order() {
    let source = ModelSource::open(&fixture("gguf-spm/vocab.gguf")).unwrap();
    let c = &source.config;
    assert_eq!(c.architecture.name(), "llama");
    let mut reordered = 0;
    let projections = c
        .weights()
        .into_iter()
        .filter(|(n, _)| n.ends_with("_proj.weight"));
    for (weight, shape) in projections {
        let blocks = source
            .weights
            .blocks(&weight, [shape[0], shape[1]], c)
            .unwrap();
        let dense = source.weights.get(&weight, &shape, c).unwrap();
        assert_eq!(blocks.dequantize(), dense.data, "{weight}");
        reordered += usize::from(weight.contains("q_proj") || weight.contains("k_proj"));
    }
    assert!(reordered >= 2, "{reordered} q/k projections");
}

fn recipe(model: &Path, out: &Path, extra: &[&str]) -> Result<Recipe, keel_recipe::Error> {
    let mut set = vec![
        format!("model.path=\"{}\"", model.display()),
        format!("output.dir=\"{}\"", out.display()),
        "alignment.preset=off".into(),
    ];
    set.extend(extra.iter().map(|s| s.to_string()));
    Recipe::load(&fixture("../../recipes/tiny.toml"), &set)
}

/// The tiny recipe trains on the file's own blocks, and on blocks made at
/// load from the f32 file (its rows are too short for Q4_K's blocks, so
/// `q4_k` takes llama.cpp's fallback, Q5_0): its loss falls as on a dense
/// base.
#[test]
fn the_tiny_recipe_trains_on_a_base_in_blocks() {
    let _run = one_run();
    let dir = temp_dir("quantized-train");
    let quantized = quantized_tiny(&dir);
    let f32_file = fixture("tiny-qwen2-gguf/tiny-qwen2.gguf");
    for (model, dtype) in [
        (&quantized, "gguf"),
        (&f32_file, "q8_0"),
        (&f32_file, "q4_0"),
        (&f32_file, "q4_k"),
    ] {
        let out = dir.join(format!("run-{dtype}"));
        let set = [
            format!("model.base_dtype=\"{dtype}\""),
            "optim.steps=60".into(),
        ];
        let set: Vec<&str> = set.iter().map(String::as_str).collect();
        let r = recipe(model, &out, &set).unwrap();
        let report = keel_train::train(&r, &RunOptions::default()).unwrap();
        let l = losses(&out);
        assert!(
            l[0].1 > 5.0 && report.final_loss.unwrap() < 0.5 * l[0].1,
            "{dtype}: loss {} -> {:?}",
            l[0].1,
            report.final_loss
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// wgpu multiplies by a base in blocks by dequantizing each layer's weight
/// for its product on the GPU, forward and backward (keel-adapters'
/// gpu_blocks kernel, from blocks uploaded once): five
/// steps give flex's losses.
#[test]
fn wgpu_trains_on_a_base_in_blocks_as_flex_does() {
    let _run = one_run();
    if !common::required("KEEL_TEST_WGPU", "wgpu training on a base in blocks") {
        return;
    }
    let dir = temp_dir("quantized-wgpu");
    let quantized = quantized_tiny(&dir);
    let run = |device: &str| {
        let out = dir.join(device);
        let set = [
            "model.base_dtype=\"gguf\"".to_string(),
            format!("model.device=\"{device}\""),
            "optim.steps=5".into(),
        ];
        let set: Vec<&str> = set.iter().map(String::as_str).collect();
        keel_train::train(
            &recipe(&quantized, &out, &set).unwrap(),
            &RunOptions::default(),
        )
        .unwrap();
        losses(&out)
    };
    let (flex, wgpu) = (run("flex"), run("wgpu"));
    assert_eq!(wgpu.len(), 5);
    for ((s, a), (_, b)) in flex.iter().zip(&wgpu) {
        // The same weights (wgpu's dense ones dequantized from the same
        // blocks), multiplied in another order.
        assert!(
            (a - b).abs() < 1e-4 * a.abs(),
            "step {s}: flex {a}, wgpu {b}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A module an adapter trained in full replaces the base's blocks when the
/// adapter is attached to a base kept in blocks: the forward pass then
/// uses the trained weight.
#[test]
fn a_module_trained_in_full_replaces_the_blocks() {
    let _run = one_run();
    let dir = temp_dir("quantized-saved");
    let model = fixture("tiny-qwen2-gguf/tiny-qwen2.gguf");
    let set = [
        "adapter.targets=[\"q_proj\"]",
        "adapter.modules_to_save=[\"down_proj\"]",
        "optim.steps=2",
    ];
    keel_train::train(&recipe(&model, &dir, &set).unwrap(), &RunOptions::default()).unwrap();
    let storage = BaseStorage::Quantize {
        ty: GgmlType::Q8_0,
        dense: DType::F32,
        keep_dense: Vec::new(),
    };
    let mut loaded = ModelSource::open(&model)
        .unwrap()
        .load_with(&Device::flex(), storage)
        .unwrap();
    loaded
        .attach_adapter(&dir.join("adapter"), "default")
        .unwrap();
    // The head stays dense beside a base in blocks.
    for (name, l) in loaded
        .model
        .linears()
        .into_iter()
        .filter(|(n, _)| n != "lm_head")
    {
        let saved = name.ends_with("down_proj");
        assert_eq!(l.quantized.is_none(), saved, "{name}");
        assert_eq!(l.weight.dims()[0] > 0, saved, "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `keep_dense` keeps the modules it names dense beside blocks quantized at
/// load (every layer's `down_proj`, one layer's `q_proj`) or read from the
/// file (the embeddings and the head), and a name that matches nothing is
/// refused with what exists.
#[test]
fn named_modules_stay_dense_beside_the_blocks() {
    let model = fixture("tiny-qwen2-gguf/tiny-qwen2.gguf");
    let load = |storage: BaseStorage| {
        ModelSource::open(&model)
            .unwrap()
            .load_with(&Device::flex(), storage)
    };
    let keep = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let storage = BaseStorage::Quantize {
        ty: GgmlType::Q8_0,
        dense: DType::F32,
        keep_dense: keep(&["down_proj", "model.layers.1.self_attn.q_proj"]),
    };
    let loaded = load(storage).unwrap();
    for (name, l) in loaded.model.linears() {
        let dense = name.ends_with("down_proj")
            || name == "model.layers.1.self_attn.q_proj"
            || name == "lm_head";
        assert_eq!(l.quantized.is_none(), dense, "{name}");
    }
    let storage = BaseStorage::Gguf {
        dense: DType::F32,
        keep_dense: keep(&["embed_tokens", "lm_head"]),
    };
    let loaded = load(storage).unwrap();
    assert!(loaded.model.embed_blocks.is_none());
    for (name, l) in loaded.model.linears() {
        assert_eq!(l.quantized.is_none(), name == "lm_head", "{name}");
    }
    let storage = BaseStorage::Gguf {
        dense: DType::F32,
        keep_dense: keep(&["dwn_proj"]),
    };
    let e = load(storage).err().expect("an unknown name").to_string();
    assert!(
        e.contains("model.keep_dense: `dwn_proj` names no module")
            && e.contains("down_proj, embed_tokens"),
        "{e}"
    );
}

/// `gguf` on a model that is not a GGUF file, and a projection trained in
/// full on a base in blocks, are refused naming the tensor or key.
#[test]
fn what_needs_a_dense_base_is_refused() {
    let _run = one_run();
    let dir = temp_dir("quantized-refused");
    let hf = fixture("tiny-llama");
    let r = recipe(&hf, &dir.join("a"), &["model.base_dtype=\"gguf\""]).unwrap();
    let e = keel_train::train(&r, &RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.layers.0.self_attn.q_proj.weight") && e.contains("not a GGUF file"),
        "{e}"
    );
    let r = recipe(
        &fixture("tiny-qwen2-gguf/tiny-qwen2.gguf"),
        &dir.join("b"),
        &[
            "model.base_dtype=\"q8_0\"",
            "adapter.targets=[\"q_proj\"]",
            "adapter.modules_to_save=[\"down_proj\"]",
        ],
    )
    .unwrap();
    let e = keel_train::train(&r, &RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("adapter.modules_to_save") && e.contains("mlp.down_proj") && e.contains("Q8_0"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
