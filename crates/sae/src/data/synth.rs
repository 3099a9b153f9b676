//! Synthetic activation sets with known ground truth: unit feature directions in superposition (more features than
//! dimensions), sparse non-negative coefficients with power-law firing frequencies, optional Gaussian noise.
//! Deterministic from the seed. The ground truth (directions and frequencies) is saved beside the data in
//! ground_truth.safetensors, so a dictionary's MMCS can be measured.

use super::actset::{self, Activations, Manifest, NewSet};
use anyhow::{ensure, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, StandardNormal};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const GROUND_TRUTH_FILE: &str = "ground_truth.safetensors";

/// The parameters of a synthetic set (all recorded in the manifest's source).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    pub d_in: usize,
    /// Ground-truth features (more than d_in: superposition).
    pub n_features: usize,
    pub n_train: usize,
    pub n_eval: usize,
    pub seed: u64,
    /// Expected number of active features per token.
    pub mean_active: f64,
    /// Feature i fires with probability ∝ (i + 1)^−zipf_exponent.
    pub zipf_exponent: f64,
    /// Standard deviation of the Gaussian noise added to each coordinate.
    pub noise: f32,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            d_in: 64,
            n_features: 512,
            n_train: 65_536,
            n_eval: 8_192,
            seed: 0,
            mean_active: 5.0,
            zipf_exponent: 0.5,
            noise: 0.0,
        }
    }
}

impl SynthConfig {
    fn validate(&self) -> Result<()> {
        ensure!(
            self.d_in > 0 && self.n_features > 0,
            "synthetic set: d_in and features must be positive"
        );
        ensure!(
            self.n_train > 0 && self.n_eval > 0,
            "synthetic set: train and eval token counts must be positive"
        );
        ensure!(
            self.mean_active > 0.0 && self.mean_active <= self.n_features as f64,
            "synthetic set: mean_active must lie in (0, features]"
        );
        ensure!(
            self.zipf_exponent.is_finite() && self.zipf_exponent >= 0.0,
            "synthetic set: zipf exponent must be ≥ 0"
        );
        ensure!(
            self.noise.is_finite() && self.noise >= 0.0,
            "synthetic set: noise must be ≥ 0"
        );
        Ok(())
    }

    /// Firing probability of each feature: power law scaled to sum to mean_active, capped at 1.
    pub fn frequencies(&self) -> Vec<f64> {
        let raw: Vec<f64> = (0..self.n_features)
            .map(|i| ((i + 1) as f64).powf(-self.zipf_exponent))
            .collect();
        let sum: f64 = raw.iter().sum();
        raw.iter()
            .map(|r| (r * self.mean_active / sum).min(1.0))
            .collect()
    }
}

/// The ground truth of a synthetic set.
pub struct GroundTruth {
    pub n_features: usize,
    pub d_in: usize,
    /// Unit directions [n_features, d_in].
    pub features: Vec<f32>,
    pub frequencies: Vec<f32>,
}

impl GroundTruth {
    /// Reads ground_truth.safetensors in `dir`, if there is one.
    pub fn load(dir: &Path) -> Result<Option<GroundTruth>> {
        let path = dir.join(GROUND_TRUTH_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let blob = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&blob).map_err(|e| {
            anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display())
        })?;
        let get = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let t = st
                .tensor(name)
                .map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e}", path.display()))?;
            ensure!(
                t.dtype() == Dtype::F32,
                "{}: tensor {name} must be f32",
                path.display()
            );
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((t.shape().to_vec(), v))
        };
        let (shape, features) = get("features")?;
        let (_, frequencies) = get("frequencies")?;
        ensure!(shape.len() == 2, "{}: features must be 2-D", path.display());
        Ok(Some(GroundTruth {
            n_features: shape[0],
            d_in: shape[1],
            features,
            frequencies,
        }))
    }
}

