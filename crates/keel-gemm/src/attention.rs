//! Causal self-attention, forward and backward, that never keeps the
//! `[seq, seq]` probabilities: forward saves each query's log-sum-exp and
//! backward rebuilds the probabilities from it (FlashAttention's
//! recomputation, Dao et al. 2022). Burn's autodiff attention keeps several
//! `[batch, heads, seq, seq]` tensors per layer and walks them with scalar
//! elementwise ops.
//!
//! Queries come in blocks of [`BLOCK`] rows, and a block multiplies only
//! the keys up to its last row, so the masked upper triangle is mostly
//! skipped. Grouped-query heads read their shared key/value head in place.
//! A task owns one query head of one sequence, so tasks write disjoint
//! elements; in backward each writes its own partial key/value gradients,
//! which a last pass sums over the heads of a group.

use rayon::prelude::*;

use crate::softmax::{exp_nonpositive, softmax_in_place};
use crate::{Tier, tier, vectorised};

/// Query rows per block.
const BLOCK: usize = 64;

/// The shapes of a causal self-attention. Every tensor is token-major and
/// contiguous: queries and outputs `[batch, seq, heads, head_dim]`, keys and
/// values `[batch, seq, kv_heads, head_dim]`, log-sum-exps
/// `[batch, heads, seq]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// Elements of a query or output tensor.
    pub fn query_len(&self) -> usize {
        product(&[self.batch, self.seq, self.heads, self.head_dim])
    }

    /// Elements of a key or value tensor.
    pub fn kv_len(&self) -> usize {
        product(&[self.batch, self.seq, self.kv_heads, self.head_dim])
    }

    /// Elements of the log-sum-exps.
    pub fn lse_len(&self) -> usize {
        product(&[self.batch, self.heads, self.seq])
    }

    /// Checks the inputs and the forward's outputs, and `more`'s
    /// `(length, expected, name)`.
    fn check(
        &self,
        what: &str,
        (q, k, v): (&[f32], &[f32], &[f32]),
        (out, lse): (&[f32], &[f32]),
        more: &[(usize, usize, &str)],
    ) {
        assert!(
            self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads),
            "{what}: {} query heads do not share {} key/value heads evenly",
            self.heads,
            self.kv_heads
        );
        let lens = [
            (q.len(), self.query_len(), "q"),
            (k.len(), self.kv_len(), "k"),
            (v.len(), self.kv_len(), "v"),
            (out.len(), self.query_len(), "out"),
            (lse.len(), self.lse_len(), "lse"),
        ];
        for &(got, want, name) in lens.iter().chain(more) {
            assert_eq!(
                got, want,
                "{what}: {name} has {got} elements, expected {want}"
            );
        }
    }

    /// Offset of query row `i` of head `h` in sequence `b`.
    fn q(&self, b: usize, i: usize, h: usize) -> usize {
        ((b * self.seq + i) * self.heads + h) * self.head_dim
    }

    /// Offset of key/value row `j` of key/value head `g` in sequence `b`.
    fn kv(&self, b: usize, j: usize, g: usize) -> usize {
        ((b * self.seq + j) * self.kv_heads + g) * self.head_dim
    }

    /// Index of query `i`'s log-sum-exp, head `h`, sequence `b`.
    fn lse(&self, b: usize, h: usize, i: usize) -> usize {
        (b * self.heads + h) * self.seq + i
    }

    fn q_stride(&self) -> isize {
        (self.heads * self.head_dim) as isize
    }

    fn kv_stride(&self) -> isize {
        (self.kv_heads * self.head_dim) as isize
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// Query heads that share one key/value head.
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// `dst [m × n] = scale · x[r0..n] · y[0..n]ᵀ` with `n = r0 + m`: rows
    /// of query head `h` in sequence `b` (queries or output gradients)
    /// against those of its key/value head (keys or values).
    fn against_keys(
        &self,
        (b, h, r0, m): (usize, usize, usize, usize),
        x: &[f32],
        y: &[f32],
        scale: f32,
        dst: &mut [f32],
    ) {
        let n = r0 + m;
        assert!(
            n <= self.seq && dst.len() == m * n,
            "attention: a block out of shape"
        );
        // SAFETY: the entry points checked `x` against the query length and
        // `y` against the key/value length, so the views cover rows `r0..n`
        // and `0..n` of their heads; `dst` holds `m × n`.
        unsafe {
            matmul(
                (m, n, self.head_dim),
                dst.as_mut_ptr(),
                n as isize,
                false,
                View::rows(x, self.q(b, r0, h), self.q_stride()),
                View::transposed(y, self.kv(b, 0, h / self.group()), self.kv_stride()),
                scale,
            )
        }
    }

    /// Rows `r0..n` of query head `h` in sequence `b` of the query-shaped
    /// `dst` become `scale · a[m × n] · y[0..n]`, `y`'s rows those of the
    /// key/value head: outputs from probabilities and values, or query
    /// gradients from score gradients and keys.
    ///
    /// # Safety
    /// `dst` must hold the query length, and no other thread touch those rows.
    unsafe fn write_query_rows(
        &self,
        (b, h, r0, m): (usize, usize, usize, usize),
        a: &[f32],
        y: &[f32],
        scale: f32,
        dst: *mut f32,
    ) {
        let n = r0 + m;
        assert!(
            n <= self.seq && a.len() == m * n,
            "attention: a block out of shape"
        );
        // SAFETY: the entry points checked `y` against the key/value length,
        // so its view covers rows `0..n`; `dst` is the caller's.
        unsafe {
            matmul(
                (m, self.head_dim, n),
                dst.add(self.q(b, r0, h)),
                self.q_stride(),
                false,
                View::rows(a, 0, n as isize),
                View::rows(y, self.kv(b, 0, h / self.group()), self.kv_stride()),
                scale,
            )
        }
    }

    /// The query blocks: `(first row, rows)`; a block sees keys
    /// `0..first + rows`.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> {
        let seq = self.seq;
        (0..seq)
            .step_by(BLOCK)
            .map(move |r0| (r0, BLOCK.min(seq - r0)))
    }
}

