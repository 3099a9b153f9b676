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

/// Features firing on fewer than this fraction of tokens (but some) are in the ultralow band.
pub const ULTRALOW_BELOW: f64 = 1e-4;

/// The density band of a feature: dead (never fires), ultralow (< 1e-4), dense (> 0.01), typical otherwise.
pub fn density_band(density: f64) -> &'static str {
    if density <= 0.0 {
        "dead"
    } else if density < ULTRALOW_BELOW {
        "ultralow"
    } else if density > DENSE_THRESHOLD {
        "dense"
    } else {
        "typical"
    }
}

/// The density bands in order.
pub const BANDS: [&str; 4] = ["dead", "ultralow", "typical", "dense"];

/// One density band: how many features, and their share of L0 (Σ density over the band / Σ density).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Band {
    pub features: u64,
    pub l0_share: f64,
}

/// Features and share of L0 per density band.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Bands {
    pub dead: Band,
    pub ultralow: Band,
    pub typical: Band,
    pub dense: Band,
}

impl Bands {
    pub fn from_densities(density: &[f64]) -> Bands {
        let total: f64 = density.iter().filter(|d| **d > 0.0).sum();
        let mut b = Bands::default();
        for &d in density {
            let band = match density_band(d) {
                "dead" => &mut b.dead,
                "ultralow" => &mut b.ultralow,
                "dense" => &mut b.dense,
                _ => &mut b.typical,
            };
            band.features += 1;
            if total > 0.0 && d > 0.0 {
                band.l0_share += d / total;
            }
        }
        b
    }
}

/// The high-frequency cluster of a density histogram (docs/metrics.md, "spike").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spike {
    /// Features in the cluster (density ≥ `min_density`).
    pub features: u64,
    /// The lower density edge of the cluster: the upper edge of the valley bin.
    pub min_density: f64,
    /// The centre density of the cluster's highest bin.
    pub peak_density: f64,
    /// The cluster's share of L0: Σ density over its features / Σ density over all.
    pub l0_share: f64,
    /// The cluster's features, densest first (at most [`SPIKE_LISTED`]).
    pub feature_ids: Vec<u32>,
}

/// Features listed in [`Spike::feature_ids`].
pub const SPIKE_LISTED: usize = 64;

