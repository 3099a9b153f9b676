//! A dictionary (a trained SAE): its configuration and parameters, initialisation, and save / load in the SAELens
//! layout (cfg.json + sae_weights.safetensors with W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in],
//! b_dec [d_in], and for JumpReLU and BatchTopK threshold [d_sae]; Gated names its gate bias b_gate (in place of
//! b_enc) and adds r_mag [d_sae] and b_mag [d_sae]; all f32).

use crate::ops::{self, Activation, Shape};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const CFG_FILE: &str = "cfg.json";
pub const WEIGHTS_FILE: &str = "sae_weights.safetensors";

/// Errors loading or saving a dictionary; each names the file.
#[derive(Debug, Error)]
pub enum SaeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid cfg.json: {message}")]
    Cfg { path: PathBuf, message: String },
    #[error("{path}: invalid weights: {message}")]
    Weights { path: PathBuf, message: String },
}

/// The architecture (docs/architectures.md). Serialised as SAELens names it ("standard" is ReLU + L1); SAELens saves
/// BatchTopK for inference as "jumprelu", and saeperf keeps "batchtopk" in its own block (formats::saelens).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "standard", alias = "relu")]
    Relu,
    #[serde(rename = "topk")]
    TopK,
    /// Per-feature thresholds θ: f = pre·H(pre − θ), an L0 penalty, θ trained through a pseudo-gradient.
    #[serde(rename = "jumprelu")]
    JumpRelu,
    /// The k·B largest activations of a training batch; one threshold θ at inference.
    #[serde(rename = "batchtopk")]
    BatchTopK,
    /// BatchTopK trained with nested prefix losses: every prefix of the dictionary reconstructs on its own.
    #[serde(rename = "matryoshka")]
    Matryoshka,
    /// A gate (π_gate > 0) picks the features, a magnitude path sharing W_enc (scaled by exp(r_mag)) sizes them.
    #[serde(rename = "gated")]
    Gated,
}

impl Arch {
    pub const ALL: [Arch; 6] = [
        Arch::Relu,
        Arch::TopK,
        Arch::JumpRelu,
        Arch::BatchTopK,
        Arch::Matryoshka,
        Arch::Gated,
    ];

    /// True when the dictionary carries a `threshold` tensor and encodes with it.
    pub fn has_threshold(self) -> bool {
        matches!(self, Arch::JumpRelu | Arch::BatchTopK | Arch::Matryoshka)
    }
    /// True when the architecture keeps k features per token (TopK) or on average per token (BatchTopK).
    pub fn uses_k(self) -> bool {
        matches!(self, Arch::TopK | Arch::BatchTopK | Arch::Matryoshka)
    }
    /// The architecture an inference-only reader (SAELens' loader) sees: BatchTopK encodes like JumpReLU.
    pub fn inference(self) -> Arch {
        match self {
            Arch::BatchTopK | Arch::Matryoshka => Arch::JumpRelu,
            a => a,
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    /// saeperf's names ("relu", "topk", "jumprelu", "batchtopk", "matryoshka", "gated"; SAELens' "standard" too).
    fn from_str(s: &str) -> Result<Arch, String> {
        match s {
            "standard" => Ok(Arch::Relu),
            _ => Arch::ALL
                .into_iter()
                .find(|a| a.to_string() == s)
                .ok_or_else(|| {
                    format!(
                        "unknown arch {s:?} (relu, topk, jumprelu, batchtopk, matryoshka or gated)"
                    )
                }),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::Relu => "relu",
            Arch::TopK => "topk",
            Arch::JumpRelu => "jumprelu",
            Arch::BatchTopK => "batchtopk",
            Arch::Matryoshka => "matryoshka",
            Arch::Gated => "gated",
        })
    }
}

/// cfg.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeCfg {
    pub d_in: usize,
    pub d_sae: usize,
    pub architecture: Arch,
    /// TopK: features kept per token; BatchTopK: features kept per token on average in a training batch.
    pub k: Option<usize>,
    /// λ of the sparsity penalty: L1 for ReLU, L0 for JumpReLU (0 for the TopK family).
    pub l1_coefficient: f32,
    /// Model activations are multiplied by this before encoding (so that E‖x‖² = d_in on the training data).
    pub scaling_factor: f32,
    pub seed: u64,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f32,
    /// SHA-256 of the activation set the dictionary was trained on.
    pub activation_set_sha256: String,
    #[serde(default)]
    pub hook_name: Option<String>,
    /// Features removed by pruning after training (0 when not pruned).
    #[serde(default)]
    pub pruned_features: usize,
    pub dtype: String,
    pub apply_b_dec_to_input: bool,
}

