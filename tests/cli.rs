//! The `keel` binary as a user runs it: one row per command line, with the
//! exit code and the lines it must print. Bad model folders are made here
//! from the fixtures (a config whose sizes the weights do not back, weights
//! that lack the model's tensors): they must be refused with the key or the
//! tensors named, never a crash or a normal-looking summary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixture, temp_dir};

/// A model folder in `dir`: tiny-llama's config with `edit` applied, and a
/// safetensors file holding `keep`'s tensors of tiny-llama (all if `None`).
fn model_folder(
    dir: &Path,
    name: &str,
    edit: impl Fn(&mut serde_json::Value),
    keep: Option<&dyn Fn(&str) -> bool>,
) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let src = fixture("tiny-llama");
    let mut config = common::read_json(&src.join("config.json"));
    edit(&mut config);
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| keep.is_none_or(|k| k(n)))
        .collect();
    safetensors::serialize_to_file(kept, None, &out.join("model.safetensors")).unwrap();
    out
}

struct Case {
    args: Vec<String>,
    code: i32,
    /// Each must appear in stdout or stderr.
    prints: &'static [&'static str],
}

fn case(args: &[&dyn AsRef<std::ffi::OsStr>], code: i32, prints: &'static [&'static str]) -> Case {
    let args = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    Case { args, code, prints }
}

