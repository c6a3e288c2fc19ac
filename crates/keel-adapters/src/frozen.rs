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
//!
//! A base kept in its GGUF blocks ([`QuantBase`]) goes to keel-gemm's
//! [`keel_gemm::QuantWeight`] on flex, forward and backward alike, so the
//! layer's weight is never dense; on a GPU (wgpu) the blocks stay on the
//! device and a kernel dequantizes the layer's weight for each product,
//! forward and backward, dropped after ([`QuantMatmul`], `gpu_blocks`).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Bytes, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::module::linear;
use burn::tensor::{DType, Device, Shape, Tensor, TensorData};
use half::bf16;
use keel_gemm::{QuantWeight, Weight};
use keel_gguf::GgmlType;

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
    w.dtype() == DType::BF16 && !w.is_require_grad() && on_flex_f32(x)
}

fn on_flex_f32<const D: usize>(x: &Tensor<D>) -> bool {
    // Equal for flex with and without autodiff.
    x.dtype() == DType::F32 && x.device() == Device::flex()
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
    let w = w.to_contiguous();
    let w = w.as_slice::<bf16>().expect("frozen matmul: a bf16 weight");
    product_with(a, k, n, |a, m, out| {
        keel_gemm::PackedWeight::new(w, k, n, layout).matmul_into(a, m, out)
    })
}

/// `[.., n]` from activations `a [.., k]` (rows `m`): `multiply(a, m, out)`
/// writes the `m × n` product into `out`.
fn product_with(
    a: &FlexTensor,
    k: usize,
    n: usize,
    multiply: impl FnOnce(&[f32], usize, &mut [f32]),
) -> FlexTensor {
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
    let a = a.to_contiguous();
    let a = a.as_slice::<f32>().expect("frozen matmul: f32 activations");
    let mut out = vec![0f32; m * n];
    multiply(a, m, &mut out);
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(Shape::from(dims)),
        DType::F32,
    )
}

/// A frozen weight `W [out, in]` kept in its GGUF blocks (ggml's layout: a
/// row per output, each row whole blocks), in bytes shared with whoever
/// owns them (a memory-mapped file, or a buffer quantized at load).
#[derive(Clone)]
pub struct QuantBase {
    bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
    ty: GgmlType,
    out_features: usize,
    in_features: usize,
    #[cfg(feature = "wgpu")]
    pub(crate) device_blocks: crate::gpu_blocks::DeviceBlocks,
}

impl fmt::Debug for QuantBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "QuantBase({} [{}, {}])",
            self.ty.name(),
            self.out_features,
            self.in_features
        )
    }
}

impl QuantBase {
    /// `bytes[range]` read as `W [out_features, in_features]` of type `ty`.
    ///
    /// # Errors
    /// When the range is not inside `bytes`, or where
    /// [`QuantWeight::try_new`] errs on it.
    pub fn new(
        bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: Range<usize>,
        ty: GgmlType,
        [out_features, in_features]: [usize; 2],
    ) -> Result<Self, String> {
        let all = (*bytes).as_ref();
        let part = all
            .get(range.clone())
            .ok_or_else(|| format!("bytes {range:?} are not inside the {} given", all.len()))?;
        QuantWeight::try_new(ty, part, out_features, in_features)?;
        Ok(QuantBase {
            bytes,
            range,
            ty,
            out_features,
            in_features,
            #[cfg(feature = "wgpu")]
            device_blocks: Default::default(),
        })
    }

    /// `bytes` (whole, owned) read as `W [out, in]` of type `ty`: blocks
    /// made at load, or rows put in another order.
    pub fn owned(bytes: Vec<u8>, ty: GgmlType, dims: [usize; 2]) -> Result<Self, String> {
        let len = bytes.len();
        Self::new(Arc::new(bytes), 0..len, ty, dims)
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// `[out, in]`, as HF stores a projection.
    pub fn dims(&self) -> [usize; 2] {
        [self.out_features, self.in_features]
    }

    /// The blocks' bytes, rows one after another.
    pub fn bytes(&self) -> &[u8] {
        &(*self.bytes).as_ref()[self.range.clone()]
    }

    /// The blocks, for keel-gemm's products.
    pub fn weight(&self) -> QuantWeight<'_> {
        QuantWeight::new(self.ty, self.bytes(), self.out_features, self.in_features)
    }

    /// `W` dense, `[out, in]` row-major: for a device without the kernel,
    /// and for tests.
    pub fn dequantize(&self) -> Vec<f32> {
        keel_gguf::dequantize(self.ty, self.bytes())
            .expect("QuantBase::new checked the type and the block sizes")
    }
}