/// Finds the high-frequency spike: on the histogram's log10 bins (width 0.25), a peak bin above the dense threshold
/// (lower edge ≥ log10 0.01) holding at least as many features as every bin to its right, separated from the
/// fullest bin to its left (the bulk's mode) by a valley bin holding at most half the peak's count, and a cluster of
/// at least 3 features and 0.5% of all features. The cluster is every feature with density at or above the valley
/// bin's upper edge. The spike may hold more features than the bulk (a very low penalty makes it so). None when
/// there is no such second mode: a unimodal histogram, however heavy its right tail, has no spike.
pub fn detect_spike(density: &[f64]) -> Option<Spike> {
    let h = DensityHistogram::from_densities(density);
    let c = &h.counts;
    let lo_edge = |i: usize| h.lo + h.width * i as f64;
    let dense_from = ((DENSE_THRESHOLD.log10() - h.lo) / h.width).ceil() as usize;
    let mut best: Option<Spike> = None;
    for peak in dense_from.max(1)..c.len() {
        // A local maximum (ties: the leftmost bin of a plateau) that nothing to its right outgrows.
        let left = c[peak - 1];
        if c[peak] == 0 || c[peak] <= left || c[peak + 1..].iter().any(|&n| n > c[peak]) {
            continue;
        }
        // The bulk's mode: the fullest bin left of the peak (the leftmost of equals).
        let main = (0..peak).max_by_key(|&i| (c[i], std::cmp::Reverse(i)))?;
        let Some((valley, vcount)) = (main + 1..peak)
            .map(|i| (i, c[i]))
            .min_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))
        else {
            continue;
        };
        if 2 * vcount > c[peak] || vcount >= c[main] {
            continue;
        }
        let min_density = 10f64.powf(lo_edge(valley + 1));
        let mut ids: Vec<u32> = (0..density.len() as u32)
            .filter(|&i| density[i as usize] >= min_density)
            .collect();
        let n = ids.len() as u64;
        if n < 3 || (n as f64) < 0.005 * density.len() as f64 {
            continue;
        }
        let total: f64 = density.iter().filter(|d| **d > 0.0).sum();
        let share: f64 = ids.iter().map(|&i| density[i as usize]).sum::<f64>() / total;
        ids.sort_by(|a, b| {
            density[*b as usize]
                .total_cmp(&density[*a as usize])
                .then(a.cmp(b))
        });
        ids.truncate(SPIKE_LISTED);
        let s = Spike {
            features: n,
            min_density,
            peak_density: 10f64.powf(lo_edge(peak) + h.width / 2.0),
            l0_share: share,
            feature_ids: ids,
        };
        // The largest qualifying second mode wins.
        if best.as_ref().is_none_or(|b| s.features > b.features) {
            best = Some(s);
        }
    }
    best
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
    /// Mean over tokens of cos(x, x̂) (tokens with ‖x‖ = 0 or ‖x̂‖ = 0 left out; null if all are).
    pub cossim: Option<f64>,
    /// Mean over tokens of ‖x̂‖ / ‖x‖ (tokens with ‖x‖ = 0 left out).
    pub l2_ratio: Option<f64>,
    /// Σ‖x̂‖² / Σ⟨x, x̂⟩ over tokens (1 unbiased, below 1 shrinkage).
    pub relative_reconstruction_bias: Option<f64>,
    /// SAELens / SAEBench explained variance: 1 − Σ_dims var(x − x̂) / Σ_dims var(x), variances over tokens.
    pub explained_variance: Option<f64>,
    /// Features and share of L0 per density band.
    pub bands: Bands,
    /// The high-frequency cluster, if the histogram has one.
    pub spike: Option<Spike>,
    pub mmcs: Option<f64>,
    pub recovered_fraction: Option<f64>,
    pub ce_clean: Option<f64>,
    pub ce_sae: Option<f64>,
    pub ce_zero: Option<f64>,
    pub loss_recovered: Option<f64>,
    pub delta_ce: Option<f64>,
    pub kl_div: Option<f64>,
    /// SAEBench's KL-div score: (KL_zero − KL_sae) / KL_zero.
    pub kl_score: Option<f64>,
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

/// The reconstruction sums of [`evaluate`], one row at a time, in f64: the squared error, the spread about the split's
/// mean, and the field's metrics (per-token cosines and norm ratios, the bias sums, the error's mean).
#[derive(Clone, Debug)]
struct ReconSums {
    n: usize,
    sse: f64,
    sst: f64,
    cos_sum: f64,
    cos_n: usize,
    ratio_sum: f64,
    ratio_n: usize,
    xh_sq: f64,
    x_dot: f64,
    err_sum: Vec<f64>,
}

/// The reconstruction metrics of docs/metrics.md, from [`ReconSums`].
#[derive(Clone, Copy, Debug, PartialEq)]
struct Recon {
    mse: f64,
    fvu: f64,
    cossim: Option<f64>,
    l2_ratio: Option<f64>,
    relative_reconstruction_bias: Option<f64>,
    explained_variance: Option<f64>,
}

impl ReconSums {
    fn new(d: usize) -> Self {
        ReconSums {
            n: 0,
            sse: 0.0,
            sst: 0.0,
            cos_sum: 0.0,
            cos_n: 0,
            ratio_sum: 0.0,
            ratio_n: 0,
            xh_sq: 0.0,
            x_dot: 0.0,
            err_sum: vec![0.0; d],
        }
    }

