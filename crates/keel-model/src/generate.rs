//! Autoregressive generation with a KV cache: greedy, or temperature and
//! top-p sampling from a seeded generator.

use burn::tensor::{Int, Tensor, TensorData};

use keel_adapters::rng::SplitMix64 as Rng;

use crate::llama::Llama;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Sample only from the smallest set of tokens whose probability reaches this.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// The first index of the largest value, as `torch.argmax` picks.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let t = s.temperature as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l as f64 - max) / t).exp()))
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (i, p) in probs.iter().enumerate() {
        kept += p.1 / total;
        if kept >= s.top_p as f64 {
            cut = i + 1;
            break;
        }
    }
    let probs = &probs[..cut];
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut r = rng.next_f64() * mass;
    for &(id, p) in probs {
        r -= p;
        if r <= 0.0 {
            return id;
        }
    }
    probs[probs.len() - 1].0
}

/// Generates up to `max_new_tokens` after `prompt`, stopping after any token
/// in `stop`. `on_token` sees each token as it is chosen (for streaming).
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    max_new_tokens: usize,
    sampling: &Sampling,
    stop: &[u32],
    mut on_token: impl FnMut(u32),
) -> Vec<u32> {
    let device = model.embed_tokens.val().device();
    let mut rng = Rng(sampling.seed);
    let mut cache = model.new_cache();
    let mut out = Vec::new();
    let mut input: Vec<u32> = prompt.to_vec();
    while out.len() < max_new_tokens && !input.is_empty() {
        let n = input.len();
        let ids: Vec<i64> = input.iter().map(|&t| t as i64).collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
        let hidden = model.forward_hidden(tokens, Some(&mut cache));
        let logits = model.logits(hidden.narrow(1, n - 1, 1));
        let logits: Vec<f32> = logits.try_into_vec_as::<f32>().expect("logits are float");
        let next = sample(&logits, sampling, &mut rng);
        out.push(next);
        on_token(next);
        if stop.contains(&next) {
            break;
        }
        input = vec![next];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // One token holds ~88% of the mass: top_p 0.5 must always pick it.
        let logits = [5.0, 3.0, 0.0, 0.0];
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.5,
            seed: 7,
        };
        let mut rng = Rng(7);
        assert!((0..200).all(|_| sample(&logits, &s, &mut rng) == 0));
    }

    #[test]
    fn sampling_is_seeded() {
        let logits = [1.0, 1.1, 0.9, 1.05];
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            seed: 3,
        };
        let draw = |seed| {
            let mut rng = Rng(seed);
            (0..50)
                .map(|_| sample(&logits, &s, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        // Every token is reachable at temperature 1.
        let seen = draw(3);
        assert!((0..4).all(|t| seen.contains(&t)));
    }
}