impl SaeCfg {
    /// A configuration with only what inference needs: scaling factor 1 (raw units), b_dec subtracted from the input,
    /// f32; the training fields zero and the activation set's digest empty (unknown). For dictionaries read from
    /// another tool's files, and for tests.
    pub fn inference(d_in: usize, d_sae: usize, architecture: Arch, k: Option<usize>) -> SaeCfg {
        SaeCfg {
            d_in,
            d_sae,
            architecture,
            k,
            l1_coefficient: 0.0,
            scaling_factor: 1.0,
            seed: 0,
            steps: 0,
            batch_size: 0,
            lr: 0.0,
            activation_set_sha256: String::new(),
            hook_name: None,
            pruned_features: 0,
            dtype: "float32".into(),
            apply_b_dec_to_input: true,
        }
    }

    /// The activation the encoder applies (for JumpReLU and BatchTopK the threshold comes after it).
    pub fn activation(&self) -> Activation {
        match self.architecture {
            // Gated encodes through ops::gated; its magnitude path is a ReLU.
            Arch::Relu | Arch::JumpRelu | Arch::BatchTopK | Arch::Matryoshka | Arch::Gated => {
                Activation::Relu
            }
            Arch::TopK => Activation::TopK {
                k: self.k.unwrap_or(0),
            },
        }
    }
    fn validate(&self, path: &Path) -> Result<(), SaeError> {
        let bad = |m: String| {
            Err(SaeError::Cfg {
                path: path.to_path_buf(),
                message: m,
            })
        };
        if self.d_in == 0 || self.d_sae == 0 {
            return bad(format!(
                "d_in {} and d_sae {} must be positive",
                self.d_in, self.d_sae
            ));
        }
        if self.architecture.uses_k() && !matches!(self.k, Some(k) if k > 0 && k <= self.d_sae) {
            return bad(format!(
                "{} needs 0 < k ≤ d_sae, got k {:?}",
                self.architecture, self.k
            ));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return bad(format!(
                "scaling_factor must be positive and finite, got {}",
                self.scaling_factor
            ));
        }
        Ok(())
    }
}

/// A dictionary: configuration plus parameters (row-major, SAELens shapes).
#[derive(Clone, Debug, PartialEq)]
pub struct Sae {
    pub cfg: SaeCfg,
    pub w_enc: Vec<f32>,
    pub b_enc: Vec<f32>,
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
    /// JumpReLU and BatchTopK: θ [d_sae] (positive), f = a·1[a > θ] on a = ReLU(pre); None for the others.
    pub threshold: Option<Vec<f32>>,
    /// Gated: the magnitude path's own parameters (b_enc holds b_gate); None for the others.
    pub gated: Option<GatedMag>,
}

/// A Gated dictionary's magnitude path: π_mag = (x − b_dec)·(W_enc ⊙ exp(r_mag)) + b_mag (ops::gated).
#[derive(Clone, Debug, PartialEq)]
pub struct GatedMag {
    pub r_mag: Vec<f32>,
    pub b_mag: Vec<f32>,
}

