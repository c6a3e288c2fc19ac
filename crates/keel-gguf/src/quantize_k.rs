//! K-quantization (Q4_K, Q5_K, Q6_K) as llama.cpp's `quantize_row_q*_K_ref`
//! does it without an importance matrix (what `llama-quantize` does without
//! `--imatrix`): the same search for each sub-block's scale (and minimum),
//! with every f32 step in llama.cpp's order and no fused multiply-adds, so
//! the bytes are llama.cpp's.

use std::array;

use half::f16;

use crate::dequant::k_scales_mins;

const QK_K: usize = 256;
/// Below this largest magnitude a group is all zero (llama.cpp's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// llama.cpp's `nearest_int`: round half to even through the f32 mantissa
/// (exact for |x| < 2^22, which its callers' values are).
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Q4_K (`bits` 4) or Q5_K (5): 8 sub-blocks of 32, each `scale * q - min`
/// with 6-bit scale and min relative to the block's f16 `d` and `dmin`.
pub(crate) fn with_min(x: &[f32], bits: u32, out: &mut Vec<u8>) {
    // llama.cpp's search range per type: (rmin, steps).
    let (rmin, nstep) = if bits == 4 { (-1.0, 20) } else { (-0.5, 15) };
    let nmax = (1i32 << bits) - 1;
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    for (j, (xs, l)) in x.chunks_exact(32).zip(l.chunks_exact_mut(32)).enumerate() {
        let sum_x2 = xs.iter().fold(0f32, |s, &v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = array::from_fn(|i| av_x + xs[i].abs());
        (scales[j], mins[j]) = scale_and_min(xs, &weights, nmax, rmin, nstep, l);
    }
    let max_scale = scales.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let max_min = mins.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let inverse = |max: f32| if max > 0.0 { 63.0 / max } else { 0.0 };
    let (inv_scale, inv_min) = (inverse(max_scale), inverse(max_min));
    let mut packed = [0u8; 12];
    for j in 0..8 {
        // C's int to uint8_t conversion, then the 6-bit clamp.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    // Requantize every weight against the scales as stored.
    let (sc, mn) = k_scales_mins(&packed);
    for (j, (xs, l)) in x.chunks_exact(32).zip(l.chunks_exact_mut(32)).enumerate() {
        let ds = d.to_f32() * sc[j] as f32;
        if ds == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * mn[j] as f32;
        for (q, &v) in l.iter_mut().zip(xs) {
            *q = nearest_int((v + dm) / ds).clamp(0, nmax) as u8;
        }
    }
    out.extend(d.to_le_bytes());
    out.extend(dmin.to_le_bytes());
    out.extend(packed);
    // Each 64 weights: the first 32 in the low nibbles of 32 bytes, the next
    // 32 in the high; Q5_K's fifth bits go to `qh`, two bits per 64.
    if bits == 5 {
        let qh: [u8; 32] = array::from_fn(|j| {
            (0..QK_K / 32).fold(0u8, |h, sub| h | ((l[32 * sub + j] >> 4) << sub))
        });
        out.extend(qh);
    }
    for chunk in l.chunks_exact(64) {
        out.extend((0..32).map(|i| (chunk[i] & 0xF) | ((chunk[i + 32] & 0xF) << 4)));
    }
}

/// llama.cpp's `make_qkx2_quants` (squared error): the `(scale, -min)` of
/// `x ≈ scale * q + min` with `q` in `0..=nmax`, from a first guess and
/// `nstep + 1` rescaled tries; leaves the best `q` in `l`.
fn scale_and_min(
    x: &[f32],
    w: &[f32; 32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8],
) -> (f32, f32) {
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..x.len() {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let quant = |iscale: f32, min: f32, v: f32| nearest_int(iscale * (v - min)).clamp(0, nmax);
    let error = |scale: f32, min: f32, l: &[u8]| {
        l.iter().zip(x).zip(w).fold(0f32, |e, ((&q, &v), &w)| {
            let diff = scale * q as f32 + min - v;
            e + w * (diff * diff)
        })
    };
    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    for (q, &v) in l.iter_mut().zip(x) {
        *q = quant(iscale, min, v) as u8;
    }
    let mut best = error(scale, min, l);
    let mut laux = [0u8; 32];
    for step in 0..=nstep {
        let iscale = (rmin + 0.1 * step as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for ((q, &v), &w) in laux.iter_mut().zip(x).zip(w) {
            let lq = quant(iscale, min, v);
            *q = lq as u8;
            let lf = lq as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let err = error(this_scale, this_min, &laux);
            if err < best {
                l.copy_from_slice(&laux);
                best = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Q6_K: 16 sub-blocks of 16, each `d * sc * (q - 32)` with an 8-bit `sc`.
pub(crate) fn q6_k(x: &[f32], out: &mut Vec<u8>) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs) = (0f32, 0f32);
    for (ib, (xs, l)) in x.chunks_exact(16).zip(l.chunks_exact_mut(16)).enumerate() {
        scales[ib] = symmetric_scale(xs, 32, l);
        if scales[ib].abs() > max_abs {
            max_abs = scales[ib].abs();
            max_scale = scales[ib];
        }
    }
    if max_abs < GROUP_MAX_EPS {
        out.extend([0u8; 210]);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    let sc: [i8; 16] = array::from_fn(|ib| nearest_int(iscale * scales[ib]).min(127) as i8);
    for ((xs, l), &s) in x.chunks_exact(16).zip(l.chunks_exact_mut(16)).zip(&sc) {
        let ds = d.to_f32() * s as f32;
        if ds == 0.0 {
            continue;
        }
        for (q, &v) in l.iter_mut().zip(xs) {
            *q = (nearest_int(v / ds).clamp(-32, 31) + 32) as u8;
        }
    }
    // Each 128 weights: low nibbles of weights 0..32 and 64..96 share 32
    // bytes of `ql`, 32..64 and 96..128 the next 32; their top two bits go
    // four to a byte of `qh`.
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for half in 0..2 {
        let l = &l[128 * half..];
        for i in 0..32 {
            ql[64 * half + i] = (l[i] & 0xF) | ((l[i + 64] & 0xF) << 4);
            ql[64 * half + i + 32] = (l[i + 32] & 0xF) | ((l[i + 96] & 0xF) << 4);
            qh[32 * half + i] = (0..4).fold(0u8, |h, k| h | ((l[i + 32 * k] >> 4) << (2 * k)));
        }
    }
    out.extend(ql);
    out.extend(qh);
    out.extend(sc.map(|s| s as u8));
    out.extend(d.to_le_bytes());
}

/// llama.cpp's `make_qx_quants` with `rmse_type` 1 (weights `x²`): the
/// scale of `x ≈ scale * (q - nmax)`, the best of a first guess and 18
/// rescaled tries; leaves `q` in `l`.
fn symmetric_scale(x: &[f32], nmax: i32, l: &mut [u8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // (Σ w x q, Σ w q²) with w = x².
    let sums = |iscale: f32| {
        x.iter().fold((0f32, 0f32), |(lx, l2), &v| {
            let (w, q) = (v * v, quant(iscale, v) as f32);
            (lx + w * v * q, l2 + w * q * q)
        })
    };
    let store = |iscale: f32, l: &mut [u8]| {
        for (q, &v) in l.iter_mut().zip(x) {
            *q = (quant(iscale, v) + nmax) as u8;
        }
    };
    let iscale = -(nmax as f32) / max;
    store(iscale, l);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            store(iscale, l);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}
