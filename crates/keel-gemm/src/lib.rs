//! keel's CPU kernels, optimised in every build profile and dispatched per
//! CPU tier ([`Tier`]): the matrix product of f32 activations with a frozen
//! bf16 weight, with AVX-512 BF16 dot products where the CPU has them
//! (`vdpbf16ps`: AMD Zen 4 and later, Intel Cooper Lake, Sapphire Rapids and
//! later) and widened to f32 block by block elsewhere, causal
//! self-attention ([`causal_attention`]), the LM head's row
//! log-softmax ([`log_softmax_row`]) and the MLP's SwiGLU ([`swiglu`]); and
//! the product with a weight kept in its GGUF blocks ([`QuantWeight`]).
//!
//! Why: a bf16 base weight is what makes LoRA training cheap, but the `gemm`
//! crate behind Burn's CPU backend has no bf16 kernel, and a dense f32 copy
//! of the weight would undo the saving. Either the weight is widened to f32 a
//! block of columns at a time and multiplied through `gemm`, exactly, on
//! every tier ([`Bf16Product::Widen`]); or, on an AVX-512 BF16 CPU,
//! `vdpbf16ps` does twice the multiply-adds of an f32 FMA per instruction on
//! half the memory traffic ([`Bf16Product::Dot`]), with PyTorch's bf16
//! autocast numerics: the activations are rounded to bf16 (to nearest even),
//! products accumulate in f32. [`bf16_product`] says which runs.
//!
//! Layout (the classic GotoBLAS split): the weight is repacked into strips
//! of [`NR`] columns in which each 32-bit lane holds two consecutive `k`
//! values of one column; the activations become bf16 rows padded to [`MR`];
//! a microkernel keeps an `MR × NR` tile of the output in 24 registers and
//! walks `k` two at a time. Row blocks × column chunks run on rayon.

use std::ops::Range;

use half::bf16;
use rayon::prelude::*;

mod attention;
mod quant;
mod softmax;
mod swiglu;
mod tier;
pub use attention::{AttentionShape, causal_attention, causal_attention_backward};
pub use quant::QuantWeight;
pub use softmax::log_softmax_row;
pub use swiglu::{swiglu, swiglu_backward};
pub(crate) use tier::vectorised;
pub use tier::{Tier, TierError, tier};

// The AVX-512 BF16 kernel's blocking.
/// Rows of the output tile a microkernel call computes.
#[cfg(target_arch = "x86_64")]
const MR: usize = 12;
/// Columns of the output tile: two 16-lane registers.
#[cfg(target_arch = "x86_64")]
const NR: usize = 32;
/// Rows per parallel task: the task's bf16 activations stay in L2.
#[cfg(target_arch = "x86_64")]
const MC: usize = 8 * MR;
/// Column strips per parallel task.
#[cfg(target_arch = "x86_64")]
const STRIPS_PER_TASK: usize = 8;

/// How the weight `w` is laid out, seen as the right-hand operand `B[k, n]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    /// `B[k, n] = w[k * n_cols + n]`: the product `x · W`, `W` stored `[k, n]`.
    KN,
    /// `B[k, n] = w[n * k_rows + k]`: the product `x · Wᵀ`, `W` stored `[n, k]`.
    NK,
}

impl Weight {
    /// The same matrix read as its transpose.
    pub fn transposed(self) -> Self {
        match self {
            Weight::KN => Weight::NK,
            Weight::NK => Weight::KN,
        }
    }
}

/// The environment variable that picks the [`Bf16Product`]: `widen`,
/// `dot`, or `auto` (the default).
pub const BF16_ENV: &str = "KEEL_BF16";

/// How the bf16 product ([`matmul_bf16`], [`PackedWeight`]) multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Product {
    /// The weight widened to f32 a block of columns at a time, the f32
    /// activations as they are, through `gemm`: every tier.
    Widen,
    /// AVX-512 BF16 dot products of bf16 pairs, the activations rounded to
    /// bf16 (PyTorch's bf16 autocast): the AVX-512 BF16 tier only.
    Dot,
}

