use burn::tensor::Tensor;
use burn::tensor::activation::log_sigmoid;

/// Sum over positions of `-log p(target) · weight`: next-token cross
/// entropy on the trained tokens only. Divide by the weight sum for the mean.
pub fn weighted_nll(log_p: Tensor<2>, weights: Tensor<2>) -> Tensor<1> {
    log_p.mul(weights).sum().neg()
}

/// Token-wise constrained SFT (Qi et al. 2024, "Safety Alignment Should Be
/// Made More Than Just a Few Tokens Deep", eq. 3): per trained token
/// `−(2/β_t) log σ(β_t · (log π(y_t) − log π_ref(y_t)))`, weighted and
/// summed. Small β is plain SFT; large β holds the token's probability
/// near the reference's. `betas` must be positive everywhere.
pub fn constrained_sft(
    log_p: Tensor<2>,
    ref_log_p: Tensor<2>,
    betas: Tensor<2>,
    weights: Tensor<2>,
) -> Tensor<1> {
    let z = log_p.sub(ref_log_p).mul(betas.clone());
    log_sigmoid(z)
        .div(betas)
        .mul(weights)
        .sum()
        .mul_scalar(-2.0)
}

/// The paper's schedule by position `t` (1-based) in the response: the
/// first tokens, where shallow alignment lives, are held hardest.
pub fn beta_at(t: usize) -> f32 {
    match t {
        1 => 0.5,
        2..=5 => 2.0,
        _ => 0.1,
    }
}

/// β per position of a `[rows, seq]` weight mask: trained tokens are
/// numbered from 1 along each row; untrained positions get 1 (their weight
/// is 0).
pub fn response_betas(weights: &[f32], seq: usize) -> Vec<f32> {
    weights
        .chunks(seq)
        .flat_map(|row| {
            let mut t = 0;
            row.iter()
                .map(move |&w| {
                    if w > 0.0 {
                        t += 1;
                        beta_at(t)
                    } else {
                        1.0
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t2(v: &[f32]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [1, v.len()]), &Device::flex())
    }

    #[test]
    fn betas_follow_the_response_position() {
        let w = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0];
        assert_eq!(
            response_betas(&w, 10),
            vec![1.0, 1.0, 0.5, 2.0, 2.0, 2.0, 2.0, 0.1, 1.0, 0.1]
        );
        // Rows are numbered separately.
        assert_eq!(
            response_betas(&[1.0, 1.0, 1.0, 0.0], 2),
            vec![0.5, 2.0, 0.5, 1.0]
        );
    }

    #[test]
    fn constrained_sft_matches_its_formula_and_tends_to_sft() {
        let (lp, rf) = ([-1.0f32, -2.0, -0.5], [-1.5f32, -1.0, -0.5]);
        let betas = [0.5f32, 2.0, 0.1];
        let got = constrained_sft(t2(&lp), t2(&rf), t2(&betas), t2(&[1.0, 1.0, 0.0]))
            .into_scalar::<f32>() as f64;
        let f = |l: f32, r: f32, b: f32| {
            let z = (b * (l - r)) as f64;
            -(2.0 / b as f64) * (1.0 / (1.0 + (-z).exp())).ln()
        };
        let want = f(lp[0], rf[0], betas[0]) + f(lp[1], rf[1], betas[1]);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // As β → 0 the gradient in log π is SFT's: −1 per token. Compare
        // two nearby log π under a tiny β: the slope is −1 (plus a constant).
        let small = |l: f32| {
            constrained_sft(t2(&[l]), t2(&[-1.0]), t2(&[1e-3]), t2(&[1.0])).into_scalar::<f32>()
                as f64
        };
        let slope = (small(-0.9) - small(-1.1)) / 0.2;
        assert!((slope + 1.0).abs() < 1e-2, "{slope}");
    }
}