/// `x · Wᵀ` for a base in GGUF blocks: a projection's forward pass.
pub fn quant_matmul<const D: usize>(x: Tensor<D>, w: &QuantBase) -> Tensor<D> {
    if x.dtype() == DType::F32 && has_keel_ops(&x.device()) {
        return Tensor::from_dispatch(<Dispatch as QuantMatmul>::quant_matmul(
            x.into_dispatch(),
            w,
        ));
    }
    let dense = Tensor::<2>::from_data(
        TensorData::new(w.dequantize(), w.dims()),
        (&x.device(), x.dtype()),
    );
    linear(x, dense.transpose(), None)
}

/// Whether keel's own autodiff ops ([`QuantMatmul`] here, keel-model's
/// attention and frozen head) run on `device`: flex, and the GPU backends
/// where keel is built with wgpu.
pub fn has_keel_ops(device: &Device) -> bool {
    let device = device.clone().inner();
    #[cfg(feature = "wgpu")]
    if matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_)) {
        return true;
    }
    device == Device::flex()
}

/// The product with a weight in blocks, whose backward gives only the input
/// gradient, recomputed from the blocks rather than kept: flex multiplies
/// by the blocks themselves (keel-gemm); a GPU backend dequantizes the
/// layer's weight for each product (`gpu_blocks`) and drops it after, so
/// one layer's dense weight at a time is on the device, not every layer's
/// until backward.
#[backend_extension(Flex, Cube: cfg(feature = "wgpu"), Autodiff)]
pub trait QuantMatmul: Backend {
    /// `x [.., in]` (f32) · `Wᵀ`, `W [out, in]` in GGUF blocks.
    fn quant_matmul(x: FloatTensor<Self>, w: &QuantBase) -> FloatTensor<Self> {
        let weight = host_weight::<Self>(w, &x.device());
        dense_product::<Self>(x, weight, w.dims(), false)
    }

    /// `dy [.., out]` · `W`: the input gradient of [`QuantMatmul::quant_matmul`].
    fn quant_matmul_input_grad(dy: FloatTensor<Self>, w: &QuantBase) -> FloatTensor<Self> {
        let weight = host_weight::<Self>(w, &dy.device());
        dense_product::<Self>(dy, weight, w.dims(), true)
    }
}

/// `W [out, in]` dequantized on the host and uploaded to `device`: for
/// the types and backends without a kernel of their own.
pub fn host_weight<B: Backend>(w: &QuantBase, device: &B::Device) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(w.dequantize(), w.dims()), device)
}

/// `a · Wᵀ`, or `a · W` for the input gradient, `weight` being `W
/// [out, in]` dense on `a`'s device for this product only.
pub(crate) fn dense_product<B: Backend>(
    a: FloatTensor<B>,
    weight: FloatTensor<B>,
    [out, inp]: [usize; 2],
    input_grad: bool,
) -> FloatTensor<B> {
    let (k, n) = if input_grad { (out, inp) } else { (inp, out) };
    let mut dims = a.shape().as_slice().to_vec();
    let m = dims[..dims.len() - 1].iter().product();
    *dims.last_mut().expect("activations with a dimension") = n;
    let weight = if input_grad {
        weight
    } else {
        B::float_transpose(weight)
    };
    let y = B::float_matmul(B::float_reshape(a, Shape::new([m, k])), weight);
    B::float_reshape(y, Shape::from(dims))
}

impl QuantMatmul for Flex {
    fn quant_matmul(x: FlexTensor, w: &QuantBase) -> FlexTensor {
        quant_product(&x, w, false)
    }

    fn quant_matmul_input_grad(dy: FlexTensor, w: &QuantBase) -> FlexTensor {
        quant_product(&dy, w, true)
    }
}

/// `a · Wᵀ` (forward), or `a · W` (`backward`: the input gradient).
fn quant_product(a: &FlexTensor, w: &QuantBase, backward: bool) -> FlexTensor {
    let [out, inp] = w.dims();
    let (k, n) = if backward { (out, inp) } else { (inp, out) };
    product_with(a, k, n, |a, m, y| match backward {
        false => w.weight().matmul_transposed_into(a, m, y),
        true => w.weight().matmul_into(a, m, y),
    })
}

/// The input gradient `dy · W` of [`quant_matmul`].
#[derive(Debug)]
struct QuantMatmulBackward;

impl<B: QuantMatmul> Backward<B, 1> for QuantMatmulBackward {
    /// The weight: its bytes are shared, not copied.
    type State = QuantBase;

    fn backward(self, ops: Ops<QuantBase, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let w = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            B::quant_matmul_input_grad(dy, &w)
        });
    }
}