#[test]
fn commands_exit_and_print_as_documented() {
    let dir = temp_dir("cli");
    let tiny = fixture("tiny-llama");
    let tiny_gguf = fixture("tiny-qwen2-gguf/tiny-qwen2.gguf");
    // 2^40 layers beside three: keel once tried to allocate for them all.
    let huge = model_folder(
        &dir,
        "huge-layers",
        |c| c["num_hidden_layers"] = serde_json::json!(1u64 << 40),
        None,
    );
    let more = model_folder(
        &dir,
        "more-layers",
        |c| c["num_hidden_layers"] = 4.into(),
        None,
    );
    let wide = model_folder(&dir, "wide", |c| c["intermediate_size"] = 96.into(), None);
    let no_mlp = model_folder(
        &dir,
        "no-mlp",
        |_| {},
        Some(&|n: &str| !n.contains(".mlp.")),
    );
    let recipe = fixture("../../recipes/tiny.toml");
    let out_dir = format!("output.dir={}", dir.join("run").display());
    let adapter = dir.join("run/adapter");
    let cases = [
        case(&[&"--help"], 0, &["train", "inspect", "export", "drift"]),
        case(
            &[&"inspect", &tiny],
            0,
            &["architecture:  llama", "linear modules (22):"],
        ),
        case(
            &[&"inspect", &tiny_gguf],
            0,
            &["architecture:  qwen2", "chat template: yes"],
        ),
        case(
            &[&"inspect", &huge],
            1,
            &["`num_hidden_layers`", "1099511627776 is past keel's bound"],
        ),
        case(
            &[&"inspect", &more],
            1,
            &["`num_hidden_layers`", "is 4, but the weights hold 3 layers"],
        ),
        case(
            &[&"inspect", &wide],
            1,
            &[
                "model.layers.0.mlp.gate_proj.weight has shape [160, 64], the config implies [96, 64]",
                "9 of 30 tensors wrong",
            ],
        ),
        case(
            &[&"inspect", &no_mlp],
            1,
            &[
                "does not hold the weights its config describes",
                "model.layers.1.mlp.down_proj.weight is missing",
            ],
        ),
        case(&[&"inspect", &dir.join("absent")], 1, &["absent"]),
        case(
            &[&"recipe", &"check", &recipe],
            0,
            &["alignment: recommended: KL anchors on keel's safety set (λ = 1)"],
        ),
        case(
            &[
                &"recipe",
                &"check",
                &recipe,
                &"--set",
                &"alignment.preset=off",
            ],
            0,
            &["alignment: off"],
        ),
        case(
            &[
                &"recipe",
                &"check",
                &recipe,
                &"--set",
                &"alignment.preset=off",
                &"--set",
                &"alignment.constrained_sft=true",
            ],
            1,
            &["alignment.preset", "also names constrained_sft"],
        ),
        case(
            &[&"recipe", &"check", &recipe, &"--set", &"optim.lr=-1"],
            1,
            &["optim.lr"],
        ),
        case(
            &[&"adapter", &"info", &fixture("peft/modules-to-save")],
            0,
            &[
                "trained fully: 4 ([\"model.layers.1.self_attn.q_proj\", \"post_attention_layernorm\"])",
            ],
        ),
        case(
            &[
                &"adapter",
                &"info",
                &fixture("peft/modules-to-save"),
                &"--json",
            ],
            0,
            &[
                "\"saved_modules\": [",
                "\"model.layers.2.post_attention_layernorm\"",
            ],
        ),
        case(
            &[&"inspect", &tiny, &"--json"],
            0,
            &[
                "\"architecture\": \"llama\"",
                "\"dtype\": \"F32\"",
                "\"lm_head\"",
                "\"model\": {",
            ],
        ),
        case(
            &[&"inspect", &fixture("gguf-quants/quants.gguf"), &"--json"],
            0,
            &["\"not_runnable\": \"", "is not supported"],
        ),
        // A short run, then what a user does with its adapter.
        case(
            &[
                &"train",
                &recipe,
                &"--set",
                &"optim.steps=3",
                &"--set",
                &out_dir,
            ],
            0,
            &["adapter:", "final loss", "alignment        recommended"],
        ),
        case(
            &[
                &"train",
                &recipe,
                &"--set",
                &"optim.steps=3",
                &"--set",
                &out_dir,
            ],
            1,
            &["already holds a run: pass --resume"],
        ),
        case(
            &[&"eval", &recipe, &"--adapter", &adapter],
            0,
            &["\"eval_loss\""],
        ),
        case(
            &[
                &"generate",
                &"--model",
                &tiny_gguf,
                &"--adapter",
                &adapter,
                &"--prompt",
                &"Hi",
                &"--max-new-tokens",
                &"3",
            ],
            0,
            &[],
        ),
        case(
            &[&"convert", &tiny_gguf, &"--out", &dir.join("hf")],
            0,
            &["wrote"],
        ),
        case(
            &[
                &"export",
                &"--model",
                &tiny_gguf,
                &"--adapter",
                &adapter,
                &"--format",
                &"peft",
                &"--out",
                &dir.join("peft"),
            ],
            0,
            &["wrote"],
        ),
        case(
            &[
                &"export",
                &"--model",
                &tiny_gguf,
                &"--adapter",
                &adapter,
                &"--format",
                &"gguf",
                &"--out",
                &dir.join("lora.gguf"),
            ],
            0,
            &["wrote"],
        ),
        case(
            &[
                &"export",
                &"--model",
                &tiny_gguf,
                &"--adapter",
                &adapter,
                &"--format",
                &"merged",
                &"--out",
                &dir.join("merged"),
            ],
            0,
            &["wrote"],
        ),
        case(
            &[
                &"export",
                &"--model",
                &tiny,
                &"--adapter",
                &adapter,
                &"--format",
                &"peft",
                &"--out",
                &dir.join("wrong"),
            ],
            1,
            &["made for another base model"],
        ),
        case(
            &[
                &"align",
                &"similarity",
                &"--model",
                &tiny_gguf,
                &"--adapter",
                &adapter,
                &"--reference",
                &adapter,
            ],
            0,
            &["\"asft_penalty\""],
        ),
        case(
            &[
                &"bench",
                &"generate",
                &"--model",
                &tiny_gguf,
                &"--prompt-tokens",
                &"8",
                &"--new-tokens",
                &"4",
            ],
            0,
            &["\"decode_tokens_per_s\""],
        ),
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let o = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(&c.args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let missing: Vec<_> = c.prints.iter().filter(|p| !text.contains(*p)).collect();
        if o.status.code() != Some(c.code) || !missing.is_empty() {
            failures.push(format!(
                "keel {}: exit {:?} (want {}), missing {missing:?} from:\n{text}",
                c.args.join(" "),
                o.status.code(),
                c.code
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
