//! The SAE ops: one module per op, each with a plain `reference` and a `fast` CPU version of the same contract.
//!
//! Layouts (row-major, the SAELens layout): x [batch, d_in], W_enc [d_in, d_sae], b_enc [d_sae],
//! f [batch, d_sae], W_dec [d_sae, d_in], b_dec [d_in], x̂ [batch, d_in].

pub mod adam;
pub mod auxk;
pub mod backward;
pub mod batchtopk;
pub mod decode;
pub mod encode;
pub mod gated;
pub mod gemm;
pub mod matryoshka;
pub mod reduce;
pub mod resample;
pub mod sparse;
pub(crate) mod spmm;
pub mod threshold;

pub use adam::AdamHyper;
pub use reduce::{BatchStats, CurvePoint};

use serde::{Deserialize, Serialize};

/// The fixed shape every op is called with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    pub batch: usize,
    pub d_in: usize,
    pub d_sae: usize,
}

impl Shape {
    pub const fn new(batch: usize, d_in: usize, d_sae: usize) -> Self {
        Shape { batch, d_in, d_sae }
    }
    /// The reference shape of the benchmarks: SmolLM2-135M's d_model, an 8× dictionary, a batch of 1024.
    pub const REFERENCE: Shape = Shape::new(1024, 576, 4608);
}

/// How pre-activations become feature activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// f = ReLU(pre).
    Relu,
    /// f = TopK(ReLU(pre), k): the k largest pre-activations of each token, ties broken by the lower index.
    TopK { k: usize },
}

/// The fast decode and backward pick their kernels by the fraction of (token, feature) pairs that fire, decided per
/// batch from that batch's codes (so the path follows L0 as it falls during training, and the choice is a function of
/// the data: same seed, same path, same bits). Below SPARSE_DENSITY_ROWS the row-wise sparse kernels; below the op's
/// SPARSE_DENSITY_* the blocked sparse kernels (`spmm`); above it GEMMs. Set at the crossovers measured side by side at
/// the reference shape 1024 × 576 × 4608 on a 2-core AMD EPYC VM with AVX2 and FMA (time ratios, medians of 5–7):
/// - blocked ÷ row-wise: backward 1.66 at density 0.004, 1.02 at 0.02, 0.65 at 0.05, 0.43 at 0.1; decode 1.58, 1.18,
///   0.89, 0.65;
/// - blocked ÷ dense: backward 0.62 at 0.25, 0.69–0.71 at 0.3, 0.80–0.90 at 0.4, 0.93 at 0.45, 1.08–1.28 at 0.5;
///   decode 0.64–0.73 at 0.2, 0.76–0.86 at 0.3, 0.77–1.28 at 0.4, 0.95 at 0.45, 1.00–1.05 at 0.5.
pub const SPARSE_DENSITY_ROWS: f64 = 0.02;
pub const SPARSE_DENSITY_BACKWARD: f64 = 0.45;
pub const SPARSE_DENSITY_DECODE: f64 = 0.4;

/// Reused f32 buffers for the ops' temporaries, so that a training step allocates (and page-faults in) nothing after
/// its first step: a buffer taken here goes back to the calling thread's pool when dropped. Its contents are stale
/// (whatever the last user left): a caller overwrites all of it before reading.
pub(crate) mod scratch {
    use std::cell::RefCell;

    thread_local! {
        static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    }

    /// A buffer of `len` floats from the pool.
    pub struct Scratch(Vec<f32>);

    pub fn take(len: usize) -> Scratch {
        let mut v = POOL
            .with(|p| {
                let mut p = p.borrow_mut();
                // The smallest pooled buffer that already holds `len`, else the largest (grown once).
                let best = (0..p.len())
                    .filter(|&i| p[i].capacity() >= len)
                    .min_by_key(|&i| p[i].capacity())
                    .or_else(|| (0..p.len()).max_by_key(|&i| p[i].capacity()));
                best.map(|i| p.swap_remove(i))
            })
            .unwrap_or_default();
        if v.len() < len {
            v.resize(len, 0.0);
        }
        v.truncate(len);
        Scratch(v)
    }

    impl std::ops::Deref for Scratch {
        type Target = [f32];
        fn deref(&self) -> &[f32] {
            &self.0
        }
    }
    impl std::ops::DerefMut for Scratch {
        fn deref_mut(&mut self) -> &mut [f32] {
            &mut self.0
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let v = std::mem::take(&mut self.0);
            let _ = POOL.try_with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < 16 {
                    p.push(v);
                }
            });
        }
    }
}