/// `out = softmax(q kᵀ / √head_dim + causal mask) v`, and each query's
/// log-sum-exp of its scaled scores in `lse` (what the backward needs).
///
/// # Panics
/// If a length does not match `shape`, or the heads do not group evenly.
pub fn causal_attention(
    shape: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    lse: &mut [f32],
) {
    causal_attention_at(tier(), shape, (q, k, v), (out, lse))
}

fn causal_attention_at(
    tier: Tier,
    shape: AttentionShape,
    (q, k, v): (&[f32], &[f32], &[f32]),
    (out, lse): (&mut [f32], &mut [f32]),
) {
    shape.check("causal_attention", (q, k, v), (out, lse), &[]);
    let (out, lse) = (Shared(out.as_mut_ptr()), Shared(lse.as_mut_ptr()));
    (0..shape.batch * shape.heads)
        .into_par_iter()
        .for_each(|task| {
            let (b, h) = (task / shape.heads, task % shape.heads);
            // SAFETY: the lengths were checked; this task writes only the
            // rows of sequence `b`'s head `h`.
            vectorised(tier, || unsafe {
                forward_task(shape, b, h, q, k, v, out.get(), lse.get())
            })
        });
}

/// The gradients of [`causal_attention`] for the output gradient `dout`,
/// from its inputs, output and log-sum-exps; `dq`, `dk` and `dv` are
/// overwritten.
///
/// # Panics
/// If a length does not match `shape`, or the heads do not group evenly.
pub fn causal_attention_backward(
    shape: AttentionShape,
    (q, k, v): (&[f32], &[f32], &[f32]),
    (out, lse): (&[f32], &[f32]),
    dout: &[f32],
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
) {
    causal_attention_backward_at(tier(), shape, (q, k, v), (out, lse), dout, (dq, dk, dv))
}

