//! AuxK: the auxiliary loss that revives dead latents of TopK-family dictionaries (Gao et al. 2024;
//! docs/architectures.md, "AuxK").
//!
//! A latent is dead when it has not fired for a window of steps. The residual e = x − x̂ (a constant: no gradient
//! flows through x̂) is reconstructed from each token's top k_aux dead latents of a = ReLU(pre), without b_dec:
//! ê_b = Σ_{i ∈ top} a_bi · W_dec[i]. loss_aux = α · min(n_dead / k_aux, 1) · (1/B) · Σ_b ‖ê_b − e_b‖².
//! Its gradients are *added* to the main loss's: ∂W_dec[i] += a_bi·∂ê_b, and through ∂pre_bi = ⟨∂ê_b, W_dec[i]⟩ to
//! W_enc, b_enc and (through x − b_dec) b_dec, with ∂ê_b = 2·α·scale·(ê_b − e_b)/B.
//! Contract: a [B, F], dead features, x, x̂ [B, d], W_enc, W_dec, b_dec, k_aux, α → grads (accumulated), loss_aux.
//! FLOPs ≈ 6·d per selected pair plus the selection over dead latents; bytes 4·(B·n_dead + pairs·d).

use super::backward::{GradsMut, Weights};
use super::Shape;
use rayon::prelude::*;

/// What the op reads besides the weights.
#[derive(Clone, Copy)]
pub struct AuxInputs<'a> {
    pub a: &'a [f32],
    pub dead: &'a [usize],
    pub x: &'a [f32],
    pub xhat: &'a [f32],
    pub k_aux: usize,
    pub coeff: f32,
}

fn check(s: Shape, i: &AuxInputs, w: &Weights, g: &GradsMut) {
    assert_eq!(i.a.len(), s.batch * s.d_sae, "auxk: a");
    assert_eq!(i.x.len(), s.batch * s.d_in, "auxk: x");
    assert_eq!(i.xhat.len(), s.batch * s.d_in, "auxk: x̂");
    assert!(
        i.dead.iter().all(|&f| f < s.d_sae),
        "auxk: dead feature ≥ d_sae"
    );
    assert_eq!(w.w_enc.len(), s.d_in * s.d_sae, "auxk: W_enc");
    assert_eq!(w.w_dec.len(), s.d_sae * s.d_in, "auxk: W_dec");
    assert_eq!(w.b_dec.len(), s.d_in, "auxk: b_dec");
    assert_eq!(g.w_enc.len(), s.d_in * s.d_sae, "auxk: ∂W_enc");
    assert_eq!(g.b_enc.len(), s.d_sae, "auxk: ∂b_enc");
    assert_eq!(g.w_dec.len(), s.d_sae * s.d_in, "auxk: ∂W_dec");
    assert_eq!(g.b_dec.len(), s.d_in, "auxk: ∂b_dec");
}

/// The scale min(n_dead / k_aux, 1) (0 when nothing is dead or k_aux is 0).
fn scale(i: &AuxInputs) -> f32 {
    if i.k_aux == 0 || i.dead.is_empty() {
        0.0
    } else {
        (i.dead.len() as f32 / i.k_aux as f32).min(1.0)
    }
}

/// One token's selection: its top k_aux positive dead latents (value desc, index asc), as (feature, value).
fn select(s: Shape, i: &AuxInputs, b: usize) -> Vec<(usize, f32)> {
    let row = &i.a[b * s.d_sae..(b + 1) * s.d_sae];
    let mut c: Vec<(usize, f32)> = i
        .dead
        .iter()
        .map(|&f| (f, row[f]))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    c.sort_by(|p, q| q.1.total_cmp(&p.1).then(p.0.cmp(&q.0)));
    c.truncate(i.k_aux);
    c
}

/// One token's work: its selection, ∂ê_b and the ∂pre of each selected pair; and its share of the loss.
struct Token {
    sel: Vec<(usize, f32)>,
    dehat: Vec<f32>,
    dpre: Vec<f32>,
    loss: f64,
}

