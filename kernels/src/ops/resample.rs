//! Resampling dead features (Towards Monosemanticity, appendix): the writes that give a dead feature a new direction.
//!
//! Contract: for each dead feature i with its chosen unit direction u_i (a high-loss input, normalised):
//! W_dec[i, :] = u_i, W_enc[:, i] = s·u_i (s = 0.2 × the mean norm of the alive encoder columns), b_enc[i] = 0, and the
//! Adam moments of every written weight and bias reset to 0. Choosing the inputs (probability ∝ loss²) is the
//! training loop's job; this op only writes. Bytes ≈ 4·3·n_dead·d·3.

use super::Shape;

/// The parameters and Adam moments a resample writes, borrowed mutably.
pub struct ResampleTargets<'a> {
    pub w_enc: &'a mut [f32],
    pub b_enc: &'a mut [f32],
    pub w_dec: &'a mut [f32],
    pub m_w_enc: &'a mut [f32],
    pub v_w_enc: &'a mut [f32],
    pub m_b_enc: &'a mut [f32],
    pub v_b_enc: &'a mut [f32],
    pub m_w_dec: &'a mut [f32],
    pub v_w_dec: &'a mut [f32],
}

/// Mean Euclidean norm of the encoder columns W_enc[:, i] of the features not in `dead` (0 when all are dead).
pub fn mean_alive_encoder_norm(s: Shape, w_enc: &[f32], dead: &[usize]) -> f32 {
    assert_eq!(w_enc.len(), s.d_in * s.d_sae, "resample: W_enc");
    let mut is_dead = vec![false; s.d_sae];
    dead.iter().for_each(|&i| is_dead[i] = true);
    let mut sq = vec![0.0f64; s.d_sae];
    for row in w_enc.chunks(s.d_sae.max(1)) {
        for (a, v) in sq.iter_mut().zip(row) {
            *a += (*v as f64) * (*v as f64);
        }
    }
    let alive: Vec<f64> = sq
        .iter()
        .zip(&is_dead)
        .filter(|(_, d)| !**d)
        .map(|(v, _)| v.sqrt())
        .collect();
    if alive.is_empty() {
        0.0
    } else {
        (alive.iter().sum::<f64>() / alive.len() as f64) as f32
    }
}

/// Plain loops. `dirs` holds one unit direction of length d per dead feature, in the order of `dead`.
pub fn reference(s: Shape, dead: &[usize], dirs: &[f32], enc_scale: f32, t: ResampleTargets) {
    let d = s.d_in;
    assert_eq!(dirs.len(), dead.len() * d, "resample: directions");
    for (n, &i) in dead.iter().enumerate() {
        assert!(i < s.d_sae, "resample: feature {i} out of range");
        let u = &dirs[n * d..(n + 1) * d];
        for j in 0..d {
            t.w_dec[i * d + j] = u[j];
            t.m_w_dec[i * d + j] = 0.0;
            t.v_w_dec[i * d + j] = 0.0;
            t.w_enc[j * s.d_sae + i] = enc_scale * u[j];
            t.m_w_enc[j * s.d_sae + i] = 0.0;
            t.v_w_enc[j * s.d_sae + i] = 0.0;
        }
        t.b_enc[i] = 0.0;
        t.m_b_enc[i] = 0.0;
        t.v_b_enc[i] = 0.0;
    }
}

/// The same writes; resampling is rare and touches n_dead·d elements, so the fast path is the plain one.
pub fn fast(s: Shape, dead: &[usize], dirs: &[f32], enc_scale: f32, t: ResampleTargets) {
    reference(s, dead, dirs, enc_scale, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_exactly_the_dead_features() {
        let s = Shape::new(1, 3, 4);
        let mut bufs: Vec<Vec<f32>> = vec![vec![1.0; 12], vec![1.0; 4], vec![1.0; 12]];
        let mut moments: Vec<Vec<f32>> = (0..6)
            .map(|k| vec![1.0; if k / 2 == 1 { 4 } else { 12 }])
            .collect();
        let enc_norm_before = mean_alive_encoder_norm(s, &bufs[0], &[2]);
        assert!((enc_norm_before - 3f32.sqrt()).abs() < 1e-6);
        let dirs = [0.0, 0.6, 0.8];
        let [w_enc, b_enc, w_dec] = &mut bufs[..] else {
            unreachable!()
        };
        let [mwe, vwe, mbe, vbe, mwd, vwd] = &mut moments[..] else {
            unreachable!()
        };
        reference(
            s,
            &[2],
            &dirs,
            0.5,
            ResampleTargets {
                w_enc,
                b_enc,
                w_dec,
                m_w_enc: mwe,
                v_w_enc: vwe,
                m_b_enc: mbe,
                v_b_enc: vbe,
                m_w_dec: mwd,
                v_w_dec: vwd,
            },
        );
        assert_eq!(&w_dec[6..9], &dirs);
        assert_eq!([w_enc[2], w_enc[6], w_enc[10]], [0.0, 0.3, 0.4]);
        assert_eq!(b_enc, &vec![1.0, 1.0, 0.0, 1.0]);
        assert_eq!(&mwd[6..9], &[0.0; 3]);
        assert_eq!(mwd[5], 1.0);
        assert_eq!(mbe[2], 0.0);
        assert_eq!(vwe[2], 0.0);
        assert_eq!(vwe[3], 1.0);
    }
}
