//! Threshold: JumpReLU's activation and its threshold's pseudo-gradient (docs/architectures.md, "JumpReLU").
//!
//! The activation, on the ReLU'd pre-activations a = ReLU(pre) [B, F] that encode writes, with per-feature
//! thresholds θ = exp(t) (trained as t = log θ, so θ stays positive): f_bi = a_bi · 1[a_bi > θ_i]. Because θ > 0 this
//! equals pre · H(pre − θ). BatchTopK dictionaries use it at inference with one θ for every feature.
//! Contract: a [B, F], t [F] → f [B, F]. FLOPs B·F compares; bytes 4·(2·B·F + F).
//!
//! The pseudo-gradient (Rajamanoharan et al. 2024): H has no derivative, so θ's gradient goes through the rectangle
//! kernel K(z) = 1[|z| < ½] of bandwidth ε: ∂f_bi/∂θ_i ≈ −(θ_i/ε)·K((pre_bi − θ_i)/ε) and
//! ∂H(pre_bi − θ_i)/∂θ_i ≈ −K(…)/ε. For loss = (1/B)·Σ_b ‖x̂_b − x_b‖² + λ·(1/B)·Σ_b Σ_i H(pre_bi − θ_i):
//! ∂loss/∂t_i = θ_i · Σ_b K((a_bi − θ_i)/ε) · (−1/ε) · (θ_i·⟨2(x̂_b − x_b)/B, W_dec[i]⟩ + λ/B).
//! Only pairs inside the band contribute, and only positive a is read: pairs with pre ≤ 0 inside the band (possible
//! only while θ < ε/2) get no pseudo-gradient. The pre-activations and W_enc, b_enc, W_dec, b_dec get their ordinary
//! gradients from `backward` on f (the mask f > 0 is H(pre − θ)).
//! Contract: a [B, F], t [F], x [B, d], x̂ [B, d], W_dec [F, d], ε, λ → ∂t [F] (overwritten).
//! FLOPs 2·d per pair in the band; bytes 4·(B·F + band·d).

use super::Shape;
use rayon::prelude::*;

fn check_apply(s: Shape, a: &[f32], log_theta: &[f32], f: &[f32]) {
    assert_eq!(a.len(), s.batch * s.d_sae, "threshold: a");
    assert_eq!(log_theta.len(), s.d_sae, "threshold: log θ");
    assert_eq!(f.len(), s.batch * s.d_sae, "threshold: f");
}

/// Plain loops: the definition of the activation.
pub fn reference(s: Shape, a: &[f32], log_theta: &[f32], f: &mut [f32]) {
    check_apply(s, a, log_theta, f);
    for b in 0..s.batch {
        for i in 0..s.d_sae {
            let v = a[b * s.d_sae + i];
            f[b * s.d_sae + i] = if v > log_theta[i].exp() { v } else { 0.0 };
        }
    }
}

/// θ computed once, then [`mask`].
pub fn fast(s: Shape, a: &[f32], log_theta: &[f32], f: &mut [f32]) {
    check_apply(s, a, log_theta, f);
    let theta: Vec<f32> = log_theta.iter().map(|t| t.exp()).collect();
    f.copy_from_slice(a);
    mask(s, &theta, f);
}

/// In place on ReLU'd pre-activations f [B, F] with the thresholds themselves (θ [F], not log θ): f = f·1[f > θ],
/// rows in parallel. A saved dictionary's encode calls it directly, with no copy and no log/exp round trip.
pub fn mask(s: Shape, theta: &[f32], f: &mut [f32]) {
    assert_eq!(theta.len(), s.d_sae, "threshold: θ");
    assert_eq!(f.len(), s.batch * s.d_sae, "threshold: f");
    f.par_chunks_mut(s.d_sae.max(1)).for_each(|row| {
        for (v, &th) in row.iter_mut().zip(theta) {
            *v = if *v > th { *v } else { 0.0 };
        }
    });
}

/// The inputs of the pseudo-gradient, borrowed.
#[derive(Clone, Copy)]
pub struct GradInputs<'a> {
    pub a: &'a [f32],
    pub log_theta: &'a [f32],
    pub x: &'a [f32],
    pub xhat: &'a [f32],
    pub w_dec: &'a [f32],
    /// The bandwidth ε.
    pub eps: f32,
    /// λ of the L0 penalty.
    pub l0: f32,
}

