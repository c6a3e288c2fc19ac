//! Causal self-attention over token-major `[batch, seq, heads, head_dim]`
//! tensors, as one Burn op whose backward recomputes the probabilities from
//! the inputs, the output and one log-sum-exp per query, where Burn's
//! autodiff attention kept several `[batch, heads, seq, seq]` tensors per
//! layer. On flex it is keel-gemm's kernel, which reads grouped key/value
//! heads in place; on a GPU (wgpu) Burn's own ops a block of queries at a
//! time ([`chunked`]). Attention over a KV cache or a padding mask (no
//! backward) composes Burn's ops ([`attend`]).

mod chunked;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Bytes, Dispatch, Flex, backend_extension};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Shape, Tensor};
use keel_gemm::AttentionShape;

/// `softmax(q kᵀ / √head_dim + causal mask) v` for queries `[batch, seq,
/// heads, head_dim]` and keys and values `[batch, seq, kv_heads, head_dim]`,
/// `kv_heads` dividing `heads`; the output is shaped as the queries.
pub fn causal_self_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let fusable = [&q, &k, &v].iter().all(|t| t.dtype() == DType::F32)
        && keel_adapters::frozen::has_keel_ops(&q.device());
    if !fusable {
        let head_major = |t: Tensor<4>| t.swap_dims(1, 2);
        return attend(head_major(q), head_major(k), head_major(v), None).swap_dims(1, 2);
    }
    Tensor::from_dispatch(<Dispatch as CausalAttention>::causal_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
    ))
}

/// Causal attention composed from Burn's ops, head-major: queries
/// `[batch, heads, seq, head_dim]`, keys and values `[batch, kv_heads,
/// keys, head_dim]` (keys ≥ seq when cached keys precede the queries: the
/// causal mask is aligned bottom-right), and `true` in `mask` hides a key.
pub(crate) fn attend(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
) -> Tensor<4> {
    let n_rep = q.dims()[1] / k.dims()[1];
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: true,
    };
    attention(
        q,
        repeat_kv(k, n_rep),
        repeat_kv(v, n_rep),
        mask,
        None,
        options,
    )
}

/// Repeats each key/value head for its group of query heads. Burn's fused
/// attention supports fewer K/V heads only outside autodiff, and under
/// autodiff silently returns wrong numbers, so keel always expands.
fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, h, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, h, n_rep, s, d])
        .reshape([b, h * n_rep, s, d])
}

#[backend_extension(Flex, Cube: cfg(feature = "wgpu"), Autodiff)]
pub trait CausalAttention: Backend {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The two halves of [`CausalAttention`] on a backend without autodiff.
trait AttentionKernels: Backend {
    /// The output, shaped as `q`, and the log-sum-exps.
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradients of `q`, `k` and `v` from the output's, `dout`.
    fn attention_backward(saved: Saved<Self>, dout: FloatTensor<Self>) -> [FloatTensor<Self>; 3];
}

impl CausalAttention for Flex {
    fn causal_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor) -> FlexTensor {
        Self::attention_forward(q, k, v).0
    }
}

impl AttentionKernels for Flex {
    fn attention_forward(q: FlexTensor, k: FlexTensor, v: FlexTensor) -> (FlexTensor, FlexTensor) {
        let [q, k, v] = [q, k, v].map(|t| t.to_contiguous());
        let shape = shape_of(&q, &k, &v);
        let (mut out, mut lse) = (vec![0f32; shape.query_len()], vec![0f32; shape.lse_len()]);
        keel_gemm::causal_attention(
            shape,
            values(&q),
            values(&k),
            values(&v),
            &mut out,
            &mut lse,
        );
        let len = lse.len();
        (
            tensor(out, q.layout().shape().clone()),
            tensor(lse, Shape::new([len])),
        )
    }

    fn attention_backward(saved: Saved<Self>, dout: FlexTensor) -> [FlexTensor; 3] {
        let Saved { q, k, v, out, lse } = saved;
        let [q, k, v, out, dout] = [q, k, v, out, dout].map(|t| t.to_contiguous());
        let shape = shape_of(&q, &k, &v);
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; shape.query_len()],
            vec![0f32; shape.kv_len()],
            vec![0f32; shape.kv_len()],
        );
        keel_gemm::causal_attention_backward(
            shape,
            (values(&q), values(&k), values(&v)),
            (values(&out), values(&lse)),
            values(&dout),
            (&mut dq, &mut dk, &mut dv),
        );
        let kv_shape = k.layout().shape().clone();
        [
            tensor(dq, q.layout().shape().clone()),
            tensor(dk, kv_shape.clone()),
            tensor(dv, kv_shape),
        ]
    }
}

