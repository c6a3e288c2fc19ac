//! The log-probability of each target token under the LM head, with the
//! head fused into the log-softmax on the CPU.
//!
//! Training needs only `log p(target)` per position, yet the plain path
//! materialises `[tokens, vocab]` logits (49k wide for SmolLM2: 200 MB per
//! 1k tokens), their log-softmax, and as many again in backward, with two
//! scalar `exp` per element. On flex, with a frozen head, [`target_log_probs`]
//! goes through the rows a chunk at a time instead: the chunk's logits,
//! log-sum-exp and softmax live in one small buffer. The output is one
//! scalar per row, so its gradient with respect to the row's hidden state,
//! `W[t] − softmax·W`, is computed in the forward pass and kept (`[tokens,
//! hidden]`); backward only scales it. The two products with `W` are the
//! ones the plain path does (logits forward, input gradient backward).
//! On a GPU (wgpu) the same is composed from Burn's ops ([`chunked`]).

mod chunked;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Bytes, Dispatch, Flex, backend_extension};
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Int, Shape, Tensor};
use half::bf16;
use keel_adapters::QuantBase;
use keel_gemm::{PackedWeight, QuantWeight, Weight};
use rayon::prelude::*;

/// Rows per chunk: a chunk's logits are `CHUNK × vocab` f32 (50 MB for a
/// 49k vocabulary, against 200 MB per 1k rows unfused); gemm repacks an
/// f32 weight for every product, so fewer, larger chunks.
const CHUNK: usize = 256;

/// A frozen head's weight.
// Made for one call and moved into it: boxing the tensor would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum HeadWeight<'a> {
    /// `[vocab, d]` when the layout is [`Weight::NK`] (tied embeddings),
    /// `[d, vocab]` for [`Weight::KN`] (a linear layer's).
    Dense(Tensor<2>, Weight),
    /// `[vocab, d]` in GGUF blocks.
    Blocks(&'a QuantBase),
}

impl HeadWeight<'_> {
    /// The logits `[batch, seq, vocab]` of hidden states `[batch, seq, d]`.
    pub fn logits(self, hidden: Tensor<3>) -> Tensor<3> {
        match self {
            HeadWeight::Dense(w, Weight::NK) => keel_adapters::frozen::matmul_transposed(hidden, w),
            HeadWeight::Dense(w, Weight::KN) => keel_adapters::frozen::matmul(hidden, w),
            HeadWeight::Blocks(w) => keel_adapters::frozen::quant_matmul(hidden, w),
        }
    }
}

/// `log p(targets)` `[batch, seq]` from hidden states `[batch, seq, d]` and
/// the head's weight.
pub fn target_log_probs(hidden: Tensor<3>, w: HeadWeight, targets: Tensor<2, Int>) -> Tensor<2> {
    let [b, s, d] = hidden.dims();
    let fused_activations =
        hidden.dtype() == DType::F32 && keel_adapters::frozen::has_keel_ops(&hidden.device());
    let rows = |t: Tensor<3>| t.reshape([b * s, d]).into_dispatch();
    let ids = |t: Tensor<2, Int>| t.reshape([b * s]).into_dispatch();
    let out = match w {
        HeadWeight::Dense(w, layout) if fused_activations && fusable(&w) => {
            <Dispatch as FrozenHead>::frozen_head_log_probs(
                rows(hidden),
                w.into_dispatch(),
                ids(targets),
                layout == Weight::NK,
            )
        }
        HeadWeight::Blocks(w) if fused_activations => {
            <Dispatch as FrozenHead>::frozen_head_log_probs_blocks(rows(hidden), w, ids(targets))
        }
        w => return gather_log_probs(w.logits(hidden), targets),
    };
    Tensor::<1>::from_dispatch(out).reshape([b, s])
}

/// `log p(targets)` `[batch, seq]` from logits `[batch, seq, vocab]`.
pub fn gather_log_probs(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    log_softmax(logits, 2)
        .gather(2, targets.unsqueeze_dim(2))
        .squeeze_dim::<2>(2)
}

