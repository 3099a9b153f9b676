//! Each op at the reference shape (batch 1024, d_in 576, d_sae 4608), the plain reference beside the fast CPU version,
//! plus one whole training step on each. Run: `cargo bench -p saeperf-kernels --bench ops`.
//! The reference versions are slow (seconds per call); the group uses few samples.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use saeperf_kernels::ops::{self, backward, Activation, AdamHyper, Shape};
use saeperf_kernels::{Backend, CpuBackend, Params};
use std::time::Duration;

struct Inputs {
    s: Shape,
    x: Vec<f32>,
    p: Params<Vec<f32>>,
    f: Vec<f32>,
    xhat: Vec<f32>,
}

fn inputs(s: Shape) -> Inputs {
    let mut r = ChaCha8Rng::seed_from_u64(0);
    let mut rnd = |n: usize, sc: f32| {
        (0..n)
            .map(|_| (r.random::<f32>() * 2.0 - 1.0) * sc)
            .collect::<Vec<f32>>()
    };
    let x = rnd(s.batch * s.d_in, 1.0);
    let w_dec = rnd(s.d_sae * s.d_in, 1.0 / (s.d_in as f32).sqrt());
    let mut w_enc = vec![0.0; s.d_in * s.d_sae];
    for i in 0..s.d_sae {
        for j in 0..s.d_in {
            w_enc[j * s.d_sae + i] = w_dec[i * s.d_in + j];
        }
    }
    // A negative encoder bias gives a realistic sparsity (about 1–2% of features firing).
    let p = Params {
        w_enc,
        b_enc: vec![-0.75; s.d_sae],
        w_dec,
        b_dec: vec![0.0; s.d_in],
    };
    let mut f = vec![0.0; s.batch * s.d_sae];
    ops::encode::fast(
        s,
        Activation::Relu,
        &x,
        &p.w_enc,
        &p.b_enc,
        &p.b_dec,
        &mut f,
    );
    let mut xhat = vec![0.0; s.batch * s.d_in];
    ops::decode::fast(s, &f, &p.w_dec, &p.b_dec, &mut xhat);
    Inputs { s, x, p, f, xhat }
}

type BackwardFn = fn(Shape, &[f32], &[f32], &[f32], f32, backward::Weights, backward::GradsMut);

/// One call of a backward variant on the inputs' weights and residual, with codes `f`, into `gr`.
fn backward_once(op: BackwardFn, inp: &Inputs, f: &[f32], gr: &mut Params<Vec<f32>>) {
    let w = backward::Weights {
        w_enc: &inp.p.w_enc,
        b_enc: &inp.p.b_enc,
        w_dec: &inp.p.w_dec,
        b_dec: &inp.p.b_dec,
    };
    let gm = backward::GradsMut {
        w_enc: &mut gr.w_enc,
        b_enc: &mut gr.b_enc,
        w_dec: &mut gr.w_dec,
        b_dec: &mut gr.b_dec,
    };
    op(inp.s, &inp.x, f, &inp.xhat, 1.0, w, gm)
}

fn bench_ops(c: &mut Criterion) {
    let inp = inputs(Shape::REFERENCE);
    let s = inp.s;
    let nnz = ops::count_nonzero(&inp.f) as f64 / s.batch as f64;
    eprintln!("reference shape {s:?}, L0 of the benchmark codes {nnz:.1}");
    let mut g = c.benchmark_group("ops");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_millis(500));
    for (name, fast) in [("reference", false), ("fast", true)] {
        let mut f = vec![0.0; s.batch * s.d_sae];
        g.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| {
                let op = if fast {
                    ops::encode::fast
                } else {
                    ops::encode::reference
                };
                op(
                    s,
                    Activation::Relu,
                    &inp.x,
                    &inp.p.w_enc,
                    &inp.p.b_enc,
                    &inp.p.b_dec,
                    &mut f,
                )
            })
        });
        let mut xh = vec![0.0; s.batch * s.d_in];
        g.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| {
                let op = if fast {
                    ops::decode::fast
                } else {
                    ops::decode::reference
                };
                op(s, &inp.f, &inp.p.w_dec, &inp.p.b_dec, &mut xh)
            })
        });
        let mut gr = Params::zeros(s);
        g.bench_function(BenchmarkId::new("backward", name), |b| {
            b.iter(|| {
                let op = if fast {
                    backward::fast
                } else {
                    backward::reference
                };
                backward_once(op, &inp, &inp.f, &mut gr)
            })
        });
        let mut counts = vec![0u32; s.d_sae];
        g.bench_function(BenchmarkId::new("reduce", name), |b| {
            b.iter(|| {
                let op = if fast {
                    ops::reduce::fast
                } else {
                    ops::reduce::reference
                };
                op(s, &inp.x, &inp.xhat, &inp.f, &mut counts)
            })
        });
        let (mut p, mut gg, mut m, mut v) = (
            inp.p.clone(),
            Params::zeros(s),
            Params::zeros(s),
            Params::zeros(s),
        );
        gg.w_dec.iter_mut().for_each(|x| *x = 1e-3);
        let backend = if fast {
            CpuBackend::fast()
        } else {
            CpuBackend::reference()
        };
        g.bench_function(BenchmarkId::new("adam", name), |b| {
            b.iter(|| {
                backend
                    .adam(s, AdamHyper::new(1e-4, 10), &mut p, &mut gg, &mut m, &mut v)
                    .unwrap()
            })
        });
    }
    g.finish();
}

