//! A base in GGUF blocks on a GPU (the CubeCL backends: wgpu here): the
//! blocks are uploaded once and stay on the device as they are in the file,
//! and a CubeCL kernel dequantizes one layer's weight for each product, so
//! the GPU holds the model in its 4-8 bits plus one layer dense at a time.
//!
//! The kernel reads the blocks as bytes (a block is 18-210 bytes, so rows are
//! not word-aligned) and mirrors keel-gguf's dequantization formula by
//! formula. Types without a kernel here (Q2_K, Q3_K, the IQ4s) are
//! dequantized on the host and uploaded for each product instead.

use std::sync::{Arc, Mutex};

use burn::backend::ops::IntTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Cube, TensorMetadata, backend_extension};
use burn::tensor::{DType, Shape, TensorData};
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::{self, calculate_cube_count_elemwise};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeDevice};
use keel_gguf::GgmlType;

use crate::frozen::{QuantBase, QuantMatmul, dense_product, host_weight};

/// The blocks of one weight on the device that first multiplied by them,
/// shared by every clone of its [`QuantBase`].
#[derive(Clone, Default)]
pub(crate) struct DeviceBlocks(Arc<Mutex<Option<IntTensor<Cube>>>>);

impl DeviceBlocks {
    /// The blocks on `device`, uploaded on first use (and again should the
    /// weight move to another device).
    fn on(&self, w: &QuantBase, device: &CubeDevice) -> IntTensor<Cube> {
        let mut held = self
            .0
            .lock()
            .expect("a product panicked holding the blocks");
        if let Some(blocks) = held.as_ref().filter(|b| &b.device() == device) {
            return blocks.clone();
        }
        let bytes = w.bytes();
        let words: Vec<u32> = bytes
            .chunks(4)
            .map(|c| {
                let mut word = [0u8; 4];
                word[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(word)
            })
            .collect();
        let len = words.len();
        let blocks = Cube::int_from_data(TensorData::new(words, [len]), device);
        *held = Some(blocks.clone());
        blocks
    }
}

/// The types the kernel dequantizes.
fn has_kernel(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4K | Q5K | Q6K
    )
}

impl QuantMatmul for Cube {
    fn quant_matmul(x: FloatTensor<Self>, w: &QuantBase) -> FloatTensor<Self> {
        let weight = dense_weight(&x, w);
        dense_product::<Self>(x, weight, w.dims(), false)
    }

    fn quant_matmul_input_grad(dy: FloatTensor<Self>, w: &QuantBase) -> FloatTensor<Self> {
        let weight = dense_weight(&dy, w);
        dense_product::<Self>(dy, weight, w.dims(), true)
    }
}

/// `W [out, in]` in f32 on `a`'s device, for one product.
fn dense_weight(a: &FloatTensor<Cube>, w: &QuantBase) -> FloatTensor<Cube> {
    let device = a.device();
    let ty = w.ggml_type();
    if !has_kernel(ty) {
        return host_weight::<Cube>(w, &device);
    }
    let blocks = w.device_blocks.on(w, &device);
    Cube::dequantize_blocks(
        blocks,
        ty.id(),
        [ty.block_len(), ty.block_bytes()],
        w.dims(),
    )
}

/// Blocks to f32 on the device.
#[backend_extension(Cube, Fusion)]
pub trait DequantizeBlocks: Backend {
    /// `blocks` (the bytes of `rows` rows of `cols` values of ggml type
    /// `ty`, as little-endian words) to `[rows, cols]` f32; `block` is the
    /// type's values and bytes per block.
    #[fusion(dtype = DType::F32, shape = Shape::new(*dims))]
    fn dequantize_blocks(
        blocks: IntTensor<Self>,
        ty: u32,
        block: [usize; 2],
        dims: [usize; 2],
    ) -> FloatTensor<Self>;
}

impl DequantizeBlocks for CubeBackend {
    fn dequantize_blocks(
        blocks: CubeTensor,
        ty: u32,
        [block_len, block_bytes]: [usize; 2],
        [rows, cols]: [usize; 2],
    ) -> CubeTensor {
        let out = empty_device_dtype(
            blocks.client.clone(),
            blocks.device.clone(),
            Shape::new([rows, cols]),
            DType::F32,
        );
        let n = rows * cols;
        // The kernel addresses bytes and values in u32.
        let u32_of = |v: usize| u32::try_from(v).expect("a weight under 4 GiB and 2^32 values");
        u32_of(blocks.shape().num_elements() * 4);
        u32_of(n);
        let row_bytes = u32_of(cols / block_len * block_bytes);
        let cube_dim = CubeDim::new(&blocks.client, n);
        let cube_count = calculate_cube_count_elemwise(&blocks.client, n, cube_dim);
        dequantize_kernel::launch(
            &out.client,
            cube_count,
            cube_dim,
            blocks.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            u32_of(cols),
            u32_of(block_len),
            u32_of(block_bytes),
            row_bytes,
            ty,
        );
        out
    }
}