impl<B: QuantMatmul, C: CheckpointStrategy> QuantMatmul for Autodiff<B, C> {
    fn quant_matmul(x: FloatTensor<Self>, w: &QuantBase) -> FloatTensor<Self> {
        match QuantMatmulBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::quant_matmul(x.into_primitive(), w);
                prep.finish(w.clone(), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::quant_matmul(x.into_primitive(), w)),
        }
    }
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

    /// A layer whose base stays in GGUF blocks gives the outputs and the
    /// gradients (LoRA's A and B, the input's) of the same layer on the
    /// dequantized base, through Burn's f32 matmul: with and without
    /// activation checkpointing, for a 4-bit and an 8-bit type, on a shape
    /// whose outputs are not a multiple of the kernel's panels.
    #[test]
    fn a_base_in_blocks_trains_as_its_dequantized_copy() {
        use crate::{Adapter, Linear};
        let (out, inp, r) = (70, 96, 4);
        for device in [
            Device::flex().autodiff(),
            Device::flex().autodiff().gradient_checkpointing(),
        ] {
            for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
                let uniform = Distribution::Uniform(-1.0, 1.0);
                let w: Vec<f32> = Tensor::<2>::random([out, inp], uniform, &device)
                    .into_data()
                    .try_to_vec()
                    .unwrap();
                let bytes = keel_gguf::quantize(ty, &w).unwrap();
                let base = QuantBase::owned(bytes, ty, [out, inp]).unwrap();
                let dense =
                    Tensor::<2>::from_data(TensorData::new(base.dequantize(), [out, inp]), &device);
                let (a, b) = (
                    Tensor::<2>::random([inp, r], uniform, &device),
                    Tensor::<2>::random([r, out], uniform, &device),
                );
                let x = Tensor::<3>::random([2, 5, inp], uniform, &device);
                assert!(on_flex_f32(&x), "the kernel is not in use");
                let dy = Tensor::<3>::random([2, 5, out], uniform, &device);
                let run = |mut layer: Linear| {
                    let adapter =
                        Adapter::new("m", "default", a.clone(), b.clone(), None, 0.5, 0.0);
                    layer.add_adapter(adapter).unwrap();
                    let x = x.clone().require_grad();
                    let y = layer.forward(x.clone());
                    let grads = (y.clone() * dy.clone()).sum().backward();
                    let lora = &layer.adapters[0];
                    (
                        y.detach(),
                        x.grad(&grads).unwrap(),
                        lora.a.val().grad(&grads).unwrap(),
                        lora.b.val().grad(&grads).unwrap(),
                    )
                };
                let blocks = run(Linear::quantized(base.clone(), None, &device));
                let plain = run(Linear::frozen(dense.clone().transpose(), None));
                let what = |part: &str| format!("{} {part}", ty.name());
                assert_close(blocks.0, plain.0, &what("output"));
                assert_close(blocks.1, plain.1, &what("input gradient"));
                assert_close(blocks.2, plain.2, &what("A gradient"));
                assert_close(blocks.3, plain.3, &what("B gradient"));
            }
        }
    }

    /// What needs the dense weight is refused on a base kept in blocks,
    /// naming the type.
    #[test]
    fn dora_and_merging_are_refused_on_a_base_in_blocks() {
        use crate::{Adapter, Linear};
        let device = Device::flex();
        let bytes = keel_gguf::quantize(GgmlType::Q8_0, &[0.5; 64]).unwrap();
        let base = QuantBase::owned(bytes, GgmlType::Q8_0, [2, 32]).unwrap();
        let mut layer = Linear::quantized(base, None, &device);
        let (a, b) = (
            Tensor::<2>::ones([32, 1], &device),
            Tensor::<2>::ones([1, 2], &device),
        );
        let magnitude = Some(Tensor::<1>::ones([2], &device));
        let dora = Adapter::new("m", "d", a.clone(), b.clone(), magnitude, 1.0, 0.0);
        let e = layer.add_adapter(dora).unwrap_err().to_string();
        assert!(
            e.contains("DoRA needs the dense base weight") && e.contains("Q8_0"),
            "{e}"
        );
        layer
            .add_adapter(Adapter::new("m", "l", a, b, None, 1.0, 0.0))
            .unwrap();
        let e = layer.merge("l").unwrap_err().to_string();
        assert!(
            e.contains("merging an adapter needs the dense base weight"),
            "{e}"
        );
        let e = QuantBase::owned(vec![0u8; 68], GgmlType::Q8_0, [3, 32]).unwrap_err();
        assert!(
            e.contains("68 bytes are not 3 rows of 32 Q8_0 values"),
            "{e}"
        );
        let e =
            QuantBase::new(Arc::new(vec![0u8; 68]), 34..102, GgmlType::Q8_0, [2, 32]).unwrap_err();
        assert!(
            e.contains("bytes 34..102 are not inside the 68 given"),
            "{e}"
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
