//! Gated SAE (docs/architectures.md, "Gated"): a gate decides which features fire, a magnitude path how strongly;
//! both share the encoder weights.
//!
//! Encode contract: x [B, d], W_enc [d, F], b_gate [F] (the dictionary's `b_enc` slot), b_dec [d], r_mag [F],
//! b_mag [F] → π_gate = (x − b_dec)·W_enc + b_gate [B, F] and f [B, F] = 1[π_gate > 0]·ReLU(π_mag), where
//! π_mag = (x − b_dec)·(W_enc ⊙ exp(r_mag)) + b_mag = (π_gate − b_gate)·exp(r_mag) + b_mag. One encoder GEMM feeds
//! both paths; the rest is the gated epilogue. FLOPs ≈ 2·B·d·F.
//!
//! Backward contract: the gradients of
//!   L = (1/B)·Σ_b ‖x̂_b − x_b‖² + λ·(1/B)·Σ_b Σ_i ReLU(π_gate)_bi + (1/B)·Σ_b ‖x̂aux_b − x_b‖²,
//! x̂aux = ReLU(π_gate)·W_dec + b_dec, where the auxiliary reconstruction sees a copy of the decoder that gets no
//! gradient (the paper's stop-gradient: the gate learns to reconstruct, the decoder is trained by the main term
//! only), with respect to W_enc, b_gate, W_dec, b_dec (overwritten in [`GradsMut`]) and r_mag, b_mag (overwritten
//! in [`MagGradsMut`]); returns the batch's sums of the two extra loss terms ([`Sums`], not divided by B).
//! Decoder rows are kept at unit norm by the decoder Adam, so the penalty needs no ‖W_dec,i‖ factor.
//! The magnitude path gets gradient where f > 0; the gate where π_gate > 0 (penalty and auxiliary term).
//! Dense FLOPs ≈ 10·B·d·F (five GEMMs: ∂W_dec, ∂f, x̂aux, ∂ReLU(π_gate), ∂W_enc).

use super::backward::{b_dec_grad, column_sums, residuals, GradsMut, Weights};
use super::gemm::{sgemm, Trans};
use super::Shape;
use rayon::prelude::*;

/// The magnitude path's own parameters, borrowed.
#[derive(Clone, Copy)]
pub struct Mag<'a> {
    pub r_mag: &'a [f32],
    pub b_mag: &'a [f32],
}

/// Their gradient buffers, overwritten by the backward.
pub struct MagGradsMut<'a> {
    pub r_mag: &'a mut [f32],
    pub b_mag: &'a mut [f32],
}

fn check_encode(s: Shape, x: &[f32], w: &Weights, m: &Mag, pi_gate: &[f32], f: &[f32]) {
    assert_eq!(x.len(), s.batch * s.d_in, "gated: x");
    assert_eq!(w.w_enc.len(), s.d_in * s.d_sae, "gated: W_enc");
    assert_eq!(w.b_enc.len(), s.d_sae, "gated: b_gate");
    assert_eq!(w.b_dec.len(), s.d_in, "gated: b_dec");
    assert_eq!(m.r_mag.len(), s.d_sae, "gated: r_mag");
    assert_eq!(m.b_mag.len(), s.d_sae, "gated: b_mag");
    assert_eq!(pi_gate.len(), s.batch * s.d_sae, "gated: π_gate");
    assert_eq!(f.len(), s.batch * s.d_sae, "gated: f");
}

/// Plain loops: the definition of the encode.
pub fn encode_reference(
    s: Shape,
    x: &[f32],
    w: Weights,
    m: Mag,
    pi_gate: &mut [f32],
    f: &mut [f32],
) {
    check_encode(s, x, &w, &m, pi_gate, f);
    let (d, fs) = (s.d_in, s.d_sae);
    for b in 0..s.batch {
        for i in 0..fs {
            let mut z = 0.0f32;
            for j in 0..d {
                z += (x[b * d + j] - w.b_dec[j]) * w.w_enc[j * fs + i];
            }
            let pg = z + w.b_enc[i];
            let pm = z * m.r_mag[i].exp() + m.b_mag[i];
            pi_gate[b * fs + i] = pg;
            f[b * fs + i] = if pg > 0.0 { pm.max(0.0) } else { 0.0 };
        }
    }
}

