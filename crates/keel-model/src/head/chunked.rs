//! The frozen head's target log-probabilities a chunk of rows at a time,
//! composed from any backend's own ops (on wgpu, Burn's CubeCL kernels):
//! what flex's fused head computes, so a GPU holds `[chunk, vocab]` logits
//! instead of `[tokens, vocab]` logits, log-softmax and gradient. As on
//! flex, each row's gradient `W[t] − softmax·W` is computed in the forward
//! pass and kept (`[tokens, hidden]`); backward only scales it.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, FloatDType, TensorMetadata};
use burn::tensor::{Shape, Slice};

use super::CHUNK;

/// `log p(targets)` `[n]` for `hidden [n, d]` and `w` (`[vocab, d]` when
/// `vocab_major`, else `[d, vocab]`; cast to f32 here), with the Jacobian
/// `[n, d]` where asked.
pub(super) fn log_probs<B: Backend>(
    hidden: FloatTensor<B>,
    w: FloatTensor<B>,
    vocab_major: bool,
    targets: IntTensor<B>,
    jacobian: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let w = B::float_cast(w, FloatDType::F32);
    // `[vocab, d]`, and `[d, vocab]` for the logits: views of one weight.
    let (w_vd, w_dv) = match vocab_major {
        true => (w.clone(), B::float_swap_dims(w, 0, 1)),
        false => (B::float_swap_dims(w.clone(), 0, 1), w),
    };
    let n = hidden.shape().dims::<2>()[0];
    let (mut log_p, mut jac) = (Vec::new(), Vec::new());
    for start in (0..n).step_by(CHUNK) {
        let rows = start..(start + CHUNK).min(n);
        let c = rows.len();
        let h = B::float_slice(hidden.clone(), &[rows.clone().into(), Slice::full()]);
        let t = B::int_slice(targets.clone(), &[rows.into()]);
        let logits = B::float_matmul(h, w_dv.clone());
        let shape = logits.shape();
        let m = B::float_max_dim(logits.clone(), 1);
        let e = B::float_exp(B::float_sub(
            logits.clone(),
            B::float_expand(m.clone(), shape.clone()),
        ));
        let lse = B::float_add(m, B::float_log(B::float_sum_dim(e, 1)));
        if jacobian {
            let p = B::float_exp(B::float_sub(
                logits.clone(),
                B::float_expand(lse.clone(), shape),
            ));
            let expected = B::float_matmul(p, w_vd.clone());
            jac.push(B::float_sub(
                B::float_select(w_vd.clone(), 0, t.clone()),
                expected,
            ));
        }
        let target = B::float_gather(1, logits, B::int_reshape(t, Shape::new([c, 1])));
        log_p.push(B::float_reshape(B::float_sub(target, lse), Shape::new([c])));
    }
    let jac = jacobian.then(|| B::float_cat(jac, 0));
    (B::float_cat(log_p, 0), jac)
}

/// The input gradient: the kept Jacobian `[n, d]` scaled by `dy [n]`.
pub(super) fn scale<B: Backend>(jac: FloatTensor<B>, dy: FloatTensor<B>) -> FloatTensor<B> {
    let shape = jac.shape();
    let n = shape.dims::<2>()[0];
    let dy = B::float_reshape(dy, Shape::new([n, 1]));
    B::float_mul(jac, B::float_expand(dy, shape))
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::backend::ops::{FloatTensorOps, IntTensorOps};
    use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

    use super::*;

    /// On flex's ops, the chunked head's log-probabilities equal
    /// log-softmax-and-gather, and its Jacobian is `W[t] − softmax·W`.
    #[test]
    fn chunked_head_on_flex_ops() {
        let uniform = Distribution::Uniform(-2.0, 2.0);
        let (n, d, vocab) = (300, 24, 50);
        let flex = Device::flex();
        let h = Tensor::<2>::random([n, d], uniform, &flex);
        let w = Tensor::<2>::random([vocab, d], uniform, &flex);
        let ids: Vec<i64> = (0..n).map(|i| (i * 7 % vocab) as i64).collect();
        let t = Tensor::<1, Int>::from_data(TensorData::new(ids.clone(), [n]), &flex);
        let logits = h.clone().matmul(w.clone().transpose());
        let log_softmax = burn::tensor::activation::log_softmax(logits, 1);
        let want = log_softmax
            .clone()
            .gather(1, t.clone().unsqueeze_dim(1))
            .squeeze_dim::<1>(1);
        let jac_want = w.clone().select(0, t.clone()) - log_softmax.exp().matmul(w.clone());
        let dev = Default::default();
        let (got, jac) = log_probs::<Flex>(
            Flex::float_from_data(h.into_data(), &dev),
            Flex::float_from_data(w.into_data(), &dev),
            true,
            Flex::int_from_data(t.into_data(), &dev),
            true,
        );
        let values = |t: FloatTensor<Flex>| t.to_contiguous().as_slice::<f32>().unwrap().to_vec();
        for ((got, want), what) in [
            (values(got), want),
            (values(jac.unwrap()), jac_want.reshape([n * d])),
        ]
        .into_iter()
        .zip(["log-probabilities", "Jacobian"])
        {
            let want: Vec<f32> = want.into_data().try_to_vec().unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() < 1e-4, "{what} {i}: {g}, expected {w}");
            }
        }
    }
}
