//! KL(base ‖ adapted) of next-token distributions, teacher-forced along the
//! base model's own answer: how far adaptation moved the model where the
//! base was going. Averaged over the first response positions.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use keel_model::{Llama, token_tensor};

/// Per position, KL(p ‖ q) in nats of two `[rows, seq, vocab]` logit
/// tensors, `[rows, seq]`; differentiable in both (the trainer's KL
/// anchors use it as a loss).
pub fn token_kl(p_logits: Tensor<3>, q_logits: Tensor<3>) -> Tensor<2> {
    let (lp, lq) = (log_softmax(p_logits, 2), log_softmax(q_logits, 2));
    lp.clone()
        .exp()
        .mul(lp.sub(lq))
        .sum_dim(2)
        .squeeze_dim::<2>(2)
}

/// [`token_kl`] on the host, flattened.
fn kl_per_position(p_logits: Tensor<3>, q_logits: Tensor<3>) -> Vec<f32> {
    token_kl(p_logits, q_logits)
        .try_into_vec_as()
        .expect("float")
}

/// One prompt to score: its tokens, the base's answer, and how many
/// response positions to average over.
pub struct Along<'a> {
    pub prompt: &'a [u32],
    pub answer: &'a [u32],
    pub positions: usize,
}

/// Mean KL over the first `positions` tokens of each answer (all of them
/// if shorter), in one right-padded batch; `None` where nothing is scored.
pub fn along(base: &Llama, adapted: &Llama, rows: &[Along]) -> Vec<Option<f64>> {
    let m: Vec<usize> = rows
        .iter()
        .map(|r| r.positions.min(r.answer.len()))
        .collect();
    let seqs: Vec<Vec<u32>> = rows
        .iter()
        .zip(&m)
        .map(|(r, &m)| {
            r.prompt
                .iter()
                .chain(&r.answer[..m.saturating_sub(1)])
                .copied()
                .collect()
        })
        .collect();
    let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
    if len == 0 {
        return vec![None; rows.len()];
    }
    let ids: Vec<u32> = seqs
        .iter()
        .flat_map(|s| {
            s.iter()
                .copied()
                .chain(std::iter::repeat_n(0, len - s.len()))
        })
        .collect();
    let tokens = token_tensor(base, &ids, rows.len());
    let kl = kl_per_position(base.forward(tokens.clone()), adapted.forward(tokens));
    rows.iter()
        .zip(&m)
        .enumerate()
        .map(|(i, (r, &m))| {
            if m == 0 || r.prompt.is_empty() {
                return None;
            }
            let from = i * len + r.prompt.len() - 1;
            let scored = &kl[from..from + m];
            Some(scored.iter().map(|&v| v.max(0.0) as f64).sum::<f64>() / m as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// `[1, positions, vocab]` logits from rows of probabilities.
    fn logits_of(probs: &[&[f64]]) -> Tensor<3> {
        let v = probs[0].len();
        let flat: Vec<f32> = probs
            .iter()
            .flat_map(|p| p.iter().map(|x| x.ln() as f32))
            .collect();
        let device = keel_model::DeviceChoice::Flex.device().expect("flex");
        Tensor::from_data(TensorData::new(flat, [1, probs.len(), v]), &device)
    }

    #[test]
    fn kl_of_equal_and_known_distributions() {
        let p: &[f64] = &[0.5, 0.5];
        let q: &[f64] = &[0.8, 0.2];
        let kl = kl_per_position(logits_of(&[p, p]), logits_of(&[p, q]));
        assert_eq!(kl[0], 0.0);
        let want = 0.5 * (0.5f64 / 0.8).ln() + 0.5 * (0.5f64 / 0.2).ln();
        assert!((kl[1] as f64 - want).abs() < 1e-6, "{} vs {want}", kl[1]);
        // Not symmetric.
        let back = kl_per_position(logits_of(&[q]), logits_of(&[p]));
        assert!((back[0] as f64 - want).abs() > 1e-3);
    }
}