fn check_grad(s: Shape, i: &GradInputs, g: &[f32]) {
    assert_eq!(i.a.len(), s.batch * s.d_sae, "threshold grad: a");
    assert_eq!(i.log_theta.len(), s.d_sae, "threshold grad: log θ");
    assert_eq!(i.x.len(), s.batch * s.d_in, "threshold grad: x");
    assert_eq!(i.xhat.len(), s.batch * s.d_in, "threshold grad: x̂");
    assert_eq!(i.w_dec.len(), s.d_sae * s.d_in, "threshold grad: W_dec");
    assert_eq!(g.len(), s.d_sae, "threshold grad: ∂log θ");
}

/// Plain loops: the definition of the pseudo-gradient.
pub fn grad_reference(s: Shape, i: GradInputs, g: &mut [f32]) {
    check_grad(s, &i, g);
    let (bsz, d, fs) = (s.batch, s.d_in, s.d_sae);
    let inv_b = 1.0 / bsz.max(1) as f32;
    for (f, gf) in g.iter_mut().enumerate() {
        let theta = i.log_theta[f].exp();
        let mut acc = 0.0f32;
        for b in 0..bsz {
            let v = i.a[b * fs + f];
            if v > 0.0 && ((v - theta) / i.eps).abs() < 0.5 {
                let mut df = 0.0f32;
                for j in 0..d {
                    df += 2.0 * (i.xhat[b * d + j] - i.x[b * d + j]) * inv_b * i.w_dec[f * d + j];
                }
                acc += -(theta * df + i.l0 * inv_b) / i.eps;
            }
        }
        *gf = theta * acc;
    }
}

