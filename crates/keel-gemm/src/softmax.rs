//! The row log-softmax of an LM head's logits.

use crate::{Tier, tier, vectorised};

/// `log p(t)` of one row of logits, `log_softmax(row)[t]`; with `softmax`,
/// the row becomes the softmax (else it holds `exp(x - max)`). One
/// `exp` per element, vectorised: libm's scalar `exp` was a tenth of a
/// training step.
pub fn log_softmax_row(row: &mut [f32], t: usize, softmax: bool) -> f32 {
    log_softmax_row_at(tier(), row, t, softmax)
}

pub(crate) fn log_softmax_row_at(tier: Tier, row: &mut [f32], t: usize, softmax: bool) -> f32 {
    let target = row[t];
    target - vectorised(tier, || softmax_in_place(row, softmax))
}

/// Lanes of the accumulators: enough for the compiler to vectorise the
/// reductions (floating-point sums are not reassociated otherwise).
const LANES: usize = 16;

/// Replaces `row` by `exp(x − max)`, divided by its sum when `normalise`,
/// and returns the row's log-sum-exp. Inlined into callers that
/// [`vectorised`] compiles for AVX-512.
#[inline(always)]
pub(crate) fn softmax_in_place(row: &mut [f32], normalise: bool) -> f32 {
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in maxes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&maxes)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, x) in sums.iter_mut().zip(c) {
            *x = exp_nonpositive(*x - max);
            *s += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp_nonpositive(*x - max);
        sum += *x;
    }
    if normalise {
        let scale = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= scale);
    }
    max + sum.ln()
}

/// `e^x` for `x ≤ 0` without branches, so that it vectorises: split
/// `x = n·ln 2 + f` with `|f| ≤ ln 2 / 2`, take `e^f` from its degree-6
/// Taylor polynomial (relative error below 2e-7) and `2^n` from the
/// exponent bits. Below −87 it returns about `e^−87` (1.6e−38), which a sum
/// of exponentials of which one is 1 cannot tell from 0.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let k = x * std::f32::consts::LOG2_E + ROUND;
    let n = k - ROUND;
    let f = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + f * (1.0
            + f * (0.5 + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f / 720.0)))));
    let n = (k.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    p * f32::from_bits(((n + 127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorised `exp` against libm's over its whole domain, at every
    /// tier this CPU runs.
    #[test]
    fn exp_is_accurate_to_f32_precision() {
        let xs: Vec<f32> = (0..7300).map(|i| i as f32 * -0.0137).collect();
        for tier in Tier::runnable() {
            let got: Vec<f32> =
                vectorised(tier, || xs.iter().map(|&x| exp_nonpositive(x)).collect());
            for (&x, got) in xs.iter().zip(got) {
                let want = x.max(-87.0).exp();
                assert!(
                    (got - want).abs() <= 3e-7 * want,
                    "{tier}: exp({x}) = {got}, expected {want}"
                );
            }
        }
    }

    #[test]
    fn every_tier_gives_the_same_bits() {
        for len in [17, 1000] {
            crate::tier::assert_tiers_agree(|tier| {
                let mut row: Vec<f32> = (0..len).map(|i| (i * 7919 % 211) as f32 / 9.0).collect();
                let lp = log_softmax_row_at(tier, &mut row, len / 3, true);
                [row, vec![lp]]
            });
        }
    }

    /// Against the definition in f64, rows whose length is not a multiple
    /// of the vector width, at every tier this CPU runs.
    #[test]
    fn log_softmax_matches_its_definition() {
        for (tier, len) in Tier::runnable().flat_map(|t| [1, 15, 16, 17, 100].map(|l| (t, l))) {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 1.7)
                .collect();
            let lse = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
            for t in [0, len / 2, len - 1] {
                let mut r = row.clone();
                let got = log_softmax_row_at(tier, &mut r, t, true) as f64;
                assert!(
                    (got - (row[t] as f64 - lse)).abs() < 1e-5,
                    "{tier}: len {len}, t {t}"
                );
                for (p, &x) in r.iter().zip(&row) {
                    assert!((*p as f64 - (x as f64 - lse).exp()).abs() < 1e-6);
                }
            }
        }
    }
}