fn token(s: Shape, i: &AuxInputs, w: &Weights, sc: f32, b: usize) -> Token {
    let d = s.d_in;
    let sel = select(s, i, b);
    let mut ehat = vec![0.0f32; d];
    for &(f, v) in &sel {
        for j in 0..d {
            ehat[j] += v * w.w_dec[f * d + j];
        }
    }
    let k = 2.0 * i.coeff * sc / s.batch.max(1) as f32;
    let mut loss = 0.0f64;
    let mut dehat = vec![0.0f32; d];
    for j in 0..d {
        let r = ehat[j] - (i.x[b * d + j] - i.xhat[b * d + j]);
        loss += (r as f64).powi(2);
        dehat[j] = k * r;
    }
    let dpre = sel
        .iter()
        .map(|&(f, _)| (0..d).map(|j| dehat[j] * w.w_dec[f * d + j]).sum())
        .collect();
    Token {
        sel,
        dehat,
        dpre,
        loss: loss * (i.coeff * sc) as f64 / s.batch.max(1) as f64,
    }
}

/// Adds one token's gradients, in a fixed order.
fn add(s: Shape, i: &AuxInputs, w: &Weights, t: &Token, b: usize, g: &mut GradsMut) {
    let (d, fs) = (s.d_in, s.d_sae);
    for (&(f, v), &dp) in t.sel.iter().zip(&t.dpre) {
        for j in 0..d {
            g.w_dec[f * d + j] += v * t.dehat[j];
            g.w_enc[j * fs + f] += (i.x[b * d + j] - w.b_dec[j]) * dp;
            g.b_dec[j] -= w.w_enc[j * fs + f] * dp;
        }
        g.b_enc[f] += dp;
    }
}

/// Plain: token after token.
pub fn reference(s: Shape, i: AuxInputs, w: Weights, mut g: GradsMut) -> f64 {
    check(s, &i, &w, &g);
    let sc = scale(&i);
    if sc == 0.0 {
        return 0.0;
    }
    let mut loss = 0.0;
    for b in 0..s.batch {
        let t = token(s, &i, &w, sc, b);
        loss += t.loss;
        add(s, &i, &w, &t, b, &mut g);
    }
    loss
}