/// Finds the band pairs feature by feature in parallel (features are independent), then one dot product per pair.
pub fn grad_fast(s: Shape, i: GradInputs, g: &mut [f32]) {
    check_grad(s, &i, g);
    let (bsz, d, fs) = (s.batch, s.d_in, s.d_sae);
    let inv_b = 1.0 / bsz.max(1) as f32;
    g.par_iter_mut().enumerate().for_each(|(f, gf)| {
        let theta = i.log_theta[f].exp();
        let wr = &i.w_dec[f * d..(f + 1) * d];
        let mut acc = 0.0f32;
        for b in 0..bsz {
            let v = i.a[b * fs + f];
            if v > 0.0 && ((v - theta) / i.eps).abs() < 0.5 {
                let xb = &i.x[b * d..(b + 1) * d];
                let hb = &i.xhat[b * d..(b + 1) * d];
                let mut df = 0.0f32;
                for j in 0..d {
                    df += 2.0 * (hb[j] - xb[j]) * inv_b * wr[j];
                }
                acc += -(theta * df + i.l0 * inv_b) / i.eps;
            }
        }
        *gf = theta * acc;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    #[test]
    fn fast_matches_reference() {
        let mut r = rng(11);
        for &(b, d, fsz) in SHAPES {
            let s = Shape::new(b, d, fsz);
            let a: Vec<f32> = randn(&mut r, b * fsz, 1.0)
                .into_iter()
                .map(|v| v.max(0.0))
                .collect();
            let t: Vec<f32> = randn(&mut r, fsz, 1.0).iter().map(|v| v - 1.0).collect();
            let (mut want, mut got) = (vec![f32::NAN; b * fsz], vec![f32::NAN; b * fsz]);
            reference(s, &a, &t, &mut want);
            fast(s, &a, &t, &mut got);
            assert_eq!(got, want, "{s:?}");
            let x = randn(&mut r, b * d, 1.0);
            let xh = randn(&mut r, b * d, 1.0);
            let w = randn(&mut r, fsz * d, 0.3);
            // A wide band, so that many pairs fall in it.
            let inp = GradInputs {
                a: &a,
                log_theta: &t,
                x: &x,
                xhat: &xh,
                w_dec: &w,
                eps: 0.5,
                l0: 0.3,
            };
            let (mut gw, mut gg) = (vec![f32::NAN; fsz], vec![f32::NAN; fsz]);
            grad_reference(s, inp, &mut gw);
            grad_fast(s, inp, &mut gg);
            assert!(rel_err(&gg, &gw) < 1e-5, "{s:?}: {}", rel_err(&gg, &gw));
        }
    }

    /// The pseudo-gradient is the exact derivative at t = t₀ of a surrogate loss that equals the true loss there:
    /// f̃ = a·H(a − θ₀) + θ·(H_ε(a − θ) − H_ε(a − θ₀)) and the penalty λ·(H(a − θ₀) + H_ε(a − θ) − H_ε(a − θ₀)),
    /// with H_ε(z) = clamp(z/ε + ½, 0, 1) (whose derivative is K(z/ε)/ε). Central differences of the surrogate in
    /// f64 must match the op: the documented pseudo-gradient, checked as such.
    #[test]
    fn the_pseudo_gradient_is_the_derivative_of_the_documented_surrogate() {
        let (b, d, fsz) = (16, 5, 7);
        let s = Shape::new(b, d, fsz);
        let (
            Case {
                x, w_dec, b_dec, a, ..
            },
            _,
        ) = case(13, s, 0.2);
        // Thresholds near the middle of each feature's positive values, a band wide enough to hold several pairs.
        let t0: Vec<f32> = (0..fsz)
            .map(|i| {
                let mut v: Vec<f32> = (0..b)
                    .map(|bb| a[bb * fsz + i])
                    .filter(|v| *v > 0.0)
                    .collect();
                v.sort_by(f32::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(0.3).max(0.05).ln() + 0.013
            })
            .collect();
        let (eps, l0) = (0.3f32, 0.7f32);
        let mut f = vec![0.0; b * fsz];
        reference(s, &a, &t0, &mut f);
        let mut xh = vec![0.0; b * d];
        crate::ops::decode::reference(s, &f, &w_dec, &b_dec, &mut xh);
        let mut g = vec![0.0; fsz];
        let inp = GradInputs {
            a: &a,
            log_theta: &t0,
            x: &x,
            xhat: &xh,
            w_dec: &w_dec,
            eps,
            l0,
        };
        grad_reference(s, inp, &mut g);
        let h_eps = |z: f64| (z / eps as f64 + 0.5).clamp(0.0, 1.0);
        let surrogate = |t: &[f64]| -> f64 {
            let mut loss = 0.0f64;
            for bb in 0..b {
                let mut xr: Vec<f64> = b_dec.iter().map(|v| *v as f64).collect();
                for i in 0..fsz {
                    let av = a[bb * fsz + i] as f64;
                    if av <= 0.0 {
                        continue;
                    }
                    let (th0, th) = ((t0[i] as f64).exp(), t[i].exp());
                    let step = if av > th0 { 1.0 } else { 0.0 };
                    let smooth = h_eps(av - th) - h_eps(av - th0);
                    let fv = av * step + th * smooth;
                    for j in 0..d {
                        xr[j] += fv * w_dec[i * d + j] as f64;
                    }
                    loss += l0 as f64 * (step + smooth) / b as f64;
                }
                for j in 0..d {
                    loss += (xr[j] - x[bb * d + j] as f64).powi(2) / b as f64;
                }
            }
            loss
        };
        let base: Vec<f64> = t0.iter().map(|v| *v as f64).collect();
        let hstep = 1e-5;
        let fd: Vec<f32> = (0..fsz)
            .map(|i| {
                let (mut up, mut dn) = (base.clone(), base.clone());
                up[i] += hstep;
                dn[i] -= hstep;
                ((surrogate(&up) - surrogate(&dn)) / (2.0 * hstep)) as f32
            })
            .collect();
        let in_band = (0..b * fsz)
            .filter(|&p| {
                let th = t0[p % fsz].exp();
                a[p] > 0.0 && ((a[p] - th) / eps).abs() < 0.5
            })
            .count();
        assert!(in_band >= fsz, "only {in_band} pairs in the band");
        assert!(g.iter().any(|v| v.abs() > 1e-3), "{g:?}");
        assert!(rel_err(&g, &fd) < 1e-3, "op {g:?} vs surrogate {fd:?}");
    }
}