impl Sae {
    /// Decoder rows: random unit vectors; encoder: the decoder's transpose times `enc_scale`; b_enc 0; b_dec given.
    pub fn init(cfg: SaeCfg, b_dec: Vec<f32>, enc_scale: f32, rng: &mut impl Rng) -> Sae {
        let (d, fsz) = (cfg.d_in, cfg.d_sae);
        assert_eq!(b_dec.len(), d);
        let mut w_dec: Vec<f32> = (0..fsz * d).map(|_| StandardNormal.sample(rng)).collect();
        for row in w_dec.chunks_mut(d) {
            let n = row
                .iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
                .max(f32::MIN_POSITIVE);
            row.iter_mut().for_each(|x| *x /= n);
        }
        let mut w_enc = vec![0.0f32; d * fsz];
        for i in 0..fsz {
            for j in 0..d {
                w_enc[j * fsz + i] = enc_scale * w_dec[i * d + j];
            }
        }
        // Gated starts with the magnitude path equal to the gate's pre-activation (r_mag = 0, b_mag = 0).
        let gated = (cfg.architecture == Arch::Gated).then(|| GatedMag {
            r_mag: vec![0.0; fsz],
            b_mag: vec![0.0; fsz],
        });
        Sae {
            cfg,
            w_enc,
            b_enc: vec![0.0; fsz],
            w_dec,
            b_dec,
            threshold: None,
            gated,
        }
    }

    pub fn shape(&self, batch: usize) -> Shape {
        Shape::new(batch, self.cfg.d_in, self.cfg.d_sae)
    }

    /// Codes f [n, d_sae] for scaled inputs x [n, d_in] (fast CPU path).
    pub fn encode(&self, x: &[f32], n: usize) -> Vec<f32> {
        let mut f = vec![0.0; n * self.cfg.d_sae];
        if let Some(g) = &self.gated {
            let mut pi_gate = vec![0.0; n * self.cfg.d_sae];
            let w = ops::backward::Weights {
                w_enc: &self.w_enc,
                b_enc: &self.b_enc,
                w_dec: &self.w_dec,
                b_dec: &self.b_dec,
            };
            let m = ops::gated::Mag {
                r_mag: &g.r_mag,
                b_mag: &g.b_mag,
            };
            ops::gated::encode_fast(self.shape(n), x, w, m, &mut pi_gate, &mut f);
            return f;
        }
        ops::encode::fast(
            self.shape(n),
            self.cfg.activation(),
            x,
            &self.w_enc,
            &self.b_enc,
            &self.b_dec,
            &mut f,
        );
        if let Some(theta) = &self.threshold {
            ops::threshold::mask(self.shape(n), theta, &mut f);
        }
        f
    }

    /// Reconstructions x̂ [n, d_in] from codes f [n, d_sae] (fast CPU path), in scaled units.
    pub fn decode(&self, f: &[f32], n: usize) -> Vec<f32> {
        let mut xh = vec![0.0; n * self.cfg.d_in];
        ops::decode::fast(self.shape(n), f, &self.w_dec, &self.b_dec, &mut xh);
        xh
    }