/// Tokens' selections and dot products in parallel, then the additions in token order (deterministic, and the
/// same sums as the reference).
pub fn fast(s: Shape, i: AuxInputs, w: Weights, mut g: GradsMut) -> f64 {
    check(s, &i, &w, &g);
    let sc = scale(&i);
    if sc == 0.0 {
        return 0.0;
    }
    let toks: Vec<Token> = (0..s.batch)
        .into_par_iter()
        .map(|b| token(s, &i, &w, sc, b))
        .collect();
    let mut loss = 0.0;
    for (b, t) in toks.iter().enumerate() {
        loss += t.loss;
        add(s, &i, &w, t, b, &mut g);
    }
    loss
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;

    fn setup(seed: u64, b: usize, d: usize, fsz: usize) -> [Vec<f32>; 7] {
        let (c, mut r) = case(seed, Shape::new(b, d, fsz), 0.3);
        let xhat = randn(&mut r, b * d, 0.5);
        [c.x, c.w_enc, c.b_enc, c.w_dec, c.b_dec, xhat, c.a]
    }

    fn zeros(d: usize, fsz: usize) -> [Vec<f32>; 4] {
        [
            vec![0.0; d * fsz],
            vec![0.0; fsz],
            vec![0.0; fsz * d],
            vec![0.0; d],
        ]
    }

    fn run(
        s: Shape,
        p: &[Vec<f32>; 7],
        dead: &[usize],
        k_aux: usize,
        fast_path: bool,
    ) -> ([Vec<f32>; 4], f64) {
        let [x, w_enc, b_enc, w_dec, b_dec, xhat, a] = p;
        let mut g = zeros(s.d_in, s.d_sae);
        let [g0, g1, g2, g3] = &mut g;
        let i = AuxInputs {
            a,
            dead,
            x,
            xhat,
            k_aux,
            coeff: 1.0 / 32.0,
        };
        let w = Weights {
            w_enc,
            b_enc,
            w_dec,
            b_dec,
        };
        let gm = GradsMut {
            w_enc: g0,
            b_enc: g1,
            w_dec: g2,
            b_dec: g3,
        };
        let l = if fast_path {
            fast(s, i, w, gm)
        } else {
            reference(s, i, w, gm)
        };
        (g, l)
    }

    #[test]
    fn fast_matches_reference_and_touches_only_dead_latents() {
        for &(b, d, fsz) in SHAPES {
            let s = Shape::new(b, d, fsz);
            let p = setup(17, b, d, fsz);
            let dead: Vec<usize> = (0..fsz).filter(|i| i % 3 == 0).collect();
            for k_aux in [0, 1, 4] {
                let (gr, lr) = run(s, &p, &dead, k_aux, false);
                let (gf, lf) = run(s, &p, &dead, k_aux, true);
                assert_eq!(gr, gf, "{s:?} k_aux {k_aux}");
                assert_eq!(lr, lf);
                for f in 0..fsz {
                    if f % 3 != 0 {
                        assert!(gf[1][f] == 0.0, "live latent {f} got a gradient");
                    }
                }
            }
        }
    }

    /// The gradient of the auxiliary loss (x̂ held fixed, the selection fixed) against central differences of the
    /// loss recomputed in f64.
    #[test]
    fn gradients_match_finite_differences() {
        let (b, d, fsz) = (6, 4, 10);
        let s = Shape::new(b, d, fsz);
        let p = setup(18, b, d, fsz);
        let dead = [0usize, 2, 3, 5, 7, 8, 9];
        let k_aux = 3;
        let (g, l) = run(s, &p, &dead, k_aux, true);
        let [x, _, _, _, _, xhat, _] = &p;
        let sc = (dead.len() as f64 / k_aux as f64).min(1.0);
        let loss = |q: &[Vec<f64>; 4]| -> f64 {
            let (we, be, wd, bd) = (&q[0], &q[1], &q[2], &q[3]);
            let mut l = 0.0;
            for bb in 0..b {
                let mut c: Vec<(usize, f64)> = dead
                    .iter()
                    .map(|&f| {
                        let pre = be[f]
                            + (0..d)
                                .map(|j| (x[bb * d + j] as f64 - bd[j]) * we[j * fsz + f])
                                .sum::<f64>();
                        (f, pre.max(0.0))
                    })
                    .filter(|(_, v)| *v > 0.0)
                    .collect();
                c.sort_by(|p, q| q.1.total_cmp(&p.1).then(p.0.cmp(&q.0)));
                c.truncate(k_aux);
                for j in 0..d {
                    let eh: f64 = c.iter().map(|&(f, v)| v * wd[f * d + j]).sum();
                    let e = x[bb * d + j] as f64 - xhat[bb * d + j] as f64;
                    l += (eh - e).powi(2) * sc / 32.0 / b as f64;
                }
            }
            l
        };
        let to64 = |v: &[f32]| v.iter().map(|x| *x as f64).collect::<Vec<f64>>();
        let p0 = [to64(&p[1]), to64(&p[2]), to64(&p[3]), to64(&p[4])];
        assert!(
            (loss(&p0) - l).abs() < 1e-5 * l.max(1e-6),
            "{} vs {l}",
            loss(&p0)
        );
        for (which, got) in g.iter().enumerate() {
            let fd = central_diff(loss, &p0, which);
            assert!(
                rel_err(got, &fd) < 1e-3,
                "parameter {which}: {got:?} vs {fd:?}"
            );
        }
    }
}
