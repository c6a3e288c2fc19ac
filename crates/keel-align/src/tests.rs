//! The factored products against the formulas computed densely, in f64 on
//! the host, straight from the papers' definitions.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use keel_adapters::peft::{AdapterFile, ModuleWeights};
use keel_adapters::rng::{Draw, SplitMix64, seeded};
use keel_adapters::{Adapter, AdapterConfig, Linear};

use crate::safe_lora;
use crate::{Subspace, asft};
use keel_recipe::SafeLora;

const MODULES: [&str; 3] = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.mlp.up_proj",
    "model.layers.1.self_attn.q_proj",
];
const IN: usize = 12;
const OUT: usize = 24;
const RS: usize = 2;
const R: usize = 3;

type M = Vec<Vec<f64>>;

fn random(rows: usize, cols: usize, rng: &mut SplitMix64) -> M {
    (0..rows)
        .map(|_| (0..cols).map(|_| rng.normal()).collect())
        .collect()
}
fn mm(x: &M, y: &M) -> M {
    (0..x.len())
        .map(|i| {
            (0..y[0].len())
                .map(|j| (0..y.len()).map(|k| x[i][k] * y[k][j]).sum())
                .collect()
        })
        .collect()
}
fn t(x: &M) -> M {
    (0..x[0].len())
        .map(|j| x.iter().map(|r| r[j]).collect())
        .collect()
}
fn frob(x: &M) -> f64 {
    x.iter().flatten().map(|v| v * v).sum::<f64>().sqrt()
}
fn flat(x: &M) -> Vec<f32> {
    x.iter().flatten().map(|&v| v as f32).collect()
}
fn tensor(x: &M, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(flat(x), [x.len(), x[0].len()]), device)
}
fn host(x: Tensor<2>) -> M {
    let [_, c] = x.dims();
    let v: Vec<f32> = x.try_into_vec_as().unwrap();
    v.chunks(c)
        .map(|r| r.iter().map(|&x| x as f64).collect())
        .collect()
}
fn max_diff(x: &M, y: &M) -> f64 {
    x.iter()
        .flatten()
        .zip(y.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

/// A safety adapter (alpha 4, rank 2, so s = 2) on the first two modules,
/// and the dense alignment matrix `C = V_hf V_hfᵀ / ‖V‖` of each.
fn alignment(rng: &mut SplitMix64) -> (AdapterFile, BTreeMap<String, M>) {
    let mut modules = BTreeMap::new();
    let mut dense = BTreeMap::new();
    for m in &MODULES[..2] {
        let (a, b) = (random(IN, RS, rng), random(RS, OUT, rng));
        let v: M = mm(&a, &b)
            .iter()
            .map(|r| r.iter().map(|x| 2.0 * x).collect())
            .collect();
        let v_hf = t(&v);
        let c: M = mm(&v_hf, &t(&v_hf))
            .iter()
            .map(|r| r.iter().map(|x| x / frob(&v)).collect())
            .collect();
        dense.insert(m.to_string(), c);
        modules.insert(
            m.to_string(),
            ModuleWeights {
                a: (vec![IN, RS], flat(&a)),
                b: (vec![RS, OUT], flat(&b)),
                magnitude: None,
            },
        );
    }
    let file = AdapterFile {
        dir: PathBuf::from("safety"),
        config: AdapterConfig::lora(RS, 4.0, &["q_proj", "up_proj"]),
        base_model: None,
        base_fingerprint: None,
        modules,
        saved: Default::default(),
    };
    (file, dense)
}

/// Three layers, each with a trained adapter "domain" (scale 0.5).
fn layers(rng: &mut SplitMix64, device: &Device) -> (Vec<Linear>, Vec<(M, M)>) {
    let mut out = Vec::new();
    let mut factors = Vec::new();
    for m in MODULES {
        let mut layer = Linear::frozen(Tensor::zeros([IN, OUT], device), None);
        let (a, b) = (random(IN, R, rng), random(R, OUT, rng));
        layer
            .add_adapter(Adapter::new(
                m,
                "domain",
                tensor(&a, device),
                tensor(&b, device),
                None,
                0.5,
                0.0,
            ))
            .unwrap();
        out.push(layer);
        factors.push((a, b));
    }
    (out, factors)
}

#[test]
fn b_times_c_equals_the_dense_alignment_matrix() {
    let device = Device::flex();
    let mut rng = seeded(1);
    let (file, dense) = alignment(&mut rng);
    let subspace = Subspace::from_adapter(&file, &device).unwrap();
    for (m, c) in &dense {
        let b = random(R, OUT, &mut rng);
        let got = host(subspace.project_b(m, tensor(&b, &device)).unwrap());
        // HF: C·ΔW_hf; keel: ΔW·Cᵀ, and C is symmetric.
        let want = mm(&b, c);
        assert!(
            max_diff(&got, &want) < 1e-4,
            "{m}: {}",
            max_diff(&got, &want)
        );
    }
    assert!(
        subspace
            .project_b(MODULES[2], tensor(&random(R, OUT, &mut rng), &device))
            .is_none()
    );
}

#[test]
fn asft_penalty_equals_the_dense_formula_and_has_gradients() {
    let device = Device::flex().autodiff();
    let mut rng = seeded(2);
    let (file, dense) = alignment(&mut rng);
    let subspace = Subspace::from_adapter(&file, &device).unwrap();
    let (layers, factors) = layers(&mut rng, &device);
    let view: Vec<(String, &Linear)> = MODULES.iter().map(|m| m.to_string()).zip(&layers).collect();
    let penalty = asft::penalty(&view, "domain", &subspace).unwrap();
    // Σ over aligned modules of ‖(I − C)·ΔW_hf‖², ΔW_hf = 0.5·(a·b)ᵀ.
    let mut want = 0.0;
    for (i, m) in MODULES[..2].iter().enumerate() {
        let (a, b) = &factors[i];
        let dw: M = t(&mm(a, b))
            .iter()
            .map(|r| r.iter().map(|x| 0.5 * x).collect())
            .collect();
        let cdw = mm(&dense[*m], &dw);
        let rest: M = dw
            .iter()
            .zip(&cdw)
            .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p - q).collect())
            .collect();
        want += frob(&rest).powi(2);
    }
    let got = penalty.clone().into_scalar::<f32>() as f64;
    assert!((got - want).abs() < 1e-3 * want, "{got} vs {want}");
    let grads = penalty.backward();
    let gb = layers[0].adapters[0]
        .b
        .grad(&grads)
        .expect("b has a gradient");
    assert!(gb.abs().sum().into_scalar::<f32>() > 0.0);
    // The third module has no alignment update: it is not penalised.
    assert!(layers[2].adapters[0].b.grad(&grads).is_none());
}

