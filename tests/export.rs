//! `keel export`'s formats against the programs that consume them: a merged
//! HF folder loaded by transformers, and a GGUF LoRA adapter applied by
//! llama.cpp itself (llama-cpp-python builds it from source); plus the
//! servers' rules reported at export.

mod common;

use burn::tensor::Device;
use common::{
    ALL, fixture, load_tiny, logits, make_adapter, max_abs_diff, reference_logits, temp_dir,
};
use keel_adapters::peft::AdapterFile;
use keel_adapters::{AdapterConfig, Variant};
use keel_gguf::GgufFile;
use keel_model::{LoadedModel, QkLayout, Sampling};

#[test]
fn merged_export_loads_in_transformers_with_the_adapters_logits() {
    let device = Device::flex();
    for (case, base) in [
        ("lora-all", "tiny-llama"),
        ("dora", "tiny-llama"),
        ("modules-to-save", "tiny-qwen2"),
    ] {
        let mut model = LoadedModel::open(&fixture(base), &device).unwrap();
        let file = AdapterFile::read(&fixture(&format!("peft/{case}"))).unwrap();
        model.model.attach(&file, "default").unwrap();
        let dir = temp_dir(&format!("merged-{case}"));
        let out = dir.join("merged");
        keel_export::export_merged(&mut model, "default", true, &out).unwrap();

        let merged = load_tiny_dir(&out, &device);
        let reference_path = fixture(&format!("peft/{case}/logits.json"));
        for (ids, want) in reference_logits(&reference_path) {
            let (diff, _) = max_abs_diff(&logits(&merged, &ids, &device), &want);
            assert!(
                diff <= 3e-4,
                "{case}: merged folder differs from PEFT by {diff}"
            );
        }
        common::python_judge(
            "check_merged.py",
            &[out.as_os_str(), reference_path.as_os_str()],
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn load_tiny_dir(dir: &std::path::Path, device: &Device) -> keel_model::Llama {
    LoadedModel::open(dir, device).unwrap().model
}

/// A GGUF LoRA on a llama GGUF (q/k rows interleaved) and on a qwen2 GGUF,
/// with rsLoRA scaling on the second so the scale must be folded into B.
#[test]
fn gguf_lora_export_is_applied_by_llama_cpp_as_keel_computes_it() {
    let device = Device::flex();
    let mut rs = AdapterConfig::lora(8, 16.0, &ALL);
    rs.scaling = keel_adapters::Scaling::Rs;
    for (base, cfg) in [
        ("gguf-spm/vocab.gguf", AdapterConfig::lora(4, 8.0, &ALL)),
        ("tiny-qwen2-gguf/tiny-qwen2.gguf", rs),
    ] {
        let mut model = LoadedModel::open(&fixture(base), &device).unwrap();
        make_adapter(&mut model.model, &cfg, 11, 0.03);
        let dir = temp_dir("gguf-lora");
        let lora = dir.join("adapter.gguf");
        keel_export::export_gguf_lora(
            &model.model,
            &model.config,
            "default",
            &cfg,
            &lora,
            keel_export::GgufDtype::F32,
        )
        .unwrap();

        // The file is laid out as llama.cpp's converter lays it out.
        let g = GgufFile::open(&lora).unwrap();
        assert_eq!(g.metadata.str("general.type").unwrap(), "adapter");
        assert_eq!(g.metadata.str("adapter.type").unwrap(), "lora");
        assert_eq!(g.metadata.f64("adapter.lora.alpha").unwrap(), cfg.alpha);
        assert_eq!(g.tensors.len(), 2 * 7 * model.config.num_hidden_layers);
        let (shape, b) = g.tensor_f32("blk.0.attn_q.weight.lora_b").unwrap();
        assert_eq!(
            shape,
            vec![
                model.config.num_attention_heads * model.config.head_dim,
                cfg.r
            ]
        );
        let linears = model.model.linears();
        let q = linears[0].1.adapter("default").unwrap();
        let fold = q.scale / (cfg.alpha / cfg.r as f64);
        let want = keel_adapters::host::transpose(
            cfg.r,
            shape[0],
            &q.b.val().mul_scalar(fold).try_into_vec_as::<f32>().unwrap(),
        );
        let want = match model.config.architecture {
            keel_model::Architecture::Qwen2 => want,
            _ => keel_model::reorder_qk_rows(
                shape[0],
                cfg.r,
                &want,
                model.config.num_attention_heads,
                QkLayout::ToGguf,
            )
            .unwrap(),
        };
        assert!(
            max_abs_diff(&b, &want).0 < 1e-6,
            "{base}: q lora_b is not B as llama.cpp expects it"
        );

        let keel_json = keel_reference(&model.model, &dir, &device);
        if common::required("KEEL_TEST_LLAMA_CPP", "llama.cpp applying keel's GGUF LoRA") {
            let base_path = fixture(base);
            // Measured: 1.2e-5 (llama), 7.1e-5 (qwen2, rsLoRA folded into B).
            let args = [
                base_path.as_os_str(),
                lora.as_os_str(),
                keel_json.as_os_str(),
                "--tolerance".as_ref(),
                "3e-4".as_ref(),
            ];
            common::python_judge("check_gguf_lora.py", &args);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// keel's reference for the llama.cpp judge, written to `dir/keel.json`:
/// the adapted model's logits on two prompts and its greedy tokens.
fn keel_reference(
    model: &keel_model::Llama,
    dir: &std::path::Path,
    device: &Device,
) -> std::path::PathBuf {
    let prompts = vec![vec![1, 17, 80, 33, 9, 120, 64, 5], vec![3, 44, 2, 250, 7]];
    let mut json = common::logits_json(model, &prompts, device);
    let greedy = keel_model::generate(model, &prompts[0], 8, &Sampling::default(), &[], |_| {});
    json["greedy"] = serde_json::json!({"prompt": prompts[0], "tokens": greedy});
    let path = dir.join("keel.json");
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

/// A merged GGUF made from a llama GGUF (q/k rows interleaved) and a qwen2
/// one: keel reads it back with the adapted model's logits (f32 exactly,
/// f16 within its rounding), and llama.cpp runs it as keel does.
#[test]
fn merged_gguf_export_runs_in_llama_cpp_as_keel_computes_it() {
    let device = Device::flex();
    for base in ["gguf-spm/vocab.gguf", "tiny-qwen2-gguf/tiny-qwen2.gguf"] {
        let base_path = fixture(base);
        let mut model = LoadedModel::open(&base_path, &device).unwrap();
        make_adapter(
            &mut model.model,
            &AdapterConfig::lora(4, 8.0, &ALL),
            5,
            0.03,
        );
        let dir = temp_dir("merged-gguf");
        let keel_json = keel_reference(&model.model, &dir, &device);
        let adapted: Vec<Vec<f32>> = [vec![1u32, 17, 80, 33, 9], vec![3, 44, 2, 250, 7]]
            .iter()
            .map(|ids| logits(&model.model, ids, &device))
            .collect();
        for (dtype, tolerance) in [
            (keel_export::MergedGguf::F16, 5e-2),
            (keel_export::MergedGguf::F32, 1e-4),
        ] {
            let mut m = LoadedModel::open(&base_path, &device).unwrap();
            make_adapter(&mut m.model, &AdapterConfig::lora(4, 8.0, &ALL), 5, 0.03);
            let out = dir.join(format!("merged-{dtype:?}.gguf"));
            keel_export::export_merged_gguf(&mut m, &base_path, "default", true, &out, dtype)
                .unwrap();
            let g = GgufFile::open(&out).unwrap();
            let source = GgufFile::open(&base_path).unwrap();
            assert_eq!(
                g.metadata.len(),
                source.metadata.len(),
                "{base}: metadata kept"
            );
            assert_eq!(
                g.tensors.len(),
                source.tensors.len(),
                "{base}: every tensor"
            );
            let back = LoadedModel::open(&out, &device).unwrap();
            for (ids, want) in [vec![1u32, 17, 80, 33, 9], vec![3, 44, 2, 250, 7]]
                .iter()
                .zip(&adapted)
            {
                let (diff, _) = max_abs_diff(&logits(&back.model, ids, &device), want);
                assert!(
                    diff <= tolerance,
                    "{base} {dtype:?}: merged GGUF differs from the adapted model by {diff}"
                );
            }
        }
        if common::required(
            "KEEL_TEST_LLAMA_CPP",
            "llama.cpp running keel's merged GGUF",
        ) {
            let merged = dir.join("merged-F32.gguf");
            let args = [
                base_path.as_os_str(),
                merged.as_os_str(),
                keel_json.as_os_str(),
                "--tolerance".as_ref(),
                "3e-4".as_ref(),
                "--merged".as_ref(),
            ];
            common::python_judge("check_gguf_lora.py", &args);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn gguf_export_refuses_dora_and_servers_rules_are_reported() {
    let device = Device::flex();
    let mut model = load_tiny("tiny-llama", &device);
    let mut cfg = AdapterConfig::lora(32, 64.0, &["q_proj", "v_proj"]);
    cfg.variant = Variant::Dora;
    make_adapter(&mut model, &cfg, 3, 0.01);
    let config = LoadedModel::open(&fixture("tiny-llama"), &device)
        .unwrap()
        .config;
    let dir = temp_dir("dora-gguf");
    let err = keel_export::export_gguf_lora(
        &model,
        &config,
        "default",
        &cfg,
        &dir.join("a.gguf"),
        keel_export::GgufDtype::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("DoRA") && err.contains("merged"), "{err}");
    assert!(!dir.join("a.gguf").exists(), "nothing may be written");
    let warnings = keel_export::servers::check(&cfg, &model).join("\n");
    assert!(warnings.contains("DoRA"), "{warnings}");
    assert!(warnings.contains("--max-lora-rank 32"), "{warnings}");
    std::fs::remove_dir_all(&dir).unwrap();
}
