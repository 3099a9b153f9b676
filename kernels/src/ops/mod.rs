//! The SAE ops: one module per op, each with a plain `reference` and a `fast` CPU version of the same contract.
//!
//! Layouts (row-major, the SAELens layout): x [batch, d_in], W_enc [d_in, d_sae], b_enc [d_sae],
//! f [batch, d_sae], W_dec [d_sae, d_in], b_dec [d_in], x̂ [batch, d_in].

pub mod adam;
pub mod backward;
pub mod decode;
pub mod encode;
pub mod gemm;
pub mod reduce;
pub mod resample;
pub mod sparse;

pub use adam::AdamHyper;
pub use reduce::BatchStats;

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

/// When the fraction of firing (token, feature) pairs is below this, the fast ops take the sparse path.
pub const SPARSE_DENSITY: f64 = 1.0 / 16.0;

/// Number of nonzero entries of `f`.
pub fn count_nonzero(f: &[f32]) -> usize {
    use rayon::prelude::*;
    f.par_chunks(1 << 16)
        .map(|c| c.iter().filter(|v| **v != 0.0).count())
        .sum()
}

/// True when the fast ops should take the sparse path for codes `f` of shape `s`.
pub fn prefers_sparse(s: Shape, f: &[f32]) -> bool {
    let total = (s.batch * s.d_sae).max(1);
    (count_nonzero(f) as f64) / (total as f64) < SPARSE_DENSITY
}

#[cfg(test)]
pub(crate) mod testutil {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    pub fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }
    pub fn randn(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
            .collect()
    }
    /// ‖a − b‖ / ‖b‖ (0 when both are zero).
    pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let mut num = 0.0f64;
        let mut den = 0.0f64;
        for (x, y) in a.iter().zip(b) {
            num += ((*x - *y) as f64).powi(2);
            den += (*y as f64).powi(2);
        }
        if den == 0.0 {
            num.sqrt()
        } else {
            (num / den).sqrt()
        }
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
