//! SwiGLU, `silu(g) · u`, the Llama MLP's activation: forward and backward
//! in one pass each over the `[tokens, intermediate]` tensors, on every
//! core. Unfused, Burn's flex makes it five single-threaded elementwise
//! passes forward and about eight backward, with a scalar libm `exp`.

use rayon::prelude::*;

use crate::softmax::exp_nonpositive;
use crate::{Tier, tier, vectorised};

/// Elements per parallel task.
const TASK: usize = 1 << 14;

/// `out = silu(g) · u`.
///
/// # Panics
/// If the lengths differ.
pub fn swiglu(g: &[f32], u: &[f32], out: &mut [f32]) {
    swiglu_at(tier(), g, u, out)
}

fn swiglu_at(tier: Tier, g: &[f32], u: &[f32], out: &mut [f32]) {
    assert!(
        g.len() == u.len() && u.len() == out.len(),
        "swiglu: lengths differ"
    );
    out.par_chunks_mut(TASK)
        .zip(g.par_chunks(TASK).zip(u.par_chunks(TASK)))
        .for_each(|(o, (g, u))| vectorised(tier, || forward(g, u, o)));
}

/// The input gradients of [`swiglu`] for the output gradient `dh`:
/// `dg = dh · u · σ(g) (1 + g (1 − σ(g)))` and `du = dh · silu(g)`.
///
/// # Panics
/// If the lengths differ.
pub fn swiglu_backward(g: &[f32], u: &[f32], dh: &[f32], dg: &mut [f32], du: &mut [f32]) {
    swiglu_backward_at(tier(), g, u, dh, (dg, du))
}

fn swiglu_backward_at(
    tier: Tier,
    g: &[f32],
    u: &[f32],
    dh: &[f32],
    (dg, du): (&mut [f32], &mut [f32]),
) {
    let n = g.len();
    assert!(
        [u.len(), dh.len(), dg.len(), du.len()]
            .iter()
            .all(|&l| l == n),
        "swiglu_backward: lengths differ"
    );
    dg.par_chunks_mut(TASK)
        .zip(du.par_chunks_mut(TASK))
        .zip(
            g.par_chunks(TASK)
                .zip(u.par_chunks(TASK))
                .zip(dh.par_chunks(TASK)),
        )
        .for_each(|((dg, du), ((g, u), dh))| vectorised(tier, || backward(g, u, dh, dg, du)));
}

#[inline(always)]
fn forward(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g * sigmoid(g) * u;
    }
}

#[inline(always)]
fn backward(g: &[f32], u: &[f32], dh: &[f32], dg: &mut [f32], du: &mut [f32]) {
    for ((((dg, du), &g), &u), &dh) in dg.iter_mut().zip(du).zip(g).zip(u).zip(dh) {
        let s = sigmoid(g);
        *dg = dh * u * s * (1.0 + g * (1.0 - s));
        *du = dh * g * s;
    }
}

/// `σ(x) = 1 / (1 + e^−x)` from `e^−|x|`, which cannot overflow.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let p = 1.0 / (1.0 + e);
    if x >= 0.0 { p } else { e * p }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs whose length leaves a ragged last task: g, u and dh.
    fn inputs() -> [Vec<f32>; 3] {
        let n = TASK + 37;
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 2001) as f32 - 1000.0) / 50.0)
            .collect();
        let u: Vec<f32> = (0..n)
            .map(|i| ((i * 104_729 % 997) as f32 - 498.0) / 100.0)
            .collect();
        let dh: Vec<f32> = (0..n)
            .map(|i| ((i * 31 % 101) as f32 - 50.0) / 25.0)
            .collect();
        [g, u, dh]
    }

    /// Both passes at `tier`: out, dg, du.
    fn run(tier: Tier) -> [Vec<f32>; 3] {
        let [g, u, dh] = inputs();
        let n = g.len();
        let (mut out, mut dg, mut du) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        swiglu_at(tier, &g, &u, &mut out);
        swiglu_backward_at(tier, &g, &u, &dh, (&mut dg, &mut du));
        [out, dg, du]
    }

    /// Against the definitions in f64, extremes included, at every tier
    /// this CPU runs.
    #[test]
    fn swiglu_and_its_gradient_match_their_definitions() {
        Tier::runnable().for_each(check_at);
    }

    #[test]
    fn every_tier_gives_the_same_bits() {
        crate::tier::assert_tiers_agree(run);
    }

    fn check_at(tier: Tier) {
        let ([g, u, dh], [out, dg, du]) = (inputs(), run(tier));
        for i in 0..g.len() {
            let (x, y, d) = (g[i] as f64, u[i] as f64, dh[i] as f64);
            let s = 1.0 / (1.0 + (-x).exp());
            let close = |got: f32, want: f64, what: &str| {
                assert!(
                    (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{tier}: {what} at g = {x}, u = {y}: {got} vs {want}"
                )
            };
            close(out[i], x * s * y, "swiglu");
            close(dg[i], d * y * s * (1.0 + x * (1.0 - s)), "dg");
            close(du[i], d * x * s, "du");
        }
        for x in [-200.0f32, -88.0, 88.0, 200.0] {
            let mut o = [0f32];
            swiglu_at(tier, &[x], &[1.0], &mut o);
            assert!(o[0].is_finite(), "{tier}: swiglu({x}) = {}", o[0]);
        }
    }
}
