//! The product of activations with a frozen weight: every base projection
//! and the tied LM head.
//!
//! A bf16 base on Burn's flex CPU backend goes to keel-gemm's bf16 product,
//! forward and backward (a frozen weight needs only the input gradient):
//! flex would widen the whole weight to f32 on every call, and keep the
//! widened copy for backward. keel-gemm uses AVX-512 BF16 dot products where
//! the CPU has them and widens a block of columns at a time elsewhere.
//! Anything else (f32 weights, a weight being trained, wgpu) is Burn's own
//! matmul.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Bytes, Dispatch, Flex, backend_extension};
use burn::tensor::module::linear;
use burn::tensor::{DType, Device, Shape, Tensor};
use half::bf16;
use keel_gemm::Weight;

/// `x · W` for `W` `[in, out]`, the layout of [`crate::Linear`]'s weight.
pub fn matmul<const D: usize>(x: Tensor<D>, w: Tensor<2>) -> Tensor<D> {
    if uses_kernel(&x, &w) {
        return Tensor::from_dispatch(<Dispatch as FrozenMatmul>::frozen_matmul(
            x.into_dispatch(),
            w.into_dispatch(),
        ));
    }
    let w = w.cast(x.dtype());
    linear(x, w, None)
}

/// `x · Wᵀ` for `W` `[out, in]`: a tied LM head, `W` the embeddings.
pub fn matmul_transposed(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    if uses_kernel(&x, &w) {
        return Tensor::from_dispatch(<Dispatch as FrozenMatmul>::frozen_matmul_transposed(
            x.into_dispatch(),
            w.into_dispatch(),
        ));
    }
    // Unsqueeze before swapping dims: the swapped view goes to the matmul as
    // strides, whereas `transpose().unsqueeze()` copies the whole matrix on
    // every call (10x slower).
    x.matmul(w.cast(DType::F32).unsqueeze::<3>().swap_dims(1, 2))
}

fn uses_kernel<const D: usize>(x: &Tensor<D>, w: &Tensor<2>) -> bool {
    w.dtype() == DType::BF16
        && x.dtype() == DType::F32
        && !w.is_require_grad()
        // Equal for flex with and without autodiff.
        && x.device() == Device::flex()
}

#[backend_extension(Flex, Autodiff)]
pub trait FrozenMatmul: Backend {
    /// `x [.., k]` (f32) · `w [k, n]` (bf16).
    fn frozen_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `x [.., k]` (f32) · `w [n, k]`ᵀ (bf16).
    fn frozen_matmul_transposed(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl FrozenMatmul for Flex {
    fn frozen_matmul(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        product(&x, &w, Weight::KN)
    }

    fn frozen_matmul_transposed(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        product(&x, &w, Weight::NK)
    }
}

/// `a · B`, `B` read from `w` as `layout` says; `a`'s last dimension
/// becomes `B`'s column count.
fn product(a: &FlexTensor, w: &FlexTensor, layout: Weight) -> FlexTensor {
    let [rows, cols] = w.layout().shape().dims::<2>();
    let (k, n) = match layout {
        Weight::KN => (rows, cols),
        Weight::NK => (cols, rows),
    };
    let mut dims = a.layout().shape().as_slice().to_vec();
    let inner = dims
        .last_mut()
        .expect("frozen matmul: activations with no dimension");
    assert_eq!(
        *inner, k,
        "frozen matmul: activations' last dimension against the weight's {k}"
    );
    *inner = n;
    let m = dims[..dims.len() - 1].iter().product();
    let (a, w) = (a.to_contiguous(), w.to_contiguous());
    let a_values = a.as_slice::<f32>().expect("frozen matmul: f32 activations");
    let w_values = w.as_slice::<bf16>().expect("frozen matmul: a bf16 weight");
    let out = keel_gemm::matmul_bf16(a_values, w_values, m, k, n, layout);
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(Shape::from(dims)),
        DType::F32,
    )
}

/// The input gradient `dy · Bᵀ`: the same weight read the other way.
#[derive(Debug)]
struct FrozenMatmulBackward(Weight);

impl Backward<Flex, 1> for FrozenMatmulBackward {
    /// The weight: an `Arc` clone, not a copy.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let flipped = self.0.transposed();
        let w = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |dy| product(&dy, &w, flipped));
    }
}

fn tracked<C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
    w: FloatTensor<Autodiff<Flex, C>>,
    layout: Weight,
) -> FloatTensor<Autodiff<Flex, C>> {
    // Its graph would be dropped here: only frozen weights come this way.
    assert!(
        !w.is_tracked(),
        "frozen matmul: the weight is being trained"
    );
    let w = w.into_primitive();
    let backward = FrozenMatmulBackward(layout);
    match backward.prepare::<C>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let y = product(&x.into_primitive(), &w, layout);
            prep.finish(w, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(product(&x.into_primitive(), &w, layout)),
    }
}

