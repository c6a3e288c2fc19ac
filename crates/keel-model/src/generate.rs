//! Autoregressive generation with a KV cache: greedy, or temperature and
//! top-p sampling from a seeded generator.

use burn::tensor::{Int, Tensor, TensorData};

use keel_adapters::rng::{self, Draw, SplitMix64};

use crate::llama::{KvCache, Llama};

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

fn sample(logits: &[f32], s: &Sampling, rng: &mut SplitMix64) -> u32 {
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
    let prompts = [prompt.to_vec()];
    let mut out = generate_batch(model, &prompts, max_new_tokens, sampling, stop, |_, t| {
        on_token(t)
    });
    out.pop().unwrap_or_default()
}

/// Answers for several prompts at once, left-padded into one batch: the
/// same tokens as one at a time, several times faster. `on_token(row,
/// token)` streams.
pub fn generate_batch(
    model: &Llama,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    sampling: &Sampling,
    stop: &[u32],
    on_token: impl FnMut(usize, u32),
) -> Vec<Vec<u32>> {
    let (cache, logits) = prefill(model, prompts, |_, _| {});
    decode(
        model,
        cache,
        logits,
        max_new_tokens,
        sampling,
        stop,
        on_token,
    )
}

/// Runs `prompts`, left-padded, through the model: the cache and each
/// row's next-token logits (empty for an empty prompt). `tap` sees the
/// residual stream after each layer at every row's last prompt position,
/// `[rows, 1, hidden]`.
pub fn prefill(
    model: &Llama,
    prompts: &[Vec<u32>],
    mut tap: impl FnMut(usize, Tensor<3>),
) -> (KvCache, Vec<Vec<f32>>) {
    let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let pads: Vec<usize> = prompts.iter().map(|p| len - p.len()).collect();
    let mut cache = KvCache::with_left_padding(model.layers.len(), pads.clone());
    if len == 0 {
        return (cache, vec![Vec::new(); prompts.len()]);
    }
    // Padding repeats each row's first token; it is masked from attention.
    let ids: Vec<u32> = prompts
        .iter()
        .zip(&pads)
        .flat_map(|(p, &pad)| {
            std::iter::repeat_n(p.first().copied().unwrap_or(0), pad).chain(p.iter().copied())
        })
        .collect();
    let hidden = model.forward_hidden_tapped(
        token_tensor(model, &ids, prompts.len()),
        Some(&mut cache),
        |i, x| tap(i, x.clone().narrow(1, len - 1, 1)),
    );
    let logits = last_logits(model, hidden);
    let logits = prompts
        .iter()
        .zip(logits)
        .map(|(p, l)| if p.is_empty() { Vec::new() } else { l })
        .collect();
    (cache, logits)
}

/// Continues every row of a prefilled batch: `logits[i]` are row `i`'s
/// next-token logits (empty: the row generates nothing). Rows stop after a
/// token in `stop` or at `max_new_tokens`; `on_token(row, token)` streams.
/// Row `i` samples with seed `sampling.seed + i`.
pub fn decode(
    model: &Llama,
    mut cache: KvCache,
    mut logits: Vec<Vec<f32>>,
    max_new_tokens: usize,
    sampling: &Sampling,
    stop: &[u32],
    mut on_token: impl FnMut(usize, u32),
) -> Vec<Vec<u32>> {
    let rows = logits.len();
    let mut rngs: Vec<SplitMix64> = (0..rows as u64)
        .map(|i| rng::seeded(sampling.seed.wrapping_add(i)))
        .collect();
    let mut out = vec![Vec::new(); rows];
    let mut done: Vec<bool> = logits.iter().map(Vec::is_empty).collect();
    if max_new_tokens == 0 {
        return out;
    }
    loop {
        let mut next = Vec::with_capacity(rows);
        for i in 0..rows {
            if done[i] {
                // A finished row keeps the batch rectangular; its tokens are dropped.
                next.push(out[i].last().copied().unwrap_or(0));
                continue;
            }
            let t = sample(&logits[i], sampling, &mut rngs[i]);
            out[i].push(t);
            on_token(i, t);
            done[i] = stop.contains(&t) || out[i].len() == max_new_tokens;
            next.push(t);
        }
        if done.iter().all(|&d| d) {
            return out;
        }
        let hidden = model.forward_hidden(token_tensor(model, &next, rows), Some(&mut cache));
        logits = last_logits(model, hidden);
    }
}

/// `ids` as a `[rows, ids.len() / rows]` token batch on the model's device.
pub fn token_tensor(model: &Llama, ids: &[u32], rows: usize) -> Tensor<2, Int> {
    let device = model.device();
    let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    let n = ids.len() / rows;
    Tensor::from_data(TensorData::new(ids, [rows, n]), &device)
}

/// Each row's logits at the last position of `hidden` `[rows, seq, hidden]`.
pub fn last_logits(model: &Llama, hidden: Tensor<3>) -> Vec<Vec<f32>> {
    let [rows, n, _] = hidden.dims();
    let flat: Vec<f32> = model
        .logits(hidden.narrow(1, n - 1, 1))
        .try_into_vec_as::<f32>()
        .expect("logits are float");
    let vocab = flat.len() / rows;
    flat.chunks(vocab).map(<[f32]>::to_vec).collect()
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
        let mut rng = rng::seeded(7);
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
            let mut rng = rng::seeded(seed);
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
