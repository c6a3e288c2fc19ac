//! Block dequantization. Each formula multiplies in the same order as the
//! `gguf` Python package (`gguf/quants.py`), in `f32` without fused
//! multiply-adds, so results are bit-exact with it.

use half::{bf16, f16};

use crate::error::Error;
use crate::ggml_type::{GgmlType, QK_K};

/// Dequantizes whole blocks of `ty` into `f32`.
///
/// # Errors
/// When `bytes` is not whole blocks, or `ty` is one keel cannot dequantize.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>, Error> {
    let mut out = Vec::with_capacity(bytes.len() / ty.block_bytes() * ty.block_len());
    dequantize_into(ty, bytes, &mut out)?;
    Ok(out)
}

/// [`dequantize`], appending to `out`: a kernel reuses one buffer for the
/// blocks it dequantizes.
///
/// # Errors
/// As [`dequantize`]; `out` is then unchanged.
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), Error> {
    let block_bytes = ty.block_bytes();
    if !bytes.len().is_multiple_of(block_bytes) {
        return Err(Error::invalid(
            format!("{} data", ty.name()),
            format!(
                "{} bytes is not a whole number of {block_bytes}-byte blocks",
                bytes.len()
            ),
        ));
    }
    out.reserve(bytes.len() / block_bytes * ty.block_len());
    let blocks = bytes.chunks_exact(block_bytes);
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes(b.try_into().unwrap()))),
        GgmlType::F16 => out.extend(blocks.map(|b| f16_at(b, 0))),
        GgmlType::BF16 => out.extend(blocks.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        GgmlType::Q4_0 => blocks.for_each(|b| q4_0(b, out)),
        GgmlType::Q4_1 => blocks.for_each(|b| q4_1(b, out)),
        GgmlType::Q5_0 => blocks.for_each(|b| q5_0(b, out)),
        GgmlType::Q5_1 => blocks.for_each(|b| q5_1(b, out)),
        GgmlType::Q8_0 => blocks.for_each(|b| q8_0(b, out)),
        GgmlType::Q2K => blocks.for_each(|b| q2_k(b, out)),
        GgmlType::Q3K => blocks.for_each(|b| q3_k(b, out)),
        GgmlType::Q4K => blocks.for_each(|b| q4_k(b, out)),
        GgmlType::Q5K => blocks.for_each(|b| q5_k(b, out)),
        GgmlType::Q6K => blocks.for_each(|b| q6_k(b, out)),
        GgmlType::IQ4NL => blocks.for_each(|b| iq4_nl(b, out)),
        GgmlType::IQ4XS => blocks.for_each(|b| iq4_xs(b, out)),
        GgmlType::Other(t) => {
            return Err(Error::invalid(
                format!("{} data", t.name),
                "keel cannot dequantize this type",
            ));
        }
    }
    Ok(())
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// 32 weights: `d * (q - 8)`, low nibbles first, then high nibbles.
fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| d * ((q & 0xF) as i32 - 8) as f32));
    out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
}

/// 32 weights: `d * q + m`.
fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| d * (q & 0xF) as f32 + m));
    out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
}

/// The 4-bit value of weight `j` of a 32-weight block whose 16 bytes hold
/// weights `0..16` in their low nibbles and `16..32` in their high ones.
fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 }
}

/// The 5-bit values of a Q5_0 / Q5_1 block: the nibbles of `qs` with bit
/// `j` of the little-endian `qh` as their fifth bit.
fn five_bits(qh: &[u8], qs: &[u8]) -> impl Iterator<Item = u8> {
    let qh = u32::from_le_bytes(qh.try_into().unwrap());
    (0..32).map(move |j| nibble(qs, j) | ((((qh >> j) & 1) as u8) << 4))
}

/// 32 weights: `d * (q - 16)`, `q` of 5 bits.
fn q5_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(five_bits(&b[2..6], &b[6..22]).map(|q| d * (q as i8 - 16) as f32));
}

/// 32 weights: `d * q + m`, `q` of 5 bits.
fn q5_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    out.extend(five_bits(&b[4..8], &b[8..24]).map(|q| d * q as f32 + m));
}

/// The non-linear 4-bit grid of IQ4_NL and IQ4_XS.
const IQ4_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// 32 weights: `d * grid[q]`, nibbles laid out as in Q4_0.
fn iq4_nl(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    out.extend((0..32).map(|j| d * IQ4_VALUES[nibble(qs, j) as usize] as f32));
}

/// 256 weights in 8 sub-blocks of 32: `(d * (scale - 32)) * grid[q]`, each
/// 6-bit scale split into 4 low bits (`scales_l`) and 2 high (`scales_h`).
fn iq4_xs(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let scales_l = &b[4..4 + QK_K / 64];
    let qs = &b[4 + QK_K / 64..];
    for (i, qs) in qs.chunks_exact(16).enumerate() {
        let low = (scales_l[i / 2] >> (4 * (i % 2))) & 0xF;
        let high = ((scales_h >> (2 * i)) & 3) as u8;
        let dl = d * ((low | high << 4) as i8 - 32) as f32;
        out.extend((0..32).map(|j| dl * IQ4_VALUES[nibble(qs, j) as usize] as f32));
    }
}

