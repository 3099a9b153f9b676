//! Quality metrics of a dictionary on the evaluation split, with the exact definitions of docs/metrics.md, written as
//! metrics.json. All values are in the scaled units (activations × the dictionary's scaling factor).
//!
//! mse: per element; l0 / l1: per token; fvu: Σ‖x − x̂‖² / Σ‖x − x̄‖² with x̄ the split's mean; density: fraction of
//! evaluation tokens a feature fires on; dense: density > 0.01; histogram: log10(density) in bins of 0.25 from −7 to
//! 0 plus a separate dead count. mmcs / recovered_fraction only on synthetic sets; ce_* / loss_recovered / delta_ce /
//! kl_div only on sets harvested from a model.

use crate::data::actset::ActivationSet;
use crate::data::synth::GroundTruth;
use anyhow::{ensure, Result};
use saeperf_kernels::Sae;
use serde::{Deserialize, Serialize};

/// Features with density above this count as dense.
pub const DENSE_THRESHOLD: f64 = 0.01;
/// A ground-truth feature counts as recovered when some decoder row has cosine above this.
pub const RECOVERED_COSINE: f64 = 0.9;

/// Counts of features per bin of log10(density).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DensityHistogram {
    /// Left edge of the first bin (log10 density).
    pub lo: f64,
    /// Bin width (log10 units).
    pub width: f64,
    /// Features per bin; densities below `lo` go to the first bin.
    pub counts: Vec<u64>,
    /// Features that never fired.
    pub dead: u64,
}

impl DensityHistogram {
    pub fn from_densities(density: &[f64]) -> Self {
        let (lo, width, bins) = (-7.0, 0.25, 28usize);
        let mut counts = vec![0u64; bins];
        let mut dead = 0;
        for &d in density {
            if d <= 0.0 {
                dead += 1;
            } else {
                let b = ((d.log10() - lo) / width).floor();
                counts[(b.max(0.0) as usize).min(bins - 1)] += 1;
            }
        }
        DensityHistogram {
            lo,
            width,
            counts,
            dead,
        }
    }
}

/// metrics.json: every key is always written (null where it does not apply).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub mse: f64,
    pub l0: f64,
    pub l1: f64,
    pub fvu: f64,
    pub fve: f64,
    pub dead_fraction: f64,
    pub dense_fraction: f64,
    pub density_histogram: DensityHistogram,
    pub mmcs: Option<f64>,
    pub recovered_fraction: Option<f64>,
    pub ce_clean: Option<f64>,
    pub ce_sae: Option<f64>,
    pub ce_zero: Option<f64>,
    pub loss_recovered: Option<f64>,
    pub delta_ce: Option<f64>,
    pub kl_div: Option<f64>,
    pub tokens_per_sec: Option<f64>,
    pub wall_secs: Option<f64>,
}

