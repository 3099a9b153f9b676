//! BatchTopK: the batch-wide selection of BatchTopK training (Bussmann, Leask, Nanda 2024; docs/architectures.md).
//!
//! On the ReLU'd pre-activations a = ReLU(pre) [B, F] of a whole batch, keep the K = k·B largest positive values
//! (ties to the lower flat index b·F + i), zero the rest; per-token L0 varies, its mean is at most k. The smallest
//! kept value is returned: training averages it into the inference threshold θ, which replaces the batch rule at
//! inference (f = pre · 1[pre > θ], the `threshold` op with one θ for every feature).
//! Contract: a [B, F], k → f [B, F], min kept (0 when nothing is kept). Gradients flow through the kept pairs only,
//! so `backward` on f is exact. FLOPs O(B·F) compares; bytes 4·(2·B·F) plus the positive values once.

use super::Shape;
use rayon::prelude::*;
use std::cmp::Ordering;

fn check(s: Shape, a: &[f32], f: &[f32]) {
    assert_eq!(a.len(), s.batch * s.d_sae, "batchtopk: a");
    assert_eq!(f.len(), s.batch * s.d_sae, "batchtopk: f");
}

/// Larger first, ties to the lower index: a total order, so the selection is unique.
fn order(a: (usize, f32), b: (usize, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Plain: sort every (index, value) pair and keep the first K positive ones.
pub fn reference(s: Shape, k: usize, a: &[f32], f: &mut [f32]) -> f32 {
    check(s, a, f);
    let kk = k.saturating_mul(s.batch);
    let mut all: Vec<(usize, f32)> = a.iter().copied().enumerate().collect();
    all.sort_by(|x, y| order(*x, *y));
    f.fill(0.0);
    let mut min_kept = 0.0f32;
    for &(i, v) in all.iter().take(kk) {
        if v > 0.0 {
            f[i] = v;
            min_kept = v;
        }
    }
    min_kept
}

/// The K-th largest positive value t by selection on the positive values' bits (non-negative floats order like their
/// bit patterns), then one pass in flat order: everything above t, and of the values equal to t the first ones.
pub fn fast(s: Shape, k: usize, a: &[f32], f: &mut [f32]) -> f32 {
    check(s, a, f);
    let kk = k.saturating_mul(s.batch);
    let cols = s.d_sae.max(1);
    let mut pos: Vec<u32> = a
        .par_chunks(cols)
        .flat_map_iter(|r| r.iter().filter(|v| **v > 0.0).map(|v| v.to_bits()))
        .collect();
    if kk == 0 || pos.is_empty() {
        f.fill(0.0);
        return 0.0;
    }
    if pos.len() <= kk {
        // Every positive value is kept.
        f.par_iter_mut()
            .zip(a.par_iter())
            .for_each(|(o, v)| *o = v.max(0.0));
        return f32::from_bits(*pos.iter().min().expect("not empty"));
    }
    let (_, nth, _) = pos.select_nth_unstable_by(kk - 1, |x, y| y.cmp(x));
    let t = f32::from_bits(*nth);
    // Values above t, per row; the ties at t are kept in flat order until K values are kept.
    let above: usize = a.par_iter().filter(|v| **v > t).count();
    let mut ties_left = kk - above;
    let ties_per_row: Vec<usize> = a
        .par_chunks(cols)
        .map(|r| r.iter().filter(|v| **v == t).count())
        .collect();
    let allowed: Vec<usize> = ties_per_row
        .iter()
        .map(|&n| {
            let take = n.min(ties_left);
            ties_left -= take;
            take
        })
        .collect();
    f.par_chunks_mut(cols)
        .zip(a.par_chunks(cols))
        .zip(allowed.par_iter())
        .for_each(|((fr, ar), &allow)| {
            let mut left = allow;
            for (o, &v) in fr.iter_mut().zip(ar) {
                *o = if v > t {
                    v
                } else if v == t && left > 0 {
                    left -= 1;
                    v
                } else {
                    0.0
                };
            }
        });
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    #[test]
    fn fast_matches_reference_with_ties_and_few_positives() {
        let mut r = rng(12);
        for &(b, d, fsz) in SHAPES {
            let s = Shape::new(b, d, fsz);
            let mut a: Vec<f32> = randn(&mut r, b * fsz, 1.0)
                .into_iter()
                .map(|v| v.max(0.0))
                .collect();
            // Rounded to make ties at the cut likely.
            let rounded: Vec<f32> = a.iter().map(|v| (v * 8.0).round() / 8.0).collect();
            for (case, vals) in [("plain", &mut a), ("ties", &mut rounded.clone())] {
                for k in [0, 1, 3, fsz, 2 * fsz] {
                    let (mut want, mut got) = (vec![f32::NAN; b * fsz], vec![f32::NAN; b * fsz]);
                    let tw = reference(s, k, vals, &mut want);
                    let tg = fast(s, k, vals, &mut got);
                    assert_eq!(got, want, "{case} {s:?} k {k}");
                    assert_eq!(tg, tw, "{case} {s:?} k {k}: min kept");
                    let kept = got.iter().filter(|v| **v > 0.0).count();
                    assert!(kept <= k * b, "{case} {s:?} k {k}: {kept} kept");
                }
            }
        }
    }

    /// With the selection fixed (no ties at the cut), the loss is smooth in every parameter: `backward` on the codes
    /// BatchTopK kept must match central differences of the loss recomputed from scratch in f64.
    #[test]
    fn backward_on_the_kept_codes_matches_finite_differences() {
        use crate::ops::backward::{self, GradsMut, Weights};
        let (b, d, fsz, k) = (6, 4, 9, 2);
        let s = Shape::new(b, d, fsz);
        let (
            Case {
                x,
                w_enc,
                b_enc,
                w_dec,
                b_dec,
                a,
            },
            _,
        ) = case(14, s, 0.2);
        let loss = |we: &[f64], be: &[f64], wd: &[f64], bd: &[f64]| -> f64 {
            let mut pre: Vec<(usize, f64)> = Vec::new();
            for bb in 0..b {
                for i in 0..fsz {
                    let mut acc = be[i];
                    for j in 0..d {
                        acc += (x[bb * d + j] as f64 - bd[j]) * we[j * fsz + i];
                    }
                    pre.push((bb * fsz + i, acc.max(0.0)));
                }
            }
            let mut order = pre.clone();
            order.sort_by(|p, q| q.1.total_cmp(&p.1).then(p.0.cmp(&q.0)));
            let mut f = vec![0.0f64; b * fsz];
            for &(i, v) in order.iter().take(k * b) {
                f[i] = v;
            }
            let mut l = 0.0;
            for bb in 0..b {
                for j in 0..d {
                    let xr: f64 = bd[j]
                        + (0..fsz)
                            .map(|i| f[bb * fsz + i] * wd[i * d + j])
                            .sum::<f64>();
                    l += (xr - x[bb * d + j] as f64).powi(2) / b as f64;
                }
            }
            l
        };
        let mut f = vec![0.0; b * fsz];
        fast(s, k, &a, &mut f);
        let mut xh = vec![0.0; b * d];
        crate::ops::decode::reference(s, &f, &w_dec, &b_dec, &mut xh);
        let (mut gwe, mut gbe, mut gwd, mut gbd) = (
            vec![0.0; d * fsz],
            vec![0.0; fsz],
            vec![0.0; fsz * d],
            vec![0.0; d],
        );
        backward::reference(
            s,
            &x,
            &f,
            &xh,
            0.0,
            Weights {
                w_enc: &w_enc,
                b_enc: &b_enc,
                w_dec: &w_dec,
                b_dec: &b_dec,
            },
            GradsMut {
                w_enc: &mut gwe,
                b_enc: &mut gbe,
                w_dec: &mut gwd,
                b_dec: &mut gbd,
            },
        );
        let to64 = |v: &[f32]| v.iter().map(|x| *x as f64).collect::<Vec<f64>>();
        let p0 = [to64(&w_enc), to64(&b_enc), to64(&w_dec), to64(&b_dec)];
        let loss4 = |q: &[Vec<f64>; 4]| loss(&q[0], &q[1], &q[2], &q[3]);
        for (which, got) in [&gwe, &gbe, &gwd, &gbd].into_iter().enumerate() {
            let fd = central_diff(loss4, &p0, which);
            assert!(
                rel_err(got, &fd) < 1e-3,
                "parameter {which}: {got:?} vs {fd:?}"
            );
        }
    }
}