/// Whether the CPU is AMD's. Zen 4 and later issue a 512-bit `vdpbf16ps` as
/// often as a 512-bit FMA, so dot products double the f32 rate: SmolLM2
/// trained at 556 tokens/s with them on a bf16 base against 422 in f32 (an
/// AMD EPYC, 2 cores, `docs/performance.md`). Intel's cores issue two FMAs
/// per cycle and one `vdpbf16ps`, so they tie at best and the packing is
/// extra: on an Intel Xeon (2 cores) the dot kernel reached about 140 GFLOPS
/// against gemm's 250 in f32, and `keel bench train` ran at 177 tokens/s
/// with it and 220 widening.
fn amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 0 spells the vendor in ebx, edx, ecx.
        let id = std::arch::x86_64::__cpuid(0);
        let vendor: Vec<u8> = [id.ebx, id.edx, id.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        vendor == b"AuthenticAMD"
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl Bf16Product {
    /// The name `KEEL_BF16` takes.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Product::Widen => "widen",
            Bf16Product::Dot => "dot",
        }
    }

    /// The methods the tier in force runs.
    pub fn runnable() -> impl Iterator<Item = Bf16Product> {
        let dot = tier() == Tier::Avx512Bf16;
        [Bf16Product::Widen]
            .into_iter()
            .chain(dot.then_some(Bf16Product::Dot))
    }

    /// The method `KEEL_BF16` asks for, checked against the tier in force;
    /// `auto` takes dot products on an AMD CPU of the AVX-512 BF16 tier,
    /// and widens elsewhere (see [`amd`]).
    pub fn from_env() -> Result<Bf16Product, TierError> {
        let tier = Tier::from_env()?;
        let dot = tier == Tier::Avx512Bf16;
        match std::env::var(BF16_ENV).as_deref() {
            Err(_) | Ok("") | Ok("auto") if dot && amd() => Ok(Bf16Product::Dot),
            Err(_) | Ok("") | Ok("auto") | Ok("widen") => Ok(Bf16Product::Widen),
            Ok("dot") if dot => Ok(Bf16Product::Dot),
            Ok("dot") => Err(TierError::Bf16(format!(
                "dot products need the avx512bf16 tier; this one is {tier}"
            ))),
            Ok(other) => Err(TierError::Bf16(format!(
                "{other:?} is not auto, widen or dot"
            ))),
        }
    }
}

/// The method every bf16 product uses: [`Bf16Product::from_env`], read once.
///
/// # Panics
/// When `KEEL_BF16` or `KEEL_CPU` cannot be honoured (a program that wants
/// an error instead calls [`Bf16Product::from_env`] first).
pub fn bf16_product() -> Bf16Product {
    static METHOD: std::sync::OnceLock<Bf16Product> = std::sync::OnceLock::new();
    *METHOD.get_or_init(|| Bf16Product::from_env().unwrap_or_else(|e| panic!("{e}")))
}

/// Whether the bf16 product rounds the activations to bf16:
/// [`Bf16Product::Dot`].
pub fn rounds_activations() -> bool {
    bf16_product() == Bf16Product::Dot
}

/// Weight columns widened to f32 per task on tiers without bf16 units: the
/// block, `k × 64` floats, stays in L2 while `gemm` multiplies it.
const WIDEN_COLS: usize = 64;

/// `a[m, k] · B[k, n]`, `B` read from `w` as `layout` says, into a new
/// row-major `[m, n]`.
///
/// # Panics
/// If a length does not match its dimensions.
pub fn matmul_bf16(
    a: &[f32],
    w: &[bf16],
    m: usize,
    k: usize,
    n: usize,
    layout: Weight,
) -> Vec<f32> {
    let mut out = vec![0f32; size(m, n)];
    PackedWeight::new(w, k, n, layout).matmul_into(a, m, &mut out);
    out
}