impl Metrics {
    /// Writes metrics.json (pretty) to `path`.
    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        use anyhow::Context;
        saeperf_kernels::sae::write_atomic(path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Per-feature density on rows `rows` of the set (used for the evaluation metrics and for pruning).
pub fn feature_density(sae: &Sae, set: &ActivationSet, rows: std::ops::Range<usize>) -> Vec<f64> {
    let mut counts = vec![0u64; sae.cfg.d_sae];
    let n = rows.len();
    for (start, end) in chunks(rows) {
        let x = scaled(set, start..end, sae.cfg.scaling_factor);
        let f = sae.encode(&x, end - start);
        for row in f.chunks(sae.cfg.d_sae) {
            for (c, v) in counts.iter_mut().zip(row) {
                *c += (*v > 0.0) as u64;
            }
        }
    }
    counts.iter().map(|&c| c as f64 / n.max(1) as f64).collect()
}

const CHUNK: usize = 4096;

fn chunks(rows: std::ops::Range<usize>) -> impl Iterator<Item = (usize, usize)> {
    let end = rows.end;
    rows.step_by(CHUNK).map(move |s| (s, (s + CHUNK).min(end)))
}

fn scaled(set: &ActivationSet, rows: std::ops::Range<usize>, s: f32) -> Vec<f32> {
    let mut x = set.rows_f32(rows);
    x.iter_mut().for_each(|v| *v *= s);
    x
}

/// Evaluates `sae` on the evaluation split of `set`.
pub fn evaluate(sae: &Sae, set: &ActivationSet) -> Result<Metrics> {
    let (d, fsz) = (sae.cfg.d_in, sae.cfg.d_sae);
    ensure!(
        d == set.d_in(),
        "dictionary d_in {d} does not match activation set {} (d_in {})",
        set.dir().display(),
        set.d_in()
    );
    let rows = set.eval_rows();
    let n = rows.len();
    ensure!(
        n > 0,
        "activation set {} has an empty evaluation split",
        set.dir().display()
    );
    let s = sae.cfg.scaling_factor;
    // Pass 1: the mean of the split.
    let mut mean = vec![0.0f64; d];
    for (a, b) in chunks(rows.clone()) {
        for row in scaled(set, a..b, s).chunks(d) {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += *v as f64);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    // Pass 2: reconstructions.
    let (mut sse, mut sst, mut l0, mut l1) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut counts = vec![0u64; fsz];
    for (a, b) in chunks(rows) {
        let x = scaled(set, a..b, s);
        let f = sae.encode(&x, b - a);
        let xh = sae.decode(&f, b - a);
        for (xr, hr) in x.chunks(d).zip(xh.chunks(d)) {
            for j in 0..d {
                sse += ((xr[j] - hr[j]) as f64).powi(2);
                sst += (xr[j] as f64 - mean[j]).powi(2);
            }
        }
        for row in f.chunks(fsz) {
            for (c, v) in counts.iter_mut().zip(row) {
                if *v > 0.0 {
                    *c += 1;
                    l0 += 1.0;
                }
                l1 += *v as f64;
            }
        }
    }
    let density: Vec<f64> = counts.iter().map(|&c| c as f64 / n as f64).collect();
    let fvu = if sst > 0.0 { sse / sst } else { f64::NAN };
    let (mmcs, recovered_fraction) = match GroundTruth::load(set.dir())? {
        Some(gt) if gt.d_in == d => {
            let (m, r) = mmcs(&gt, sae);
            (Some(m), Some(r))
        }
        _ => (None, None),
    };
    Ok(Metrics {
        mse: sse / (n * d) as f64,
        l0: l0 / n as f64,
        l1: l1 / n as f64,
        fvu,
        fve: 1.0 - fvu,
        dead_fraction: density.iter().filter(|&&x| x == 0.0).count() as f64 / fsz as f64,
        dense_fraction: density.iter().filter(|&&x| x > DENSE_THRESHOLD).count() as f64
            / fsz as f64,
        density_histogram: DensityHistogram::from_densities(&density),
        mmcs,
        recovered_fraction,
        ce_clean: None,
        ce_sae: None,
        ce_zero: None,
        loss_recovered: None,
        delta_ce: None,
        kl_div: None,
        tokens_per_sec: None,
        wall_secs: None,
    })
}

/// Mean over ground-truth features of the max cosine similarity to any decoder row, and the fraction above 0.9.
pub fn mmcs(gt: &GroundTruth, sae: &Sae) -> (f64, f64) {
    let m = gt.n_features;
    let best = sae.max_cosine(&gt.features, m);
    let mean = best.iter().sum::<f64>() / m.max(1) as f64;
    let rec = best.iter().filter(|&&c| c > RECOVERED_COSINE).count() as f64 / m.max(1) as f64;
    (mean, rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bins() {
        let h = DensityHistogram::from_densities(&[0.0, 1.0, 0.5, 1e-9, 1e-7, 0.0101]);
        assert_eq!(h.dead, 1);
        assert_eq!(h.counts.len(), 28);
        assert_eq!(h.counts[27], 1); // 1.0 sits on the right edge and stays in the last bin
        assert_eq!(h.counts[26], 1); // 0.5: log10 −0.30 → 26.8
        assert_eq!(h.counts[0], 2); // 1e-9 clamps into the first bin, 1e-7 is its left edge
        assert_eq!(h.counts[20], 1); // log10(0.0101) ≈ −1.996 → bin 20
        assert_eq!(h.counts.iter().sum::<u64>() + h.dead, 6);
    }
}