impl<C: CheckpointStrategy> FrozenMatmul for Autodiff<Flex, C> {
    fn frozen_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        tracked::<C>(x, w, Weight::KN)
    }

    fn frozen_matmul_transposed(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        tracked::<C>(x, w, Weight::NK)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    /// What the kernel multiplies: rounded to bf16 and back on the AVX-512
    /// BF16 tier, as it is elsewhere.
    fn rounded<const D: usize>(t: Tensor<D>) -> Tensor<D> {
        match keel_gemm::rounds_activations() {
            true => t.cast(DType::BF16).cast(DType::F32),
            false => t,
        }
    }

    fn assert_close<const D: usize>(got: Tensor<D>, want: Tensor<D>, what: &str) {
        let (got, want) = (
            got.into_data().try_to_vec::<f32>().unwrap(),
            want.into_data().try_to_vec::<f32>().unwrap(),
        );
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * scale,
                "{what}: element {i} is {g}, expected {w}"
            );
        }
    }

    /// The kernel's forward and input gradient equal Burn's f32 matmul of
    /// the bf16-rounded operands, for `x · W` and `x · Wᵀ`; the weight gets
    /// no gradient. Shapes leave every tile edge ragged.
    #[test]
    fn the_kernel_matches_burns_matmul_of_the_rounded_operands() {
        let device = Device::flex().autodiff();
        let uniform = Distribution::Uniform(-1.0, 1.0);
        let x = Tensor::<3>::random([2, 13, 40], uniform, &device).require_grad();
        let w = Tensor::<2>::random([40, 35], uniform, &device).cast(DType::BF16);
        let w_t = Tensor::<2>::random([35, 40], uniform, &device).cast(DType::BF16);
        let dy = Tensor::<3>::random([2, 13, 35], uniform, &device);
        for (transposed, weight) in [(false, w), (true, w_t)] {
            assert!(uses_kernel(&x, &weight));
            let y = if transposed {
                matmul_transposed(x.clone(), weight.clone())
            } else {
                matmul(x.clone(), weight.clone())
            };
            let dense = weight.clone().cast(DType::F32);
            let dense = if transposed { dense.transpose() } else { dense };
            let want = rounded(x.clone().detach()).matmul(dense.clone().unsqueeze());
            assert_close(y.clone().detach(), want, "forward");
            let grads = (y * dy.clone()).sum().backward();
            let want = rounded(dy.clone()).matmul(dense.transpose().unsqueeze());
            assert_close(
                x.grad(&grads).expect("x has a gradient"),
                want,
                "input gradient",
            );
            assert!(
                weight.grad(&grads).is_none(),
                "a frozen weight got a gradient"
            );
        }
    }

    /// A strided view as input, a 2-D input, and a broadcast (stride-0)
    /// gradient from `sum()`.
    #[test]
    fn strided_inputs_and_gradients() {
        let device = Device::flex().autodiff();
        let uniform = Distribution::Uniform(-1.0, 1.0);
        let w = Tensor::<2>::random([40, 35], uniform, &device).cast(DType::BF16);
        let dense = w.clone().cast(DType::F32);
        let leaf = Tensor::<3>::random([2, 40, 13], uniform, &device).require_grad();
        let x = leaf.clone().swap_dims(1, 2);
        let y = matmul(x.clone(), w.clone());
        assert_close(
            y.clone().detach(),
            rounded(x.detach()).matmul(dense.clone().unsqueeze()),
            "strided forward",
        );
        let grads = y.sum().backward();
        let want =
            Tensor::<3>::ones([2, 13, 35], &device).matmul(dense.clone().transpose().unsqueeze());
        assert_close(
            leaf.grad(&grads).unwrap().swap_dims(1, 2),
            want,
            "gradient of a sum",
        );
        let flat = Tensor::<2>::random([7, 40], uniform, &device);
        assert_close(
            matmul(flat.clone(), w),
            rounded(flat).matmul(dense),
            "2-D forward",
        );
    }

    /// f32 weights and trained weights stay on Burn's matmul.
    #[test]
    fn only_frozen_bf16_weights_use_the_kernel() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::ones([3, 4], &device);
        let w = Tensor::<2>::ones([4, 5], &device);
        assert!(!uses_kernel(&x, &w));
        assert!(!uses_kernel(
            &x,
            &w.clone().cast(DType::BF16).require_grad()
        ));
        assert!(uses_kernel(&x, &w.cast(DType::BF16)));
    }
}