/// `out[m, n] = a[m, k] · B[k, n]` in f32, `B` read from `w` as `layout`
/// says, through the `gemm` crate (what Burn's flex backend calls): the f32
/// counterpart of [`PackedWeight::matmul_into`], and the baseline of
/// `benches/gflops.rs`.
///
/// # Panics
/// If a length does not match its dimensions.
pub fn matmul_f32_into(
    a: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    layout: Weight,
    out: &mut [f32],
) {
    assert_eq!(
        a.len(),
        size(m, k),
        "matmul_f32: activations are not [{m}, {k}]"
    );
    assert_eq!(w.len(), size(k, n), "matmul_f32: weight is not {k} x {n}");
    assert_eq!(
        out.len(),
        size(m, n),
        "matmul_f32: output is not [{m}, {n}]"
    );
    // gemm reads B at `row * row_stride + col * col_stride`.
    let (row_stride, col_stride) = match layout {
        Weight::KN => (n as isize, 1),
        Weight::NK => (1, k as isize),
    };
    // SAFETY: the lengths were checked; `a` and `out` are row-major, `w`
    // holds `B`'s `k × n` elements at these strides.
    unsafe {
        gemm_into(
            (m, k, n),
            (out.as_mut_ptr(), n),
            a.as_ptr(),
            (w.as_ptr(), row_stride, col_stride),
            gemm::Parallelism::Rayon(0),
        )
    }
}

/// `dst[m, n] = a[m, k] · B` through `gemm`: `a` row-major, `dst` with row
/// stride `dst.1`, `B[l, j]` at `rhs.0 + l·rhs.1 + j·rhs.2`.
///
/// # Safety
/// Each pointer must cover its matrix at these strides.
unsafe fn gemm_into(
    (m, k, n): (usize, usize, usize),
    dst: (*mut f32, usize),
    a: *const f32,
    rhs: (*const f32, isize, isize),
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            1,
            dst.1 as isize,
            false,
            a,
            1,
            k as isize,
            rhs.0,
            rhs.2,
            rhs.1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

fn size(r: usize, c: usize) -> usize {
    r.checked_mul(c).expect("matmul_bf16: size overflows")
}

/// A bf16 weight made ready for the tier's product, for multiplying it many
/// times: repacked into bf16 pairs for the AVX-512 BF16 microkernel
/// (packing reads the whole weight: for a product with few rows it costs as
/// much as the multiply), or read in place for widening.
pub struct PackedWeight<'w> {
    form: Form<'w>,
    k: usize,
    n: usize,
}

enum Form<'w> {
    /// [`x86::pack_weight`]'s strips of bf16 pairs.
    #[cfg(target_arch = "x86_64")]
    Pairs(Vec<u32>),
    /// The weight as given, widened a block of columns at a time: borrowed,
    /// since a copy would cost a product with few rows as much as the
    /// multiply, and the head's memory the weight's size again.
    Widened(&'w [bf16], Weight),
}

impl<'w> PackedWeight<'w> {
    /// Packs `w` seen as `B[k, n]` through `layout`.
    ///
    /// # Panics
    /// If `w` is not `k × n`.
    pub fn new(w: &'w [bf16], k: usize, n: usize, layout: Weight) -> Self {
        Self::with(bf16_product(), w, k, n, layout)
    }