    /// Adds one token: input `x`, reconstruction `xh`, `mean` the split's mean input.
    fn add(&mut self, x: &[f32], xh: &[f32], mean: &[f64]) {
        let (mut xx, mut hh, mut xhd) = (0.0f64, 0.0f64, 0.0f64);
        for (j, (&xv, &hv)) in x.iter().zip(xh).enumerate() {
            let (xv, hv) = (xv as f64, hv as f64);
            self.sse += (xv - hv).powi(2);
            self.sst += (xv - mean[j]).powi(2);
            self.err_sum[j] += xv - hv;
            xx += xv * xv;
            hh += hv * hv;
            xhd += xv * hv;
        }
        self.n += 1;
        self.xh_sq += hh;
        self.x_dot += xhd;
        if xx > 0.0 {
            self.ratio_sum += (hh / xx).sqrt();
            self.ratio_n += 1;
            if hh > 0.0 {
                self.cos_sum += xhd / (xx * hh).sqrt();
                self.cos_n += 1;
            }
        }
    }

    fn finish(&self) -> Recon {
        let (n, d) = (self.n as f64, self.err_sum.len());
        let fvu = if self.sst > 0.0 {
            self.sse / self.sst
        } else {
            f64::NAN
        };
        // Σ_dims var(x − x̂) over tokens = (Σ‖e‖² − N‖ē‖²) / N; Σ_dims var(x) = Σ‖x − x̄‖² / N.
        let e_bar_sq: f64 = self.err_sum.iter().map(|e| (e / n).powi(2)).sum();
        let mean_of = |sum: f64, k: usize| (k > 0).then(|| sum / k as f64);
        Recon {
            mse: self.sse / (self.n * d) as f64,
            fvu,
            cossim: mean_of(self.cos_sum, self.cos_n),
            l2_ratio: mean_of(self.ratio_sum, self.ratio_n),
            relative_reconstruction_bias: (self.x_dot != 0.0).then(|| self.xh_sq / self.x_dot),
            explained_variance: (self.sst > 0.0)
                .then(|| 1.0 - (self.sse - n * e_bar_sq).max(0.0) / self.sst),
        }
    }
}

