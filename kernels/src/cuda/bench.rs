//! CUDA timings of every op (`runner bench --backend cuda`): CUDA events around each launch after warm-up, the
//! median of many, GFLOP/s and GB/s from each op's contract, and the ratio to cuBLAS SGEMM at the same GEMM shapes
//! measured in the same process (cuBLAS is only a yardstick here; no op uses it). Also the training throughput of
//! a full step (encode, decode, backward, Adam, batch statistics) in tokens/s.

use super::backend::{CudaBackend, OpPath};
use super::CudaError;
use crate::backend::{Backend, BackendError, Params};
use crate::ops::{Activation, AdamHyper, Shape};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaSlice;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How much to time.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct BenchOpts {
    pub warmup: usize,
    pub iters: usize,
    /// k of the TopK runs (the sparse rows of the table).
    pub topk: usize,
}

impl Default for BenchOpts {
    fn default() -> Self {
        BenchOpts {
            warmup: 5,
            iters: 30,
            topk: 64,
        }
    }
}

/// One timed op.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpTiming {
    pub op: String,
    pub variant: String,
    pub shape: Shape,
    pub median_ms: f64,
    pub min_ms: f64,
    pub gflops: f64,
    pub gbps: f64,
    /// cuBLAS SGEMM time for the same GEMM work divided by this op's time (≥ 1: faster than cuBLAS); None when
    /// the op has no GEMM equivalent or cuBLAS is missing.
    pub vs_cublas: Option<f64>,
    /// tokens / s (batch / median step time), for whole training steps.
    pub tokens_per_sec: Option<f64>,
}

/// Everything `bench` measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    pub device: String,
    pub opts: BenchOpts,
    pub timings: Vec<OpTiming>,
    /// Why there is no cuBLAS column, when there is none.
    pub cublas_note: Option<String>,
}

impl BenchReport {
    /// The timings as metric values: `cuda.<op>.<variant>.{ms,gflops,gbps,vs_cublas,tokens_per_sec}`.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut v = Vec::new();
        for t in &self.timings {
            let base = format!("cuda.{}.{}", t.op, t.variant.replace(' ', "_"));
            v.push((format!("{base}.ms"), t.median_ms));
            v.push((format!("{base}.gflops"), t.gflops));
            v.push((format!("{base}.gbps"), t.gbps));
            if let Some(r) = t.vs_cublas {
                v.push((format!("{base}.vs_cublas"), r));
            }
            if let Some(r) = t.tokens_per_sec {
                v.push((format!("{base}.tokens_per_sec"), r));
            }
        }
        v
    }
}

fn dev(e: CudaError) -> BackendError {
    e.into()
}

/// Times `f` with CUDA events: `warmup` untimed runs, then `iters` timed ones; returns (median, min) in ms.
fn time_ms(
    be: &CudaBackend,
    o: BenchOpts,
    mut f: impl FnMut() -> Result<(), BackendError>,
) -> Result<(f64, f64), BackendError> {
    for _ in 0..o.warmup {
        f()?;
    }
    be.synchronize()?;
    let mut ms = Vec::with_capacity(o.iters);
    for _ in 0..o.iters.max(1) {
        let a = be
            .ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| dev(e.into()))?;
        let b = be
            .ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| dev(e.into()))?;
        a.record(&be.stream).map_err(|e| dev(e.into()))?;
        f()?;
        b.record(&be.stream).map_err(|e| dev(e.into()))?;
        ms.push(a.elapsed_ms(&b).map_err(|e| dev(e.into()))? as f64);
    }
    ms.sort_by(|x, y| x.total_cmp(y));
    Ok((ms[ms.len() / 2], ms[0]))
}

/// A row-major SGEMM C[m, n] = op(A) · op(B) through cuBLAS (column-major: Cᵀ = op(B)ᵀ · op(A)ᵀ).
struct Yardstick {
    blas: CudaBlas,
}

impl Yardstick {
    fn new(be: &CudaBackend) -> Result<Self, String> {
        // SAFETY: is_culib_present only tries to dlopen the candidate names of libcublas.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err("libcublas not found (put the CUDA toolkit's or PyTorch's cuBLAS folder on LD_LIBRARY_PATH)".into());
        }
        CudaBlas::new(be.stream.clone())
            .map(|blas| Yardstick { blas })
            .map_err(|e| format!("cuBLAS: {e:?}"))
    }

    /// ta: A stored [k][m] instead of [m][k]; tb: B stored [n][k] instead of [k][n].
    #[allow(clippy::too_many_arguments)]
    fn sgemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        ta: bool,
        tb: bool,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c: &mut CudaSlice<f32>,
    ) -> Result<(), BackendError> {
        use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        let cfg = GemmConfig {
            transa: if tb { CUBLAS_OP_T } else { CUBLAS_OP_N },
            transb: if ta { CUBLAS_OP_T } else { CUBLAS_OP_N },
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: 1.0f32,
            lda: if tb { k } else { n } as i32,
            ldb: if ta { m } else { k } as i32,
            beta: 0.0f32,
            ldc: n as i32,
        };
        // SAFETY: cublasSgemm(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc): the buffers hold
        // the row-major [m][k] / [k][n] / [m][n] matrices (or their stored transposes) the caller allocated for
        // exactly these sizes, and the leading dimensions are their row lengths.
        unsafe { self.blas.gemm(cfg, b, a, c) }.map_err(|e| dev(CudaError::Blas(format!("{e:?}"))))
    }
}