/// Lanes of [`dot`]: independent partial sums, so that the adds do not wait on each other (a plain `sum` of f32 is
/// one dependent chain, at one add per four cycles; 32 lanes keep eight SIMD adds in flight).
const DOT_LANES: usize = 32;

/// Runs `f` inside a function compiled for AVX2 when the CPU has it, so that the loops inlined into it use 256-bit
/// vectors (the build targets baseline x86-64, whose SIMD is 128-bit SSE2). The bits are the same either way: Rust
/// never contracts a·b + c into an FMA, and each SIMD lane performs the same scalar operations in the same order
/// whatever the vector width, so a machine with and without AVX2 trains the same dictionary.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// ⟨a, b⟩ in a fixed order: lane l sums the products at positions ≡ l (mod 32), the lanes are added pairwise, then
/// the tail. Deterministic (the order depends on the length only), and vectorised by the compiler.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    simd(|| dot_body(a, b))
}

#[inline(always)]
pub(crate) fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths");
    let mut acc = [0.0f32; DOT_LANES];
    let (ca, cb) = (a.chunks_exact(DOT_LANES), b.chunks_exact(DOT_LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..DOT_LANES {
            acc[l] += x[l] * y[l];
        }
    }
    dot_finish(acc, ta, tb)
}

/// [`dot`]'s last steps: the lanes added pairwise, then the tail in order.
#[inline(always)]
fn dot_finish(mut acc: [f32; DOT_LANES], ta: &[f32], tb: &[f32]) -> f32 {
    let mut w = DOT_LANES;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    let mut s = acc[0];
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

/// Number of nonzero entries of `f`.
pub fn count_nonzero(f: &[f32]) -> usize {
    use rayon::prelude::*;
    f.par_chunks(1 << 16)
        .map(|c| c.iter().filter(|v| **v != 0.0).count())
        .sum()
}

/// Which kernels a fast op runs for codes of a given density.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Below [`SPARSE_DENSITY_ROWS`]: pair by pair over whole rows.
    Rows,
    /// Below the op's threshold: the blocked kernels on packed tiles (`spmm`).
    Blocked,
    /// GEMMs.
    Dense,
}

/// The path for codes of shape `s` with `nnz` nonzeros, given the op's blocked/dense crossover `dense_from` (one of
/// the SPARSE_DENSITY_* constants).
pub fn path_for(s: Shape, nnz: usize, dense_from: f64) -> Path {
    let density = nnz as f64 / ((s.batch * s.d_sae).max(1) as f64);
    if density < SPARSE_DENSITY_ROWS {
        Path::Rows
    } else if density < dense_from {
        Path::Blocked
    } else {
        Path::Dense
    }
}

/// The op families, by the name the suite, the benchmarks and the GPU check use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Encode,
    Decode,
    Backward,
    Adam,
    Resample,
    Reduce,
    /// JumpReLU's thresholded activation and its threshold's pseudo-gradient.
    Threshold,
    /// BatchTopK's batch-wide selection.
    BatchTopK,
    /// Matryoshka's nested prefix losses beyond the full one: per prefix, mask, decode, backward, accumulate.
    Matryoshka,
    /// Gated's encode (one GEMM, the gated epilogue) and its backward.
    Gated,
    /// The AuxK auxiliary loss and its gradients.
    AuxK,
}

impl Op {
    pub const ALL: [Op; 11] = [
        Op::Encode,
        Op::Decode,
        Op::Backward,
        Op::Adam,
        Op::Resample,
        Op::Reduce,
        Op::Threshold,
        Op::BatchTopK,
        Op::Matryoshka,
        Op::Gated,
        Op::AuxK,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Encode => "encode",
            Op::Decode => "decode",
            Op::Backward => "backward",
            Op::Adam => "adam",
            Op::Resample => "resample",
            Op::Reduce => "reduce",
            Op::Threshold => "threshold",
            Op::BatchTopK => "batchtopk",
            Op::Matryoshka => "matryoshka",
            Op::Gated => "gated",
            Op::AuxK => "auxk",
        }
    }

    /// "encode, decode, …" for error messages.
    pub fn list() -> String {
        Op::ALL.map(Op::as_str).join(", ")
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Op, String> {
        Op::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown op {s:?} (one of {})", Op::list()))
    }
}