/// One value per unit: value `j` of row `r` from its block's bytes.
#[cube(launch)]
fn dequantize_kernel(
    words: &[u32],
    out: &mut [f32],
    cols: u32,
    block_len: u32,
    block_bytes: u32,
    row_bytes: u32,
    #[comptime] ty: u32,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS as u32;
    let j = i % cols;
    let at = (i / cols) * row_bytes + (j / block_len) * block_bytes;
    let jj = j % block_len;
    if comptime![ty == 0] {
        out[ABSOLUTE_POS] = f32::reinterpret(words[(at / 4) as usize]);
    } else if comptime![ty == 1] {
        out[ABSOLUTE_POS] = half_at(words, at);
    } else if comptime![ty == 30] {
        out[ABSOLUTE_POS] =
            f32::reinterpret((byte_at(words, at) | (byte_at(words, at + 1) << 8)) << 16);
    } else if comptime![ty == 2] {
        let q = i32::cast_from(nibble(words, at + 2, jj)) - 8;
        out[ABSOLUTE_POS] = half_at(words, at) * f32::cast_from(q);
    } else if comptime![ty == 3] {
        let q = f32::cast_from(nibble(words, at + 4, jj));
        out[ABSOLUTE_POS] = half_at(words, at) * q + half_at(words, at + 2);
    } else if comptime![ty == 6] {
        let q = nibble(words, at + 6, jj) | (bit_at(words, at + 2, jj) << 4);
        out[ABSOLUTE_POS] = half_at(words, at) * f32::cast_from(i32::cast_from(q) - 16);
    } else if comptime![ty == 7] {
        let q = nibble(words, at + 8, jj) | (bit_at(words, at + 4, jj) << 4);
        out[ABSOLUTE_POS] = half_at(words, at) * f32::cast_from(q) + half_at(words, at + 2);
    } else if comptime![ty == 8] {
        let q = signed_byte(byte_at(words, at + 2 + jj));
        out[ABSOLUTE_POS] = half_at(words, at) * f32::cast_from(q);
    } else if comptime![ty == 12 || ty == 13] {
        let sub = jj / 32;
        let ds = half_at(words, at) * f32::cast_from(k_scale(words, at + 4, sub));
        let dm = half_at(words, at + 2) * f32::cast_from(k_min(words, at + 4, sub));
        let lane = jj % 32;
        let shift = (sub % 2) * 4;
        // Q5_K's fifth bits come before its nibbles.
        let (qh, qs) = if comptime![ty == 12] {
            (0u32, 16u32)
        } else {
            (16u32, 48u32)
        };
        let mut q = (byte_at(words, at + qs + (sub / 2) * 32 + lane) >> shift) & 0xF;
        if comptime![ty == 13] {
            q |= bit_at(words, at + qh + lane, sub) << 4;
        }
        out[ABSOLUTE_POS] = ds * f32::cast_from(q) - dm;
    } else {
        // Q6_K: two halves of 128; value 32·k + l of a half takes the low
        // (k < 2) or high nibble of ql[l + 32·(k % 2)] and bits 2k of qh[l].
        let half = jj / 128;
        let k = (jj % 128) / 32;
        let l = jj % 32;
        let low = (byte_at(words, at + 64 * half + l + 32 * (k % 2)) >> (4 * (k / 2))) & 0xF;
        let high = (byte_at(words, at + 128 + 32 * half + l) >> (2 * k)) & 3;
        let sc = signed_byte(byte_at(words, at + 192 + 8 * half + l / 16 + 2 * k));
        let ds = half_at(words, at + 208) * f32::cast_from(sc);
        out[ABSOLUTE_POS] = ds * f32::cast_from(i32::cast_from(low | (high << 4)) - 32);
    }
}

/// A byte read as `i8`.
#[cube]
fn signed_byte(b: u32) -> i32 {
    i32::cast_from(b) - i32::cast_from(b >> 7) * 256
}

