//! Quantization to the legacy block types, as llama.cpp's reference
//! `quantize_row_*_ref` and the `gguf` Python package do it (bit-exact with
//! the package: each step rounds to f32 as numpy does, no fused
//! multiply-adds), and to the K-quants as llama.cpp does (`quantize_k`), so
//! a base quantized here is the same bits a GGUF export of it holds.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::Error;
use crate::ggml_type::GgmlType;
use crate::quantize_k;

/// `values` as whole blocks of `ty`.
///
/// # Errors
/// When `values` is not whole blocks of `ty`, holds a value that is not
/// finite, or `ty` is one keel does not quantize to (Q2_K, Q3_K and the
/// I-quants, which llama.cpp quantizes with an importance matrix).
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, Error> {
    let len = ty.block_len();
    if !values.len().is_multiple_of(len) {
        return Err(Error::invalid(
            format!("{} quantization", ty.name()),
            format!("{} values are not whole {len}-value blocks", values.len()),
        ));
    }
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid(
            format!("{} quantization", ty.name()),
            format!("value {i} is {}: only finite values quantize", values[i]),
        ));
    }
    if matches!(
        ty,
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::IQ4NL | GgmlType::IQ4XS | GgmlType::Other(_)
    ) {
        return Err(Error::invalid(
            format!("{} quantization", ty.name()),
            "keel quantizes to F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K",
        ));
    }
    // Blocks are independent: whole blocks per task, on every core (the
    // K-quants' search for scales takes minutes for a 1.5B model on one).
    let per_task = 65_536usize.next_multiple_of(len);
    let parts: Vec<Vec<u8>> = values
        .par_chunks(per_task)
        .map(|part| encode(ty, part))
        .collect();
    Ok(parts.concat())
}

/// Whole blocks of a type [`quantize`] takes.
fn encode(ty: GgmlType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / ty.block_len() * ty.block_bytes());
    let blocks = values.chunks_exact(ty.block_len());
    match ty {
        GgmlType::F32 => out.extend(values.iter().flat_map(|x| x.to_le_bytes())),
        GgmlType::F16 => out.extend(values.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes())),
        GgmlType::BF16 => out.extend(values.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes())),
        GgmlType::Q8_0 => blocks.for_each(|b| q8_0(b, &mut out)),
        GgmlType::Q4_0 => blocks.for_each(|b| symmetric(b, 4, &mut out)),
        GgmlType::Q5_0 => blocks.for_each(|b| symmetric(b, 5, &mut out)),
        GgmlType::Q4_1 => blocks.for_each(|b| with_min(b, 4, &mut out)),
        GgmlType::Q5_1 => blocks.for_each(|b| with_min(b, 5, &mut out)),
        GgmlType::Q4K => blocks.for_each(|b| quantize_k::with_min(b, 4, &mut out)),
        GgmlType::Q5K => blocks.for_each(|b| quantize_k::with_min(b, 5, &mut out)),
        GgmlType::Q6K => blocks.for_each(|b| quantize_k::q6_k(b, &mut out)),
        other => unreachable!("quantize refused {}", other.name()),
    }
    out
}