/// The encoder GEMM, then the gated epilogue per row.
pub fn encode_fast(s: Shape, x: &[f32], w: Weights, m: Mag, pi_gate: &mut [f32], f: &mut [f32]) {
    check_encode(s, x, &w, &m, pi_gate, f);
    let (bsz, d, fs) = (s.batch, s.d_in, s.d_sae);
    if fs == 0 {
        return;
    }
    let mut xc = x.to_vec();
    if d > 0 {
        xc.par_chunks_mut(d).for_each(|r| {
            r.iter_mut().zip(w.b_dec).for_each(|(v, b)| *v -= b);
        });
    }
    // z = (x − b_dec)·W_enc into π_gate, then the epilogue turns z into π_gate and f.
    sgemm(bsz, fs, d, &xc, Trans::N, w.w_enc, Trans::N, pi_gate, false);
    let e: Vec<f32> = m.r_mag.iter().map(|r| r.exp()).collect();
    pi_gate
        .par_chunks_mut(fs)
        .zip(f.par_chunks_mut(fs))
        .for_each(|(pg, fr)| {
            for i in 0..fs {
                let z = pg[i];
                let gate = z + w.b_enc[i];
                let mag = z * e[i] + m.b_mag[i];
                pg[i] = gate;
                fr[i] = if gate > 0.0 { mag.max(0.0) } else { 0.0 };
            }
        });
}

/// The batch's sums of Gated's two extra loss terms (not divided by the batch size), returned by the backward.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sums {
    /// Σ_b ‖x̂aux_b − x_b‖².
    pub aux_sse: f64,
    /// Σ_b Σ_i ReLU(π_gate)_bi (the penalty before λ).
    pub gate_l1: f64,
}

/// What the backward reads besides the weights.
#[derive(Clone, Copy)]
pub struct BackInputs<'a> {
    pub x: &'a [f32],
    /// π_gate from the encode.
    pub pi_gate: &'a [f32],
    /// f from the encode.
    pub f: &'a [f32],
    /// x̂ = f·W_dec + b_dec.
    pub xhat: &'a [f32],
    /// λ of the gate's L1 penalty.
    pub l1: f32,
}

fn check_backward(s: Shape, i: &BackInputs, w: &Weights, m: &Mag, g: &GradsMut, gm: &MagGradsMut) {
    check_encode(s, i.x, w, m, i.pi_gate, i.f);
    assert_eq!(i.xhat.len(), s.batch * s.d_in, "gated: x̂");
    assert_eq!(w.w_dec.len(), s.d_sae * s.d_in, "gated: W_dec");
    assert_eq!(g.w_enc.len(), s.d_in * s.d_sae, "gated: ∂W_enc");
    assert_eq!(g.b_enc.len(), s.d_sae, "gated: ∂b_gate");
    assert_eq!(g.w_dec.len(), s.d_sae * s.d_in, "gated: ∂W_dec");
    assert_eq!(g.b_dec.len(), s.d_in, "gated: ∂b_dec");
    assert_eq!(gm.r_mag.len(), s.d_sae, "gated: ∂r_mag");
    assert_eq!(gm.b_mag.len(), s.d_sae, "gated: ∂b_mag");
}