/// Byte `at` of the blocks.
#[cube]
fn byte_at(words: &[u32], at: u32) -> u32 {
    (words[(at / 4) as usize] >> ((at % 4) * 8)) & 0xFF
}

/// Bit `bit` of the little-endian bit string starting at byte `at`.
#[cube]
fn bit_at(words: &[u32], at: u32, bit: u32) -> u32 {
    (byte_at(words, at + bit / 8) >> (bit % 8)) & 1
}

/// The 4-bit value `jj` of a 32-value block whose 16 bytes at `at` hold
/// values 0..16 in their low nibbles and 16..32 in their high ones.
#[cube]
fn nibble(words: &[u32], at: u32, jj: u32) -> u32 {
    (byte_at(words, at + jj % 16) >> ((jj / 16) * 4)) & 0xF
}

/// The IEEE half at byte `at`, exactly (WGSL has no f16 without an
/// extension).
#[cube]
fn half_at(words: &[u32], at: u32) -> f32 {
    let h = byte_at(words, at) | (byte_at(words, at + 1) << 8);
    let (exp, man) = ((h >> 10) & 0x1F, h & 0x3FF);
    let mut bits = (h & 0x8000) << 16;
    if exp == 0 {
        // Zero or subnormal: man · 2⁻²⁴, exact in f32.
        bits |= u32::reinterpret(f32::cast_from(man) * f32::reinterpret(0x3380_0000u32));
    } else if exp == 31 {
        bits |= 0x7F80_0000 | (man << 13);
    } else {
        bits |= ((exp + 112) << 23) | (man << 13);
    }
    f32::reinterpret(bits)
}

/// The 6-bit scale of sub-block `sub` among a k-quant's 12 packed bytes.
#[cube]
fn k_scale(words: &[u32], s: u32, sub: u32) -> u32 {
    if sub < 4 {
        byte_at(words, s + sub) & 63
    } else {
        (byte_at(words, s + sub + 4) & 0xF) | ((byte_at(words, s + sub - 4) >> 6) << 4)
    }
}

/// The 6-bit min of sub-block `sub`, beside [`k_scale`].
#[cube]
fn k_min(words: &[u32], s: u32, sub: u32) -> u32 {
    if sub < 4 {
        byte_at(words, s + sub + 4) & 63
    } else {
        (byte_at(words, s + sub + 4) >> 4) | ((byte_at(words, s + sub) >> 6) << 4)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, DeviceKind, Distribution, Tensor};

    use super::*;
    use crate::frozen::quant_matmul;

    /// For every type the kernel knows, the weight the GPU multiplies by is
    /// keel-gguf's dequantization exactly: `I · Wᵀ` is `Wᵀ` (zeros unsigned).
    /// Rows of three blocks are not word-aligned for the 18-, 22-, 34- and
    /// 210-byte blocks; one row's scales are f16 subnormals, one row is zero.
    #[test]
    fn the_kernel_dequantizes_as_keel_gguf_does() {
        if std::env::var_os("KEEL_TEST_WGPU").is_none() {
            eprintln!("SKIPPED: the GPU dequantization kernel (set KEEL_TEST_WGPU=1; CI does)");
            return;
        }
        use GgmlType::*;
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        for ty in [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K] {
            assert!(has_kernel(ty));
            let (rows, cols) = (5, 3 * ty.block_len().max(12));
            let mut w: Vec<f32> = Tensor::<2>::random(
                [rows, cols],
                Distribution::Normal(0.0, 1.0),
                &Device::flex(),
            )
            .into_data()
            .try_to_vec()
            .unwrap();
            w[cols..2 * cols].iter_mut().for_each(|v| *v *= 1e-7);
            w[2 * cols..3 * cols].fill(0.0);
            w[3 * cols..4 * cols]
                .iter_mut()
                .for_each(|v| *v = v.abs() + 3.0);
            let bytes = keel_gguf::quantize(ty, &w).unwrap();
            let base = QuantBase::owned(bytes, ty, [rows, cols]).unwrap();
            let x = Tensor::<2>::eye(cols, &device);
            for round in 0..2 {
                let got: Vec<f32> = quant_matmul(x.clone(), &base)
                    .transpose()
                    .into_data()
                    .try_to_vec()
                    .unwrap();
                let want = base.dequantize();
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    // Equal: the product by I turns -0 into 0, nothing else.
                    assert!(
                        g == e,
                        "{} value {i} (round {round}): {g}, expected {e}",
                        ty.name()
                    );
                }
                assert!(base.device_blocks.0.lock().unwrap().is_some());
            }
        }
    }
}
