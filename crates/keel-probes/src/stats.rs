//! The statistics reports are built from: seeded bootstrap intervals,
//! AUROC and cosine similarity.

use keel_adapters::rng::{self, Rng};

/// A rate or mean with its 95% bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Estimate {
    /// The mean of `xs` with a percentile bootstrap 95% interval from
    /// `resamples` resamples drawn with `seed`: the same inputs always give
    /// the same interval.
    pub fn bootstrap(xs: &[f64], resamples: usize, seed: u64) -> Estimate {
        let n = xs.len();
        if n == 0 {
            return Estimate {
                value: f64::NAN,
                lo: f64::NAN,
                hi: f64::NAN,
            };
        }
        let mut rng = rng::seeded(seed);
        let mut means: Vec<f64> = (0..resamples)
            .map(|_| {
                (0..n)
                    .map(|_| xs[(rng.next_u64() % n as u64) as usize])
                    .sum::<f64>()
                    / n as f64
            })
            .collect();
        means.sort_by(f64::total_cmp);
        let at = |q: f64| means[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
        Estimate {
            value: mean(xs),
            lo: at(0.025),
            hi: at(0.975),
        }
    }

    /// Of a yes/no outcome per prompt.
    pub fn rate(flags: &[bool], resamples: usize, seed: u64) -> Estimate {
        let xs: Vec<f64> = flags.iter().map(|&f| f as u8 as f64).collect();
        Self::bootstrap(&xs, resamples, seed)
    }
}

pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// The sample standard deviation (0 below two values).
pub fn sd(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// Area under the ROC curve for scores of positives above negatives: the
/// probability that a random positive outscores a random negative, ties
/// counting half (Mann-Whitney U / (n_pos · n_neg)).
pub fn auroc(positives: &[f64], negatives: &[f64]) -> f64 {
    let mut wins = 0.0;
    for p in positives {
        for n in negatives {
            wins += match p.total_cmp(n) {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Equal => 0.5,
                std::cmp::Ordering::Less => 0.0,
            };
        }
    }
    wins / (positives.len() * negatives.len()) as f64
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

/// Rounds to 6 decimals, so reports print stable, readable numbers.
pub fn r6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_interval_brackets_the_rate_and_is_reproducible() {
        let flags: Vec<bool> = (0..100).map(|i| i % 4 == 0).collect();
        let e = Estimate::rate(&flags, 2000, 7);
        assert_eq!(e.value, 0.25);
        // The normal approximation gives 0.25 ± 0.085.
        assert!((0.15..0.19).contains(&e.lo), "{e:?}");
        assert!((0.31..0.35).contains(&e.hi), "{e:?}");
        assert_eq!(e, Estimate::rate(&flags, 2000, 7));
        assert_ne!(e, Estimate::rate(&flags, 2000, 8));
    }

    #[test]
    fn all_or_nothing_rates_have_degenerate_intervals() {
        let e = Estimate::rate(&[true; 20], 100, 0);
        assert_eq!((e.value, e.lo, e.hi), (1.0, 1.0, 1.0));
    }

    #[test]
    fn auroc_of_separated_shuffled_and_tied_scores() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(auroc(&[1.0], &[1.0]), 0.5);
        // One of four pairs misordered.
        assert_eq!(auroc(&[2.0, 4.0], &[1.0, 3.0]), 0.75);
    }

    #[test]
    fn cosine_of_parallel_opposite_and_orthogonal() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        assert!((cosine(&[1.0, 2.0], &[-1.0, -2.0]) + 1.0).abs() < 1e-12);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 3.0]), 0.0);
    }
}