/// 32 weights: `d * q` with signed bytes.
fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
}

/// 2-bit value `f` of a k-quant block: the 64 bytes of `qs` hold two halves
/// of 128 weights, each byte four of them, 32 weights apart.
fn two_bits(qs: &[u8], f: usize) -> u8 {
    (qs[32 * (f / 128) + f % 32] >> (2 * ((f % 128) / 32))) & 3
}

/// 256 weights in 16 sub-blocks of 16: `(d * sc) * q - (dmin * m)`, with a
/// 4-bit scale and min per sub-block and 2-bit `q`.
fn q2_k(b: &[u8], out: &mut Vec<f32>) {
    let scales = &b[..QK_K / 16];
    let qs = &b[QK_K / 16..QK_K / 16 + QK_K / 4];
    let (d, dmin) = (
        f16_at(b, QK_K / 16 + QK_K / 4),
        f16_at(b, QK_K / 16 + QK_K / 4 + 2),
    );
    out.extend((0..QK_K).map(|f| {
        let s = scales[f / 16];
        let (dl, ml) = (d * (s & 0xF) as f32, dmin * (s >> 4) as f32);
        dl * two_bits(qs, f) as f32 - ml
    }));
}

/// 256 weights in 16 sub-blocks of 16: `(d * (sc - 32)) * (q - 4·!h)`,
/// 3-bit weights from 2 low bits (`qs`) and a high bit (`hmask`) whose
/// absence subtracts 4; 6-bit scales packed into 12 bytes.
fn q3_k(b: &[u8], out: &mut Vec<f32>) {
    let hmask = &b[..QK_K / 8];
    let qs = &b[QK_K / 8..QK_K / 8 + QK_K / 4];
    let scales = &b[QK_K / 8 + QK_K / 4..QK_K / 8 + QK_K / 4 + 12];
    let d = f16_at(b, QK_K / 8 + QK_K / 4 + 12);
    let dl: [f32; 16] = std::array::from_fn(|i| {
        let low = (scales[i % 8] >> (4 * (i / 8))) & 0xF;
        let high = (scales[8 + i % 4] >> (2 * (i / 4))) & 3;
        d * ((low | high << 4) as i8 - 32) as f32
    });
    out.extend((0..QK_K).map(|f| {
        let h = ((hmask[f % 32] >> (f / 32)) & 1) ^ 1;
        dl[f / 16] * (two_bits(qs, f) as i8 - (h << 2) as i8) as f32
    }));
}

/// The eight 6-bit (scale, min) pairs packed into 12 bytes by the k-quants.
pub(crate) fn k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            mn[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
            mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

/// 256 weights in 8 sub-blocks of 32: `(d * sc) * q - (dmin * m)`; each
/// 32-byte run of `qs` holds two sub-blocks, low nibbles then high.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k_scales_mins(&b[4..16]);
    let qs = &b[16..16 + QK_K / 2];
    for (j, chunk) in qs.chunks_exact(32).enumerate() {
        for (sub, shift) in [(2 * j, 0), (2 * j + 1, 4)] {
            let (ds, dm) = (d * sc[sub] as f32, dmin * mn[sub] as f32);
            out.extend(chunk.iter().map(|&q| ds * ((q >> shift) & 0xF) as f32 - dm));
        }
    }
}

/// Like Q4_K with a fifth bit per weight taken from `qh`.
fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k_scales_mins(&b[4..16]);
    let qh = &b[16..16 + QK_K / 8];
    let qs = &b[16 + QK_K / 8..16 + QK_K / 8 + QK_K / 2];
    for (j, chunk) in qs.chunks_exact(32).enumerate() {
        for (sub, shift) in [(2 * j, 0), (2 * j + 1, 4)] {
            let (ds, dm) = (d * sc[sub] as f32, dmin * mn[sub] as f32);
            out.extend(chunk.iter().zip(qh).map(|(&q, &h)| {
                let high = ((h >> sub) & 1) << 4;
                ds * (((q >> shift) & 0xF) | high) as f32 - dm
            }));
        }
    }
}

/// 256 weights in 16 sub-blocks of 16: `(d * sc) * (q - 32)`, the 6-bit `q`
/// split into 4 low bits (`ql`) and 2 high bits (`qh`).
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let ql = &b[..QK_K / 2];
    let qh = &b[QK_K / 2..QK_K / 2 + QK_K / 4];
    let scales = &b[QK_K / 2 + QK_K / 4..QK_K / 2 + QK_K / 4 + QK_K / 16];
    let d = f16_at(b, QK_K / 2 + QK_K / 4 + QK_K / 16);
    let start = out.len();
    out.resize(start + QK_K, 0.0);
    let y = &mut out[start..];
    for half in 0..2 {
        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
        let sc = &scales[8 * half..];
        let y = &mut y[128 * half..];
        for l in 0..32 {
            let is = l / 16;
            let q = [
                (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (k, &qk) in q.iter().enumerate() {
                let ds = d * (sc[is + 2 * k] as i8) as f32;
                y[l + 32 * k] = ds * (qk as i32 - 32) as f32;
            }
        }
    }
}