    /// For each of the `n` directions in `dirs` ([n, d_in], row-major), the largest cosine similarity with any
    /// decoder row: the building block of MMCS against a ground truth.
    pub fn max_cosine(&self, dirs: &[f32], n: usize) -> Vec<f64> {
        let (d, fsz) = (self.cfg.d_in, self.cfg.d_sae);
        let unit = |v: &[f32]| -> Vec<f32> {
            v.chunks(d.max(1))
                .flat_map(|r| {
                    let norm = r
                        .iter()
                        .map(|x| x * x)
                        .sum::<f32>()
                        .sqrt()
                        .max(f32::MIN_POSITIVE);
                    r.iter().map(move |x| x / norm)
                })
                .collect()
        };
        let g = unit(dirs);
        let w = unit(&self.w_dec);
        let mut cos = vec![0.0f32; n * fsz];
        ops::gemm::sgemm(
            n,
            fsz,
            d,
            &g,
            ops::gemm::Trans::N,
            &w,
            ops::gemm::Trans::T,
            &mut cos,
            false,
        );
        cos.chunks(fsz.max(1))
            .map(|r| r.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b)) as f64)
            .collect()
    }

    /// A dictionary with only the features in `keep` (in that order).
    pub fn select_features(&self, keep: &[usize]) -> Sae {
        let (d, fsz) = (self.cfg.d_in, self.cfg.d_sae);
        let nk = keep.len();
        let mut w_enc = vec![0.0f32; d * nk];
        for j in 0..d {
            for (n, &i) in keep.iter().enumerate() {
                w_enc[j * nk + n] = self.w_enc[j * fsz + i];
            }
        }
        let w_dec = keep
            .iter()
            .flat_map(|&i| self.w_dec[i * d..(i + 1) * d].iter().copied())
            .collect();
        let mut cfg = self.cfg.clone();
        cfg.d_sae = nk;
        cfg.pruned_features += fsz - nk;
        if let Some(k) = cfg.k {
            cfg.k = Some(k.min(nk));
        }
        Sae {
            cfg,
            w_enc,
            b_enc: keep.iter().map(|&i| self.b_enc[i]).collect(),
            w_dec,
            b_dec: self.b_dec.clone(),
            threshold: self
                .threshold
                .as_ref()
                .map(|t| keep.iter().map(|&i| t[i]).collect()),
            gated: self.gated.as_ref().map(|g| GatedMag {
                r_mag: keep.iter().map(|&i| g.r_mag[i]).collect(),
                b_mag: keep.iter().map(|&i| g.b_mag[i]).collect(),
            }),
        }
    }

    /// Writes cfg.json and sae_weights.safetensors into `dir` (created if missing).
    pub fn save(&self, dir: &Path) -> Result<(), SaeError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SaeError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (d, fsz) = (self.cfg.d_in, self.cfg.d_sae);
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        // SAELens' Gated has no b_enc: the same vector is its gate bias b_gate.
        let b_name = if self.gated.is_some() {
            "b_gate"
        } else {
            "b_enc"
        };
        let mut data = vec![
            ("W_enc", vec![d, fsz], bytes(&self.w_enc)),
            (b_name, vec![fsz], bytes(&self.b_enc)),
            ("W_dec", vec![fsz, d], bytes(&self.w_dec)),
            ("b_dec", vec![d], bytes(&self.b_dec)),
        ];
        if let Some(t) = &self.threshold {
            data.push(("threshold", vec![fsz], bytes(t)));
        }
        if let Some(g) = &self.gated {
            data.push(("r_mag", vec![fsz], bytes(&g.r_mag)));
            data.push(("b_mag", vec![fsz], bytes(&g.b_mag)));
        }
        let wpath = dir.join(WEIGHTS_FILE);
        let werr = |m: String| SaeError::Weights {
            path: wpath.clone(),
            message: m,
        };
        let mut views = BTreeMap::new();
        for (name, shape, b) in &data {
            views.insert(
                name.to_string(),
                TensorView::new(Dtype::F32, shape.clone(), b).map_err(|e| werr(e.to_string()))?,
            );
        }
        let blob = safetensors::serialize(&views, None).map_err(|e| werr(e.to_string()))?;
        write_atomic(&wpath, &blob).map_err(io(&wpath))?;
        let cpath = dir.join(CFG_FILE);
        let json = serde_json::to_vec_pretty(&self.cfg).expect("cfg serialises");
        write_atomic(&cpath, &json).map_err(io(&cpath))?;
        Ok(())
    }

    /// Reads a dictionary saved by [`Sae::save`] (or by SAELens with the same tensors), checking every shape.
    pub fn load(dir: &Path) -> Result<Sae, SaeError> {
        let cpath = dir.join(CFG_FILE);
        let text = std::fs::read(&cpath).map_err(|source| SaeError::Io {
            path: cpath.clone(),
            source,
        })?;
        let cfg: SaeCfg = serde_json::from_slice(&text).map_err(|e| SaeError::Cfg {
            path: cpath.clone(),
            message: e.to_string(),
        })?;
        cfg.validate(&cpath)?;
        let wpath = dir.join(WEIGHTS_FILE);
        let blob = std::fs::read(&wpath).map_err(|source| SaeError::Io {
            path: wpath.clone(),
            source,
        })?;
        let werr = |m: String| SaeError::Weights {
            path: wpath.clone(),
            message: m,
        };
        let st = SafeTensors::deserialize(&blob).map_err(|e| werr(e.to_string()))?;
        let (d, fsz) = (cfg.d_in, cfg.d_sae);
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, SaeError> {
            let t = st
                .tensor(name)
                .map_err(|e| werr(format!("tensor {name}: {e}")))?;
            if t.dtype() != Dtype::F32 {
                return Err(werr(format!(
                    "tensor {name} is {:?}, expected F32",
                    t.dtype()
                )));
            }
            if t.shape() != shape {
                return Err(werr(format!(
                    "tensor {name} has shape {:?}, cfg.json implies {:?}",
                    t.shape(),
                    shape
                )));
            }
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(p) = v.iter().position(|x| !x.is_finite()) {
                return Err(werr(format!(
                    "tensor {name} holds a non-finite value at index {p}"
                )));
            }
            Ok(v)
        };
        let threshold = if cfg.architecture.has_threshold() {
            let t = get("threshold", &[fsz])?;
            if let Some(i) = t.iter().position(|v| *v < 0.0) {
                return Err(werr(format!(
                    "tensor threshold is negative at feature {i} ({})",
                    t[i]
                )));
            }
            Some(t)
        } else {
            None
        };
        let gated = if cfg.architecture == Arch::Gated {
            Some(GatedMag {
                r_mag: get("r_mag", &[fsz])?,
                b_mag: get("b_mag", &[fsz])?,
            })
        } else {
            None
        };
        let b_name = if gated.is_some() { "b_gate" } else { "b_enc" };
        Ok(Sae {
            w_enc: get("W_enc", &[d, fsz])?,
            b_enc: get(b_name, &[fsz])?,
            w_dec: get("W_dec", &[fsz, d])?,
            b_dec: get("b_dec", &[d])?,
            threshold,
            gated,
            cfg,
        })
    }
}