/// Evaluates `sae` on the evaluation split of `set`: one pass for the split's mean, one that encodes and decodes each
/// chunk once and accumulates every reconstruction and density sum.
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
    let mut sums = ReconSums::new(d);
    let (mut l0, mut l1) = (0.0f64, 0.0f64);
    let mut counts = vec![0u64; fsz];
    for (a, b) in chunks(rows) {
        let x = scaled(set, a..b, s);
        let f = sae.encode(&x, b - a);
        let xh = sae.decode(&f, b - a);
        for (xr, hr) in x.chunks(d).zip(xh.chunks(d)) {
            sums.add(xr, hr, &mean);
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
    let r = sums.finish();
    let (mmcs, recovered_fraction) = match GroundTruth::load(set.dir())? {
        Some(gt) if gt.d_in == d => {
            let (m, r) = mmcs(&gt, sae);
            (Some(m), Some(r))
        }
        _ => (None, None),
    };
    Ok(Metrics {
        mse: r.mse,
        l0: l0 / n as f64,
        l1: l1 / n as f64,
        fvu: r.fvu,
        fve: 1.0 - r.fvu,
        dead_fraction: density.iter().filter(|&&x| x == 0.0).count() as f64 / fsz as f64,
        dense_fraction: density.iter().filter(|&&x| x > DENSE_THRESHOLD).count() as f64
            / fsz as f64,
        density_histogram: DensityHistogram::from_densities(&density),
        cossim: r.cossim,
        l2_ratio: r.l2_ratio,
        relative_reconstruction_bias: r.relative_reconstruction_bias,
        explained_variance: r.explained_variance,
        bands: Bands::from_densities(&density),
        spike: detect_spike(&density),
        mmcs,
        recovered_fraction,
        ce_clean: None,
        ce_sae: None,
        ce_zero: None,
        loss_recovered: None,
        delta_ce: None,
        kl_div: None,
        kl_score: None,
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

    /// The reconstruction metrics of `x` and `xh` (rows of `d`), the mean taken over `x` as `evaluate` does.
    fn recon(d: usize, x: &[f32], xh: &[f32]) -> Recon {
        let n = x.len() / d;
        let mut mean = vec![0.0f64; d];
        for row in x.chunks(d) {
            mean.iter_mut()
                .zip(row)
                .for_each(|(m, v)| *m += *v as f64 / n as f64);
        }
        let mut sums = ReconSums::new(d);
        for (xr, hr) in x.chunks(d).zip(xh.chunks(d)) {
            sums.add(xr, hr, &mean);
        }
        sums.finish()
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn half_reconstruction_shrinks_without_turning() {
        let x = [1.0, 0.0, 0.0, 2.0, 3.0, 4.0];
        let xh: Vec<f32> = x.iter().map(|v| 0.5 * v).collect();
        let r = recon(2, &x, &xh);
        assert!(close(r.l2_ratio, 0.5), "{r:?}");
        assert!(close(r.cossim, 1.0), "{r:?}");
        // Σ 0.25‖x‖² / Σ 0.5‖x‖².
        assert!(close(r.relative_reconstruction_bias, 0.5), "{r:?}");
        // Σ‖e‖² = 0.25·(1 + 4 + 25) over 3 tokens × 2 dims.
        assert!((r.mse - 7.5 / 6.0).abs() < 1e-12, "{r:?}");
    }

    #[test]
    fn a_perfect_reconstruction_explains_everything() {
        let x = [1.0, -2.0, 0.5, 3.0, -1.0, 0.0];
        let r = recon(3, &x, &x);
        assert!(close(r.explained_variance, 1.0), "{r:?}");
        assert_eq!((r.mse, r.fvu), (0.0, 0.0));
        assert!(close(r.cossim, 1.0) && close(r.l2_ratio, 1.0), "{r:?}");
        assert!(close(r.relative_reconstruction_bias, 1.0), "{r:?}");
    }

    #[test]
    fn explained_variance_centres_the_error_and_fve_does_not() {
        // A constant offset: the error has no variance, so explained_variance = 1, while fvu = N‖c‖² / Σ‖x − x̄‖².
        let x = [1.0, 0.0, 3.0, 2.0];
        let xh = [1.5, -1.0, 3.5, 1.0];
        let r = recon(2, &x, &xh);
        assert!(close(r.explained_variance, 1.0), "{r:?}");
        // x̄ = (2, 1): Σ‖x − x̄‖² = 2 + 2 = 4; Σ‖e‖² = 2·(0.25 + 1) = 2.5.
        assert!((r.fvu - 2.5 / 4.0).abs() < 1e-12, "{r:?}");
        // One dimension, x = (1, 3), x̂ = 0: var(e) = var(x) = 1, so explained_variance = 0; fvu = 10 / 2.
        let r = recon(1, &[1.0, 3.0], &[0.0, 0.0]);
        assert!(close(r.explained_variance, 0.0), "{r:?}");
        assert!((r.fvu - 5.0).abs() < 1e-12, "{r:?}");
        // explained_variance = fve + N‖ē‖² / Σ‖x − x̄‖² = −4 + 2·4 / 2.
        assert!(close(r.explained_variance, 1.0 - r.fvu + 4.0), "{r:?}");
    }

    #[test]
    fn zero_norm_tokens_are_left_out_of_the_per_token_means() {
        // Token 1: ‖x‖ = 0, out of both means. Token 2: ‖x̂‖ = 0, ratio 0, out of the cosine. Token 3: ratio 2, cos 1.
        let x = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let xh = [1.0, 1.0, 0.0, 0.0, 0.0, 2.0];
        let r = recon(2, &x, &xh);
        assert!(close(r.l2_ratio, 1.0), "{r:?}");
        assert!(close(r.cossim, 1.0), "{r:?}");
        // Σ‖x̂‖² = 2 + 0 + 4, Σ⟨x, x̂⟩ = 0 + 0 + 2.
        assert!(close(r.relative_reconstruction_bias, 3.0), "{r:?}");
        // Orthogonal reconstruction: cosine 0, and no bias where Σ⟨x, x̂⟩ = 0; all-zero input: no per-token means.
        let r = recon(2, &[1.0, 0.0], &[0.0, 1.0]);
        assert!(
            close(r.cossim, 0.0) && r.relative_reconstruction_bias.is_none(),
            "{r:?}"
        );
        let r = recon(2, &[0.0; 4], &[1.0; 4]);
        assert!(r.cossim.is_none() && r.l2_ratio.is_none(), "{r:?}");
        assert!(r.explained_variance.is_none() && r.fvu.is_nan(), "{r:?}");
    }

    /// A ReLU dictionary with features ±e_j and decoder rows ±e_j / 2: it reconstructs x̂ = x / 2 exactly.
    fn half_dictionary(d: usize) -> Sae {
        use rand::SeedableRng;
        use saeperf_kernels::sae::{Arch, SaeCfg};
        let fsz = 2 * d;
        let cfg = SaeCfg::inference(d, fsz, Arch::Relu, None);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let mut s = Sae::init(cfg, vec![0.0; d], 1.0, &mut rng);
        s.w_enc = vec![0.0; d * fsz];
        s.w_dec = vec![0.0; fsz * d];
        for j in 0..d {
            s.w_enc[j * fsz + j] = 1.0;
            s.w_enc[j * fsz + d + j] = -1.0;
            s.w_dec[j * d + j] = 0.5;
            s.w_dec[(d + j) * d + j] = -0.5;
        }
        s
    }

    #[test]
    fn evaluate_writes_every_key_with_the_field_metrics() {
        use crate::data::actset::{self, Activations, NewSet};
        let dir = tempfile::tempdir().unwrap();
        // One training row, then four evaluation rows.
        let vals = [9.0, 9.0, 1.0, 0.0, 0.0, 2.0, 3.0, 4.0, -1.0, -1.0];
        actset::write(
            dir.path(),
            &NewSet {
                d_in: 2,
                n_train: 1,
                activations: Activations::F32(&vals),
                description: "test".into(),
                source: serde_json::json!({"kind": "synthetic"}),
                provenance: None,
            },
        )
        .unwrap();
        let set = ActivationSet::open(dir.path()).unwrap();
        let m = evaluate(&half_dictionary(2), &set).unwrap();
        assert!(close(m.l2_ratio, 0.5) && close(m.cossim, 1.0), "{m:?}");
        assert!(close(m.relative_reconstruction_bias, 0.5), "{m:?}");
        // Densities 0.5, 0.5, 0.25, 0.25: L0 1.5, all dense, no spike.
        assert!((m.l0 - 1.5).abs() < 1e-12, "{m:?}");
        assert_eq!(m.bands.dense.features, 4);
        assert!((m.bands.dense.l0_share - 1.0).abs() < 1e-12);
        assert_eq!(m.spike, None);
        assert_eq!((m.kl_score, m.mmcs), (None, None));
        let json = serde_json::to_value(&m).unwrap();
        let obj = json.as_object().unwrap();
        assert_eq!(obj.len(), 25, "{json}");
        for key in [
            "cossim",
            "l2_ratio",
            "relative_reconstruction_bias",
            "explained_variance",
            "bands",
            "spike",
            "kl_score",
        ] {
            assert!(obj.contains_key(key), "{key}");
        }
        assert!(json["spike"].is_null() && json["kl_score"].is_null());
        assert_eq!(json["bands"]["dense"]["features"], 4);
        assert_eq!(json["bands"]["dead"]["l0_share"], 0.0);
    }

    #[test]
    fn a_bimodal_histogram_has_a_spike_and_a_unimodal_one_none() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let mut lognormal = |centre: f64, n: usize| -> Vec<f64> {
            (0..n)
                .map(|_| {
                    let z: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
                    10f64.powf(centre + 0.3 * z).min(1.0)
                })
                .collect()
        };
        let mut d = lognormal(-3.0, 4000);
        d.extend(lognormal(-1.0, 300));
        let s = detect_spike(&d).expect("a spike");
        assert!((250..=330).contains(&s.features), "{s:?}");
        let want: f64 =
            d.iter().filter(|&&x| x >= s.min_density).sum::<f64>() / d.iter().sum::<f64>();
        assert!(
            (s.l0_share - want).abs() < 1e-12 && s.l0_share > 0.5,
            "{s:?}"
        );
        assert!(
            s.min_density > 0.01 && s.peak_density > s.min_density,
            "{s:?}"
        );
        assert_eq!(s.feature_ids.len(), SPIKE_LISTED);
        assert!(d[s.feature_ids[0] as usize] >= d[s.feature_ids[1] as usize]);
        // One mode, however heavy its right tail: no spike. All dead: none.
        assert_eq!(detect_spike(&lognormal(-2.0, 4000)), None);
        assert_eq!(detect_spike(&[0.0; 100]), None);
    }

    /// Densities at the centres of histogram bins holding `counts` (bin 0 starts at 10^-7, width 0.25).
    fn from_counts(counts: &[u64]) -> Vec<f64> {
        let mut d = Vec::new();
        for (i, &n) in counts.iter().enumerate() {
            d.extend(std::iter::repeat_n(
                10f64.powf(-7.0 + 0.25 * i as f64 + 0.125),
                n as usize,
            ));
        }
        d
    }

    #[test]
    fn a_spike_fuller_than_the_bulk_is_still_a_spike() {
        // The histogram of the suite's lm-prune-dense dictionary before pruning (λ 1, 2304 features, SmolLM2 layer
        // 15, 1000 steps): the cluster at density 0.1-0.18 holds more features than the bulk's mode.
        let mut counts = vec![0u64; 28];
        counts[9..26].copy_from_slice(&[
            1, 0, 1, 0, 0, 3, 6, 8, 24, 45, 149, 340, 335, 402, 249, 701, 40,
        ]);
        let s = detect_spike(&from_counts(&counts)).expect("a spike");
        assert_eq!(s.features, 741, "{s:?}");
        assert!((s.min_density - 0.1).abs() < 1e-12, "{s:?}");
        // A unimodal histogram whose mode is itself dense has no spike (the mode is a candidate peak, with no valley
        // between it and the fullest bin to its left).
        let mut one = vec![0u64; 28];
        one[17..26].copy_from_slice(&[10, 60, 200, 500, 900, 1000, 700, 300, 40]);
        assert_eq!(detect_spike(&from_counts(&one)), None);
        // Sparse ultralow bins far left do not make the whole dictionary a cluster.
        let mut sparse = vec![0u64; 28];
        sparse[9..14].copy_from_slice(&[1, 0, 1, 0, 0]);
        sparse[16..24].copy_from_slice(&[20, 80, 200, 400, 300, 150, 60, 10]);
        assert_eq!(detect_spike(&from_counts(&sparse)), None);
    }

    #[test]
    fn bands_count_features_and_split_l0() {
        let b = Bands::from_densities(&[0.0, 5e-5, 1e-3, 0.1, 0.2]);
        assert_eq!(
            (
                b.dead.features,
                b.ultralow.features,
                b.typical.features,
                b.dense.features
            ),
            (1, 1, 1, 2)
        );
        let total = 5e-5 + 1e-3 + 0.3;
        assert!((b.dense.l0_share - 0.3 / total).abs() < 1e-12);
        let sum = b.dead.l0_share + b.ultralow.l0_share + b.typical.l0_share + b.dense.l0_share;
        assert!((sum - 1.0).abs() < 1e-12);
    }

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