fn rand_buf(
    be: &CudaBackend,
    r: &mut ChaCha8Rng,
    n: usize,
    scale: f32,
) -> Result<CudaSlice<f32>, BackendError> {
    let v: Vec<f32> = (0..n)
        .map(|_| (r.random::<f32>() * 2.0 - 1.0) * scale)
        .collect();
    be.upload(&v)
}

/// Times every op at shape `s` (the target: 4096 × 576 × 16384) and a full training step, with the ReLU codes of a
/// random dictionary (about half fire: the dense paths) and TopK codes (k = opts.topk: the sparse paths).
pub fn bench(
    be: &CudaBackend,
    s: Shape,
    o: BenchOpts,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, BackendError> {
    let (b, d, fs) = (s.batch, s.d_in, s.d_sae);
    let mut r = ChaCha8Rng::seed_from_u64(7);
    let x = rand_buf(be, &mut r, b * d, 1.0)?;
    let mut p = Params {
        w_enc: rand_buf(be, &mut r, d * fs, 1.0 / (d as f32).sqrt())?,
        b_enc: rand_buf(be, &mut r, fs, 0.01)?,
        w_dec: rand_buf(be, &mut r, fs * d, 1.0 / (d as f32).sqrt())?,
        b_dec: rand_buf(be, &mut r, d, 0.01)?,
    };
    let zeros = |n| be.zeros(n);
    let mut g = Params {
        w_enc: zeros(d * fs)?,
        b_enc: zeros(fs)?,
        w_dec: zeros(fs * d)?,
        b_dec: zeros(d)?,
    };
    let mut m = Params {
        w_enc: zeros(d * fs)?,
        b_enc: zeros(fs)?,
        w_dec: zeros(fs * d)?,
        b_dec: zeros(d)?,
    };
    let mut v = Params {
        w_enc: zeros(d * fs)?,
        b_enc: zeros(fs)?,
        w_dec: zeros(fs * d)?,
        b_dec: zeros(d)?,
    };
    let mut f = zeros(b * fs)?;
    let mut f_topk = zeros(b * fs)?;
    let mut xhat = zeros(b * d)?;
    let topk = Activation::TopK { k: o.topk.min(fs) };
    be.encode(s, Activation::Relu, &x, &p, &mut f)?;
    be.encode(s, topk, &x, &p, &mut f_topk)?;
    let nnz_relu = be.count_nonzero(&f)? as f64;
    let nnz_topk = be.count_nonzero(&f_topk)? as f64;
    let (bf, df, ff) = (b as f64, d as f64, fs as f64);
    let gemm_flops = 2.0 * bf * df * ff;
    let mut timings = Vec::new();

    let yard = Yardstick::new(be);
    let cublas_note = yard.as_ref().err().cloned();
    let cublas = |m_: usize,
                  n_: usize,
                  k_: usize,
                  ta: bool,
                  tb: bool|
     -> Result<Option<f64>, BackendError> {
        let Ok(y) = &yard else { return Ok(None) };
        let a = be.zeros(m_ * k_)?;
        let bb = be.zeros(k_ * n_)?;
        let mut c = be.zeros(m_ * n_)?;
        Ok(Some(
            time_ms(be, o, || y.sgemm(m_, n_, k_, ta, tb, &a, &bb, &mut c))?.0,
        ))
    };
    progress("cuBLAS SGEMM");
    let cb_enc = cublas(b, fs, d, false, false)?; // x · W_enc
    let cb_dec = cublas(b, d, fs, false, false)?; // f · W_dec
    let cb_bwd = match (
        cublas(fs, d, b, true, false)?,
        cublas(b, fs, d, false, true)?,
        cublas(d, fs, b, true, false)?,
    ) {
        (Some(a), Some(bb), Some(c)) => Some(a + bb + c),
        _ => None,
    };
    if let Some(t) = cb_enc {
        timings.push(OpTiming {
            op: "cublas_sgemm".into(),
            variant: "B×d·d×F".into(),
            shape: s,
            median_ms: t,
            min_ms: t,
            gflops: gemm_flops / t / 1e6,
            gbps: 4.0 * (bf * df + df * ff + bf * ff) / t / 1e6,
            vs_cublas: Some(1.0),
            tokens_per_sec: None,
        });
    }
    let mut push = |op: &str,
                    variant: &str,
                    (med, min): (f64, f64),
                    flops: f64,
                    bytes: f64,
                    yard: Option<f64>,
                    tok: bool| {
        timings.push(OpTiming {
            op: op.into(),
            variant: variant.into(),
            shape: s,
            median_ms: med,
            min_ms: min,
            gflops: flops / med / 1e6,
            gbps: bytes / med / 1e6,
            vs_cublas: yard.map(|c| c / med),
            tokens_per_sec: tok.then(|| bf / (med / 1e3)),
        });
    };
    let enc_bytes = 4.0 * (bf * df + df * ff + bf * ff);
    progress("encode");
    push(
        "encode",
        "relu",
        time_ms(be, o, || be.encode(s, Activation::Relu, &x, &p, &mut f))?,
        gemm_flops,
        enc_bytes,
        cb_enc,
        false,
    );
    push(
        "encode",
        &format!("topk k={}", o.topk),
        time_ms(be, o, || be.encode(s, topk, &x, &p, &mut f_topk))?,
        gemm_flops,
        enc_bytes + 4.0 * bf * ff,
        cb_enc,
        false,
    );
    progress("decode");
    be.set_path(OpPath::Dense);
    push(
        "decode",
        "dense",
        time_ms(be, o, || be.decode(s, &f, &p, &mut xhat))?,
        gemm_flops,
        enc_bytes,
        cb_dec,
        false,
    );
    be.set_path(OpPath::Sparse);
    push(
        "decode",
        &format!("sparse topk k={}", o.topk),
        time_ms(be, o, || be.decode(s, &f_topk, &p, &mut xhat))?,
        2.0 * nnz_topk * df,
        4.0 * (bf * ff + nnz_topk * df + bf * df),
        None,
        false,
    );
    progress("backward");
    be.set_path(OpPath::Dense);
    be.decode(s, &f, &p, &mut xhat)?;
    push(
        "backward",
        "dense",
        time_ms(be, o, || be.backward(s, 1e-3, &x, &f, &xhat, &p, &mut g))?,
        3.0 * gemm_flops,
        4.0 * (3.0 * bf * ff + 4.0 * df * ff + 4.0 * bf * df),
        cb_bwd,
        false,
    );
    be.set_path(OpPath::Sparse);
    be.decode(s, &f_topk, &p, &mut xhat)?;
    push(
        "backward",
        &format!("sparse topk k={}", o.topk),
        time_ms(be, o, || {
            be.backward(s, 0.0, &x, &f_topk, &xhat, &p, &mut g)
        })?,
        6.0 * nnz_topk * df,
        4.0 * (bf * ff + 3.0 * nnz_topk * df + 3.0 * df * ff + 3.0 * bf * df),
        None,
        false,
    );
    be.set_path(OpPath::Auto);
    progress("adam");
    let n_par = 2.0 * df * ff + ff + df;
    let mut t = 0u64;
    push(
        "adam",
        "all params",
        time_ms(be, o, || {
            t += 1;
            be.adam(s, AdamHyper::new(1e-4, t), &mut p, &mut g, &mut m, &mut v)
        })?,
        12.0 * n_par,
        4.0 * 7.0 * n_par,
        None,
        false,
    );
    progress("batch_stats");
    let mut counts = vec![0u32; fs];
    push(
        "reduce",
        "batch_stats",
        time_ms(be, o, || {
            be.batch_stats(s, &x, &xhat, &f, &mut counts).map(|_| ())
        })?,
        3.0 * bf * (df + ff),
        4.0 * (2.0 * bf * df + 2.0 * bf * ff),
        None,
        false,
    );
    for (label, act, nnz) in [
        ("relu", Activation::Relu, nnz_relu),
        (&*format!("topk k={}", o.topk), topk, nnz_topk),
    ] {
        progress(&format!("train step {label}"));
        let sparse = nnz / (bf * ff) < super::backend::SPARSE_DENSITY;
        // encode GEMM, then decode + backward: 8·nnz·d when sparse, four more GEMMs when dense.
        let step_flops = if sparse {
            gemm_flops + 8.0 * nnz * df
        } else {
            5.0 * gemm_flops
        };
        let mut t = 0u64;
        let l1 = if matches!(act, Activation::Relu) {
            1e-3
        } else {
            0.0
        };
        let fbuf = if matches!(act, Activation::Relu) {
            &mut f
        } else {
            &mut f_topk
        };
        push(
            "train_step",
            label,
            time_ms(be, o, || {
                t += 1;
                be.encode(s, act, &x, &p, fbuf)?;
                be.decode(s, fbuf, &p, &mut xhat)?;
                be.backward(s, l1, &x, fbuf, &xhat, &p, &mut g)?;
                be.adam(s, AdamHyper::new(1e-4, t), &mut p, &mut g, &mut m, &mut v)?;
                be.batch_stats(s, &x, &xhat, fbuf, &mut counts).map(|_| ())
            })?,
            step_flops,
            0.0,
            None,
            true,
        );
    }
    Ok(BenchReport {
        device: be.name(),
        opts: o,
        timings,
        cublas_note,
    })
}