/// Plain loops: the definition of the gradients.
pub fn backward_reference(
    s: Shape,
    i: BackInputs,
    w: Weights,
    m: Mag,
    g: GradsMut,
    gm: MagGradsMut,
) -> Sums {
    check_backward(s, &i, &w, &m, &g, &gm);
    let (bsz, d, fs) = (s.batch, s.d_in, s.d_sae);
    let inv_b = 1.0 / bsz.max(1) as f32;
    let gate_l1: f64 = i.pi_gate.iter().map(|v| v.max(0.0) as f64).sum();
    let dxh: Vec<f32> = (0..bsz * d)
        .map(|p| 2.0 * (i.xhat[p] - i.x[p]) * inv_b)
        .collect();
    let mut daux = vec![0.0f32; bsz * d];
    let mut aux_sse = 0.0f64;
    for b in 0..bsz {
        for j in 0..d {
            let mut xa = w.b_dec[j];
            for k in 0..fs {
                xa += i.pi_gate[b * fs + k].max(0.0) * w.w_dec[k * d + j];
            }
            let e = xa - i.x[b * d + j];
            aux_sse += (e as f64) * (e as f64);
            daux[b * d + j] = 2.0 * e * inv_b;
        }
    }
    let mut dz = vec![0.0f32; bsz * fs];
    g.b_enc.fill(0.0);
    gm.r_mag.fill(0.0);
    gm.b_mag.fill(0.0);
    for b in 0..bsz {
        for k in 0..fs {
            let p = b * fs + k;
            let dmag = if i.f[p] > 0.0 {
                (0..d).map(|j| dxh[b * d + j] * w.w_dec[k * d + j]).sum()
            } else {
                0.0f32
            };
            let dgate = if i.pi_gate[p] > 0.0 {
                (0..d)
                    .map(|j| daux[b * d + j] * w.w_dec[k * d + j])
                    .sum::<f32>()
                    + i.l1 * inv_b
            } else {
                0.0
            };
            let e = m.r_mag[k].exp();
            let z = i.pi_gate[p] - w.b_enc[k];
            dz[p] = dgate + dmag * e;
            g.b_enc[k] += dgate;
            gm.b_mag[k] += dmag;
            gm.r_mag[k] += dmag * z * e;
        }
    }
    for k in 0..fs {
        for j in 0..d {
            let (mut gd, mut ge) = (0.0f32, 0.0f32);
            for b in 0..bsz {
                gd += i.f[b * fs + k] * dxh[b * d + j];
                ge += (i.x[b * d + j] - w.b_dec[j]) * dz[b * fs + k];
            }
            g.w_dec[k * d + j] = gd;
            g.w_enc[j * fs + k] = ge;
        }
    }
    let dz_sum: Vec<f32> = (0..fs)
        .map(|k| (0..bsz).map(|b| dz[b * fs + k]).sum())
        .collect();
    for j in 0..d {
        let mut acc: f32 = (0..bsz).map(|b| dxh[b * d + j]).sum();
        for k in 0..fs {
            acc -= w.w_enc[j * fs + k] * dz_sum[k];
        }
        g.b_dec[j] = acc;
    }
    Sums { aux_sse, gate_l1 }
}

