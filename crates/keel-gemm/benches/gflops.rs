//! GFLOPS of `matmul_bf16`, and of the product with a weight kept in GGUF
//! blocks, against the f32 `gemm` that Burn's flex backend calls, on
//! SmolLM2-135M's projection and LM-head shapes (1024 tokens), at
//! the CPU tier and bf16 method in force. `cargo bench -p keel-gemm`,
//! `KEEL_CPU=avx2 cargo bench -p keel-gemm`, `KEEL_BF16=dot cargo bench -p
//! keel-gemm` (`benchmarks/kernels.sh` runs every pair the CPU has).

use std::time::Instant;

use half::bf16;
use keel_gemm::{
    AttentionShape, QuantWeight, Weight, bf16_product, causal_attention, causal_attention_backward,
    matmul_bf16, matmul_f32_into, tier,
};
use keel_gguf::{GgmlType, quantize};

fn gflops(m: usize, k: usize, n: usize, mut f: impl FnMut()) -> f64 {
    f();
    let reps = (2e10 / (2.0 * (m * k * n) as f64)).clamp(2.0, 200.0) as usize;
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    2.0 * (m * k * n * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn gemm_f32(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    matmul_f32_into(a, b, m, k, n, Weight::KN, &mut c);
    c
}

fn main() {
    // KEEL_CPU picks a lower tier for keel-gemm's kernels (gemm's f32
    // product keeps the CPU's best); KEEL_BF16 the bf16 product's method.
    println!("CPU tier: {}, bf16 product: {:?}", tier(), bf16_product());
    matmuls();
    quantized();
    attention();
}

/// SmolLM2-135M's projection and LM-head shapes `(k, n)`: `x[1024, k] · W`.
const SHAPES: [(usize, usize); 5] = [
    (576, 576),
    (576, 192),
    (576, 1536),
    (1536, 576),
    (576, 49152),
];

fn weight(k: usize, n: usize) -> Vec<f32> {
    (0..k * n)
        .map(|i| ((i * 104729) % 1000) as f32 / 5000.0 - 0.1)
        .collect()
}

fn activations(m: usize, k: usize) -> Vec<f32> {
    (0..m * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// A projection's weight kept in GGUF blocks (`[n, k]`, ggml's layout):
/// the forward product `x · Wᵀ` and the input gradient `dy · W`.
fn quantized() {
    println!();
    println!(
        "{:>22} {:>6} {:>12} {:>12} {:>12} {:>12}",
        "m x k x n", "", "Q8_0 x.Wt", "Q8_0 dy.W", "Q4_0 x.Wt", "Q4_0 dy.W"
    );
    let m = 1024;
    for (k, n) in SHAPES {
        let (x, dy) = (activations(m, k), activations(m, n));
        let mut rates = Vec::new();
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
            let bytes = quantize(ty, &weight(n, k)).expect("whole blocks");
            let w = QuantWeight::new(ty, &bytes, n, k);
            let (mut y, mut dx) = (vec![0f32; m * n], vec![0f32; m * k]);
            rates.push(gflops(m, k, n, || w.matmul_transposed_into(&x, m, &mut y)));
            rates.push(gflops(m, k, n, || w.matmul_into(&dy, m, &mut dx)));
        }
        let rates: Vec<String> = rates.iter().map(|r| format!("{r:>12.1}")).collect();
        println!(
            "{:>22} {:>6} {}",
            format!("{m} x {k} x {n}"),
            "GFLOPS",
            rates.join(" ")
        );
    }
}

fn matmuls() {
    println!(
        "{:>22} {:>6} {:>12} {:>12} {:>12}",
        "m x k x n", "", "gemm f32", "bf16 x.W", "bf16 x.Wt"
    );
    let m = 1024;
    for (k, n) in SHAPES {
        let (a, w) = (activations(m, k), weight(k, n));
        let wb: Vec<bf16> = w.iter().copied().map(bf16::from_f32).collect();
        let f32_rate = gflops(m, k, n, || drop(gemm_f32(&a, &w, m, k, n)));
        let kn = gflops(m, k, n, || drop(matmul_bf16(&a, &wb, m, k, n, Weight::KN)));
        let nk = gflops(m, k, n, || drop(matmul_bf16(&a, &wb, m, k, n, Weight::NK)));
        println!(
            "{:>22} {:>6} {f32_rate:>12.1} {kn:>12.1} {nk:>12.1}",
            format!("{m} x {k} x {n}"),
            "GFLOPS"
        );
    }
}

/// Causal attention on SmolLM2's shape (4 × 256 tokens, 9 query and 3
/// key/value heads of 64): GFLOPS counting the unmasked half of each
/// product only, as useful work.
fn attention() {
    let s = AttentionShape {
        batch: 4,
        seq: 256,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
    };
    let fill = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    };
    let (q, k, v) = (
        fill(s.query_len(), 1),
        fill(s.kv_len(), 2),
        fill(s.kv_len(), 3),
    );
    let (mut out, mut lse) = (vec![0f32; s.query_len()], vec![0f32; s.lse_len()]);
    let (mut dq, mut dk, mut dv) = (
        vec![0f32; s.query_len()],
        vec![0f32; s.kv_len()],
        vec![0f32; s.kv_len()],
    );
    // One causal product: half of `seq × seq × head_dim` multiply-adds per head.
    let product = (s.batch * s.heads * s.seq * (s.seq + 1) / 2 * s.head_dim) as f64;
    let rate = |products: f64, f: &mut dyn FnMut()| {
        f();
        let reps = 20;
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        2.0 * products * product * reps as f64 / t.elapsed().as_secs_f64() / 1e9
    };
    let forward = rate(2.0, &mut || {
        causal_attention(s, &q, &k, &v, &mut out, &mut lse)
    });
    let dout = fill(s.query_len(), 4);
    // Backward recomputes the scores, then four products.
    let backward = rate(5.0, &mut || {
        causal_attention_backward(
            s,
            (&q, &k, &v),
            (&out, &lse),
            &dout,
            (&mut dq, &mut dk, &mut dv),
        )
    });
    println!();
    println!(
        "causal attention, 4 x 256 tokens, 9/3 heads of 64: forward {forward:.1} GFLOPS, backward {backward:.1} GFLOPS"
    );
}
