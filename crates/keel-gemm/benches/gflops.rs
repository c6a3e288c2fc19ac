//! GFLOPS of `matmul_bf16` against the f32 `gemm` that Burn's flex backend
//! calls, on SmolLM2-135M's projection and LM-head shapes (1024 tokens).
//! `cargo bench -p keel-gemm`

use std::time::Instant;

use half::bf16;
use keel_gemm::{Weight, available, matmul_bf16, matmul_f32_into};

fn gflops(m: usize, k: usize, n: usize, f: impl Fn()) -> f64 {
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
    if !available() {
        eprintln!("this CPU has no AVX-512 BF16");
        return;
    }
    println!(
        "{:>22} {:>6} {:>12} {:>12} {:>12}",
        "m x k x n", "", "gemm f32", "bf16 x.W", "bf16 x.Wt"
    );
    let m = 1024;
    for (k, n) in [
        (576, 576),
        (576, 192),
        (576, 1536),
        (1536, 576),
        (576, 49152),
    ] {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729) % 1000) as f32 / 5000.0 - 0.1)
            .collect();
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
