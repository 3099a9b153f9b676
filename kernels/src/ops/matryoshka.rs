//! Matryoshka: the pieces of the nested prefix losses (Bussmann et al. 2025; docs/architectures.md, "Matryoshka").
//!
//! loss = Σ_j (1/B)·Σ_b ‖x̂_j,b − x_b‖² with x̂_j = f[:, :m_j]·W_dec[:m_j] + b_dec for prefixes m_1 < … < m_n = F. Its
//! gradient is the sum over prefixes of the ordinary gradient of prefix j's reconstruction with the codes restricted
//! to that prefix, so a training step composes the existing ops per prefix (decode and backward on the masked
//! codes) with the two ops here: `prefix_mask` and `accumulate`.
//! Contract: prefix_mask: f [B, F], m → out [B, F] (f in columns < m, 0 elsewhere); FLOPs 0, bytes 8·B·F.
//! accumulate: acc += g, elementwise; bytes 12·len.

use super::Shape;
use rayon::prelude::*;

fn check(s: Shape, m: usize, f: &[f32], out: &[f32]) {
    assert_eq!(f.len(), s.batch * s.d_sae, "prefix mask: f");
    assert_eq!(out.len(), s.batch * s.d_sae, "prefix mask: out");
    assert!(m <= s.d_sae, "prefix mask: m {m} > d_sae {}", s.d_sae);
}

/// Plain loops.
pub fn prefix_mask_reference(s: Shape, m: usize, f: &[f32], out: &mut [f32]) {
    check(s, m, f, out);
    for b in 0..s.batch {
        for i in 0..s.d_sae {
            out[b * s.d_sae + i] = if i < m { f[b * s.d_sae + i] } else { 0.0 };
        }
    }
}

/// Rows in parallel.
pub fn prefix_mask_fast(s: Shape, m: usize, f: &[f32], out: &mut [f32]) {
    check(s, m, f, out);
    let cols = s.d_sae.max(1);
    out.par_chunks_mut(cols)
        .zip(f.par_chunks(cols))
        .for_each(|(o, r)| {
            o[..m].copy_from_slice(&r[..m]);
            o[m..].fill(0.0);
        });
}

/// acc += g (plain).
pub fn accumulate_reference(acc: &mut [f32], g: &[f32]) {
    assert_eq!(acc.len(), g.len(), "accumulate: lengths");
    for (a, v) in acc.iter_mut().zip(g) {
        *a += v;
    }
}

/// acc += g in parallel chunks (each element is added once, so the result is the plain one).
pub fn accumulate_fast(acc: &mut [f32], g: &[f32]) {
    assert_eq!(acc.len(), g.len(), "accumulate: lengths");
    acc.par_chunks_mut(1 << 14)
        .zip(g.par_chunks(1 << 14))
        .for_each(|(a, v)| a.iter_mut().zip(v).for_each(|(x, y)| *x += y));
}

/// The default prefixes of a dictionary of `d_sae` features: F/8, F/4, F/2, F (at least one feature each, strictly
/// increasing).
pub fn default_prefixes(d_sae: usize) -> Vec<usize> {
    let mut p: Vec<usize> = [d_sae / 8, d_sae / 4, d_sae / 2, d_sae]
        .into_iter()
        .filter(|m| *m > 0)
        .collect();
    p.dedup();
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    #[test]
    fn fast_matches_reference() {
        let mut r = rng(15);
        for &(b, d, fsz) in SHAPES {
            let s = Shape::new(b, d, fsz);
            let f = randn(&mut r, b * fsz, 1.0);
            for m in [0, 1, fsz / 2, fsz] {
                let (mut want, mut got) = (vec![f32::NAN; b * fsz], vec![f32::NAN; b * fsz]);
                prefix_mask_reference(s, m, &f, &mut want);
                prefix_mask_fast(s, m, &f, &mut got);
                assert_eq!(got, want);
            }
            let g = randn(&mut r, b * fsz, 1.0);
            let (mut a1, mut a2) = (f.clone(), f.clone());
            accumulate_reference(&mut a1, &g);
            accumulate_fast(&mut a2, &g);
            assert_eq!(a1, a2);
        }
        assert_eq!(default_prefixes(512), vec![64, 128, 256, 512]);
        assert_eq!(default_prefixes(3), vec![1, 3]);
    }

    /// The sum over prefixes of `backward` on each prefix's masked codes is the gradient of the Matryoshka loss:
    /// central differences of the loss recomputed in f64 (with the selection fixed) must match it.
    #[test]
    fn summed_prefix_gradients_match_finite_differences() {
        use crate::ops::backward::{self, GradsMut, Weights};
        let (b, d, fsz) = (5, 4, 8);
        let prefixes = [2usize, 5, 8];
        let s = Shape::new(b, d, fsz);
        let (
            Case {
                x,
                w_enc,
                b_enc,
                w_dec,
                b_dec,
                a: f,
            },
            _,
        ) = case(16, s, 0.3);
        let loss = |p: &[Vec<f64>; 4]| -> f64 {
            let (we, be, wd, bd) = (&p[0], &p[1], &p[2], &p[3]);
            let mut l = 0.0;
            for bb in 0..b {
                let f: Vec<f64> = (0..fsz)
                    .map(|i| {
                        let pre = be[i]
                            + (0..d)
                                .map(|j| (x[bb * d + j] as f64 - bd[j]) * we[j * fsz + i])
                                .sum::<f64>();
                        pre.max(0.0)
                    })
                    .collect();
                for &m in &prefixes {
                    for j in 0..d {
                        let xr = bd[j] + (0..m).map(|i| f[i] * wd[i * d + j]).sum::<f64>();
                        l += (xr - x[bb * d + j] as f64).powi(2) / b as f64;
                    }
                }
            }
            l
        };
        let w = Weights {
            w_enc: &w_enc,
            b_enc: &b_enc,
            w_dec: &w_dec,
            b_dec: &b_dec,
        };
        let mut total = [
            vec![0.0; d * fsz],
            vec![0.0; fsz],
            vec![0.0; fsz * d],
            vec![0.0; d],
        ];
        for &m in &prefixes {
            let mut fj = vec![0.0; b * fsz];
            prefix_mask_fast(s, m, &f, &mut fj);
            let mut xh = vec![0.0; b * d];
            crate::ops::decode::reference(s, &fj, &w_dec, &b_dec, &mut xh);
            let mut g = [
                vec![0.0; d * fsz],
                vec![0.0; fsz],
                vec![0.0; fsz * d],
                vec![0.0; d],
            ];
            let [g0, g1, g2, g3] = &mut g;
            backward::reference(
                s,
                &x,
                &fj,
                &xh,
                0.0,
                w,
                GradsMut {
                    w_enc: g0,
                    b_enc: g1,
                    w_dec: g2,
                    b_dec: g3,
                },
            );
            for (t, gi) in total.iter_mut().zip(&g) {
                accumulate_fast(t, gi);
            }
        }
        let to64 = |v: &[f32]| v.iter().map(|x| *x as f64).collect::<Vec<f64>>();
        let p0 = [to64(&w_enc), to64(&b_enc), to64(&w_dec), to64(&b_dec)];
        for (which, got) in total.iter().enumerate() {
            let fd = central_diff(loss, &p0, which);
            assert!(
                rel_err(got, &fd) < 1e-3,
                "parameter {which}: {got:?} vs {fd:?}"
            );
        }
    }
}