fn bench_step(c: &mut Criterion) {
    let inp = inputs(Shape::REFERENCE);
    let s = inp.s;
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_millis(500));
    for backend in [CpuBackend::reference(), CpuBackend::fast()] {
        let (mut p, mut gr, mut m, mut v) = (
            inp.p.clone(),
            Params::zeros(s),
            Params::zeros(s),
            Params::zeros(s),
        );
        let mut f = vec![0.0; s.batch * s.d_sae];
        let mut xh = vec![0.0; s.batch * s.d_in];
        let mut counts = vec![0u32; s.d_sae];
        g.bench_function(BenchmarkId::new("relu", backend.name()), |b| {
            b.iter(|| {
                backend
                    .encode(s, Activation::Relu, &inp.x, &p, &mut f)
                    .unwrap();
                backend.decode(s, &f, &p, &mut xh).unwrap();
                backend
                    .batch_stats(s, &inp.x, &xh, &f, &mut counts)
                    .unwrap();
                backend
                    .backward(s, 1.0, &inp.x, &f, &xh, &p, &mut gr)
                    .unwrap();
                backend
                    .adam(s, AdamHyper::new(1e-6, 10), &mut p, &mut gr, &mut m, &mut v)
                    .unwrap();
            })
        });
    }
    g.finish();
}

/// The fast ops' three paths side by side at fixed code densities: where each stops paying (ops::SPARSE_DENSITY_ROWS,
/// _DECODE and _BACKWARD are set from these crossovers).
fn bench_sparse_vs_dense(c: &mut Criterion) {
    let inp = inputs(Shape::REFERENCE);
    let s = inp.s;
    let mut g = c.benchmark_group("sparse_vs_dense");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(300));
    let mut r = ChaCha8Rng::seed_from_u64(1);
    for density in [0.005f32, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5] {
        let f: Vec<f32> = (0..s.batch * s.d_sae)
            .map(|_| {
                if r.random::<f32>() < density {
                    r.random::<f32>()
                } else {
                    0.0
                }
            })
            .collect();
        let mut xh = vec![0.0; s.batch * s.d_in];
        let mut gr = Params::zeros(s);
        type Decode = fn(Shape, &ops::sparse::Csr, &[f32], &[f32], &mut [f32]);
        let paths: [(&str, Option<Decode>, BackwardFn); 3] = [
            ("dense", None, backward::fast_dense),
            (
                "rows",
                Some(ops::decode::fast_sparse_rows),
                backward::fast_sparse_rows,
            ),
            (
                "blocked",
                Some(ops::decode::fast_sparse_blocked),
                backward::fast_sparse_blocked,
            ),
        ];
        for (path, decode, bwd) in paths {
            let id = format!("{path}@{density}");
            g.bench_function(BenchmarkId::new("decode", &id), |b| {
                b.iter(|| match decode {
                    Some(op) => {
                        let csr = ops::sparse::Csr::from_dense(&f, s.d_sae);
                        op(s, &csr, &inp.p.w_dec, &inp.p.b_dec, &mut xh)
                    }
                    None => ops::decode::fast_dense(s, &f, &inp.p.w_dec, &inp.p.b_dec, &mut xh),
                })
            });
            g.bench_function(BenchmarkId::new("backward", &id), |b| {
                b.iter(|| backward_once(bwd, &inp, &f, &mut gr))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_ops, bench_step, bench_sparse_vs_dense);
criterion_main!(benches);