    /// [`PackedWeight::new`] for `method`, one of [`Bf16Product::runnable`].
    ///
    /// # Panics
    /// If `w` is not `k × n`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    pub fn with(method: Bf16Product, w: &'w [bf16], k: usize, n: usize, layout: Weight) -> Self {
        assert_eq!(w.len(), size(k, n), "matmul_bf16: weight is not {k} x {n}");
        #[cfg(target_arch = "x86_64")]
        if method == Bf16Product::Dot {
            assert_eq!(
                tier(),
                Tier::Avx512Bf16,
                "bf16 dot products need avx512bf16"
            );
            // SAFETY: the tier in force is AVX-512 BF16, so the CPU has it.
            let packed = unsafe { x86::pack_weight(w, k, n, layout) };
            return PackedWeight {
                form: Form::Pairs(packed),
                k,
                n,
            };
        }
        PackedWeight {
            form: Form::Widened(w, layout),
            k,
            n,
        }
    }

    /// `out[m, n] = a[m, k] · B`; `out` is overwritten.
    ///
    /// # Panics
    /// If `a` is not `m × k` or `out` not `m × n`.
    pub fn matmul_into(&self, a: &[f32], m: usize, out: &mut [f32]) {
        let (k, n) = (self.k, self.n);
        assert_eq!(
            a.len(),
            size(m, k),
            "matmul_bf16: activations are not [{m}, {k}]"
        );
        assert_eq!(
            out.len(),
            size(m, n),
            "matmul_bf16: output is not [{m}, {n}]"
        );
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            return out.fill(0.0);
        }
        match &self.form {
            #[cfg(target_arch = "x86_64")]
            Form::Pairs(packed) => self.pairs_into(packed, a, m, out),
            Form::Widened(w, layout) => widened_into(w, *layout, a, (m, k, n), out),
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn pairs_into(&self, packed: &[u32], a: &[f32], m: usize, out: &mut [f32]) {
        let (k, n) = (self.k, self.n);
        let pairs = k.div_ceil(2);
        // SAFETY: pairs are only packed on the AVX-512 BF16 tier.
        let a = unsafe { x86::pack_activations(a, m, k) };
        let strips = n.div_ceil(NR);
        let tasks: Vec<(usize, usize)> = (0..m.div_ceil(MC))
            .flat_map(|i| (0..strips.div_ceil(STRIPS_PER_TASK)).map(move |j| (i, j)))
            .collect();
        let c = SharedOut(out.as_mut_ptr());
        tasks.into_par_iter().for_each(|(i, j)| {
            let rows = i * MC..(m.min((i + 1) * MC));
            for s in j * STRIPS_PER_TASK..strips.min((j + 1) * STRIPS_PER_TASK) {
                let strip = &packed[s * pairs * NR..(s + 1) * pairs * NR];
                let cols = NR.min(n - s * NR);
                for r in rows.clone().step_by(MR) {
                    let tile = &a[r * pairs..(r + MR) * pairs];
                    // SAFETY: the AVX-512 BF16 tier is in force; `tile` and `strip`
                    // hold `MR` rows and `NR` columns of `pairs`; tasks write
                    // disjoint tiles of `out`, rows `r..r+MR` ∩ `..m` and the
                    // columns of strip `s`, all inside its `m × n`.
                    unsafe {
                        x86::tile(
                            tile,
                            strip,
                            pairs,
                            c.at(r * n + s * NR),
                            n,
                            MR.min(m - r),
                            cols,
                        )
                    };
                }
            }
        });
    }
}

/// `out[m, n] = a[m, k] · B` on tiers without bf16 units: each block of
/// [`WIDEN_COLS`] columns of `B` is widened to f32 (exactly), so no f32 copy
/// of the whole weight exists.
fn widened_into(
    w: &[bf16],
    layout: Weight,
    a: &[f32],
    (m, k, n): (usize, usize, usize),
    out: &mut [f32],
) {
    blockwise_into(
        layout,
        WIDEN_COLS,
        a,
        (m, k, n),
        out,
        |cols, panel| match layout {
            Weight::KN => panel.extend(
                (0..k)
                    .flat_map(|l| &w[l * n + cols.start..l * n + cols.end])
                    .map(|x| x.to_f32()),
            ),
            Weight::NK => panel.extend(w[cols.start * k..cols.end * k].iter().map(|x| x.to_f32())),
        },
    );
}

