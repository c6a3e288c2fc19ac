//! keel's forward pass against HF transformers on tiny random checkpoints
//! (made by `scripts/make_fixtures.py`): Llama (transformers-5 config),
//! Llama 3 rope scaling with tied bf16 weights, Qwen2 with q/k/v biases in
//! sharded f16 files, Mistral, Qwen3 with per-head q/k norms, Gemma 3
//! with sliding-window layers, and Phi-3 with fused projections, partial
//! rotary and longrope.

mod common;

use burn::tensor::Device;
use common::{
    Reference, fixture, load_tiny, logits, max_abs_diff, read_json, reference_logits, u32s,
};
use keel_model::Sampling;

const FIXTURES: [&str; 7] = [
    "tiny-llama",
    "tiny-llama3",
    "tiny-qwen2",
    "tiny-mistral",
    "tiny-qwen3",
    "tiny-gemma3",
    "tiny-phi3",
];
/// keel's f32 logits may be this many times further from transformers'
/// float64 logits (`logits_f64.json`) than transformers' own f32 logits are,
/// per prompt, on every device and CPU tier. A ratio, not an absolute bound:
/// these weights (std 0.5) make logits up to 18 and attention scores large,
/// so f32 rounding, and the order each CPU tier's matrix kernels sum in,
/// move the logits by 1e-5 to 2e-4 (`docs/numerics.md`). Worst ratios
/// measured: 2.16 on AVX-512, 3.16 on an emulated AVX2 CPU, 2.47 on the
/// baseline, 2.76 on wgpu (lavapipe).
const FACTOR: f64 = 4.0;

fn check_logits(device: &Device, factor: f64) {
    for name in FIXTURES {
        let model = load_tiny(name, device);
        for (p, reference) in Reference::read(name).iter().enumerate() {
            let got = logits(&model, &reference.ids, device);
            reference.check(&got, factor, &format!("{name}, prompt {p}"));
        }
    }
}

fn check_greedy(device: &Device) {
    for name in FIXTURES {
        let model = load_tiny(name, device);
        let reference = read_json(&fixture(name).join("greedy.json"));
        let prompt = u32s(&reference["prompt"]);
        let expected = u32s(&reference["new_tokens"]);
        let got = keel_model::generate(
            &model,
            &prompt,
            expected.len(),
            &Sampling::default(),
            &[],
            |_| {},
        );
        assert_eq!(
            got, expected,
            "{name}: greedy tokens with the KV cache differ from transformers"
        );
    }
}

/// Prompts of different lengths in one left-padded batch: each row's
/// next-token logits match transformers' for that prompt alone, and the
/// greedy prompt, padded behind a longer one, still generates transformers'
/// tokens.
fn check_batched(device: &Device, factor: f64) {
    for name in FIXTURES {
        let model = load_tiny(name, device);
        let reference = Reference::read(name);
        let prompts: Vec<Vec<u32>> = reference.iter().map(|r| r.ids.clone()).collect();
        assert!(
            prompts.iter().any(|p| p.len() != prompts[0].len()),
            "{name}: the batch needs prompts of different lengths"
        );
        let (_, last) = keel_model::prefill(&model, &prompts, |_, _| {});
        for (p, (reference, got)) in reference.iter().zip(&last).enumerate() {
            reference.check(
                got,
                factor,
                &format!("{name}, prompt {p} in a padded batch"),
            );
        }
        let greedy = read_json(&fixture(name).join("greedy.json"));
        let longest = prompts.iter().max_by_key(|p| p.len()).unwrap().clone();
        let prompt = u32s(&greedy["prompt"]);
        assert!(longest.len() > prompt.len());
        let expected = u32s(&greedy["new_tokens"]);
        let batch = [prompt, longest];
        let got = keel_model::generate_batch(
            &model,
            &batch,
            expected.len(),
            &Sampling::default(),
            &[],
            |_, _| {},
        );
        assert_eq!(
            got[0], expected,
            "{name}: left-padded greedy tokens differ from transformers"
        );
    }
}

#[test]
fn batched_left_padded_prompts_match_transformers_on_flex() {
    check_batched(&Device::flex(), FACTOR);
}

#[test]
fn logits_match_transformers_on_flex() {
    check_logits(&Device::flex(), FACTOR);
}

#[test]
fn greedy_generation_with_kv_cache_matches_transformers_on_flex() {
    check_greedy(&Device::flex());
}

#[test]
fn logits_match_transformers_on_wgpu() {
    if let Some(device) = common::wgpu_device() {
        check_logits(&device, FACTOR);
    }
}

#[test]
fn greedy_generation_with_kv_cache_matches_transformers_on_wgpu() {
    if let Some(device) = common::wgpu_device() {
        check_greedy(&device);
    }
}

/// keel-gemm's bf16 product against transformers with the same inputs
/// rounded: both round the same f32 values to bf16 and accumulate in f32.
/// Measured 6.7e-6 (AVX-512 BF16, the one tier that runs this path); the
/// rest is room for an input that another summation order moved across a
/// bf16 rounding boundary, which moves it by 2^-8 of itself.
const BF16_TOLERANCE: f32 = 1e-4;

/// A base stored in bf16: tiny-llama3's weights are bf16 on disk, so storing
/// them in bf16 loses nothing. Where the CPU has AVX-512 BF16, keel-gemm
/// rounds each product's input to bf16 too and accumulates in f32; the
/// reference is transformers with every `nn.Linear`'s input rounded so
/// (`logits_bf16.json`). Elsewhere keel-gemm widens the bf16 weight to f32 a
/// block at a time, and the logits are the f32 model's, as close to the f64
/// ones as `logits_match_transformers_on_flex` asks.
#[test]
fn bf16_stored_base_computes_in_bf16() {
    let device = Device::flex();
    let source = || keel_model::ModelSource::open(&fixture("tiny-llama3")).unwrap();
    let half = source()
        .load_as(&device, burn::tensor::DType::BF16)
        .unwrap();
    assert_eq!(
        half.model.linears()[0].1.weight.val().dtype(),
        burn::tensor::DType::BF16
    );
    let rounded = reference_logits(&fixture("tiny-llama3/logits_bf16.json"));
    let upcast = Reference::read("tiny-llama3");
    for (p, ((ids, expected), f32_reference)) in rounded.iter().zip(&upcast).enumerate() {
        assert_eq!(
            ids, &f32_reference.ids,
            "logits_bf16.json and logits.json differ in their prompts"
        );
        let got = logits(&half.model, ids, &device);
        if !keel_gemm::rounds_activations() {
            f32_reference.check(&got, FACTOR, &format!("bf16 base widened, prompt {p}"));
            continue;
        }
        let (diff, at) = max_abs_diff(&got, expected);
        eprintln!(
            "bf16 base, {} tokens: max |keel - transformers| = {diff:.2e}",
            ids.len()
        );
        assert!(
            diff <= BF16_TOLERANCE,
            "{} tokens: max |keel - transformers| = {diff} at {at} (keel {}, transformers {})",
            ids.len(),
            got[at],
            expected[at]
        );
        // The check can fail: rounding moves the logits further than that.
        assert!(max_abs_diff(&got, &f32_reference.f32).0 > 10.0 * BF16_TOLERANCE);
    }
}
