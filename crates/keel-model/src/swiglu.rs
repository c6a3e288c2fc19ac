//! The MLP's activation `silu(gate) · up` as one Burn op on flex, forward
//! and backward (keel-gemm's kernels: one pass each, on every core). It
//! keeps only its two inputs for backward, where the unfused ops kept four
//! `[tokens, intermediate]` tensors per layer. Other devices compose Burn's
//! ops.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Bytes, Dispatch, Flex, backend_extension};
use burn::tensor::activation::silu;
use burn::tensor::{DType, Device, Tensor};

/// `silu(gate) · up`, elementwise; the shapes must be equal.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    let fusable = gate.dtype() == DType::F32
        && up.dtype() == DType::F32
        && gate.dims() == up.dims()
        // Equal for flex with and without autodiff.
        && gate.device() == Device::flex();
    if !fusable {
        return silu(gate).mul(up);
    }
    Tensor::from_dispatch(<Dispatch as SwiGlu>::swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

#[backend_extension(Flex, Autodiff)]
pub trait SwiGlu: Backend {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl SwiGlu for Flex {
    fn swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        forward(&gate, &up)
    }
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("swiglu: f32 values")
}

fn forward(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    let (gate, up) = (gate.to_contiguous(), up.to_contiguous());
    let mut out = vec![0f32; values(&gate).len()];
    keel_gemm::swiglu(values(&gate), values(&up), &mut out);
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(gate.layout().shape().clone()),
        DType::F32,
    )
}

#[derive(Debug)]
struct SwiGluBackward;

impl Backward<Flex, 2> for SwiGluBackward {
    /// The inputs, contiguous.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (gate, up) = ops.state;
        let dh = grads.consume::<Flex>(&ops.node).to_contiguous();
        let n = values(&gate).len();
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        keel_gemm::swiglu_backward(values(&gate), values(&up), values(&dh), &mut dg, &mut du);
        let shape = gate.layout().shape().clone();
        let tensor = |v: Vec<f32>| {
            FlexTensor::new(
                Bytes::from_elems(v),
                Layout::contiguous(shape.clone()),
                DType::F32,
            )
        };
        let [gate_node, up_node] = ops.parents;
        if let Some(node) = gate_node {
            grads.register::<Flex>(node.id, tensor(dg));
        }
        if let Some(node) = up_node {
            grads.register::<Flex>(node.id, tensor(du));
        }
    }
}

impl<C: CheckpointStrategy> SwiGlu for Autodiff<Flex, C> {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        match SwiGluBackward
            .prepare::<C>([gate.node(), up.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (gate, up) = (
                    gate.into_primitive().to_contiguous(),
                    up.into_primitive().to_contiguous(),
                );
                let out = forward(&gate, &up);
                prep.finish((gate, up), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(forward(&gate.into_primitive(), &up.into_primitive()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    /// The fused op against `silu(gate) · up` composed from Burn's ops:
    /// values and both input gradients, with a strided input.
    #[test]
    fn fused_swiglu_matches_burns_ops() {
        let device = Device::flex().autodiff();
        let normal = Distribution::Normal(0.0, 3.0);
        let gate = Tensor::<3>::random([2, 9, 37], normal, &device).into_data();
        let up = Tensor::<3>::random([2, 37, 9], normal, &device).into_data();
        let weights = Tensor::<3>::random([2, 9, 37], normal, &device);
        // Each side gets its own leaves: a graph runs backward once.
        let run = |f: &dyn Fn(Tensor<3>, Tensor<3>) -> Tensor<3>| {
            let gate = Tensor::<3>::from_data(gate.clone(), &device).require_grad();
            let up = Tensor::<3>::from_data(up.clone(), &device).require_grad();
            let out = f(gate.clone(), up.clone().swap_dims(1, 2));
            let grads = (out.clone() * weights.clone()).sum().backward();
            let up_grad = up.grad(&grads).unwrap().swap_dims(1, 2);
            [out.detach(), gate.grad(&grads).unwrap(), up_grad]
        };
        let fused = run(&|g, u| swiglu(g, u));
        let plain = run(&|g, u| silu(g).mul(u));
        for ((got, want), what) in
            fused
                .into_iter()
                .zip(plain)
                .zip(["forward", "gate gradient", "up gradient"])
        {
            let scale = want.clone().abs().max().into_scalar::<f32>();
            let diff = (got - want).abs().max().into_scalar::<f32>();
            assert!(
                diff <= 1e-5 * scale,
                "{what}: off by {diff} (scale {scale})"
            );
        }
    }
}