/// `out[m, n] = a[m, k] · B` for a `B` stored in some other form: one task
/// per block of `width` columns has `panel` fill an f32 panel with those
/// columns of `B` and multiplies it through `gemm`, so `B` is never dense in
/// memory. The panel keeps the layout's order: `KN` is the block's rows
/// (`[k, width]`), `NK` its columns (`[width, k]`).
fn blockwise_into(
    layout: Weight,
    width: usize,
    a: &[f32],
    (m, k, n): (usize, usize, usize),
    out: &mut [f32],
    panel: impl Fn(Range<usize>, &mut Vec<f32>) + Sync,
) {
    assert_eq!(a.len(), size(m, k), "activations are not [{m}, {k}]");
    assert_eq!(out.len(), size(m, n), "output is not [{m}, {n}]");
    let c = SharedOut(out.as_mut_ptr());
    (0..n.div_ceil(width)).into_par_iter().for_each(|block| {
        let cols = block * width..n.min((block + 1) * width);
        let width = cols.len();
        let mut values = Vec::with_capacity(k * width);
        panel(cols.clone(), &mut values);
        assert_eq!(values.len(), k * width, "a panel is not {k} x {width}");
        let (row_stride, col_stride) = match layout {
            Weight::KN => (width as isize, 1),
            Weight::NK => (1, k as isize),
        };
        // SAFETY: `a` is `m × k`, `out` `m × n` and the panel `k × width`
        // at these strides (all checked above); this task writes only
        // columns `cols` of the output.
        unsafe {
            gemm_into(
                (m, k, width),
                (c.at(cols.start), n),
                a.as_ptr(),
                (values.as_ptr(), row_stride, col_stride),
                gemm::Parallelism::None,
            )
        }
    });
}

