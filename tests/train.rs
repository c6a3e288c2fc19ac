//! `keel train` on the tiny recipe: the loss falls on a memorisable set, a
//! resumed run follows the uninterrupted one exactly, non-finite losses stop
//! the run keeping the last good checkpoint, the output folder is guarded,
//! wgpu trains as flex does, and per-block activation checkpointing gives
//! the plain gradients.

mod common;

use std::path::{Path, PathBuf};

use burn::module::ParamId;
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{
    ALL, by_param, fixture, load_tiny, losses, make_adapter, max_abs_diff, one_run, temp_dir,
};
use keel_adapters::AdapterConfig;
use keel_adapters::peft::AdapterFile;
use keel_recipe::Recipe;
use keel_train::{NanSite, RunOptions};

fn recipe(out: &Path, extra: &[&str]) -> Recipe {
    // Plain training: what these tests pin is the trainer's own arithmetic.
    let mut set = vec![
        format!("output.dir={}", out.display()),
        "alignment.preset=off".into(),
    ];
    set.extend(extra.iter().map(|s| s.to_string()));
    Recipe::load(&fixture("../../recipes/tiny.toml"), &set).unwrap()
}

fn opts() -> RunOptions {
    RunOptions::default()
}

#[test]
fn loss_falls_on_a_memorisable_set() {
    let _run = one_run();
    let dir = temp_dir("train-falls");
    let report = keel_train::train(&recipe(&dir, &[]), &opts()).unwrap();
    let l = losses(&dir);
    assert_eq!(l.len(), 200);
    assert!(
        l[0].1 > 5.0 && report.final_loss.unwrap() < 0.2,
        "loss {} -> {:?}",
        l[0].1,
        report.final_loss
    );
    // The adapter written at the end is a PEFT folder of the recipe's shape.
    let adapter = AdapterFile::read(&dir.join("adapter")).unwrap();
    assert_eq!(adapter.modules.len(), 7 * 3);
    assert!(report.trainable_params > 0 && report.tokens_per_s > 0.0 && report.adapter_bytes > 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The tiny recipe's first 30 losses and its eval loss, pinned: a change
/// to the trainer that is meant to keep its behaviour must keep these
/// (`tests/fixtures/tiny-loss-curve.json` says how they were made). The
/// bound allows other CPUs' rounding, not a change of the arithmetic.
#[test]
fn tiny_recipe_follows_its_pinned_loss_curve() {
    let _run = one_run();
    let dir = temp_dir("train-pinned");
    let report = keel_train::train(&recipe(&dir, &["optim.steps=30"]), &opts()).unwrap();
    let pin = common::read_json(&fixture("tiny-loss-curve.json"));
    let want = common::f32s(&pin["loss"]);
    let got: Vec<f64> = losses(&dir).into_iter().map(|(_, l)| l).collect();
    assert_eq!(got.len(), want.len());
    for (step, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - *w as f64).abs() <= 1e-3 * w.abs() as f64,
            "step {}: {g} vs {w}",
            step + 1
        );
    }
    let eval = pin["eval_loss"].as_f64().unwrap();
    let got_eval = report.eval_loss.unwrap();
    assert!(
        (got_eval - eval).abs() <= 1e-3 * eval,
        "eval {got_eval} vs {eval}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Also with PiSSA, whose checkpoints hold the rank-2r adapter on the
/// original base: the resumed run takes the principal part out again and
/// reads its A and B back from the first r columns.
#[test]
fn resume_follows_the_uninterrupted_run() {
    let _run = one_run();
    for init in ["kaiming", "pissa"] {
        let init_key = format!("adapter.init=\"{init}\"");
        let steps = [
            "optim.steps=40",
            "output.save_every=10",
            "adapter.dropout=0.1",
            &init_key,
        ];
        let whole = temp_dir("train-whole");
        keel_train::train(&recipe(&whole, &steps), &opts()).unwrap();

        let parts = temp_dir("train-parts");
        let r = recipe(&parts, &steps);
        let first = keel_train::train(
            &r,
            &RunOptions {
                stop_at: Some(17),
                ..opts()
            },
        )
        .unwrap();
        assert!(first.stopped_early && first.steps == 17);
        keel_train::train(
            &r,
            &RunOptions {
                resume: true,
                ..opts()
            },
        )
        .unwrap();

        let (a, b) = (losses(&whole), losses(&parts));
        assert_eq!(
            b.iter().map(|x| x.0).collect::<Vec<_>>(),
            (1..=40).collect::<Vec<_>>(),
            "{init}: steps missing or repeated"
        );
        assert_eq!(a, b, "{init}: the resumed loss curve differs");
        let (wa, wb) = (
            AdapterFile::read(&whole.join("adapter")).unwrap(),
            AdapterFile::read(&parts.join("adapter")).unwrap(),
        );
        for (name, m) in &wa.modules {
            assert_eq!(
                m.b, wb.modules[name].b,
                "{init} {name}: final adapters differ"
            );
        }
        for d in [whole, parts] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let _run = one_run();
    let dir = temp_dir("train-nan");
    let r = recipe(
        &dir,
        &[
            "optim.lr=1e30",
            "optim.warmup_steps=0",
            "optim.schedule=\"constant\"",
            "output.save_every=1",
            "optim.max_grad_norm=1e30",
        ],
    );
    let err = keel_train::train(&r, &opts()).unwrap_err().to_string();
    assert!(err.contains("not finite") && err.contains("step-"), "{err}");
    let kept: PathBuf = keel_train::checkpoint::latest(&dir)
        .unwrap()
        .expect("a checkpoint");
    AdapterFile::read(&kept).expect("the kept checkpoint loads");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The debug option puts a NaN in the loss or in the first LoRA A's
/// gradient at step 3: the run stops there, names the tensor, and keeps the
/// checkpoint of step 2 whole.
#[test]
fn injected_nan_is_caught_at_its_step_naming_the_tensor() {
    let _run = one_run();
    for (site, what) in [
        (NanSite::Loss, "loss is not finite"),
        (
            NanSite::Gradient,
            "the gradient of `model.layers.0.self_attn.q_proj.lora_A` is not finite",
        ),
    ] {
        let dir = temp_dir("train-inject");
        let r = recipe(&dir, &["output.save_every=1"]);
        let run = RunOptions {
            debug_nan: Some((3, site)),
            ..opts()
        };
        let err = keel_train::train(&r, &run).unwrap_err().to_string();
        assert!(err.starts_with("step 3: ") && err.contains(what), "{err}");
        assert!(err.contains("step-0000002"), "{err}");
        let kept = keel_train::checkpoint::latest(&dir).unwrap().unwrap();
        assert!(kept.ends_with("step-0000002"));
        AdapterFile::read(&kept).expect("the kept checkpoint loads");
        assert_eq!(losses(&dir).len(), 2, "no metrics row for the bad step");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A symlink planted in the output folder would redirect keel's writes
/// (and --overwrite's deletions) elsewhere: refused, the target untouched.
#[test]
fn a_symlink_in_the_output_folder_is_refused() {
    let _run = one_run();
    let dir = temp_dir("train-symlink");
    let elsewhere = temp_dir("train-symlink-target");
    std::fs::write(elsewhere.join("precious"), "keep me").unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("checkpoints")).unwrap();
    let r = recipe(&dir, &["optim.steps=2"]);
    let run = RunOptions {
        overwrite: true,
        ..opts()
    };
    let err = keel_train::train(&r, &run).unwrap_err().to_string();
    assert!(
        err.contains("checkpoints") && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(elsewhere.join("precious")).unwrap(),
        "keep me"
    );
    for d in [dir, elsewhere] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn a_folder_with_a_run_is_not_overwritten_by_accident() {
    let _run = one_run();
    let dir = temp_dir("train-guard");
    let r = recipe(&dir, &["optim.steps=2"]);
    keel_train::train(&r, &opts()).unwrap();
    let err = keel_train::train(&r, &opts()).unwrap_err().to_string();
    assert!(
        err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    keel_train::train(
        &r,
        &RunOptions {
            overwrite: true,
            ..opts()
        },
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_shipped_recipe_checks() {
    for entry in std::fs::read_dir(fixture("../../recipes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Recipe::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

#[test]
fn wgpu_trains_as_flex_does() {
    let _run = one_run();
    if !common::required("KEEL_TEST_WGPU", "wgpu training") {
        return;
    }
    let steps = "optim.steps=5";
    let wgpu = "model.device=\"wgpu\"";
    let (f, w, c) = (
        temp_dir("train-flex"),
        temp_dir("train-wgpu"),
        temp_dir("train-wgpu-ckpt"),
    );
    keel_train::train(&recipe(&f, &[steps]), &opts()).unwrap();
    keel_train::train(&recipe(&w, &[steps, wgpu]), &opts()).unwrap();
    let ckpt = [steps, wgpu, "model.activation_checkpointing=true"];
    keel_train::train(&recipe(&c, &ckpt), &opts()).unwrap();
    for run in [&w, &c] {
        let wgpu = losses(run);
        assert_eq!(wgpu.len(), 5);
        for ((s, a), (_, b)) in losses(&f).iter().zip(&wgpu) {
            assert!(
                (a - b).abs() < 1e-3,
                "step {s}: flex {a}, wgpu {b} ({run:?})"
            );
        }
    }
    for d in [f, w, c] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn trains_on_a_bf16_base() {
    let _run = one_run();
    let dir = temp_dir("train-bf16");
    let report = keel_train::train(&recipe(&dir, &["model.base_dtype=\"bf16\""]), &opts()).unwrap();
    assert!(report.final_loss.unwrap() < 0.5, "{:?}", report.final_loss);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every gradient in `grads`, by parameter, read to the host.
/// Per-block checkpointing recomputes each layer in backward. With LoRA
/// dropout on, the recomputed layer must draw its first pass's masks: the
/// gradients then equal those of one plain backward seeded alike. Adapters
/// on the last two layers only also check that backward stops at the
/// lowest layer that trains.
#[test]
fn per_block_checkpointing_gives_the_plain_gradients() {
    let _run = one_run();
    let device = Device::flex().autodiff();
    let seed = |i: usize| device.seed(1000 + i as u64);
    let ids: Vec<i64> = (0..2 * 24).map(|i| (i * 37 % 250) as i64).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 24]), &device);
    let loss = |logits: Tensor<3>| logits.powf_scalar(2.0).mean().reshape([1]);
    for layers in [None, Some(vec![1, 2])] {
        let mut model = load_tiny("tiny-llama", &device);
        let mut cfg = AdapterConfig::lora(4, 8.0, &ALL);
        cfg.dropout = 0.3;
        cfg.layers = layers.clone();
        make_adapter(&mut model, &cfg, 7, 0.1);

        seed(0);
        let hidden = model.forward_hidden_tapped(tokens.clone(), None, |i, _| seed(i + 1));
        let plain = by_param(&model, &loss(model.logits(hidden)).backward());

        let mut summed: Vec<(ParamId, Vec<f32>)> = Vec::new();
        let mut segments = 0;
        model.backward_checkpointed(
            tokens.clone(),
            |h| loss(model.logits(h)),
            seed,
            |g| {
                segments += 1;
                for (id, g) in by_param(&model, &g) {
                    match summed.iter_mut().find(|(i, _)| *i == id) {
                        Some((_, acc)) => acc.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
                        None => summed.push((id, g)),
                    }
                }
            },
        );
        // The head, then each layer from the lowest that trains.
        assert_eq!(segments, 1 + if layers.is_some() { 2 } else { 3 });
        assert_eq!(summed.len(), plain.len(), "{layers:?}");
        assert_eq!(plain.len(), 7 * 2 * layers.as_ref().map_or(3, Vec::len));
        for (id, want) in &plain {
            let got = &summed.iter().find(|(i, _)| i == id).unwrap().1;
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let (diff, _) = max_abs_diff(got, want);
            assert!(
                diff <= 1e-5 * scale.max(1e-3),
                "{layers:?} {id}: {diff} of {scale}"
            );
        }

        // Other masks give other gradients: the comparison above can fail.
        let reseed = |i: usize| device.seed(2000 + i as u64);
        reseed(0);
        let hidden = model.forward_hidden_tapped(tokens.clone(), None, |i, _| reseed(i + 1));
        let other = by_param(&model, &loss(model.logits(hidden)).backward());
        let moved = plain
            .iter()
            .zip(&other)
            .map(|((_, a), (_, b))| max_abs_diff(a, b).0);
        let moved = moved.fold(0f32, f32::max);
        assert!(moved > 1e-4, "{moved}");
    }
}

#[test]
fn activation_checkpointing_gives_the_same_losses() {
    let _run = one_run();
    let dir = temp_dir("train-ckpt");
    let steps = "optim.steps=20";
    keel_train::train(&recipe(&dir.join("plain"), &[steps]), &opts()).unwrap();
    let set = [steps, "model.activation_checkpointing=true"];
    keel_train::train(&recipe(&dir.join("ckpt"), &set), &opts()).unwrap();
    let (a, b) = (losses(&dir.join("plain")), losses(&dir.join("ckpt")));
    assert_eq!(a.len(), 20);
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs().max(1.0),
            "step {step}: {x} vs {y}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
