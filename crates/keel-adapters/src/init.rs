//! Creating an adapter on a layer: A, B (and DoRA's magnitude) from the
//! chosen initialisation. PiSSA and OLoRA also move the adapter's starting
//! update out of the frozen base, so the model's output is unchanged.
//! The linear algebra is small (rank r) and runs on the host in f64.

use burn::module::Param;
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::error::Error;
use crate::linear::Linear;
use crate::lora::Adapter;
use crate::rng::{Draw, SplitMix64};
use crate::target::ModuleSpec;
use keel_adapter_config::{AdapterConfig, Init, Variant};

/// A row-major host matrix.
struct Mat {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl Mat {
    fn zeros(rows: usize, cols: usize) -> Self {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }
    fn at(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }
    fn transpose(&self) -> Mat {
        let mut t = Mat::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                t.data[c * self.rows + r] = self.at(r, c);
            }
        }
        t
    }
    fn matmul(&self, o: &Mat) -> Mat {
        let mut out = Mat::zeros(self.rows, o.cols);
        for r in 0..self.rows {
            for k in 0..self.cols {
                let v = self.at(r, k);
                if v != 0.0 {
                    let row = &o.data[k * o.cols..(k + 1) * o.cols];
                    for (acc, x) in out.data[r * o.cols..(r + 1) * o.cols].iter_mut().zip(row) {
                        *acc += v * x;
                    }
                }
            }
        }
        out
    }
    /// Orthonormalises the columns in place (modified Gram-Schmidt) and
    /// returns the upper-triangular factor: `self_before = Q · R`.
    fn orthonormalize(&mut self) -> Mat {
        let mut r = Mat::zeros(self.cols, self.cols);
        for j in 0..self.cols {
            // Projecting out twice keeps the columns orthogonal even when a
            // column is nearly dependent on the earlier ones ("twice is enough").
            for _ in 0..2 {
                for i in 0..j {
                    let dot: f64 = (0..self.rows).map(|k| self.at(k, i) * self.at(k, j)).sum();
                    r.data[i * self.cols + j] += dot;
                    for k in 0..self.rows {
                        self.data[k * self.cols + j] -= dot * self.at(k, i);
                    }
                }
            }
            let norm = (0..self.rows)
                .map(|k| self.at(k, j).powi(2))
                .sum::<f64>()
                .sqrt();
            r.data[j * self.cols + j] = norm;
            for k in 0..self.rows {
                self.data[k * self.cols + j] /= norm.max(f64::MIN_POSITIVE);
            }
        }
        r
    }
    fn columns(&self, n: usize) -> Mat {
        let mut out = Mat::zeros(self.rows, n);
        for r in 0..self.rows {
            out.data[r * n..(r + 1) * n]
                .copy_from_slice(&self.data[r * self.cols..r * self.cols + n]);
        }
        out
    }
}