/// The output buffer, shared by tasks that write disjoint tiles of it.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks only write disjoint tiles (see `PackedWeight::matmul_into`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `offset` is inside the buffer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        unsafe { self.0.add(offset) }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::bf16;
    use half::slice::HalfFloatSliceExt;
    use rayon::prelude::*;

    use super::{MR, NR, Weight};

    /// The activations as bf16 pairs: row `r`, pair `p` is element
    /// `r * pairs + p`, with `k` padded to even and the rows to a multiple
    /// of [`MR`] (with zeros).
    ///
    /// # Safety
    /// The CPU has AVX-512 BF16 (see [`super::rounds_activations`]).
    pub unsafe fn pack_activations(a: &[f32], m: usize, k: usize) -> Vec<u32> {
        let pairs = k.div_ceil(2);
        let mut packed = vec![0u32; m.div_ceil(MR) * MR * pairs];
        packed
            .par_chunks_mut(pairs)
            .zip(a.par_chunks(k))
            // SAFETY: only called on the AVX-512 BF16 tier (see `PackedWeight::new`).
            .for_each(|(dst, src)| unsafe { round_row(src, dst) });
        packed
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn round_row(src: &[f32], dst: &mut [u32]) {
        for (i, d) in dst.chunks_mut(16).enumerate() {
            // SAFETY: loads are masked to `src`, stores to `d`.
            unsafe {
                let lo = load_f32(src, i * 32);
                let hi = load_f32(src, i * 32 + 16);
                // vcvtne2ps2bf16 puts its second operand in the low half.
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_mask_storeu_epi16(d.as_mut_ptr().cast(), mask_pairs(lanes(d.len())), v);
            }
        }
    }

    /// 16 floats from `src[at..]`, zeros past its end.
    #[target_feature(enable = "avx512f")]
    unsafe fn load_f32(src: &[f32], at: usize) -> __m512 {
        let mask = lanes(src.len().saturating_sub(at));
        if mask == 0 {
            return _mm512_setzero_ps();
        }
        unsafe { _mm512_maskz_loadu_ps(mask, src.as_ptr().add(at)) }
    }

    /// A mask of the first `min(count, 16)` lanes.
    fn lanes(count: usize) -> u16 {
        if count >= 16 {
            u16::MAX
        } else {
            (1u16 << count) - 1
        }
    }

    /// A 32-bit lane mask widened to the 16-bit elements it covers.
    fn mask_pairs(mask: u16) -> u32 {
        match mask.count_ones() {
            16 => u32::MAX,
            lanes => (1 << (2 * lanes)) - 1,
        }
    }

    /// The weight in strips of [`NR`] columns: strip `s`, pair `p`, column
    /// `c` is element `(s * pairs + p) * NR + c`, a `u32` whose low half is
    /// `B[2p, sNR + c]` and high half `B[2p + 1, sNR + c]` (zero past the edges).
    ///
    /// # Safety
    /// The CPU has AVX-512 BF16 (see [`super::rounds_activations`]).
    pub unsafe fn pack_weight(w: &[bf16], k: usize, n: usize, layout: Weight) -> Vec<u32> {
        let pairs = k.div_ceil(2);
        let mut packed = vec![0u32; n.div_ceil(NR) * pairs * NR];
        let w: &[u16] = w.reinterpret_cast();
        packed
            .par_chunks_mut(pairs * NR)
            .enumerate()
            .for_each(|(s, strip)| {
                let cols = NR.min(n - s * NR);
                for (p, dst) in strip.chunks_mut(NR).enumerate() {
                    let (k0, k1) = (2 * p, 2 * p + 1);
                    match layout {
                        // SAFETY: only called on the AVX-512 BF16 tier.
                        Weight::KN => unsafe {
                            interleave(
                                &w[k0 * n + s * NR..][..cols],
                                (k1 < k).then(|| &w[k1 * n + s * NR..][..cols]),
                                dst,
                            )
                        },
                        Weight::NK => {
                            for (c, d) in dst[..cols].iter_mut().enumerate() {
                                let col = (s * NR + c) * k;
                                let hi = if k1 < k { w[col + k1] } else { 0 };
                                *d = u32::from(w[col + k0]) | u32::from(hi) << 16;
                            }
                        }
                    }
                }
            });
        packed
    }

    /// `dst[c] = lo[c] | hi[c] << 16` for up to [`NR`] columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn interleave(lo: &[u16], hi: Option<&[u16]>, dst: &mut [u32]) {
        for half in 0..NR / 16 {
            let count = lo.len().saturating_sub(half * 16);
            let mask = lanes(count);
            if mask == 0 {
                break;
            }
            let widen = |src: &[u16]| unsafe {
                _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(
                    mask,
                    src.as_ptr().add(half * 16).cast(),
                ))
            };
            let mut v = widen(lo);
            if let Some(hi) = hi {
                v = _mm512_or_si512(v, _mm512_slli_epi32::<16>(widen(hi)));
            }
            unsafe { _mm512_storeu_si512(dst.as_mut_ptr().add(half * 16).cast(), v) };
        }
    }

    /// One `MR × NR` output tile: `a` holds [`MR`] packed rows, `b` one
    /// packed strip; the first `rows × cols` of the tile go to `c` (row
    /// stride `ldc`).
    ///
    /// # Safety
    /// The CPU has AVX-512 BF16; `a` holds `MR * pairs` lanes and `b`
    /// `pairs * NR`; `c` is valid for those writes.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn tile(
        a: &[u32],
        b: &[u32],
        pairs: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..pairs {
            // SAFETY: `b` holds `pairs * NR` lanes, `a` `MR * pairs`.
            let (b0, b1) = unsafe {
                let at = b.as_ptr().add(p * NR);
                (
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(at.cast())),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(at.add(16).cast())),
                )
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `a` holds `MR * pairs` lanes; the transmute reinterprets bits.
                let x = unsafe {
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                        *a.get_unchecked(r * pairs + p) as i32,
                    ))
                };
                acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
            }
        }
        let (m0, m1) = (lanes(cols), lanes(cols.saturating_sub(16)));
        for (r, acc) in acc.iter().enumerate().take(rows) {
            // SAFETY: the caller guarantees `c` covers `rows × cols` with stride `ldc`.
            unsafe {
                let row = c.add(r * ldc);
                _mm512_mask_storeu_ps(row, m0, acc[0]);
                if m1 != 0 {
                    _mm512_mask_storeu_ps(row.add(16), m1, acc[1]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reproducible stream of values in [-2, 2).
    pub(crate) fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// The product in f64 of `a` and `B` read from `w` as `layout` says,
    /// and the sum of the terms' magnitudes (the scale of f32's
    /// accumulation error).
    pub(crate) fn reference(
        a: &[f64],
        w: &[f64],
        m: usize,
        k: usize,
        n: usize,
        layout: Weight,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0f64; m * n];
        let mut scale = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    let y = match layout {
                        Weight::KN => w[l * n + j],
                        Weight::NK => w[j * k + l],
                    };
                    out[i * n + j] += a[i * k + l] * y;
                    scale[i * n + j] += (a[i * k + l] * y).abs();
                }
            }
        }
        (out, scale)
    }

    pub(crate) fn assert_matches(got: &[f32], want: (Vec<f64>, Vec<f64>), what: &str) {
        let (want, scale) = want;
        for i in 0..got.len() {
            let err = (f64::from(got[i]) - want[i]).abs();
            assert!(
                err <= 1e-6 * scale[i] + 1e-30,
                "{what}: element {i} is {} but the product is {}",
                got[i],
                want[i]
            );
        }
    }

    /// Edge shapes: rows not a multiple of the tile, columns not a multiple
    /// of a strip or of 16, odd `k`, a single row or column.
    const SHAPES: [(usize, usize, usize); 7] = [
        (1, 1, 1),
        (13, 7, 5),
        (12, 64, 32),
        (29, 33, 47),
        (100, 96, 300),
        (3, 576, 192),
        (2, 3, 1),
    ];

    /// The bf16 product equals the f64 product of its operands, the
    /// activations rounded to bf16 by the method that rounds them, at every
    /// edge shape, both layouts, by every method the CPU runs.
    #[test]
    fn the_product_is_the_bf16_rounded_product() {
        for method in Bf16Product::runnable() {
            let round = |x: f32| match method {
                Bf16Product::Dot => bf16::from_f32(x).to_f64(),
                Bf16Product::Widen => f64::from(x),
            };
            for (m, k, n) in SHAPES.into_iter().chain([(5, 70, 200)]) {
                for layout in [Weight::KN, Weight::NK] {
                    let a = values(m * k, 1);
                    let w: Vec<bf16> = values(k * n, 2).into_iter().map(bf16::from_f32).collect();
                    let mut got = vec![f32::NAN; m * n];
                    PackedWeight::with(method, &w, k, n, layout).matmul_into(&a, m, &mut got);
                    let rounded: Vec<f64> = a.iter().map(|&x| round(x)).collect();
                    let w64: Vec<f64> = w.iter().map(|x| x.to_f64()).collect();
                    let want = reference(&rounded, &w64, m, k, n, layout);
                    let what = format!("bf16 {method:?} {m}x{k}x{n} {layout:?}");
                    assert_matches(&got, want, &what);
                }
            }
        }
    }

    /// The f32 product through gemm, read through both layouts.
    #[test]
    fn the_f32_product_reads_both_layouts() {
        for (m, k, n) in SHAPES {
            for layout in [Weight::KN, Weight::NK] {
                let (a, w) = (values(m * k, 3), values(k * n, 4));
                let mut got = vec![f32::NAN; m * n];
                matmul_f32_into(&a, &w, m, k, n, layout, &mut got);
                let wide = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
                let want = reference(&wide(&a), &wide(&w), m, k, n, layout);
                assert_matches(&got, want, &format!("f32 {m}x{k}x{n} {layout:?}"));
            }
        }
    }

    /// The activations are rounded, not truncated, to bf16: 1 + 2⁻⁸ + 2⁻¹⁶
    /// lies just above the midpoint between two bf16 values and rounds up.
    #[test]
    fn activations_round_to_nearest() {
        if !Bf16Product::runnable().any(|m| m == Bf16Product::Dot) {
            return;
        }
        let x = 1.0 + 2f32.powi(-8) + 2f32.powi(-16);
        let mut got = [0f32];
        PackedWeight::with(Bf16Product::Dot, &[bf16::ONE], 1, 1, Weight::KN).matmul_into(
            &[x],
            1,
            &mut got,
        );
        assert_eq!(got[0], 1.0 + 2f32.powi(-7));
    }
}