#[test]
fn safe_lora_projects_dissimilar_modules_only() {
    let device = Device::flex();
    let mut rng = seeded(3);
    let (file, dense) = alignment(&mut rng);
    let subspace = Subspace::from_adapter(&file, &device).unwrap();
    let (mut layers, factors) = layers(&mut rng, &device);
    // Module 1's update lies along C's top eigenvector e (power iteration):
    // C maps it onto a multiple of itself.
    let inside = {
        let c = &dense[MODULES[1]];
        let mut e = vec![vec![1.0; OUT]];
        for _ in 0..500 {
            let next = mm(&e, c);
            let n = frob(&next);
            e = vec![next[0].iter().map(|x| x / n).collect()];
        }
        let row = |k: f64| e[0].iter().map(|x| k * x).collect::<Vec<f64>>();
        vec![row(1.0), row(2.0), row(-1.0)]
    };
    layers[1].adapters[0].b = Param::from_tensor(tensor(&inside, &device));
    let mut named: Vec<(String, &mut Linear)> = MODULES
        .iter()
        .map(|m| m.to_string())
        .zip(layers.iter_mut())
        .collect();
    let before = safe_lora::report(
        &named
            .iter()
            .map(|(n, l)| (n.clone(), &**l))
            .collect::<Vec<_>>(),
        "domain",
        &subspace,
    );
    assert_eq!(
        before.len(),
        2,
        "only modules with an alignment update are compared"
    );
    // A random update is far from a rank-2 subspace; one inside it is not.
    let cos0 = before[0].similarity;
    assert!(cos0 < 0.9, "{cos0}");
    assert!(before[1].similarity > 0.999, "{}", before[1].similarity);

    let result = safe_lora::apply(&mut named, "domain", &subspace, SafeLora::Threshold(0.9));
    assert_eq!(
        result.iter().map(|r| r.projected).collect::<Vec<_>>(),
        vec![true, false]
    );
    // Module 0's b is now b·C; module 1's is unchanged.
    let got = host(layers[0].adapters[0].b.val());
    assert!(max_diff(&got, &mm(&factors[0].1, &dense[MODULES[0]])) < 1e-4);
    assert!(max_diff(&host(layers[1].adapters[0].b.val()), &inside) < 1e-6);

    // Top-k picks the least similar; a share rounds up (a fifth of two
    // modules is one).
    let fresh = |mode: SafeLora| {
        let (mut layers, _) = self::layers(&mut seeded(3), &device);
        let mut named: Vec<(String, &mut Linear)> = MODULES
            .iter()
            .map(|m| m.to_string())
            .zip(layers.iter_mut())
            .collect();
        safe_lora::apply(&mut named, "domain", &subspace, mode)
    };
    let r = fresh(SafeLora::TopK(1));
    let least = r
        .iter()
        .min_by(|x, y| x.similarity.total_cmp(&y.similarity))
        .unwrap();
    assert!(least.projected && r.iter().filter(|x| x.projected).count() == 1);
    let s = fresh(SafeLora::Share(0.2));
    let projected =
        |r: &[safe_lora::ModuleSimilarity]| r.iter().map(|x| x.projected).collect::<Vec<_>>();
    assert_eq!(projected(&s), projected(&r));
}