fn causal_attention_backward_at(
    tier: Tier,
    shape: AttentionShape,
    (q, k, v): (&[f32], &[f32], &[f32]),
    (out, lse): (&[f32], &[f32]),
    dout: &[f32],
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
) {
    shape.check(
        "causal_attention_backward",
        (q, k, v),
        (out, lse),
        &[
            (dout.len(), shape.query_len(), "dout"),
            (dq.len(), shape.query_len(), "dq"),
            (dk.len(), shape.kv_len(), "dk"),
            (dv.len(), shape.kv_len(), "dv"),
        ],
    );
    // Each query head's share of its key/value head's gradients, `[seq, head_dim]`.
    let part = shape.seq * shape.head_dim;
    let (mut dk_part, mut dv_part) = (
        vec![0f32; shape.batch * shape.heads * part],
        vec![0f32; shape.batch * shape.heads * part],
    );
    let dq = Shared(dq.as_mut_ptr());
    dk_part
        .par_chunks_mut(part)
        .zip(dv_part.par_chunks_mut(part))
        .enumerate()
        .for_each(|(task, (dk, dv))| {
            let (b, h) = (task / shape.heads, task % shape.heads);
            // SAFETY: the lengths were checked; this task writes only the
            // `dq` rows of sequence `b`'s head `h`.
            vectorised(tier, || unsafe {
                backward_task(shape, b, h, [q, k, v, out, lse, dout], dq.get(), (dk, dv))
            })
        });
    // Sum the parts per key/value row: `[batch · seq]` rows of `kv_heads` heads.
    let (row, group, d) = (
        shape.kv_heads * shape.head_dim,
        shape.group(),
        shape.head_dim,
    );
    dk.par_chunks_mut(row)
        .zip(dv.par_chunks_mut(row))
        .enumerate()
        .for_each(|(r, (dk, dv))| {
            let (b, j) = (r / shape.seq, r % shape.seq);
            for (g, (dk, dv)) in dk
                .chunks_exact_mut(d)
                .zip(dv.chunks_exact_mut(d))
                .enumerate()
            {
                dk.fill(0.0);
                dv.fill(0.0);
                for h in g * group..(g + 1) * group {
                    let at = (b * shape.heads + h) * part + j * d;
                    dk.iter_mut()
                        .zip(&dk_part[at..at + d])
                        .for_each(|(a, x)| *a += x);
                    dv.iter_mut()
                        .zip(&dv_part[at..at + d])
                        .for_each(|(a, x)| *a += x);
                }
            }
        });
}

/// `Π dims`, which must not overflow: the lengths are what the bounds of
/// every view are checked against.
fn product(dims: &[usize]) -> usize {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .expect("attention: the shape's element count overflows")
}

/// An output pointer that tasks writing disjoint elements share.
#[derive(Clone, Copy)]
struct Shared(*mut f32);

// SAFETY: each task writes elements no other task touches.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Through a method, so closures capture the `Sync` wrapper rather than
    /// its raw pointer field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A strided matrix: element `(r, c)` at `ptr + r·rows + c·cols`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rows: isize,
    cols: isize,
}

impl View {
    /// Row-major with row stride `stride`, from `offset`.
    fn rows(data: &[f32], offset: usize, stride: isize) -> Self {
        View {
            ptr: data[offset..].as_ptr(),
            rows: stride,
            cols: 1,
        }
    }

    /// The transpose of [`View::rows`].
    fn transposed(data: &[f32], offset: usize, stride: isize) -> Self {
        View {
            ptr: data[offset..].as_ptr(),
            rows: 1,
            cols: stride,
        }
    }
}

/// `dst[m × n] = scale · lhs[m × k] · rhs[k × n]`, plus `dst` when
/// `accumulate`; `dst` row-major with row stride `dst_stride`. Single
/// threaded: the tasks (one per head and sequence) already fill the cores.
///
/// # Safety
/// Every view must cover its matrix, and `dst` its `m × n` elements.
#[inline(always)]
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_stride: isize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    scale: f32,
) {
    // SAFETY: the caller's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_stride,
            accumulate,
            lhs.ptr,
            lhs.cols,
            lhs.rows,
            rhs.ptr,
            rhs.cols,
            rhs.rows,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// # Safety
/// `out` and `lse` must hold `shape`'s elements, and no other thread may
/// touch the rows of sequence `b`'s head `h`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn forward_task(
    shape: AttentionShape,
    b: usize,
    h: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: *mut f32,
    lse: *mut f32,
) {
    let seq = shape.seq;
    let mut scores = vec![0f32; BLOCK * seq];
    for (r0, m) in shape.blocks() {
        let n = r0 + m;
        let scores = &mut scores[..m * n];
        shape.against_keys((b, h, r0, m), q, k, shape.scale(), scores);
        for (i, row) in scores.chunks_exact_mut(n).enumerate() {
            let (seen, future) = row.split_at_mut(r0 + i + 1);
            future.fill(0.0);
            // SAFETY: `lse` holds `[batch, heads, seq]`; this row is ours.
            unsafe { *lse.add(shape.lse(b, h, r0 + i)) = softmax_in_place(seen, true) };
        }
        // SAFETY: the output rows are this task's.
        unsafe { shape.write_query_rows((b, h, r0, m), scores, v, 1.0, out) };
    }
}