/// Writes through a temporary file in the same directory, then renames, so a reader never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::rng;

    fn cfg(d: usize, f: usize) -> SaeCfg {
        SaeCfg {
            d_in: d,
            d_sae: f,
            architecture: Arch::Relu,
            k: None,
            l1_coefficient: 1.0,
            scaling_factor: 2.0,
            seed: 1,
            steps: 10,
            batch_size: 4,
            lr: 1e-3,
            activation_set_sha256: "00".into(),
            hook_name: None,
            pruned_features: 0,
            dtype: "float32".into(),
            apply_b_dec_to_input: true,
        }
    }

    #[test]
    fn save_load_round_trip_and_shape_errors() {
        let dir = std::env::temp_dir().join(format!("saeperf-sae-test-{}", std::process::id()));
        let sae = Sae::init(cfg(5, 7), vec![0.5; 5], 1.0, &mut rng(1));
        sae.save(&dir).unwrap();
        assert_eq!(Sae::load(&dir).unwrap(), sae);
        // Gated: b_gate, r_mag and b_mag come back under SAELens' names.
        let mut gcfg = cfg(5, 7);
        gcfg.architecture = Arch::Gated;
        let mut gated = Sae::init(gcfg, vec![0.5; 5], 1.0, &mut rng(3));
        gated.gated.as_mut().unwrap().r_mag[2] = 0.25;
        gated.b_enc[1] = -0.5;
        let gdir = dir.join("gated");
        gated.save(&gdir).unwrap();
        assert_eq!(Sae::load(&gdir).unwrap(), gated);
        let blob = std::fs::read(gdir.join(WEIGHTS_FILE)).unwrap();
        let names = SafeTensors::deserialize(&blob).unwrap().names().len();
        assert_eq!(names, 6, "W_enc, b_gate, r_mag, b_mag, W_dec, b_dec");
        std::fs::remove_dir_all(&gdir).unwrap();
        // A cfg that disagrees with the tensors is refused with the file named.
        let mut c = sae.cfg.clone();
        c.d_sae = 8;
        std::fs::write(dir.join(CFG_FILE), serde_json::to_vec(&c).unwrap()).unwrap();
        let err = Sae::load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("sae_weights.safetensors") && err.contains("shape"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn select_features_keeps_columns_and_rows() {
        let sae = Sae::init(cfg(3, 4), vec![0.0; 3], 1.0, &mut rng(2));
        let p = sae.select_features(&[1, 3]);
        assert_eq!(p.cfg.d_sae, 2);
        assert_eq!(p.cfg.pruned_features, 2);
        assert_eq!(&p.w_dec[3..6], &sae.w_dec[9..12]);
        assert_eq!(p.w_enc[1], sae.w_enc[3]);
        assert_eq!(p.w_enc[2], sae.w_enc[4 + 1]);
    }
}