/// Besides f32 activations on flex or a GPU, the fused path needs a frozen
/// f32 head, a bf16 one (keel-gemm's kernel on flex, cast on a GPU), or one
/// in blocks.
fn fusable(w: &Tensor<2>) -> bool {
    matches!(w.dtype(), DType::F32 | DType::BF16) && !w.is_require_grad()
}

#[backend_extension(Flex, Cube: cfg(feature = "wgpu"), Autodiff)]
pub trait FrozenHead: Backend {
    /// `hidden [n, d]`, `w` as [`target_log_probs`] says, `targets [n]`.
    fn frozen_head_log_probs(
        hidden: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        vocab_major: bool,
    ) -> FloatTensor<Self>;

    /// As [`FrozenHead::frozen_head_log_probs`] for `w [vocab, d]` in blocks.
    fn frozen_head_log_probs_blocks(
        hidden: FloatTensor<Self>,
        w: &QuantBase,
        targets: IntTensor<Self>,
    ) -> FloatTensor<Self>;
}

fn layout(vocab_major: bool) -> Weight {
    if vocab_major { Weight::NK } else { Weight::KN }
}

/// A frozen head's weight on a backend.
enum Frozen<'a, B: Backend> {
    /// `[vocab, d]` when vocab-major (tied embeddings), else `[d, vocab]`.
    Dense(FloatTensor<B>, bool),
    Blocks(&'a QuantBase),
}

/// The fused head on a backend without autodiff: `log p(targets)` `[n]`,
/// and the Jacobian `[n, d]` where `jacobian` asks for it.
trait HeadKernels: Backend {
    fn head_log_probs(
        hidden: FloatTensor<Self>,
        w: Frozen<'_, Self>,
        targets: IntTensor<Self>,
        jacobian: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>);
}

impl HeadKernels for Flex {
    fn head_log_probs(
        hidden: FlexTensor,
        w: Frozen<'_, Self>,
        targets: FlexTensor,
        jacobian: bool,
    ) -> (FlexTensor, Option<FlexTensor>) {
        match w {
            Frozen::Dense(w, vocab_major) => {
                let w = w.to_contiguous();
                Head::dense(&w, layout(vocab_major), jacobian).log_probs(&hidden, &targets)
            }
            Frozen::Blocks(w) => Head::blocks(w, jacobian).log_probs(&hidden, &targets),
        }
    }
}

#[cfg(feature = "wgpu")]
impl HeadKernels for burn::backend::Cube {
    fn head_log_probs(
        hidden: FloatTensor<Self>,
        w: Frozen<'_, Self>,
        targets: IntTensor<Self>,
        jacobian: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let (w, vocab_major) = match w {
            Frozen::Dense(w, vocab_major) => (w, vocab_major),
            // A GPU keeps its embeddings dense: this is for completeness.
            Frozen::Blocks(w) => {
                use burn::backend::TensorMetadata;
                (
                    keel_adapters::frozen::host_weight::<Self>(w, &hidden.device()),
                    true,
                )
            }
        };
        chunked::log_probs::<Self>(hidden, w, vocab_major, targets, jacobian)
    }
}

/// [`FrozenHead`] on a backend without autodiff: no Jacobian.
macro_rules! untracked_head {
    ($backend:ty) => {
        impl FrozenHead for $backend {
            fn frozen_head_log_probs(
                hidden: FloatTensor<Self>,
                w: FloatTensor<Self>,
                targets: IntTensor<Self>,
                vocab_major: bool,
            ) -> FloatTensor<Self> {
                Self::head_log_probs(hidden, Frozen::Dense(w, vocab_major), targets, false).0
            }

            fn frozen_head_log_probs_blocks(
                hidden: FloatTensor<Self>,
                w: &QuantBase,
                targets: IntTensor<Self>,
            ) -> FloatTensor<Self> {
                Self::head_log_probs(hidden, Frozen::Blocks(w), targets, false).0
            }
        }
    };
}
untracked_head!(Flex);
#[cfg(feature = "wgpu")]
untracked_head!(burn::backend::Cube);

