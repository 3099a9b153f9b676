//! Loss and metric reductions over a batch: squared error, L0, L1, per-feature firing counts, per-token loss.
//!
//! Contract: x [B, d], x̂ [B, d], f [B, F] → sums in f64 (deterministic: partial sums per token, added in token order);
//! `fire_counts` [F] is incremented by the number of tokens each feature fired on. Bytes ≈ 4·(2·B·d + B·F).

use super::Shape;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Sums over one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchStats {
    /// Σ_tokens ‖x − x̂‖².
    pub sse: f64,
    /// Σ_tokens #{i : f_i > 0}.
    pub l0: f64,
    /// Σ_tokens Σ_i f_i.
    pub l1: f64,
}

impl BatchStats {
    /// The training loss of the batch: mean ‖x − x̂‖² + λ·mean ‖f‖₁.
    pub fn loss(&self, batch: usize, l1_coeff: f32) -> f64 {
        (self.sse + l1_coeff as f64 * self.l1) / batch.max(1) as f64
    }

    /// The training-curve point of this batch at `step` (shape `s`, penalty `l1_coeff`).
    pub fn curve_point(&self, step: usize, s: Shape, l1_coeff: f32) -> CurvePoint {
        CurvePoint {
            step,
            loss: self.loss(s.batch, l1_coeff),
            mse: self.sse / (s.batch * s.d_in).max(1) as f64,
            l0: self.l0 / s.batch.max(1) as f64,
        }
    }
}

/// One point of a training curve: the batch's values at that step. The training loop records it, runs store it,
/// the dashboard draws it; this is the one type for all three.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurvePoint {
    pub step: usize,
    /// The batch's training loss ([`BatchStats::loss`]).
    pub loss: f64,
    /// Mean squared error per element.
    pub mse: f64,
    /// Mean features firing per token.
    pub l0: f64,
}

fn check(s: Shape, x: &[f32], xhat: &[f32], f: &[f32], counts: &[u32]) {
    assert_eq!(x.len(), s.batch * s.d_in, "reduce: x");
    assert_eq!(xhat.len(), s.batch * s.d_in, "reduce: x̂");
    assert_eq!(f.len(), s.batch * s.d_sae, "reduce: f");
    assert_eq!(counts.len(), s.d_sae, "reduce: fire counts");
}

fn row_stats(x: &[f32], xh: &[f32], f: &[f32]) -> (f64, f64, f64) {
    let sse: f64 = x
        .iter()
        .zip(xh)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let l0 = f.iter().filter(|v| **v > 0.0).count() as f64;
    let l1: f64 = f.iter().map(|v| *v as f64).sum();
    (sse, l0, l1)
}

/// Plain loops.
pub fn reference(
    s: Shape,
    x: &[f32],
    xhat: &[f32],
    f: &[f32],
    fire_counts: &mut [u32],
) -> BatchStats {
    check(s, x, xhat, f, fire_counts);
    let mut st = BatchStats::default();
    for b in 0..s.batch {
        let (sse, l0, l1) = row_stats(
            &x[b * s.d_in..(b + 1) * s.d_in],
            &xhat[b * s.d_in..(b + 1) * s.d_in],
            &f[b * s.d_sae..(b + 1) * s.d_sae],
        );
        st.sse += sse;
        st.l0 += l0;
        st.l1 += l1;
        for (c, v) in fire_counts
            .iter_mut()
            .zip(&f[b * s.d_sae..(b + 1) * s.d_sae])
        {
            if *v > 0.0 {
                *c += 1;
            }
        }
    }
    st
}

/// Rows per task of [`fast`]: each task reads its rows of f once for L0, L1 and its own firing counts.
const STATS_ROWS: usize = 64;