/// `1 / d`, or 0 for a zero scale (an all-zero block).
fn inverse(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

/// `d = max|x| / 127`, `q = round(x / d)` half away from zero.
fn q8_0(b: &[f32], out: &mut Vec<u8>) {
    let d = b.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
    let id = inverse(d);
    out.extend(f16::from_f32(d).to_le_bytes());
    out.extend(b.iter().map(|&x| (x * id).round() as i8 as u8));
}

/// Q4_0 / Q5_0: `d = x_max / -2^(bits-1)` with `x_max` the value of largest
/// magnitude (the first such), `q = trunc(x / d + 2^(bits-1) + 0.5)`
/// clipped to the bits.
fn symmetric(b: &[f32], bits: u32, out: &mut Vec<u8>) {
    let half = (1u32 << (bits - 1)) as f32;
    let max = b
        .iter()
        .copied()
        .reduce(|m, x| if x.abs() > m.abs() { x } else { m })
        .expect("a block has values");
    let d = max / -half;
    let id = inverse(d);
    let top = (1u8 << bits) - 1;
    let q: Vec<u8> = b
        .iter()
        .map(|&x| ((x * id + (half + 0.5)).trunc() as u8).min(top))
        .collect();
    out.extend(f16::from_f32(d).to_le_bytes());
    pack(&q, bits, out);
}

/// Q4_1 / Q5_1: `d = (max - min) / (2^bits - 1)`, `m = min`,
/// `q = trunc((x - min) / d + 0.5)` clipped to the bits.
fn with_min(b: &[f32], bits: u32, out: &mut Vec<u8>) {
    let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = b.iter().copied().fold(f32::INFINITY, f32::min);
    let top = (1u8 << bits) - 1;
    let d = (max - min) / top as f32;
    let id = inverse(d);
    let q: Vec<u8> = b
        .iter()
        .map(|&x| (((x - min) * id + 0.5).trunc() as u8).min(top))
        .collect();
    out.extend(f16::from_f32(d).to_le_bytes());
    out.extend(f16::from_f32(min).to_le_bytes());
    pack(&q, bits, out);
}

/// 32 values of 4 or 5 bits: for 5, first their fifth bits as a
/// little-endian u32; then the low nibbles, values 0..16 in the low halves
/// of 16 bytes and 16..32 in the high halves.
fn pack(q: &[u8], bits: u32, out: &mut Vec<u8>) {
    if bits == 5 {
        let qh = (0..32).fold(0u32, |h, j| h | (u32::from(q[j] >> 4) << j));
        out.extend(qh.to_le_bytes());
    }
    out.extend((0..16).map(|j| (q[j] & 0xF) | (q[j + 16] << 4)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dequantize;

    /// An all-zero block has scale 0 and dequantizes to zeros; a block's
    /// extreme value comes back up to the f16 rounding of its scale (exactly
    /// where the scale is a power of two or the minimum is stored).
    #[test]
    fn zero_blocks_and_extremes_round_trip() {
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q4_1,
            GgmlType::Q5_1,
        ] {
            let zeros = dequantize(ty, &quantize(ty, &[0.0; 32]).unwrap()).unwrap();
            assert!(zeros.iter().all(|&x| x == 0.0), "{}", ty.name());
            let mut ramp: Vec<f32> = (0..32).map(|i| i as f32 / 8.0 - 2.0).collect();
            ramp[5] = -4.0;
            let back = dequantize(ty, &quantize(ty, &ramp).unwrap()).unwrap();
            assert!(
                (back[5] + 4.0).abs() <= 4.0 / 1024.0,
                "{}: {}",
                ty.name(),
                back[5]
            );
            if ty != GgmlType::Q8_0 {
                assert_eq!(back[5], -4.0, "{}", ty.name());
            }
        }
    }

    /// llama.cpp's fallbacks: Qwen2.5-0.5B's 896-value rows take Q5_0 for
    /// Q4_K (what its Q4_K_M file holds), its 4864-value rows Q4_K itself.
    #[test]
    fn rows_that_blocks_do_not_fit_fall_back_as_in_llama_cpp() {
        assert_eq!(GgmlType::Q4K.for_row_of(4864), GgmlType::Q4K);
        assert_eq!(GgmlType::Q4K.for_row_of(896), GgmlType::Q5_0);
        assert_eq!(GgmlType::Q5K.for_row_of(896), GgmlType::Q5_1);
        assert_eq!(GgmlType::Q6K.for_row_of(896), GgmlType::Q8_0);
        assert_eq!(GgmlType::Q4K.for_row_of(100), GgmlType::F16);
        assert_eq!(GgmlType::Q8_0.for_row_of(100), GgmlType::F16);
        assert_eq!(GgmlType::Q8_0.for_row_of(96), GgmlType::Q8_0);
    }

    /// Split over several tasks, the bytes are those of the parts
    /// quantized one after another.
    #[test]
    fn tasks_give_the_bytes_of_one_pass() {
        let values: Vec<f32> = (0..300_032u64)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        for ty in [GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K] {
            let split = 150_016; // whole 256-value blocks, more than one task each side
            let parts = [
                quantize(ty, &values[..split]).unwrap(),
                quantize(ty, &values[split..]).unwrap(),
            ];
            assert_eq!(
                quantize(ty, &values).unwrap(),
                parts.concat(),
                "{}",
                ty.name()
            );
        }
    }

    #[test]
    fn non_finite_values_are_refused() {
        let mut v = [0.5f32; 32];
        v[7] = f32::NAN;
        let e = quantize(GgmlType::Q4_0, &v).unwrap_err().to_string();
        assert!(e.contains("value 7 is NaN"), "{e}");
    }

    #[test]
    fn partial_blocks_and_other_types_are_refused() {
        let e = quantize(GgmlType::Q8_0, &[0.0; 33])
            .unwrap_err()
            .to_string();
        assert!(e.contains("33 values are not whole 32-value blocks"), "{e}");
        let e = quantize(GgmlType::Q3K, &[0.0; 256])
            .unwrap_err()
            .to_string();
        assert!(e.contains("Q3_K quantization"), "{e}");
    }
}
