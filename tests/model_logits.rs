//! keel's forward pass against HF transformers on tiny random checkpoints
//! (made by `scripts/make_fixtures.py`): Llama (transformers-5 config),
//! Llama 3 rope scaling with tied bf16 weights, Qwen2 with q/k/v biases in
//! sharded f16 files, and Mistral.

mod common;

use burn::tensor::Device;
use common::{fixture, load_tiny, logits, max_abs_diff, read_json, reference_logits, u32s};
use keel_model::Sampling;

const FIXTURES: [&str; 4] = ["tiny-llama", "tiny-llama3", "tiny-qwen2", "tiny-mistral"];
/// f32 against f32, on logits of magnitude up to 18 from weights of std 0.5
/// (large attention scores amplify rounding). Measured on flex: at most
/// 6.2e-5 (19-token prompts).
const FLEX_TOLERANCE: f32 = 1e-4;
/// wgpu sums in another order; on Mesa lavapipe the worst case measured is
/// 2.2e-4 (tiny-llama3, 19 tokens). Its fused attention, checked alone
/// against an f64 reference, is as accurate as flex's: the gap is ordinary
/// f32 rounding amplified through three layers, not a wrong kernel.
const WGPU_TOLERANCE: f32 = 3e-4;

fn check_logits(device: &Device, tolerance: f32) {
    for name in FIXTURES {
        let model = load_tiny(name, device);
        for (p, (ids, expected)) in reference_logits(&fixture(name).join("logits.json"))
            .iter()
            .enumerate()
        {
            let got = logits(&model, ids, device);
            let (diff, at) = max_abs_diff(&got, expected);
            assert!(
                diff <= tolerance,
                "{name}, prompt {p} ({} tokens): max |keel - transformers| = {diff} at {at} (keel {}, transformers {})",
                ids.len(),
                got[at],
                expected[at]
            );
            // The check must be able to fail: the logits are far from zero.
            assert!(
                expected.iter().any(|v| v.abs() > 1.0),
                "{name}: degenerate reference"
            );
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
fn check_batched(device: &Device, tolerance: f32) {
    for name in FIXTURES {
        let model = load_tiny(name, device);
        let reference = reference_logits(&fixture(name).join("logits.json"));
        let prompts: Vec<Vec<u32>> = reference.iter().map(|(ids, _)| ids.clone()).collect();
        assert!(
            prompts.iter().any(|p| p.len() != prompts[0].len()),
            "{name}: the batch needs prompts of different lengths"
        );
        let (_, last) = keel_model::prefill(&model, &prompts, |_, _| {});
        for (p, ((ids, expected), got)) in reference.iter().zip(&last).enumerate() {
            let want = &expected[expected.len() - got.len()..];
            let (diff, _) = max_abs_diff(got, want);
            assert!(
                diff <= tolerance,
                "{name}, prompt {p} ({} tokens) in a padded batch: max diff {diff}",
                ids.len()
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
    check_batched(&Device::flex(), FLEX_TOLERANCE);
}

#[test]
fn logits_match_transformers_on_flex() {
    check_logits(&Device::flex(), FLEX_TOLERANCE);
}

#[test]
fn greedy_generation_with_kv_cache_matches_transformers_on_flex() {
    check_greedy(&Device::flex());
}

#[test]
fn logits_match_transformers_on_wgpu() {
    if let Some(device) = common::wgpu_device() {
        check_logits(&device, WGPU_TOLERANCE);
    }
}

#[test]
fn greedy_generation_with_kv_cache_matches_transformers_on_wgpu() {
    if let Some(device) = common::wgpu_device() {
        check_greedy(&device);
    }
}

/// A base stored in bf16: tiny-llama3's weights are bf16 on disk, so storing
/// them in bf16 loses nothing. Where the CPU has AVX-512 BF16, keel-gemm
/// rounds each product's input to bf16 too and accumulates in f32; the
/// reference is transformers with every `nn.Linear`'s input rounded so
/// (`logits_bf16.json`). Elsewhere a bf16 weight is upcast and the logits
/// are bit-identical to the f32-stored model's.
#[test]
fn bf16_stored_base_computes_in_bf16() {
    let device = Device::flex();
    let source = || keel_model::ModelSource::open(&fixture("tiny-llama3")).unwrap();
    let half = source()
        .load_as(&device, burn::tensor::DType::BF16)
        .unwrap();
    let full = source().load(&device).unwrap();
    assert_eq!(
        half.model.linears()[0].1.weight.val().dtype(),
        burn::tensor::DType::BF16
    );
    let rounded = reference_logits(&fixture("tiny-llama3/logits_bf16.json"));
    let upcast = reference_logits(&fixture("tiny-llama3/logits.json"));
    for ((ids, expected), (f32_ids, f32_logits)) in rounded.iter().zip(&upcast) {
        assert_eq!(
            ids, f32_ids,
            "logits_bf16.json and logits.json differ in their prompts"
        );
        let got = logits(&half.model, ids, &device);
        if !keel_gemm::available() {
            assert_eq!(got, logits(&full.model, ids, &device));
            continue;
        }
        let (diff, at) = max_abs_diff(&got, expected);
        assert!(
            diff <= FLEX_TOLERANCE,
            "{} tokens: max |keel - transformers| = {diff} at {at} (keel {}, transformers {})",
            ids.len(),
            got[at],
            expected[at]
        );
        // The check can fail: rounding moves the logits further than that.
        assert!(max_abs_diff(&got, f32_logits).0 > 10.0 * FLEX_TOLERANCE);
    }
}
