//! Causal attention that never holds a `[heads, seq, seq]` tensor: a block
//! of queries at a time, composed from any backend's own ops (on wgpu,
//! Burn's CubeCL kernels). Forward keeps the output and one log-sum-exp per
//! query; backward recomputes each block's probabilities from them, as
//! keel-gemm's flex kernel does. What a block holds is `[heads, block,
//! keys]`, so the peak falls from three `seq × seq` tensors per head
//! (Burn's composed attention under autodiff) to a few `block × seq`.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, FloatDType, Scalar, TensorMetadata};
use burn::tensor::{IntDType, Shape, Slice};

/// Queries per block.
pub(super) const BLOCK: usize = 256;

/// Head-major views of token-major `[batch, seq, heads, head_dim]` inputs,
/// keys and values expanded to the query heads.
struct Heads<B: Backend> {
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    kv_heads: usize,
    scale: f32,
}

impl<B: Backend> Heads<B> {
    fn new(q: FloatTensor<B>, k: FloatTensor<B>, v: FloatTensor<B>) -> Self {
        let [_, _, heads, head_dim] = q.shape().dims::<4>();
        let kv_heads = k.shape().dims::<4>()[2];
        let expand = |t: FloatTensor<B>| {
            let t = B::float_swap_dims(t, 1, 2);
            let [b, kv, s, d] = t.shape().dims::<4>();
            let rep = heads / kv;
            if rep == 1 {
                return t;
            }
            let t = B::float_reshape(t, Shape::new([b, kv, 1, s, d]));
            let t = B::float_expand(t, Shape::new([b, kv, rep, s, d]));
            B::float_reshape(t, Shape::new([b, heads, s, d]))
        };
        Heads {
            q: B::float_swap_dims(q, 1, 2),
            k: expand(k),
            v: expand(v),
            kv_heads,
            scale: (head_dim as f32).sqrt().recip(),
        }
    }

    fn seq(&self) -> usize {
        self.q.shape().dims::<4>()[2]
    }

    /// The scaled, masked scores of queries `rows` against keys
    /// `0..rows.end` (the later keys are all masked): `[b, h, rows, keys]`.
    fn scores(&self, rows: std::ops::Range<usize>) -> FloatTensor<B> {
        let q = rows_of::<B>(self.q.clone(), rows.clone());
        let k = rows_of::<B>(self.k.clone(), 0..rows.end);
        let s = B::float_matmul(q, B::float_swap_dims(k, 2, 3));
        let s = B::float_mul_scalar(s, Scalar::from(self.scale));
        let mask = causal_mask::<B>(rows, &s.device());
        let shape = s.shape();
        B::float_add(s, B::float_expand(mask, shape))
    }
}

/// `[1, 1, rows, keys]`, keys `0..rows.end`: 0 where key `j ≤` query `i`,
/// else `−1e30 · (j − i)`, whose exp is exactly 0, as −∞'s. Made on the
/// device from two ranges: uploading it would move `rows × keys` floats a
/// block, forward and backward.
fn causal_mask<B: Backend>(rows: std::ops::Range<usize>, device: &B::Device) -> FloatTensor<B> {
    let shape = Shape::new([1, 1, rows.len(), rows.end]);
    let range = |r: std::ops::Range<usize>, dims: [usize; 4]| {
        let t = B::int_arange(r.start as i64..r.end as i64, device, IntDType::I32);
        let t = B::int_into_float(t, FloatDType::F32);
        B::float_expand(B::float_reshape(t, Shape::new(dims)), shape.clone())
    };
    let i = range(rows.clone(), [1, 1, rows.len(), 1]);
    let j = range(0..rows.end, [1, 1, 1, rows.end]);
    let later = B::float_mul_scalar(B::float_sub(i, j), Scalar::from(1e30f32));
    B::float_clamp_max(later, Scalar::from(0.0f32))
}

/// Rows `rows` of dimension 2 of a `[b, h, seq, x]` tensor.
fn rows_of<B: Backend>(t: FloatTensor<B>, rows: std::ops::Range<usize>) -> FloatTensor<B> {
    B::float_slice(
        t,
        &[Slice::full(), Slice::full(), rows.into(), Slice::full()],
    )
}

/// `a ⊙ b` with `b` broadcast along the last dimension.
fn broadcast<B: Backend>(
    op: fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
    a: FloatTensor<B>,
    b: FloatTensor<B>,
) -> FloatTensor<B> {
    let shape = a.shape();
    op(a, B::float_expand(b, shape))
}