/// With `p = softmax(s)` and `dp` the gradient reaching `p`, the gradient
/// reaching the scores `s` is `p ∘ (dp − Σ p ∘ dp)`, and `Σ p ∘ dp` equals
/// `dout · out` for the row: one dot product of `head_dim` elements.
///
/// Head `h`'s key and value gradients go to `dk` and `dv`, `[seq,
/// head_dim]`, zeroed.
///
/// # Safety
/// `dq` must hold `shape`'s elements, and no other thread may touch the
/// rows of sequence `b`'s head `h`.
#[inline(always)]
unsafe fn backward_task(
    shape: AttentionShape,
    b: usize,
    h: usize,
    [q, k, v, out, lse, dout]: [&[f32]; 6],
    dq: *mut f32,
    (dk, dv): (&mut [f32], &mut [f32]),
) {
    let (seq, d) = (shape.seq, shape.head_dim);
    let (mut p, mut ds) = (vec![0f32; BLOCK * seq], vec![0f32; BLOCK * seq]);
    for (r0, m) in shape.blocks() {
        let n = r0 + m;
        let (p, ds) = (&mut p[..m * n], &mut ds[..m * n]);
        let query_rows = View::rows(q, shape.q(b, r0, h), shape.q_stride());
        let dout_rows = View::rows(dout, shape.q(b, r0, h), shape.q_stride());
        // The forward's scores exactly, then the gradient reaching the
        // probabilities.
        shape.against_keys((b, h, r0, m), q, k, shape.scale(), p);
        shape.against_keys((b, h, r0, m), dout, v, 1.0, ds);
        for (i, (p, ds)) in p
            .chunks_exact_mut(n)
            .zip(ds.chunks_exact_mut(n))
            .enumerate()
        {
            let at = shape.q(b, r0 + i, h);
            let dot: f32 = dout[at..at + d]
                .iter()
                .zip(&out[at..at + d])
                .map(|(a, b)| a * b)
                .sum();
            let lse = lse[shape.lse(b, h, r0 + i)];
            let seen = r0 + i + 1;
            for (p, ds) in p[..seen].iter_mut().zip(&mut ds[..seen]) {
                *p = exp_nonpositive(*p - lse);
                *ds = *p * (*ds - dot);
            }
            p[seen..].fill(0.0);
            ds[seen..].fill(0.0);
        }
        // SAFETY: the views cover their matrices; the rows written are
        // this task's.
        unsafe {
            shape.write_query_rows((b, h, r0, m), ds, k, shape.scale(), dq);
            matmul(
                (n, d, m),
                dk.as_mut_ptr(),
                d as isize,
                true,
                View::transposed(ds, 0, n as isize),
                query_rows,
                shape.scale(),
            );
            matmul(
                (n, d, m),
                dv.as_mut_ptr(),
                d as isize,
                true,
                View::transposed(p, 0, n as isize),
                dout_rows,
                1.0,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in about [-2, 2].
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 500.0)
            .collect()
    }

    /// The definition in f64: per head, scores, masked softmax, product;
    /// and the gradients of `Σ out ∘ dout` by the chain rule written out.
    fn reference(
        s: AttentionShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dout: &[f32],
    ) -> [Vec<f64>; 4] {
        let d = s.head_dim;
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = vec![0f64; s.query_len()];
        let (mut dq, mut dk, mut dv) = (
            vec![0f64; s.query_len()],
            vec![0f64; s.kv_len()],
            vec![0f64; s.kv_len()],
        );
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
        };
        for b in 0..s.batch {
            for h in 0..s.heads {
                let g = h / s.group();
                for i in 0..s.seq {
                    let qi = &q[s.q(b, i, h)..][..d];
                    let sc: Vec<f64> = (0..=i)
                        .map(|j| scale * dot(qi, &k[s.kv(b, j, g)..][..d]))
                        .collect();
                    let max = sc.iter().cloned().fold(f64::MIN, f64::max);
                    let sum: f64 = sc.iter().map(|x| (x - max).exp()).sum();
                    let p: Vec<f64> = sc.iter().map(|x| (x - max).exp() / sum).collect();
                    let doi = &dout[s.q(b, i, h)..][..d];
                    let dp: Vec<f64> = (0..=i)
                        .map(|j| dot(doi, &v[s.kv(b, j, g)..][..d]))
                        .collect();
                    let pdp: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                    for j in 0..=i {
                        let dsij = p[j] * (dp[j] - pdp) * scale;
                        for c in 0..d {
                            out[s.q(b, i, h) + c] += p[j] * v[s.kv(b, j, g) + c] as f64;
                            dq[s.q(b, i, h) + c] += dsij * k[s.kv(b, j, g) + c] as f64;
                            dk[s.kv(b, j, g) + c] += dsij * qi[c] as f64;
                            dv[s.kv(b, j, g) + c] += p[j] * doi[c] as f64;
                        }
                    }
                }
            }
        }
        [out, dq, dk, dv]
    }

    /// Grouped heads with a sequence that leaves a ragged last block, and a
    /// tiny one.
    const SHAPES: [AttentionShape; 2] = [
        AttentionShape {
            batch: 2,
            seq: BLOCK * 2 + 5,
            heads: 6,
            kv_heads: 2,
            head_dim: 16,
        },
        AttentionShape {
            batch: 1,
            seq: 3,
            heads: 2,
            kv_heads: 2,
            head_dim: 8,
        },
    ];

    /// The inputs of shape `s`: q, k, v and the output gradient.
    fn inputs(s: AttentionShape) -> [Vec<f32>; 4] {
        [
            values(s.query_len(), 1),
            values(s.kv_len(), 2),
            values(s.kv_len(), 3),
            values(s.query_len(), 4),
        ]
    }

    /// Both passes at `tier`: out, dq, dk, dv.
    fn run(tier: Tier, s: AttentionShape) -> [Vec<f32>; 4] {
        let [q, k, v, dout] = inputs(s);
        let (mut out, mut lse) = (vec![0f32; s.query_len()], vec![0f32; s.lse_len()]);
        causal_attention_at(tier, s, (&q, &k, &v), (&mut out, &mut lse));
        // Garbage in the gradients: they must be overwritten.
        let (mut dq, mut dk, mut dv) = (
            vec![7f32; s.query_len()],
            vec![7f32; s.kv_len()],
            vec![7f32; s.kv_len()],
        );
        causal_attention_backward_at(
            tier,
            s,
            (&q, &k, &v),
            (&out, &lse),
            &dout,
            (&mut dq, &mut dk, &mut dv),
        );
        [out, dq, dk, dv]
    }

    /// Against the f64 definition, both passes, at every tier this CPU runs.
    #[test]
    fn matches_the_definition() {
        for (tier, s) in Tier::runnable().flat_map(|t| SHAPES.map(|s| (t, s))) {
            let [q, k, v, dout] = inputs(s);
            let want = reference(s, &q, &k, &v, &dout);
            for ((got, want), what) in run(tier, s)
                .iter()
                .zip(&want)
                .zip(["out", "dq", "dk", "dv"])
            {
                let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
                for (i, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (*g as f64 - w).abs() <= 1e-5 * scale,
                        "{tier}: {what}[{i}] of {s:?}: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// The tiers sum in the same order, so they agree to the bit: a model
    /// computes the same on every CPU, up to the `gemm` crate's products.
    #[test]
    fn every_tier_gives_the_same_bits() {
        for s in SHAPES {
            crate::tier::assert_tiers_agree(|tier| run(tier, s));
        }
    }
}