/// Five GEMMs and elementwise passes.
pub fn backward_fast(
    s: Shape,
    i: BackInputs,
    w: Weights,
    m: Mag,
    g: GradsMut,
    gm: MagGradsMut,
) -> Sums {
    check_backward(s, &i, &w, &m, &g, &gm);
    let (bsz, d, fs) = (s.batch, s.d_in, s.d_sae);
    let inv_b = 1.0 / bsz.max(1) as f32;
    let (dxh, xc) = residuals(s, i.x, i.xhat, w.b_dec);
    // ∂W_dec = fᵀ·∂x̂ (the main term only: the auxiliary decoder is a stopped copy).
    sgemm(fs, d, bsz, i.f, Trans::T, &dxh, Trans::N, g.w_dec, false);
    // ∂f = ∂x̂·W_decᵀ.
    let mut df = vec![0.0f32; bsz * fs];
    sgemm(
        bsz,
        fs,
        d,
        &dxh,
        Trans::N,
        w.w_dec,
        Trans::T,
        &mut df,
        false,
    );
    // x̂aux = ReLU(π_gate)·W_dec + b_dec, and its residual's gradient 2·(x̂aux − x)/B.
    let a: Vec<f32> = i.pi_gate.par_iter().map(|v| v.max(0.0)).collect();
    // In row order, like every other sum here, so the result does not depend on the thread count.
    let gate_l1: f64 = a.iter().map(|v| *v as f64).sum();
    let mut daux = vec![0.0f32; bsz * d];
    sgemm(
        bsz,
        d,
        fs,
        &a,
        Trans::N,
        w.w_dec,
        Trans::N,
        &mut daux,
        false,
    );
    let aux_sse: f64 = if d == 0 {
        0.0
    } else {
        daux.par_chunks_mut(d)
            .zip(i.x.par_chunks(d))
            .map(|(r, xr)| {
                let mut sse = 0.0f64;
                for j in 0..d {
                    let e = r[j] + w.b_dec[j] - xr[j];
                    sse += (e as f64) * (e as f64);
                    r[j] = 2.0 * e * inv_b;
                }
                sse
            })
            .sum()
    };
    // ∂ReLU(π_gate) from the auxiliary term = ∂x̂aux·W_decᵀ.
    let mut dga = vec![0.0f32; bsz * fs];
    sgemm(
        bsz,
        fs,
        d,
        &daux,
        Trans::N,
        w.w_dec,
        Trans::T,
        &mut dga,
        false,
    );
    let l1b = i.l1 * inv_b;
    let e: Vec<f32> = m.r_mag.iter().map(|r| r.exp()).collect();
    // ∂z = ∂π_gate + ∂π_mag·exp(r_mag); dga becomes ∂π_gate and df becomes ∂π_mag in place.
    let mut dz = vec![0.0f32; bsz * fs];
    if fs > 0 {
        dz.par_chunks_mut(fs)
            .zip(dga.par_chunks_mut(fs))
            .zip(df.par_chunks_mut(fs))
            .enumerate()
            .for_each(|(b, ((dzr, gr), mr))| {
                let pg = &i.pi_gate[b * fs..(b + 1) * fs];
                let fr = &i.f[b * fs..(b + 1) * fs];
                for k in 0..fs {
                    gr[k] = if pg[k] > 0.0 { gr[k] + l1b } else { 0.0 };
                    if fr[k] <= 0.0 {
                        mr[k] = 0.0;
                    }
                    dzr[k] = gr[k] + mr[k] * e[k];
                }
            });
    }
    column_sums(&dga, fs, g.b_enc);
    column_sums(&df, fs, gm.b_mag);
    // ∂r_mag = Σ_b ∂π_mag·z·exp(r_mag), with z = π_gate − b_gate; in row order, as the other sums.
    gm.r_mag.fill(0.0);
    for b in 0..bsz {
        for k in 0..fs {
            let p = b * fs + k;
            gm.r_mag[k] += df[p] * (i.pi_gate[p] - w.b_enc[k]) * e[k];
        }
    }
    // ∂W_enc = (x − b_dec)ᵀ·∂z; ∂b_dec = Σ_b ∂x̂_b − W_enc·Σ_b ∂z_b.
    sgemm(d, fs, bsz, &xc, Trans::T, &dz, Trans::N, g.w_enc, false);
    let mut dz_sum = vec![0.0f32; fs];
    column_sums(&dz, fs, &mut dz_sum);
    b_dec_grad(s, &dxh, w.w_enc, &dz_sum, g.b_dec);
    Sums { aux_sse, gate_l1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    struct P {
        x: Vec<f32>,
        w_enc: Vec<f32>,
        b_gate: Vec<f32>,
        w_dec: Vec<f32>,
        b_dec: Vec<f32>,
        r_mag: Vec<f32>,
        b_mag: Vec<f32>,
    }

    fn setup(seed: u64, s: Shape) -> P {
        let (c, mut r) = case(seed, s, 0.3);
        P {
            x: c.x,
            w_enc: c.w_enc,
            b_gate: c.b_enc,
            w_dec: c.w_dec,
            b_dec: c.b_dec,
            r_mag: randn(&mut r, s.d_sae, 0.5),
            b_mag: randn(&mut r, s.d_sae, 0.3),
        }
    }

    fn w(p: &P) -> Weights<'_> {
        Weights {
            w_enc: &p.w_enc,
            b_enc: &p.b_gate,
            w_dec: &p.w_dec,
            b_dec: &p.b_dec,
        }
    }
    fn m(p: &P) -> Mag<'_> {
        Mag {
            r_mag: &p.r_mag,
            b_mag: &p.b_mag,
        }
    }

    fn encode(s: Shape, p: &P, fast: bool) -> (Vec<f32>, Vec<f32>) {
        let (mut pg, mut f) = (vec![0.0; s.batch * s.d_sae], vec![0.0; s.batch * s.d_sae]);
        if fast {
            encode_fast(s, &p.x, w(p), m(p), &mut pg, &mut f);
        } else {
            encode_reference(s, &p.x, w(p), m(p), &mut pg, &mut f);
        }
        (pg, f)
    }

    /// x̂ = f·W_dec + b_dec by the reference decode.
    fn decode(s: Shape, p: &P, f: &[f32]) -> Vec<f32> {
        let mut xh = vec![0.0; s.batch * s.d_in];
        crate::ops::decode::reference(s, f, &p.w_dec, &p.b_dec, &mut xh);
        xh
    }

    /// The six gradients (W_enc, b_gate, W_dec, b_dec, r_mag, b_mag) and the auxiliary squared error.
    fn backward(s: Shape, p: &P, l1: f32, fast: bool) -> ([Vec<f32>; 6], Sums) {
        let (pg, f) = encode(s, p, true);
        let xh = decode(s, p, &f);
        let (d, fs) = (s.d_in, s.d_sae);
        let mut g = [
            vec![0.0; d * fs],
            vec![0.0; fs],
            vec![0.0; fs * d],
            vec![0.0; d],
            vec![0.0; fs],
            vec![0.0; fs],
        ];
        let [g0, g1, g2, g3, g4, g5] = &mut g;
        let i = BackInputs {
            x: &p.x,
            pi_gate: &pg,
            f: &f,
            xhat: &xh,
            l1,
        };
        let gr = GradsMut {
            w_enc: g0,
            b_enc: g1,
            w_dec: g2,
            b_dec: g3,
        };
        let gmg = MagGradsMut {
            r_mag: g4,
            b_mag: g5,
        };
        let aux = if fast {
            backward_fast(s, i, w(p), m(p), gr, gmg)
        } else {
            backward_reference(s, i, w(p), m(p), gr, gmg)
        };
        (g, aux)
    }

    #[test]
    fn fast_matches_reference() {
        for &(b, d, fsz) in SHAPES {
            let s = Shape::new(b, d, fsz);
            let p = setup(31, s);
            let (pr, fr) = encode(s, &p, false);
            let (pf, ff) = encode(s, &p, true);
            assert!(rel_err(&pf, &pr) < 1e-5, "{s:?} π_gate");
            assert!(rel_err(&ff, &fr) < 1e-5, "{s:?} f");
            let gates_open = fr.iter().filter(|v| **v > 0.0).count();
            assert!(b * fsz < 8 || gates_open > 0, "{s:?}: no feature fired");
            let (gr, ar) = backward(s, &p, 0.7, false);
            let (gf, af) = backward(s, &p, 0.7, true);
            for (n, (a, c)) in gf.iter().zip(&gr).enumerate() {
                assert!(
                    rel_err(a, c) < 1e-4,
                    "{s:?} gradient {n}: {}",
                    rel_err(a, c)
                );
            }
            assert!(
                (af.aux_sse - ar.aux_sse).abs() <= 1e-4 * ar.aux_sse.max(1e-9)
                    && (af.gate_l1 - ar.gate_l1).abs() <= 1e-4 * ar.gate_l1.max(1e-9),
                "{s:?} sums {af:?} vs {ar:?}"
            );
        }
    }

    /// The whole gated loss recomputed in f64, with the auxiliary decoder frozen at the unperturbed W_dec and b_dec
    /// (the stop-gradient), against central differences for every parameter entry.
    #[test]
    fn gradients_match_finite_differences() {
        let s = Shape::new(5, 4, 9);
        let (b, d, fs) = (s.batch, s.d_in, s.d_sae);
        let p = setup(32, s);
        let l1 = 0.6f64;
        let to64 = |v: &[f32]| v.iter().map(|x| *x as f64).collect::<Vec<f64>>();
        let x = to64(&p.x);
        let (wd0, bd0) = (to64(&p.w_dec), to64(&p.b_dec));
        // q: W_enc, b_gate, W_dec, b_dec, r_mag, b_mag.
        let loss = |q: &[Vec<f64>; 6]| -> f64 {
            let (we, bg, wd, bd, rm, bm) = (&q[0], &q[1], &q[2], &q[3], &q[4], &q[5]);
            let mut l = 0.0;
            for bb in 0..b {
                let mut xh = bd.clone();
                let mut xa = bd0.clone();
                for k in 0..fs {
                    let z: f64 = (0..d)
                        .map(|j| (x[bb * d + j] - bd[j]) * we[j * fs + k])
                        .sum();
                    let pg = z + bg[k];
                    let pm = z * rm[k].exp() + bm[k];
                    let f = if pg > 0.0 { pm.max(0.0) } else { 0.0 };
                    l += l1 * pg.max(0.0) / b as f64;
                    for j in 0..d {
                        xh[j] += f * wd[k * d + j];
                        xa[j] += pg.max(0.0) * wd0[k * d + j];
                    }
                }
                for j in 0..d {
                    l += ((xh[j] - x[bb * d + j]).powi(2) + (xa[j] - x[bb * d + j]).powi(2))
                        / b as f64;
                }
            }
            l
        };
        let p0 = [
            to64(&p.w_enc),
            to64(&p.b_gate),
            wd0.clone(),
            bd0.clone(),
            to64(&p.r_mag),
            to64(&p.b_mag),
        ];
        let (g, _) = backward(s, &p, l1 as f32, true);
        let (g_ref, _) = backward(s, &p, l1 as f32, false);
        for (which, (got, got_ref)) in g.iter().zip(&g_ref).enumerate() {
            let fd = central_diff(loss, &p0, which);
            assert!(
                rel_err(got, &fd) < 1e-3 && rel_err(got_ref, &fd) < 1e-3,
                "parameter {which}: {got:?} vs {fd:?}"
            );
            assert!(
                fd.iter().any(|v| *v != 0.0),
                "parameter {which}: no gradient at all"
            );
        }
    }
}
