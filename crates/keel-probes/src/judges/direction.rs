//! The refusal direction (Arditi et al. 2024): per layer, the difference of
//! the mean residual stream at the last prompt position between harmful
//! and harmless prompts. Fitted on part of the prompts; the rest, projected
//! onto it, measure how well it separates them (AUROC). Adaptation that
//! rotates it (cosine before vs after) is moving the model's safety
//! mechanism itself.

use crate::stats::{auroc, cosine, dot};

/// Residual stream at the last prompt position after each layer.
pub type Residuals = Vec<Vec<f32>>;

/// Whether prompt `i` fits the direction (the others are held out): spread
/// evenly through the list, so every set is represented on both sides.
pub fn is_fit(i: usize, fit_fraction: f64) -> bool {
    ((i + 1) as f64 * fit_fraction).floor() > (i as f64 * fit_fraction).floor()
}

fn mean_per_layer(rs: &[&Residuals]) -> Vec<Vec<f64>> {
    let layers = rs[0].len();
    (0..layers)
        .map(|l| {
            let mut m = vec![0.0; rs[0][l].len()];
            for r in rs {
                for (acc, &v) in m.iter_mut().zip(&r[l]) {
                    *acc += v as f64;
                }
            }
            m.iter().map(|v| v / rs.len() as f64).collect()
        })
        .collect()
}

/// Per layer: mean(harmful) − mean(harmless).
pub fn fit(harmful: &[&Residuals], harmless: &[&Residuals]) -> Vec<Vec<f64>> {
    let (h, b) = (mean_per_layer(harmful), mean_per_layer(harmless));
    h.iter()
        .zip(&b)
        .map(|(h, b)| h.iter().zip(b).map(|(x, y)| x - y).collect())
        .collect()
}

/// Per layer: AUROC of projections onto `direction`, harmful above harmless.
pub fn separation(
    direction: &[Vec<f64>],
    harmful: &[&Residuals],
    harmless: &[&Residuals],
) -> Vec<f64> {
    let project = |rs: &[&Residuals], l: usize| -> Vec<f64> {
        rs.iter()
            .map(|r| {
                let x: Vec<f64> = r[l].iter().map(|&v| v as f64).collect();
                dot(&x, &direction[l])
            })
            .collect()
    };
    (0..direction.len())
        .map(|l| auroc(&project(harmful, l), &project(harmless, l)))
        .collect()
}

/// Per layer: cosine of two fitted directions (before vs after adaptation).
pub fn similarity(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| cosine(a, b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two layers of 3 dims: layer 0 separates harmful (+x) from harmless
    /// (−x) in dimension 0; layer 1 holds only noise that does not.
    fn residual(sign: f64, noise: f64) -> Residuals {
        vec![
            vec![(sign + 0.1 * noise) as f32, noise as f32, 1.0],
            vec![noise as f32, (-noise) as f32, 1.0],
        ]
    }

    #[test]
    fn fits_the_separating_direction_and_scores_held_out_prompts() {
        let noise = [0.3, -0.2, 0.5, -0.4, 0.1, -0.3, 0.2, 0.0];
        let harmful: Vec<Residuals> = noise.iter().map(|&n| residual(1.0, n)).collect();
        let harmless: Vec<Residuals> = noise.iter().map(|&n| residual(-1.0, -n * 0.7)).collect();
        let split = |rs: &[Residuals], fit: bool| -> Vec<Residuals> {
            rs.iter()
                .enumerate()
                .filter(|(i, _)| is_fit(*i, 0.5) == fit)
                .map(|(_, r)| r.clone())
                .collect()
        };
        let (hf, bf) = (split(&harmful, true), split(&harmless, true));
        let (hh, bh) = (split(&harmful, false), split(&harmless, false));
        assert_eq!((hf.len(), hh.len()), (4, 4));
        fn r(v: &[Residuals]) -> Vec<&Residuals> {
            v.iter().collect()
        }
        let d = fit(&r(&hf), &r(&bf));
        // Layer 0: the direction is essentially +x, the constant 3rd dim cancels.
        assert!(d[0][0] > 1.9 && d[0][2].abs() < 1e-12, "{:?}", d[0]);
        let auc = separation(&d, &r(&hh), &r(&bh));
        assert_eq!(auc[0], 1.0);
        assert!(
            auc[1] < 1.0,
            "noise should not separate perfectly: {}",
            auc[1]
        );
        assert!((similarity(&d, &d)[0] - 1.0).abs() < 1e-12);
        let flipped: Vec<Vec<f64>> = d.iter().map(|l| l.iter().map(|v| -v).collect()).collect();
        assert!((similarity(&d, &flipped)[0] + 1.0).abs() < 1e-12);
    }

    #[test]
    fn fit_split_follows_the_fraction() {
        let fit = (0..100).filter(|&i| is_fit(i, 0.25)).count();
        assert_eq!(fit, 25);
    }
}