/// The head's weight, read in place; a bf16 one also packed for the
/// kernel, once per call rather than per chunk: for the logits and, with a
/// Jacobian, for the gradient.
enum Values<'a> {
    F32(&'a [f32]),
    Bf16 {
        w: &'a [bf16],
        logits: PackedWeight<'a>,
        expected: Option<PackedWeight<'a>>,
    },
    /// `[vocab, d]`, dequantized a panel at a time inside each product.
    Blocks(QuantWeight<'a>),
}

/// The weight as the two products read it: `x · B` for the logits
/// (`B [d, vocab]`) and `softmax · B` for the gradient (`B [vocab, d]`).
struct Head<'a> {
    w: Values<'a>,
    layout: Weight,
    vocab: usize,
    d: usize,
    jacobian: bool,
}

impl<'a> Head<'a> {
    /// `w` must be contiguous; `jacobian` packs for the second product too.
    fn dense(w: &'a FlexTensor, layout: Weight, jacobian: bool) -> Self {
        let [rows, cols] = w.layout().shape().dims::<2>();
        let (vocab, d) = match layout {
            Weight::NK => (rows, cols),
            Weight::KN => (cols, rows),
        };
        let w = match w.dtype() {
            DType::F32 => Values::F32(w.as_slice::<f32>().expect("frozen head: f32 weight")),
            DType::BF16 => {
                let w = w.as_slice::<bf16>().expect("frozen head: bf16 weight");
                Values::Bf16 {
                    w,
                    logits: PackedWeight::new(w, d, vocab, layout),
                    expected: jacobian.then(|| PackedWeight::new(w, vocab, d, layout.transposed())),
                }
            }
            other => panic!("frozen head: a {other:?} weight"),
        };
        Head {
            w,
            layout,
            vocab,
            d,
            jacobian,
        }
    }

    /// `w [vocab, d]` in blocks.
    fn blocks(w: &'a QuantBase, jacobian: bool) -> Self {
        let [vocab, d] = w.dims();
        Head {
            w: Values::Blocks(w.weight()),
            layout: Weight::NK,
            vocab,
            d,
            jacobian,
        }
    }

    /// `out [m, n] = a [m, k] · B`: the logits (`k = d`, `n = vocab`), or
    /// with `expected` the softmax times the weight (`k = vocab`, `n = d`).
    fn product(&self, a: &[f32], m: usize, expected: bool, out: &mut [f32]) {
        let (k, n) = if expected {
            (self.vocab, self.d)
        } else {
            (self.d, self.vocab)
        };
        match &self.w {
            Values::Bf16 {
                logits,
                expected: grad,
                ..
            } => {
                let w = if expected {
                    grad.as_ref().expect("packed for the gradient")
                } else {
                    logits
                };
                w.matmul_into(a, m, out)
            }
            Values::Blocks(w) if expected => w.matmul_into(a, m, out),
            Values::Blocks(w) => w.matmul_transposed_into(a, m, out),
            Values::F32(w) => {
                let layout = if expected {
                    self.layout.transposed()
                } else {
                    self.layout
                };
                keel_gemm::matmul_f32_into(a, w, m, k, n, layout, out)
            }
        }
    }

    /// Row `t` of the weight as the head sees it: token `t`'s `d` values.
    fn token_row(&self, t: usize, out: &mut [f32]) {
        let (d, vocab) = (self.d, self.vocab);
        let gather = |out: &mut [f32], at: &dyn Fn(usize) -> f32| {
            for (j, o) in out.iter_mut().enumerate() {
                *o = match self.layout {
                    Weight::NK => at(t * d + j),
                    Weight::KN => at(j * vocab + t),
                };
            }
        };
        match &self.w {
            Values::F32(w) => gather(out, &|i| w[i]),
            Values::Bf16 { w, .. } => gather(out, &|i| w[i].to_f32()),
            Values::Blocks(w) => {
                let mut row = Vec::with_capacity(d);
                w.row_into(t, &mut row);
                out.copy_from_slice(&row);
            }
        }
    }