/// Seeded inputs for checks and benchmarks (the unit tests here, the GPU check, the op benchmarks), and the error
/// measure every check uses.
pub mod inputs {
    use super::Shape;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    pub fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    /// Uniform in ±scale, never exactly zero (so a kernel that forgets to write cannot match by accident).
    pub fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let v = (rng.random::<f32>() * 2.0 - 1.0) * scale;
                if v == 0.0 {
                    scale * 0.5
                } else {
                    v
                }
            })
            .collect()
    }

    /// Codes of shape `s` with `per_row` firing features per token (values in [0.1, 1.1); a feature drawn twice
    /// fires once), the sparse path a trained dictionary takes.
    pub fn sparse_codes(rng: &mut ChaCha8Rng, s: Shape, per_row: usize) -> Vec<f32> {
        let mut f = vec![0.0; s.batch * s.d_sae];
        for row in f.chunks_mut(s.d_sae.max(1)) {
            for _ in 0..per_row.min(s.d_sae) {
                row[rng.random_range(0..s.d_sae)] = rng.random::<f32>() + 0.1;
            }
        }
        f
    }

    /// ‖a − b‖ / ‖b‖ in f64 (‖a − b‖ when b is zero; infinite when the lengths differ or anything is NaN).
    pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
        if a.len() != b.len() {
            return f64::INFINITY;
        }
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (x, y) in a.iter().zip(b) {
            num += ((*x as f64) - (*y as f64)).powi(2);
            den += (*y as f64).powi(2);
        }
        let e = if den == 0.0 {
            num.sqrt()
        } else {
            (num / den).sqrt()
        };
        if e.is_nan() {
            f64::INFINITY
        } else {
            e
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    pub use super::inputs::{rel_err, rng, uniform as randn};

    /// A gradient check's seeded case: inputs x [B, d] and the four weights, drawn in that order (x ±1, W_enc ±0.6,
    /// b_enc ±`b_enc_scale`, W_dec ±0.5, b_dec ±0.1), and a = ReLU(pre) by the reference encode. The generator comes
    /// back for whatever else the check draws.
    pub struct Case {
        pub x: Vec<f32>,
        pub w_enc: Vec<f32>,
        pub b_enc: Vec<f32>,
        pub w_dec: Vec<f32>,
        pub b_dec: Vec<f32>,
        pub a: Vec<f32>,
    }

    pub fn case(seed: u64, s: super::Shape, b_enc_scale: f32) -> (Case, rand_chacha::ChaCha8Rng) {
        let mut r = rng(seed);
        let (b, d, fsz) = (s.batch, s.d_in, s.d_sae);
        let x = randn(&mut r, b * d, 1.0);
        let w_enc = randn(&mut r, d * fsz, 0.6);
        let b_enc = randn(&mut r, fsz, b_enc_scale);
        let w_dec = randn(&mut r, fsz * d, 0.5);
        let b_dec = randn(&mut r, d, 0.1);
        let mut a = vec![0.0; b * fsz];
        super::encode::reference(
            s,
            super::Activation::Relu,
            &x,
            &w_enc,
            &b_enc,
            &b_dec,
            &mut a,
        );
        let c = Case {
            x,
            w_enc,
            b_enc,
            w_dec,
            b_dec,
            a,
        };
        (c, r)
    }

    /// Central differences (step 1e-6, in f64) of `loss` with respect to every entry of parameter `which` of `p0`:
    /// the finite-difference side of every gradient check.
    pub fn central_diff<const N: usize>(
        loss: impl Fn(&[Vec<f64>; N]) -> f64,
        p0: &[Vec<f64>; N],
        which: usize,
    ) -> Vec<f32> {
        let h = 1e-6;
        (0..p0[which].len())
            .map(|e| {
                let (mut up, mut dn) = (p0.clone(), p0.clone());
                up[which][e] += h;
                dn[which][e] -= h;
                ((loss(&up) - loss(&dn)) / (2.0 * h)) as f32
            })
            .collect()
    }

    /// Shapes that are and are not multiples of common tile sizes.
    pub const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (7, 13, 29),
        (33, 64, 130),
        (64, 96, 256),
        (17, 50, 301),
    ];
}