#[cfg(feature = "wgpu")]
impl CausalAttention for burn::backend::Cube {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::attention_forward(q, k, v).0
    }
}

#[cfg(feature = "wgpu")]
impl AttentionKernels for burn::backend::Cube {
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        chunked::forward::<Self>(q, k, v, chunked::BLOCK)
    }

    fn attention_backward(saved: Saved<Self>, dout: FloatTensor<Self>) -> [FloatTensor<Self>; 3] {
        let Saved { q, k, v, out, lse } = saved;
        chunked::backward::<Self>((q, k, v), (out, lse), dout, chunked::BLOCK)
    }
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("causal attention: contiguous f32 values")
}

/// The kernel checks lengths only: the dimensions are checked here.
fn shape_of(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor) -> AttentionShape {
    let [batch, seq, heads, head_dim] = dims(q);
    let [_, _, kv_heads, _] = dims(k);
    let kv = [batch, seq, kv_heads, head_dim];
    assert!(
        dims(k) == kv && dims(v) == kv,
        "causal self-attention: queries {:?} need keys and values {kv:?}, got {:?} and {:?}",
        dims(q),
        dims(k),
        dims(v)
    );
    AttentionShape {
        batch,
        seq,
        heads,
        kv_heads,
        head_dim,
    }
}

fn dims(t: &FlexTensor) -> [usize; 4] {
    t.layout().shape().dims::<4>()
}

fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

#[derive(Debug)]
struct CausalAttentionBackward;

/// What backward reads: the inputs, the output and the log-sum-exps.
#[derive(Debug, Clone)]
struct Saved<B: Backend> {
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
}