/// Per-token partial sums in parallel, added in token order; firing counts per block of rows, in the same pass over
/// f, then merged (integer counts: the order does not matter).
pub fn fast(s: Shape, x: &[f32], xhat: &[f32], f: &[f32], fire_counts: &mut [u32]) -> BatchStats {
    check(s, x, xhat, f, fire_counts);
    let (d, fs) = (s.d_in, s.d_sae);
    // Per block of rows: each row's (squared error, L0, L1), and the block's firing counts.
    type Block = (Vec<(f64, f64, f64)>, Vec<u32>);
    let blocks: Vec<Block> = (0..s.batch.div_ceil(STATS_ROWS))
        .into_par_iter()
        .map(|blk| {
            let rows = blk * STATS_ROWS..((blk + 1) * STATS_ROWS).min(s.batch);
            let mut counts = vec![0u32; fs];
            let stats = rows
                .map(|b| {
                    let fr = &f[b * fs..(b + 1) * fs];
                    let sse: f64 = x[b * d..(b + 1) * d]
                        .iter()
                        .zip(&xhat[b * d..(b + 1) * d])
                        .map(|(a, c)| ((a - c) as f64).powi(2))
                        .sum();
                    // Codes are mostly sparse: runs of 16 zeros are skipped; L1 sums in four lanes (a plain f64
                    // sum is one dependent chain, slow on the dense codes of early training).
                    let mut on = 0u32;
                    let mut l1 = [0.0f64; 4];
                    for (cc, fc) in counts.chunks_mut(16).zip(fr.chunks(16)) {
                        if fc.iter().all(|v| *v == 0.0) {
                            continue;
                        }
                        for (k, (c, &v)) in cc.iter_mut().zip(fc).enumerate() {
                            let hit = u32::from(v > 0.0);
                            *c += hit;
                            on += hit;
                            l1[k & 3] += v as f64;
                        }
                    }
                    (sse, on as f64, (l1[0] + l1[1]) + (l1[2] + l1[3]))
                })
                .collect();
            (stats, counts)
        })
        .collect();
    let mut st = BatchStats::default();
    for (stats, counts) in blocks {
        for (sse, l0, l1) in stats {
            st.sse += sse;
            st.l0 += l0;
            st.l1 += l1;
        }
        fire_counts
            .iter_mut()
            .zip(counts)
            .for_each(|(c, n)| *c += n);
    }
    st
}

/// ‖x_b − x̂_b‖² for every token b (the per-token loss that resampling draws by).
pub fn per_token_sq_err(s: Shape, x: &[f32], xhat: &[f32], out: &mut [f32]) {
    assert_eq!(out.len(), s.batch, "reduce: per-token out");
    assert_eq!(x.len(), s.batch * s.d_in, "reduce: x");
    assert_eq!(xhat.len(), s.batch * s.d_in, "reduce: x̂");
    out.par_iter_mut().enumerate().for_each(|(b, o)| {
        let r = b * s.d_in..(b + 1) * s.d_in;
        *o = x[r.clone()]
            .iter()
            .zip(&xhat[r])
            .map(|(a, c)| (a - c) * (a - c))
            .sum();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;
    use rand::Rng;

    #[test]
    fn fast_matches_reference() {
        let mut r = rng(7);
        for &(b, d, fs) in SHAPES {
            let s = Shape::new(b, d, fs);
            let x = randn(&mut r, b * d, 1.0);
            let xh = randn(&mut r, b * d, 1.0);
            let f: Vec<f32> = (0..b * fs)
                .map(|_| {
                    if r.random::<f32>() < 0.2 {
                        r.random()
                    } else {
                        0.0
                    }
                })
                .collect();
            let mut c1 = vec![3u32; fs];
            let mut c2 = vec![3u32; fs];
            let a = reference(s, &x, &xh, &f, &mut c1);
            let bb = fast(s, &x, &xh, &f, &mut c2);
            assert_eq!(c1, c2);
            assert_eq!(a.l0, bb.l0);
            assert!((a.sse - bb.sse).abs() <= 1e-9 * a.sse.abs().max(1.0));
            assert!((a.l1 - bb.l1).abs() <= 1e-9 * a.l1.abs().max(1.0));
        }
    }
}