    /// `log p(targets)` `[n]` for `hidden [n, d]` and, when the head was
    /// made for it, its gradient with respect to each row, `[n, d]`.
    fn log_probs(
        &self,
        hidden: &FlexTensor,
        targets: &FlexTensor,
    ) -> (FlexTensor, Option<FlexTensor>) {
        let [n, d] = hidden.layout().shape().dims::<2>();
        assert_eq!(d, self.d, "frozen head: hidden size against the weight's");
        let hidden = hidden.to_contiguous();
        let h = hidden
            .as_slice::<f32>()
            .expect("frozen head: f32 hidden states");
        let targets = token_ids(targets, self.vocab);
        assert_eq!(targets.len(), n, "frozen head: one target per row");
        let mut log_p = vec![0f32; n];
        let mut jac = vec![0f32; if self.jacobian { n * d } else { 0 }];
        // One buffer for every chunk: fresh pages cost the kernel a zeroing each.
        let mut logits = vec![0f32; CHUNK.min(n) * self.vocab];
        let mut expected = vec![0f32; if self.jacobian { CHUNK.min(n) * d } else { 0 }];
        for start in (0..n).step_by(CHUNK) {
            let m = CHUNK.min(n - start);
            let rows = start..start + m;
            let logits = &mut logits[..m * self.vocab];
            self.product(&h[rows.start * d..rows.end * d], m, false, logits);
            logits
                .par_chunks_mut(self.vocab)
                .zip(&mut log_p[rows.clone()])
                .zip(&targets[rows.clone()])
                .for_each(|((row, lp), &t)| {
                    *lp = keel_gemm::log_softmax_row(row, t, self.jacobian)
                });
            if self.jacobian {
                // W[t] − softmax · W.
                let expected = &mut expected[..m * d];
                self.product(logits, m, true, expected);
                jac[rows.start * d..rows.end * d]
                    .par_chunks_mut(d)
                    .zip(expected.par_chunks(d))
                    .zip(&targets[rows])
                    .for_each(|((j, e), &t)| {
                        self.token_row(t, j);
                        j.iter_mut().zip(e).for_each(|(j, e)| *j -= e);
                    });
            }
        }
        let tensor = |values: Vec<f32>, shape: Shape| {
            FlexTensor::new(
                Bytes::from_elems(values),
                Layout::contiguous(shape),
                DType::F32,
            )
        };
        (
            tensor(log_p, Shape::from([n])),
            self.jacobian.then(|| tensor(jac, Shape::from([n, d]))),
        )
    }
}

/// The targets as indices, each checked against the vocabulary.
fn token_ids(targets: &FlexTensor, vocab: usize) -> Vec<usize> {
    let targets = targets.to_contiguous();
    let ids: Vec<i64> = match targets.dtype() {
        DType::I64 => targets.as_slice::<i64>().map(<[i64]>::to_vec),
        DType::I32 => targets
            .as_slice::<i32>()
            .map(|s| s.iter().map(|&x| x as i64).collect()),
        other => panic!("frozen head: {other:?} targets"),
    }
    .expect("frozen head: readable targets");
    ids.into_iter()
        .map(|t| {
            usize::try_from(t)
                .ok()
                .filter(|&t| t < vocab)
                .unwrap_or_else(|| {
                    panic!("frozen head: target {t} outside the {vocab}-token vocabulary")
                })
        })
        .collect()
}

/// Backward: the kept per-row gradient, scaled by the incoming one.
#[derive(Debug)]
struct FrozenHeadBackward;

impl<B: Backend> Backward<B, 1> for FrozenHeadBackward {
    /// `∂ log p(t) / ∂ hidden`, `[n, d]`.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let jac = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            chunked::scale::<B>(jac, dy)
        });
    }
}