impl<B: AttentionKernels> Backward<B, 3> for CausalAttentionBackward {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dout = grads.consume::<B>(&ops.node);
        let grads_of = B::attention_backward(ops.state, dout);
        for (node, grad) in ops.parents.into_iter().zip(grads_of) {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: AttentionKernels, C: CheckpointStrategy> CausalAttention for Autodiff<B, C> {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let prep = CausalAttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful();
        let [q, k, v] = [q, k, v].map(|t| t.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => {
                let (out, lse) = B::attention_forward(q.clone(), k.clone(), v.clone());
                let saved = Saved {
                    q,
                    k,
                    v,
                    out: out.clone(),
                    lse,
                };
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::attention_forward(q, k, v).0),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::ops::FloatTensorOps;
    use burn::tensor::{Device, Distribution};

    use super::*;

    /// The block-at-a-time attention the GPU runs, here on flex's ops,
    /// against keel-gemm's kernel: the output, the log-sum-exps and the
    /// three gradients, with grouped heads, strided inputs, and blocks that
    /// do not divide the sequence.
    #[test]
    fn chunked_attention_matches_the_flex_kernel() {
        let device = Device::flex();
        let normal = Distribution::Normal(0.0, 1.0);
        let (b, s, h, kv, d) = (2, 70, 6, 2, 8);
        let flex = |t: Tensor<4>| Flex::float_from_data(t.into_data(), &Default::default());
        let q = flex(Tensor::<4>::random([b, s, h, d], normal, &device));
        let k = Flex::float_swap_dims(
            flex(Tensor::<4>::random([b, kv, s, d], normal, &device)),
            1,
            2,
        );
        let v = flex(Tensor::<4>::random([b, s, kv, d], normal, &device));
        let dout = flex(Tensor::<4>::random([b, s, h, d], normal, &device));
        let (out, lse) = Flex::attention_forward(q.clone(), k.clone(), v.clone());
        let saved = Saved {
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            out: out.clone(),
            lse: lse.clone(),
        };
        let want = Flex::attention_backward(saved, dout.clone());
        for block in [16, 70, 256] {
            let (c_out, c_lse) = chunked::forward::<Flex>(q.clone(), k.clone(), v.clone(), block);
            let got = chunked::backward::<Flex>(
                (q.clone(), k.clone(), v.clone()),
                (c_out.clone(), c_lse.clone()),
                dout.clone(),
                block,
            );
            let pairs = [(c_out, out.clone()), (c_lse, lse.clone())]
                .into_iter()
                .chain(got.into_iter().zip(want.clone()));
            for ((got, want), what) in pairs.zip([
                "output",
                "log-sum-exps",
                "q gradient",
                "k gradient",
                "v gradient",
            ]) {
                let [got, want] =
                    [got, want].map(|t| t.to_contiguous().as_slice::<f32>().unwrap().to_vec());
                assert_eq!(got.len(), want.len(), "{what}");
                let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 2e-5 * scale,
                        "block {block}, {what} {i}: {g}, expected {w}"
                    );
                }
            }
        }
    }

    /// On wgpu the op (a block of 256 queries at a time: two blocks here)
    /// gives flex's output and gradients.
    #[cfg(feature = "wgpu")]
    #[test]
    fn wgpu_attention_matches_flex() {
        if std::env::var_os("KEEL_TEST_WGPU").is_none() {
            eprintln!("SKIPPED: attention on wgpu (set KEEL_TEST_WGPU=1; CI does)");
            return;
        }
        let normal = Distribution::Normal(0.0, 1.0);
        let (b, s, h, kv, d) = (1, 300, 4, 2, 8);
        let flex = Device::flex();
        let [q, k, v, weights] = [h, kv, kv, h]
            .map(|heads| Tensor::<4>::random([b, s, heads, d], normal, &flex).into_data());
        let run = |device: Device| {
            let leaf = |data: &burn::tensor::TensorData| {
                Tensor::<4>::from_data(data.clone(), &device).require_grad()
            };
            let (q, k, v) = (leaf(&q), leaf(&k), leaf(&v));
            let out = causal_self_attention(q.clone(), k.clone(), v.clone());
            let grads = (out.clone() * Tensor::from_data(weights.clone(), &device))
                .sum()
                .backward();
            let grad = |t: &Tensor<4>| t.grad(&grads).unwrap().into_data();
            [out.into_data(), grad(&q), grad(&k), grad(&v)]
        };
        let want = run(Device::flex().autodiff());
        let got = run(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice).autodiff());
        for ((got, want), what) in got.into_iter().zip(want).zip(["output", "dq", "dk", "dv"]) {
            let [got, want] = [got, want].map(|t| t.try_to_vec::<f32>().unwrap());
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * scale,
                    "{what} {i}: {g}, expected {w}"
                );
            }
        }
    }

    /// The fused op against Burn's attention composed from its ops
    /// ([`attend`]): values and the three input gradients, grouped heads,
    /// a strided input.
    #[test]
    fn fused_attention_matches_burns_ops() {
        let device = Device::flex().autodiff();
        let normal = Distribution::Normal(0.0, 1.0);
        let (b, s, h, kv, d) = (2, 70, 6, 2, 8);
        let q = Tensor::<4>::random([b, s, h, d], normal, &device).into_data();
        let k = Tensor::<4>::random([b, kv, s, d], normal, &device).into_data();
        let v = Tensor::<4>::random([b, s, kv, d], normal, &device).into_data();
        let weights = Tensor::<4>::random([b, s, h, d], normal, &device);
        // Each side gets its own leaves: a graph runs backward once.
        let run = |f: &dyn Fn(Tensor<4>, Tensor<4>, Tensor<4>) -> Tensor<4>| {
            let leaf = |data| Tensor::<4>::from_data(data, &device).require_grad();
            let (q, k, v) = (leaf(q.clone()), leaf(k.clone()), leaf(v.clone()));
            let out = f(q.clone(), k.clone().swap_dims(1, 2), v.clone());
            let grads = (out.clone() * weights.clone()).sum().backward();
            let grad = |t: &Tensor<4>| t.grad(&grads).unwrap();
            [out.detach(), grad(&q), grad(&k), grad(&v)]
        };
        let fused = run(&|q, k, v| causal_self_attention(q, k, v));
        let composed = run(&|q, k, v| {
            let head_major = |t: Tensor<4>| t.swap_dims(1, 2);
            attend(head_major(q), head_major(k), head_major(v), None).swap_dims(1, 2)
        });
        for ((got, want), what) in fused.into_iter().zip(composed).zip([
            "forward",
            "q gradient",
            "k gradient",
            "v gradient",
        ]) {
            let scale = want.clone().abs().max().into_scalar::<f32>();
            let diff = (got - want).abs().max().into_scalar::<f32>();
            assert!(
                diff <= 1e-5 * scale,
                "{what}: off by {diff} (scale {scale})"
            );
        }
    }
}
