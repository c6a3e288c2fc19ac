//! Which instruction set keel's kernels run with: the best this CPU has, or
//! a lower one forced with `KEEL_CPU`, so that every tier is tested and
//! benchmarked on one machine.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The environment variable that forces a tier: `baseline`, `avx2`,
/// `avx512`, `avx512bf16`, or `native` (the default).
pub const ENV: &str = "KEEL_CPU";

/// An instruction-set tier, lowest first. A tier's kernels use only what
/// every CPU of that tier has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// What the target guarantees (SSE2 on x86-64).
    Baseline,
    /// AVX2 and FMA (x86-64-v3: Intel Haswell, AMD Zen and later).
    Avx2,
    /// AVX-512 F, BW and VL (x86-64-v4).
    Avx512,
    /// AVX-512 with BF16 dot products: keel's bf16 frozen product.
    Avx512Bf16,
}

impl Tier {
    /// Every tier, lowest first.
    pub const ALL: [Tier; 4] = [Tier::Baseline, Tier::Avx2, Tier::Avx512, Tier::Avx512Bf16];

    /// The best tier this CPU runs.
    pub fn detected() -> Tier {
        static DETECTED: OnceLock<Tier> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            Tier::ALL
                .into_iter()
                .rev()
                .find(|t| t.cpu_has())
                .unwrap_or(Tier::Baseline)
        })
    }

    /// The tiers this CPU runs, lowest first.
    pub fn runnable() -> impl Iterator<Item = Tier> {
        Tier::ALL.into_iter().filter(|&t| t <= Tier::detected())
    }

    /// The tier `KEEL_CPU` asks for, or the detected one when it is unset
    /// or `native`.
    ///
    /// # Errors
    /// When `KEEL_CPU` names no tier, or one this CPU lacks.
    pub fn from_env() -> Result<Tier, TierError> {
        match std::env::var(ENV) {
            Err(std::env::VarError::NotPresent) => Ok(Tier::detected()),
            Err(std::env::VarError::NotUnicode(v)) => Err(TierError::Unknown(format!("{v:?}"))),
            Ok(v) if v.is_empty() || v == "native" => Ok(Tier::detected()),
            Ok(v) => {
                let tier: Tier = v.parse()?;
                if tier > Tier::detected() {
                    return Err(TierError::Unsupported {
                        asked: tier,
                        detected: Tier::detected(),
                    });
                }
                Ok(tier)
            }
        }
    }

    /// The name `KEEL_CPU` takes.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Baseline => "baseline",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
            Tier::Avx512Bf16 => "avx512bf16",
        }
    }

    fn cpu_has(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Tier::Baseline => true,
                Tier::Avx2 => has!("avx2") && has!("fma"),
                Tier::Avx512 => {
                    Tier::Avx2.cpu_has() && has!("avx512f") && has!("avx512bw") && has!("avx512vl")
                }
                Tier::Avx512Bf16 => Tier::Avx512.cpu_has() && has!("avx512bf16"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Tier::Baseline
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tier {
    type Err = TierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| TierError::Unknown(s.to_owned()))
    }
}

/// A `KEEL_CPU` or `KEEL_BF16` that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierError {
    Unknown(String),
    Unsupported {
        asked: Tier,
        detected: Tier,
    },
    /// `KEEL_BF16` names no method, or `dot` on a tier without bf16 units.
    Bf16(String),
}

impl fmt::Display for TierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TierError::Unknown(v) => write!(
                f,
                "{ENV}={v} names no CPU tier; expected native, baseline, avx2, avx512 or avx512bf16"
            ),
            TierError::Unsupported { asked, detected } => write!(
                f,
                "{ENV}={asked} asks for instructions this CPU lacks; its best tier is {detected}"
            ),
            TierError::Bf16(reason) => write!(f, "{}: {reason}", crate::BF16_ENV),
        }
    }
}

impl std::error::Error for TierError {}

/// The tier every kernel runs with: [`Tier::from_env`], read once.
///
/// # Panics
/// When `KEEL_CPU` cannot be honoured (a program that wants an error
/// instead calls [`Tier::from_env`] first).
pub fn tier() -> Tier {
    static TIER: OnceLock<Tier> = OnceLock::new();
    *TIER.get_or_init(|| Tier::from_env().unwrap_or_else(|e| panic!("{e}")))
}

/// Runs `f` compiled for `tier`'s instructions. `f` must be inlined
/// (`#[inline(always)]` on what it calls) for the instructions to reach it.
///
/// The tiers come from [`tier`] or [`Tier::runnable`], so the CPU has them.
#[inline(always)]
pub(crate) fn vectorised<R>(tier: Tier, f: impl FnOnce() -> R) -> R {
    debug_assert!(tier <= Tier::detected(), "{tier} is not runnable here");
    #[cfg(target_arch = "x86_64")]
    match tier {
        // SAFETY: the CPU has the tier's instructions (see above).
        Tier::Avx512 | Tier::Avx512Bf16 => return unsafe { x86::avx512(f) },
        Tier::Avx2 => return unsafe { x86::avx2(f) },
        Tier::Baseline => {}
    }
    f()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// Asserts that the outputs of `f` are the same, bit for bit, at every tier
/// this CPU runs.
#[cfg(test)]
pub(crate) fn assert_tiers_agree<const N: usize>(f: impl Fn(Tier) -> [Vec<f32>; N]) {
    let bits = |tier| f(tier).map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    let baseline = bits(Tier::Baseline);
    for tier in Tier::runnable().skip(1) {
        for (i, (got, want)) in bits(tier).iter().zip(&baseline).enumerate() {
            assert!(
                got == want,
                "output {i} at {tier} differs from the baseline's"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_tiers_are_ordered() {
        for t in Tier::ALL {
            assert_eq!(t.name().parse::<Tier>(), Ok(t));
        }
        assert!(Tier::ALL.windows(2).all(|w| w[0] < w[1]));
        assert!(matches!("sse9".parse::<Tier>(), Err(TierError::Unknown(_))));
        assert_eq!(Tier::runnable().next(), Some(Tier::Baseline));
        assert_eq!(Tier::runnable().last(), Some(Tier::detected()));
    }
}