/// Eigen-decomposition of a small symmetric matrix by cyclic Jacobi
/// rotations: eigenvalues (descending) and eigenvectors as columns.
fn symmetric_eigen(mut a: Mat) -> (Vec<f64>, Mat) {
    let n = a.rows;
    let mut v = Mat::zeros(n, n);
    for i in 0..n {
        v.data[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .filter(|(i, j)| i != j)
            .map(|(i, j)| a.at(i, j).powi(2))
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a.at(p, q);
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a.at(q, q) - a.at(p, p)) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for k in 0..n {
                    let (akp, akq) = (a.at(k, p), a.at(k, q));
                    a.data[k * n + p] = c * akp - s * akq;
                    a.data[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a.at(p, k), a.at(q, k));
                    a.data[p * n + k] = c * apk - s * aqk;
                    a.data[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v.at(k, p), v.at(k, q));
                    v.data[k * n + p] = c * vkp - s * vkq;
                    v.data[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a.at(j, j).total_cmp(&a.at(i, i)));
    let values = order.iter().map(|&i| a.at(i, i)).collect();
    let mut vectors = Mat::zeros(n, n);
    for (new, &old) in order.iter().enumerate() {
        for k in 0..n {
            vectors.data[k * n + new] = v.at(k, old);
        }
    }
    (values, vectors)
}

/// Top-`r` singular triplets of `m` by randomized subspace iteration
/// (Halko et al. 2011): `m ≈ U diag(s) Vt` with U `[rows, r]`, Vt `[r, cols]`.
fn top_svd(m: &Mat, r: usize, niter: usize, rng: &mut SplitMix64) -> (Mat, Vec<f64>, Mat) {
    let k = (r + 8).min(m.rows.min(m.cols));
    let mut omega = Mat::zeros(m.cols, k);
    omega.data.iter_mut().for_each(|x| *x = rng.normal());
    let mt = m.transpose();
    let mut y = m.matmul(&omega);
    for _ in 0..niter {
        y.orthonormalize();
        let mut z = mt.matmul(&y);
        z.orthonormalize();
        y = m.matmul(&z);
    }
    y.orthonormalize();
    let b = y.transpose().matmul(m); // [k, cols]
    let (values, vecs) = symmetric_eigen(b.matmul(&b.transpose()));
    let s: Vec<f64> = values.iter().take(r).map(|v| v.max(0.0).sqrt()).collect();
    let u = y.matmul(&vecs).columns(r);
    let mut vt = vecs.transpose().matmul(&b);
    vt.data.truncate(r * m.cols);
    vt.rows = r;
    for (i, sv) in s.iter().enumerate() {
        vt.data[i * m.cols..(i + 1) * m.cols]
            .iter_mut()
            .for_each(|x| *x /= sv.max(f64::MIN_POSITIVE));
    }
    (u, s, vt)
}

fn to_tensor(m: &Mat, device: &Device) -> Tensor<2> {
    let data: Vec<f32> = m.data.iter().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(data, [m.rows, m.cols]), device)
}

/// Adds adapter `name` to `layer` as `spec` and `cfg` say, drawing random
/// numbers from `rng`.
pub fn init_adapter(
    layer: &mut Linear,
    name: &str,
    spec: &ModuleSpec,
    cfg: &AdapterConfig,
    rng: &mut SplitMix64,
) -> Result<(), Error> {
    let device = layer.weight.val().device();
    let needs_dense = match (cfg.init, cfg.variant) {
        (Init::Pissa { .. }, _) => Some("PiSSA"),
        (Init::Olora, _) => Some("OLoRA"),
        (_, Variant::Dora) => Some("DoRA"),
        _ => None,
    };
    if let Some(what) = needs_dense {
        layer.needs_dense(what).map_err(|reason| Error::Module {
            module: spec.name.clone(),
            reason,
        })?;
    }
    let (d_in, d_out, r) = (layer.in_features(), layer.out_features(), spec.r);
    if r > d_in.min(d_out) {
        return Err(Error::Module {
            module: spec.name.clone(),
            reason: format!(
                "rank {r} exceeds the layer's smaller dimension {}",
                d_in.min(d_out)
            ),
        });
    }
    let mut a = Mat::zeros(d_in, r);
    let mut b = Mat::zeros(r, d_out);
    // PiSSA and OLoRA start from factors of W, removed from the base.
    let mut residual: Option<Mat> = None;
    match cfg.init {
        Init::Kaiming => {
            // kaiming_uniform(a=sqrt(5)) on PEFT's [r, in] lora_A: bound 1/sqrt(in).
            let bound = 1.0 / (d_in as f64).sqrt();
            a.data
                .iter_mut()
                .for_each(|x| *x = (2.0 * rng.next_f64() - 1.0) * bound);
        }
        Init::Gaussian => {
            let std = 1.0 / r as f64;
            a.data.iter_mut().for_each(|x| *x = rng.normal() * std);
        }
        Init::Pissa { .. } | Init::Olora => {
            let w: Vec<f32> = layer
                .weight
                .val()
                .try_into_vec_as::<f32>()
                .expect("float weight");
            let w = Mat {
                rows: d_in,
                cols: d_out,
                data: w.iter().map(|&v| v as f64).collect(),
            };
            let s = spec.scale;
            if let Init::Pissa { niter } = cfg.init {
                // W (keel's [in, out]) ≈ U diag(σ) Vt; A = U √(σ/s), B = √(σ/s) Vt.
                let (u, sigma, vt) = top_svd(&w, r, niter, rng);
                for (j, sv) in sigma.iter().enumerate() {
                    let root = (sv / s).sqrt();
                    for i in 0..d_in {
                        a.data[i * r + j] = u.at(i, j) * root;
                    }
                    for k in 0..d_out {
                        b.data[j * d_out + k] = root * vt.at(j, k);
                    }
                }
            } else {
                // HF's W [out, in] = Q R: lora_B = Q[:, :r], lora_A = R[:r].
                // In keel's layout A = R[:r]ᵀ [in, r], B = Q[:, :r]ᵀ [r, out].
                let wt = w.transpose(); // [out, in]
                let mut q = wt.columns(r);
                q.orthonormalize();
                let rr = q.transpose().matmul(&wt); // [r, in]
                a = rr.transpose();
                b = q.transpose();
            }
            let update = a.matmul(&b);
            let mut res = w;
            res.data
                .iter_mut()
                .zip(&update.data)
                .for_each(|(x, u)| *x -= s * u);
            residual = Some(res);
        }
    }
    if let Some(res) = &residual {
        let stored = layer.weight.val().dtype();
        layer.weight =
            Param::from_tensor(to_tensor(res, &device).cast(stored)).set_require_grad(false);
    }
    let (a, b) = (to_tensor(&a, &device), to_tensor(&b, &device));
    let magnitude = match cfg.variant {
        Variant::Lora => None,
        Variant::Dora => {
            let w = layer.weight.val().cast(DType::F32)
                + a.clone().matmul(b.clone()).mul_scalar(spec.scale);
            Some(w.square().sum_dim(0).sqrt().reshape([d_out]))
        }
    };
    let mut adapter = Adapter::new(
        &spec.name,
        name,
        a.clone(),
        b.clone(),
        magnitude,
        spec.scale,
        cfg.dropout,
    );
    if residual.is_some() {
        adapter.initial = Some((a, b));
    }
    layer.add_adapter(adapter).map_err(|e| match e {
        Error::Module { reason, .. } => Error::Module {
            module: spec.name.clone(),
            reason,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_svd_recovers_a_low_rank_matrix() {
        let mut rng = crate::rng::seeded(1);
        // m = u diag(5, 2) vt with orthonormal u, vt.
        let mut u = Mat::zeros(12, 2);
        u.data.iter_mut().for_each(|x| *x = rng.normal());
        u.orthonormalize();
        let mut v = Mat::zeros(9, 2);
        v.data.iter_mut().for_each(|x| *x = rng.normal());
        v.orthonormalize();
        let mut us = u.columns(2);
        for i in 0..12 {
            us.data[i * 2] *= 5.0;
            us.data[i * 2 + 1] *= 2.0;
        }
        let m = us.matmul(&v.transpose());
        let (uu, s, vt) = top_svd(&m, 2, 4, &mut rng);
        assert!(
            (s[0] - 5.0).abs() < 1e-9 && (s[1] - 2.0).abs() < 1e-9,
            "{s:?}"
        );
        let mut recon = uu.columns(2);
        for i in 0..12 {
            recon.data[i * 2] *= s[0];
            recon.data[i * 2 + 1] *= s[1];
        }
        let recon = recon.matmul(&vt);
        let err = recon
            .data
            .iter()
            .zip(&m.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-9, "{err}");
    }
}