impl<B: HeadKernels, C: CheckpointStrategy> FrozenHead for Autodiff<B, C> {
    fn frozen_head_log_probs(
        hidden: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        vocab_major: bool,
    ) -> FloatTensor<Self> {
        // Its graph would be dropped here: only frozen heads come this way.
        assert!(!w.is_tracked(), "frozen head: the weight is being trained");
        let w = Frozen::Dense(w.into_primitive(), vocab_major);
        tracked_head::<B, C>(hidden, w, targets)
    }

    fn frozen_head_log_probs_blocks(
        hidden: FloatTensor<Self>,
        w: &QuantBase,
        targets: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        tracked_head::<B, C>(hidden, Frozen::Blocks(w), targets)
    }
}

/// The head's log-probabilities on the autodiff graph, with the Jacobian
/// (kept for backward) where `hidden` is tracked.
fn tracked_head<B: HeadKernels, C: CheckpointStrategy>(
    hidden: FloatTensor<Autodiff<B, C>>,
    w: Frozen<'_, B>,
    targets: IntTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    match FrozenHeadBackward
        .prepare::<C>([hidden.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (log_p, jac) = B::head_log_probs(hidden.into_primitive(), w, targets, true);
            prep.finish(jac.expect("a Jacobian was asked for"), log_p)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(B::head_log_probs(hidden.into_primitive(), w, targets, false).0)
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, TensorData};
    use keel_gguf::GgmlType;

    use super::*;

    /// `got` is within `tolerance` of `want`, relative to `want`'s largest
    /// magnitude.
    fn assert_close<const D: usize>(got: Tensor<D>, want: Tensor<D>, tolerance: f32, what: &str) {
        let scale = want.clone().abs().max().into_scalar::<f32>();
        let diff = (got - want).abs().max().into_scalar::<f32>();
        assert!(
            diff <= tolerance * scale,
            "{what}: off by {diff} (scale {scale})"
        );
    }

    /// The fused head's log-probabilities and input gradient equal
    /// log-softmax-and-gather over Burn's logits, for a tied (`[vocab, d]`)
    /// and a linear (`[d, vocab]`) head, f32 and bf16. 300 rows cross a
    /// chunk boundary.
    #[test]
    fn fused_head_matches_log_softmax_of_the_logits() {
        check_fused_head(Device::flex().autodiff(), &[DType::F32, DType::BF16], 1e-5);
    }

    /// The same on wgpu (f32 only: WGSL has no bf16), where the head is
    /// composed from Burn's ops a chunk of rows at a time.
    #[cfg(feature = "wgpu")]
    #[test]
    fn wgpu_fused_head_matches_log_softmax_of_the_logits() {
        if std::env::var_os("KEEL_TEST_WGPU").is_none() {
            eprintln!("SKIPPED: the head on wgpu (set KEEL_TEST_WGPU=1; CI does)");
            return;
        }
        let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice).autodiff();
        check_fused_head(device, &[DType::F32], 1e-4);
    }

    fn check_fused_head(device: Device, dtypes: &[DType], f32_tolerance: f32) {
        let uniform = Distribution::Uniform(-2.0, 2.0);
        let (b, s, d, vocab) = (3, 100, 24, 50);
        let ids: Vec<i64> = (0..b * s).map(|i| (i * 7 % vocab) as i64).collect();
        let targets = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, s]), &device);
        let upstream = Tensor::<2>::random([b, s], uniform, &device);
        let leaf = Tensor::<3>::random([b, s, d], uniform, &device);
        for &dtype in dtypes {
            // What the bf16 kernel multiplies: activations rounded to bf16
            // on the AVX-512 BF16 tier.
            let input = match dtype == DType::BF16 && keel_gemm::rounds_activations() {
                false => leaf.clone(),
                true => leaf.clone().cast(DType::BF16).cast(DType::F32),
            };
            // Rounding the softmax for the backward product costs bf16 precision.
            let tolerance = if dtype == DType::F32 {
                f32_tolerance
            } else {
                1e-2
            };
            for layout in [Weight::NK, Weight::KN] {
                let shape = match layout {
                    Weight::NK => [vocab, d],
                    Weight::KN => [d, vocab],
                };
                let w = Tensor::<2>::random(shape, uniform, &device).cast(dtype);
                let h = leaf.clone().require_grad();
                assert!(fusable(&w));
                let head = HeadWeight::Dense(w.clone(), layout);
                let fused = target_log_probs(h.clone(), head, targets.clone());
                let dense = w.clone().cast(DType::F32);
                let dense = match layout {
                    Weight::NK => dense.transpose(),
                    Weight::KN => dense,
                };
                let x = input.clone().require_grad();
                let want = gather_log_probs(x.clone().matmul(dense.unsqueeze()), targets.clone());
                let what = format!("{dtype:?} {layout:?}");
                assert_close(
                    fused.clone().detach(),
                    want.clone().detach(),
                    f32_tolerance,
                    &what,
                );
                let got = h
                    .grad(&(fused * upstream.clone()).sum().backward())
                    .unwrap();
                let want = x.grad(&(want * upstream.clone()).sum().backward()).unwrap();
                assert_close(got, want, tolerance, &format!("{what} gradient"));
            }
        }
    }

    /// A tied head kept in blocks (Q4_0 and Q6_K, 300 rows across a chunk
    /// boundary): the fused log-probabilities and input gradient equal
    /// log-softmax-and-gather over the logits of the dequantized weight.
    #[test]
    fn fused_head_in_blocks_matches_the_dequantized_head() {
        let device = Device::flex().autodiff();
        let uniform = Distribution::Uniform(-2.0, 2.0);
        let (b, s, d, vocab) = (3, 100, 256, 50);
        let ids: Vec<i64> = (0..b * s).map(|i| (i * 7 % vocab) as i64).collect();
        let targets = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, s]), &device);
        let upstream = Tensor::<2>::random([b, s], uniform, &device);
        let leaf = Tensor::<3>::random([b, s, d], uniform, &device);
        let w = Tensor::<2>::random([vocab, d], uniform, &device);
        let values: Vec<f32> = w.into_data().try_into_vec_as().unwrap();
        for ty in [GgmlType::Q4_0, GgmlType::Q6K] {
            let bytes = keel_gguf::quantize(ty, &values).unwrap();
            let blocks = QuantBase::owned(bytes, ty, [vocab, d]).unwrap();
            let dense =
                Tensor::<2>::from_data(TensorData::new(blocks.dequantize(), [vocab, d]), &device);
            let h = leaf.clone().require_grad();
            let fused = target_log_probs(h.clone(), HeadWeight::Blocks(&blocks), targets.clone());
            let x = leaf.clone().require_grad();
            let want = gather_log_probs(
                x.clone().matmul(dense.transpose().unsqueeze()),
                targets.clone(),
            );
            let what = ty.name();
            assert_close(fused.clone().detach(), want.clone().detach(), 1e-5, what);
            let got = h
                .grad(&(fused * upstream.clone()).sum().backward())
                .unwrap();
            let want = x.grad(&(want * upstream.clone()).sum().backward()).unwrap();
            assert_close(got, want, 1e-5, &format!("{what} gradient"));
        }
    }

    /// Off the autodiff graph the same values come back; a target outside
    /// the vocabulary is refused by name.
    #[test]
    fn untracked_values_and_bad_targets() {
        let device = Device::flex();
        let h = Tensor::<3>::random([1, 3, 8], Distribution::Default, &device);
        let w = Tensor::<2>::random([10, 8], Distribution::Default, &device);
        let targets =
            Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 9, 4], [1, 3]), &device);
        let want = gather_log_probs(
            h.clone().matmul(w.clone().transpose().unsqueeze()),
            targets.clone(),
        );
        let got = target_log_probs(h.clone(), HeadWeight::Dense(w.clone(), Weight::NK), targets);
        assert_close(got, want, 1e-5, "untracked");
        let bad = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 10, 4], [1, 3]), &device);
        let err =
            std::panic::catch_unwind(|| target_log_probs(h, HeadWeight::Dense(w, Weight::NK), bad))
                .expect_err("a target outside the vocabulary");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("target 10 outside the 10-token vocabulary"),
            "{msg}"
        );
    }
}