/// Generates the set described by `cfg` into `dir`.
pub fn synthesize(dir: &Path, cfg: &SynthConfig) -> Result<Manifest> {
    cfg.validate()?;
    let (d, m) = (cfg.d_in, cfg.n_features);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut features: Vec<f32> = (0..m * d)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    for row in features.chunks_mut(d) {
        let n = row
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE);
        row.iter_mut().for_each(|x| *x /= n);
    }
    let freq = cfg.frequencies();
    let n = cfg.n_train + cfg.n_eval;
    let noise = Normal::new(0.0f32, cfg.noise).context("noise distribution")?;
    let mut data = vec![0.0f32; n * d];
    for row in data.chunks_mut(d) {
        for (i, &p) in freq.iter().enumerate() {
            if rng.random::<f64>() < p {
                // Magnitudes uniform in [0.5, 1.5): clearly on when on.
                let a = 0.5 + rng.random::<f32>();
                for (x, g) in row.iter_mut().zip(&features[i * d..(i + 1) * d]) {
                    *x += a * g;
                }
            }
        }
        if cfg.noise > 0.0 {
            for x in row.iter_mut() {
                *x += noise.sample(&mut rng);
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let fbytes: Vec<u8> = features.iter().flat_map(|x| x.to_le_bytes()).collect();
    let pbytes: Vec<u8> = freq
        .iter()
        .flat_map(|x| (*x as f32).to_le_bytes())
        .collect();
    let mut views = BTreeMap::new();
    views.insert(
        "features".to_string(),
        TensorView::new(Dtype::F32, vec![m, d], &fbytes)?,
    );
    views.insert(
        "frequencies".to_string(),
        TensorView::new(Dtype::F32, vec![m], &pbytes)?,
    );
    let gt_path = dir.join(GROUND_TRUTH_FILE);
    saeperf_kernels::sae::write_atomic(&gt_path, &safetensors::serialize(&views, None)?)
        .with_context(|| format!("writing {}", gt_path.display()))?;
    let mut source = serde_json::to_value(cfg)?;
    source["kind"] = "synthetic".into();
    actset::write(
        dir,
        &NewSet {
            d_in: d,
            n_train: cfg.n_train,
            activations: Activations::F32(&data),
            description: format!(
                "synthetic: {m} unit features in {d} dimensions, ~{} active per token, power-law frequencies (exponent {}), noise {}",
                cfg.mean_active, cfg.zipf_exponent, cfg.noise
            ),
            source,
            provenance: None,
        },
    )
}

/// The embedded default set under `home` (made on first use, verified afterwards).
pub fn ensure_default(home: &Path) -> Result<PathBuf> {
    ensure_synth(home, &SynthConfig::default())
}

/// A synthetic set for `cfg` in `home`/sets/, keyed by the configuration; regenerated when missing or invalid.
pub fn ensure_synth(home: &Path, cfg: &SynthConfig) -> Result<PathBuf> {
    use sha2::Digest;
    let key = hex::encode(&sha2::Sha256::digest(serde_json::to_vec(cfg)?)[..6]);
    let dir = home
        .join("sets")
        .join(format!("synth-{}x{}-{key}", cfg.n_features, cfg.d_in));
    if dir.join(actset::MANIFEST_FILE).exists() {
        match actset::ActivationSet::open(&dir) {
            Ok(_) => return Ok(dir),
            Err(e) => tracing::warn!("regenerating the synthetic set: {e:#}"),
        }
    }
    tracing::info!("generating synthetic activation set in {}", dir.display());
    synthesize(&dir, cfg)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_sparse() {
        let base = std::env::temp_dir().join(format!("saeperf-synth-{}", std::process::id()));
        let cfg = SynthConfig {
            n_train: 500,
            n_eval: 100,
            ..Default::default()
        };
        let a = synthesize(&base.join("a"), &cfg).unwrap();
        let b = synthesize(&base.join("b"), &cfg).unwrap();
        assert_eq!(a.sha256, b.sha256);
        let c = synthesize(
            &base.join("c"),
            &SynthConfig {
                seed: 1,
                ..cfg.clone()
            },
        )
        .unwrap();
        assert_ne!(a.sha256, c.sha256);
        let gt = GroundTruth::load(&base.join("a")).unwrap().unwrap();
        assert_eq!((gt.n_features, gt.d_in), (512, 64));
        let f = cfg.frequencies();
        assert!((f.iter().sum::<f64>() - 5.0).abs() < 1e-9);
        assert!(f[0] > f[511]);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
