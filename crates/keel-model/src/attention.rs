//! Causal self-attention over token-major `[batch, seq, heads, head_dim]`
//! tensors, as one Burn op on flex (keel-gemm's kernel, forward and
//! backward): it keeps its inputs, output and one log-sum-exp per query
//! for backward, where Burn's autodiff attention kept several
//! `[batch, heads, seq, seq]` tensors per layer, and it reads grouped
//! key/value heads in place. Other devices, and attention over a KV cache
//! or a padding mask, compose Burn's ops ([`attend`]).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Bytes, Dispatch, Flex, backend_extension};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, Shape, Tensor};
use keel_gemm::AttentionShape;

/// `softmax(q kᵀ / √head_dim + causal mask) v` for queries `[batch, seq,
/// heads, head_dim]` and keys and values `[batch, seq, kv_heads, head_dim]`,
/// `kv_heads` dividing `heads`; the output is shaped as the queries.
pub fn causal_self_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let fusable = [&q, &k, &v].iter().all(|t| t.dtype() == DType::F32)
        // Equal for flex with and without autodiff.
        && q.device() == Device::flex();
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

#[backend_extension(Flex, Autodiff)]
pub trait CausalAttention: Backend {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

impl CausalAttention for Flex {
    fn causal_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor) -> FlexTensor {
        forward(q, k, v).out
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

/// The output, with what backward would read.
fn forward(q: FlexTensor, k: FlexTensor, v: FlexTensor) -> Saved {
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
    let out = tensor(out, q.layout().shape().clone());
    Saved { q, k, v, out, lse }
}

#[derive(Debug)]
struct CausalAttentionBackward;

/// What backward reads: the contiguous inputs, the output and the
/// log-sum-exps.
#[derive(Debug, Clone)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    lse: Vec<f32>,
}

impl Backward<Flex, 3> for CausalAttentionBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let Saved { q, k, v, out, lse } = ops.state;
        let dout = grads.consume::<Flex>(&ops.node).to_contiguous();
        let shape = shape_of(&q, &k, &v);
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; shape.query_len()],
            vec![0f32; shape.kv_len()],
            vec![0f32; shape.kv_len()],
        );
        keel_gemm::causal_attention_backward(
            shape,
            (values(&q), values(&k), values(&v)),
            (values(&out), &lse),
            values(&dout),
            (&mut dq, &mut dk, &mut dv),
        );
        let kv_shape = k.layout().shape().clone();
        let grads_of = [
            tensor(dq, q.layout().shape().clone()),
            tensor(dk, kv_shape.clone()),
            tensor(dv, kv_shape),
        ];
        for (node, grad) in ops.parents.into_iter().zip(grads_of) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

impl<C: CheckpointStrategy> CausalAttention for Autodiff<Flex, C> {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let prep = CausalAttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful();
        let saved = forward(q.into_primitive(), k.into_primitive(), v.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => {
                let out = saved.out.clone();
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(saved.out),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

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