fn blocks(seq: usize, block: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..seq)
        .step_by(block)
        .map(move |r| r..(r + block).min(seq))
}

/// The output `[batch, seq, heads, head_dim]` and the log-sum-exps
/// `[batch, heads, seq, 1]`.
pub(super) fn forward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    block: usize,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let h = Heads::<B>::new(q, k, v);
    let (mut out, mut lse) = (Vec::new(), Vec::new());
    for rows in blocks(h.seq(), block) {
        let s = h.scores(rows.clone());
        let m = B::float_max_dim(s.clone(), 3);
        let p = B::float_exp(broadcast::<B>(B::float_sub, s, m.clone()));
        let l = B::float_sum_dim(p.clone(), 3);
        let o = B::float_matmul(p, rows_of::<B>(h.v.clone(), 0..rows.end));
        out.push(broadcast::<B>(B::float_div, o, l.clone()));
        lse.push(B::float_add(m, B::float_log(l)));
    }
    let out = B::float_swap_dims(B::float_cat(out, 2), 1, 2);
    (out, B::float_cat(lse, 2))
}

/// The gradients of the queries, keys and values (shaped as they are) from
/// the output's gradient `dout`, recomputing each block's probabilities.
pub(super) fn backward<B: Backend>(
    (q, k, v): (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>),
    (out, lse): (FloatTensor<B>, FloatTensor<B>),
    dout: FloatTensor<B>,
    block: usize,
) -> [FloatTensor<B>; 3] {
    let h = Heads::<B>::new(q, k, v);
    let (out, dout) = (
        B::float_swap_dims(out, 1, 2),
        B::float_swap_dims(dout, 1, 2),
    );
    let shape = h.k.shape();
    let zeros = || B::float_zeros(shape.clone(), &h.k.device(), FloatDType::F32);
    let (mut dq, mut dk, mut dv) = (Vec::new(), zeros(), zeros());
    // Adds `x` to rows `0..end` of `acc`.
    let accumulate = |acc: FloatTensor<B>, end: usize, x: FloatTensor<B>| {
        let prefix = [Slice::full(), Slice::full(), (0..end).into(), Slice::full()];
        let sum = B::float_add(B::float_slice(acc.clone(), &prefix), x);
        B::float_slice_assign(acc, &prefix, sum)
    };
    for rows in blocks(h.seq(), block) {
        let s = h.scores(rows.clone());
        let lse = rows_of::<B>(lse.clone(), rows.clone());
        let p = B::float_exp(broadcast::<B>(B::float_sub, s, lse));
        let (d_o, o) = (
            rows_of::<B>(dout.clone(), rows.clone()),
            rows_of::<B>(out.clone(), rows.clone()),
        );
        let v = rows_of::<B>(h.v.clone(), 0..rows.end);
        dv = accumulate(
            dv,
            rows.end,
            B::float_matmul(B::float_swap_dims(p.clone(), 2, 3), d_o.clone()),
        );
        let dp = B::float_matmul(d_o.clone(), B::float_swap_dims(v, 2, 3));
        let delta = B::float_sum_dim(B::float_mul(d_o, o), 3);
        let ds = B::float_mul(p, broadcast::<B>(B::float_sub, dp, delta));
        let ds = B::float_mul_scalar(ds, Scalar::from(h.scale));
        let k = rows_of::<B>(h.k.clone(), 0..rows.end);
        dq.push(B::float_matmul(ds.clone(), k));
        let q = rows_of::<B>(h.q.clone(), rows.clone());
        dk = accumulate(
            dk,
            rows.end,
            B::float_matmul(B::float_swap_dims(ds, 2, 3), q),
        );
    }
    // Each key/value head's gradient sums its group of query heads.
    let kv_heads = h.kv_heads;
    let fold = |t: FloatTensor<B>| {
        let [b, heads, s, d] = t.shape().dims::<4>();
        let t = B::float_reshape(t, Shape::new([b, kv_heads, heads / kv_heads, s, d]));
        let t = B::float_reshape(B::float_sum_dim(t, 2), Shape::new([b, kv_heads, s, d]));
        B::float_swap_dims(t, 1, 2)
    };
    [
        B::float_swap_dims(B::float_cat(dq, 2), 1, 2),
        fold(dk),
        fold(dv),
    ]
}
