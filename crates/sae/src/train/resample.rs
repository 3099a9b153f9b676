//! The resampling policy (Towards Monosemanticity, appendix): which features are dead, which inputs their new
//! directions come from. The writes themselves are the backend's `resample` op.
//!
//! Dead = did not fire during the last `window` steps. The loss is computed on `sample` random training inputs, each
//! input gets a probability ∝ loss², and each dead feature draws an input (with replacement): its decoder row becomes
//! that input normalised. The op then sets the encoder column to 0.2 × the mean alive encoder norm × that direction,
//! the encoder bias to 0, and resets the Adam moments of everything it wrote.

use crate::data::actset::ActivationSet;
use anyhow::Result;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{weighted::WeightedIndex, Distribution};
use saeperf_kernels::{Activation, Backend, Params, Shape};

/// When each feature last fired.
pub struct DeadTracker {
    last_fired: Vec<Option<usize>>,
}

impl DeadTracker {
    pub fn new(d_sae: usize) -> Self {
        DeadTracker {
            last_fired: vec![None; d_sae],
        }
    }
    /// Records the firing counts of the batch at `step`.
    pub fn record(&mut self, fire_counts: &[u32], step: usize) {
        for (l, &c) in self.last_fired.iter_mut().zip(fire_counts) {
            if c > 0 {
                *l = Some(step);
            }
        }
    }
    /// Features that did not fire in the `window` steps before `step`.
    pub fn dead(&self, step: usize, window: usize) -> Vec<usize> {
        let since = step.saturating_sub(window);
        (0..self.last_fired.len())
            .filter(|&i| self.last_fired[i].is_none_or(|l| l < since))
            .collect()
    }
    /// Resampled features get a fresh window.
    pub fn revive(&mut self, features: &[usize], step: usize) {
        for &i in features {
            self.last_fired[i] = Some(step);
        }
    }
}

/// Resamples the `dead` features; returns how many were rewritten.
#[allow(clippy::too_many_arguments)]
pub fn resample_dead<B: Backend>(
    backend: &B,
    s: Shape,
    act: Activation,
    set: &ActivationSet,
    scale: f32,
    dead: &[usize],
    sample: usize,
    rng: &mut ChaCha8Rng,
    p: &mut Params<B::Buf>,
    m: &mut Params<B::Buf>,
    v: &mut Params<B::Buf>,
) -> Result<usize> {
    if dead.is_empty() {
        return Ok(0);
    }
    let be = |e: saeperf_kernels::BackendError| anyhow::anyhow!(e);
    let d = s.d_in;
    let train = set.train_rows();
    let rows: Vec<usize> = (0..sample)
        .map(|_| rng.random_range(train.clone()))
        .collect();
    let mut inputs = Vec::with_capacity(sample * d);
    let mut losses = Vec::with_capacity(sample);
    for chunk in rows.chunks(s.batch) {
        let cs = Shape::new(chunk.len(), d, s.d_sae);
        let mut x = set.gather_f32(chunk);
        x.iter_mut().for_each(|v| *v *= scale);
        let xb = backend.upload(&x).map_err(be)?;
        let mut f = backend.zeros(cs.batch * cs.d_sae).map_err(be)?;
        let mut xh = backend.zeros(cs.batch * d).map_err(be)?;
        backend.encode(cs, act, &xb, p, &mut f).map_err(be)?;
        backend.decode(cs, &f, p, &mut xh).map_err(be)?;
        losses.extend(backend.per_token_sq_err(cs, &xb, &xh).map_err(be)?);
        inputs.extend_from_slice(&x);
    }
    let weights: Vec<f64> = losses.iter().map(|l| (*l as f64).powi(2)).collect();
    let pick = WeightedIndex::new(&weights).ok();
    let mut chosen = Vec::with_capacity(dead.len());
    let mut dirs = Vec::with_capacity(dead.len() * d);
    for &feat in dead {
        let r = match &pick {
            Some(w) => w.sample(rng),
            None => rng.random_range(0..rows.len()),
        };
        let row = &inputs[r * d..(r + 1) * d];
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 && norm.is_finite() {
            chosen.push(feat);
            dirs.extend(row.iter().map(|x| x / norm));
        }
    }
    backend.resample(s, &chosen, &dirs, p, m, v).map_err(be)?;
    Ok(chosen.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_means_silent_for_the_window() {
        let mut t = DeadTracker::new(3);
        t.record(&[1, 0, 0], 0);
        t.record(&[0, 1, 0], 50);
        assert_eq!(t.dead(100, 60), vec![0, 2]);
        assert_eq!(t.dead(100, 200), vec![2]);
        t.revive(&[2], 100);
        assert_eq!(t.dead(120, 60), vec![0, 1]);
    }
}
