//! The field's dictionary formats (docs/formats.md): a saeperf dictionary exported to the layout another tool
//! loads, and other tools' dictionaries read as saeperf dictionaries.
//!
//! - [`saelens`]: SAELens' `cfg.json` + `sae_weights.safetensors`, the layout `SAE.load_from_disk` reads;
//! - [`dictionary_learning`]: saprmarks' dictionary_learning, `ae.pt` (a torch state dict) + `config.json`;
//! - [`sparsify`]: EleutherAI's sparsify, `cfg.json` + `sae.safetensors` (TopK only).
//!
//! saeperf keeps a dictionary in scaled units (inputs multiplied by `scaling_factor` before encoding). The other
//! tools have no such field, so an export folds the factor into the weights, as SAELens' trainer does before saving
//! ([`fold_scaling`]): the exported dictionary takes raw model activations and gives the same codes, FVU and L0.
//! The export also records the factor and the dictionary's saeperf configuration, so that reading it back restores
//! the dictionary in scaled units ([`unfold_scaling`]) and its metrics match the original's (to float rounding:
//! multiplying by the factor and dividing again changes a weight by at most one unit in the last place).

pub mod dictionary_learning;
pub mod saelens;
pub mod sparsify;

use std::path::Path;

use anyhow::{bail, Context, Result};
use saeperf_kernels::{Arch, Sae};

/// The layouts `runner export` writes and `runner eval` / `runner features` read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// saeperf's legacy directory (what `runner train` wrote before it wrote SAELens' layout): cfg.json with the
    /// training fields, weights in scaled units. Still read; no longer written.
    Saeperf,
    /// SAELens (`SAE.load_from_disk`).
    SaeLens,
    /// dictionary_learning (`utils.load_dictionary`).
    DictionaryLearning,
    /// sparsify (`SparseCoder.load_from_disk`).
    Sparsify,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Saeperf => "saeperf",
            Format::SaeLens => "SAELens",
            Format::DictionaryLearning => "dictionary_learning",
            Format::Sparsify => "sparsify",
        })
    }
}

/// Which layout `dir` holds, from its files (ae.pt: dictionary_learning; sae.safetensors: sparsify) and otherwise
/// its cfg.json's keys.
pub fn detect(dir: &Path) -> Result<Format> {
    let cfg_path = dir.join(saeperf_kernels::sae::CFG_FILE);
    if dir.join(dictionary_learning::WEIGHTS_FILE).exists() {
        return Ok(Format::DictionaryLearning);
    }
    if dir.join(sparsify::WEIGHTS_FILE).exists() {
        return Ok(Format::Sparsify);
    }
    if !cfg_path.exists() {
        bail!(
            "{}: no cfg.json, ae.pt or sae.safetensors: not a dictionary directory saeperf knows (saeperf's or \
             SAELens' cfg.json + sae_weights.safetensors, dictionary_learning's ae.pt + config.json, sparsify's \
             cfg.json + sae.safetensors)",
            dir.display()
        );
    }
    let cfg = read_json(&cfg_path)?;
    let obj = cfg
        .as_object()
        .with_context(|| format!("{}: cfg.json is not a JSON object", cfg_path.display()))?;
    // saeperf's own cfg.json always has these training fields; SAELens' never has activation_set_sha256.
    if obj.contains_key("activation_set_sha256") && obj.contains_key("scaling_factor") {
        Ok(Format::Saeperf)
    } else {
        Ok(Format::SaeLens)
    }
}

/// Writes a dictionary the way `runner train` and `runner bench` keep it: SAELens' layout ([`saelens::write`]),
/// folded to raw units, with the saeperf block that [`load`] reads back. SAELens loads the directory unpatched and
/// gives the codes and FVU saeperf reported; saeperf reads it back in scaled units.
pub fn save(sae: &Sae, dir: &Path) -> Result<()> {
    saelens::write(sae, dir, &saelens::Provenance::default())
}

/// Reads a dictionary in any layout [`detect`] knows; errors name the file and the key or tensor that is wrong.
pub fn load(dir: &Path) -> Result<Sae> {
    match detect(dir)? {
        Format::Saeperf => Ok(Sae::load(dir)?),
        Format::SaeLens => saelens::read(dir),
        Format::DictionaryLearning => dictionary_learning::read(dir),
        Format::Sparsify => sparsify::read(dir),
    }
}

/// The dictionary with its scaling factor folded into the weights: it takes raw activations (scaling factor 1) and
/// gives the same codes. W_enc·s, b_enc, W_dec/s, b_dec/s: encoding raw x, (x − b_dec/s)·(s·W_enc) + b_enc equals
/// (s·x − b_dec)·W_enc + b_enc, and decoding gives (f·W_dec + b_dec)/s, the reconstruction in raw units.
pub fn fold_scaling(sae: &Sae) -> Sae {
    let s = sae.cfg.scaling_factor;
    let mut out = sae.clone();
    out.w_enc.iter_mut().for_each(|w| *w *= s);
    out.w_dec.iter_mut().for_each(|w| *w /= s);
    out.b_dec.iter_mut().for_each(|b| *b /= s);
    out.cfg.scaling_factor = 1.0;
    out
}

/// The thresholds a JumpReLU or BatchTopK dictionary is written with (None for the others); the threshold compares
/// with pre-activations, which folding leaves unchanged, so it is written as it is.
fn threshold_of(sae: &Sae) -> Result<Option<Vec<f32>>> {
    match (&sae.threshold, sae.cfg.architecture.has_threshold()) {
        (Some(t), true) => Ok(Some(t.clone())),
        (None, false) => Ok(None),
        (None, true) => bail!(
            "the {} dictionary has no threshold to write",
            sae.cfg.architecture
        ),
        (Some(_), false) => bail!(
            "the {} dictionary carries a threshold its architecture does not use",
            sae.cfg.architecture
        ),
    }
}

/// The inverse of [`fold_scaling`]: a raw-unit dictionary put back in units scaled by `s`.
pub fn unfold_scaling(sae: &Sae, s: f32) -> Sae {
    let mut out = sae.clone();
    out.w_enc.iter_mut().for_each(|w| *w /= s);
    out.w_dec.iter_mut().for_each(|w| *w *= s);
    out.b_dec.iter_mut().for_each(|b| *b *= s);
    out.cfg.scaling_factor = s;
    out
}

/// A dictionary whose encoder does not subtract b_dec (SAELens' `apply_b_dec_to_input: false`) rewritten for
/// saeperf's encoder, which always does: x·W_enc + b_enc = (x − b_dec)·W_enc + (b_enc + b_dec·W_enc), so b_enc
/// absorbs b_dec·W_enc and the codes are unchanged. Gated's magnitude path sees W_enc ⊙ exp(r_mag), so b_mag
/// absorbs (b_dec·W_enc)·exp(r_mag).
pub fn absorb_b_dec(sae: &mut Sae) {
    let (d, f) = (sae.cfg.d_in, sae.cfg.d_sae);
    for j in 0..f {
        let dot: f64 = (0..d)
            .map(|i| sae.b_dec[i] as f64 * sae.w_enc[i * f + j] as f64)
            .sum();
        sae.b_enc[j] = (sae.b_enc[j] as f64 + dot) as f32;
        if let Some(g) = &mut sae.gated {
            g.b_mag[j] = (g.b_mag[j] as f64 + dot * (g.r_mag[j] as f64).exp()) as f32;
        }
    }
    sae.cfg.apply_b_dec_to_input = true;
}

/// A dictionary read from another layout, put back the way saeperf wrote it when the directory carries saeperf's
/// block (`saeperf.scaling_factor_folded` and `saeperf.cfg`, written by every export): the configuration restored
/// and the weights unfolded to scaled units. Without the block, `sae` as read (raw units).
fn restore_saeperf(sae: Sae, cfg: &serde_json::Value, path: &Path) -> Result<Sae> {
    let Some(block) = cfg.get("saeperf") else {
        return Ok(sae);
    };
    let p = path.display();
    let s = block["scaling_factor_folded"]
        .as_f64()
        .filter(|s| s.is_finite() && *s > 0.0)
        .with_context(|| {
            format!("{p}: saeperf.scaling_factor_folded is missing or not a positive number")
        })? as f32;
    let orig: saeperf_kernels::SaeCfg = serde_json::from_value(block["cfg"].clone())
        .with_context(|| format!("{p}: saeperf.cfg is not a saeperf configuration"))?;
    let c = &sae.cfg;
    // BatchTopK is saved for inference as JumpReLU, and its k is the saeperf block's alone.
    let k_of = |cfg: &saeperf_kernels::SaeCfg| (cfg.architecture == Arch::TopK).then_some(cfg.k);
    if (
        orig.d_in,
        orig.d_sae,
        orig.architecture.inference(),
        k_of(&orig),
    ) != (c.d_in, c.d_sae, c.architecture.inference(), k_of(c))
    {
        bail!(
            "{p}: saeperf.cfg (d_in {}, d_sae {}, {} k {:?}) disagrees with the file's own keys (d_in {}, d_sae {}, \
             {} k {:?})",
            orig.d_in,
            orig.d_sae,
            orig.architecture,
            orig.k,
            c.d_in,
            c.d_sae,
            c.architecture,
            c.k
        );
    }
    let mut restored = unfold_scaling(&sae, s);
    restored.cfg = orig;
    restored.cfg.scaling_factor = s;
    Ok(restored)
}

/// `v` [rows, cols] row-major, transposed to [cols, rows].
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// The `saeperf` object every export carries (the other tools ignore it): the folded factor and the configuration,
/// which [`restore_saeperf`] reads back.
fn saeperf_block(sae: &Sae) -> serde_json::Value {
    serde_json::json!({ "scaling_factor_folded": sae.cfg.scaling_factor, "cfg": sae.cfg })
}

/// Writes `value` as pretty JSON, atomically.
fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_vec_pretty(value).expect("a JSON value serialises");
    saeperf_kernels::sae::write_atomic(path, &text).with_context(|| format!("{}", path.display()))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// Reads tensor `name` of `shape` from a safetensors file as f32 (F32, F16 or BF16 on disk); every error names the
/// file and the tensor.
fn read_f32(
    st: &safetensors::SafeTensors,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>> {
    use safetensors::Dtype;
    let t = st.tensor(name).map_err(|_| {
        let have: Vec<String> = st.names().into_iter().map(String::from).collect();
        anyhow::anyhow!(
            "{}: no tensor {name} (it has {})",
            path.display(),
            if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            }
        )
    })?;
    if t.shape() != shape {
        bail!(
            "{}: tensor {name} has shape {:?}, cfg.json implies {shape:?}",
            path.display(),
            t.shape()
        );
    }
    let data = t.data();
    let v: Vec<f32> = match t.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => bail!(
            "{}: tensor {name} is {other:?}; saeperf reads F32, F16 or BF16",
            path.display()
        ),
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!(
            "{}: tensor {name} holds a non-finite value at index {i}",
            path.display()
        );
    }
    Ok(v)
}

/// Writes f32 tensors (name, shape, values) as one safetensors file, atomically.
fn write_f32(path: &Path, tensors: &[(&str, Vec<usize>, &[f32])]) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = std::collections::BTreeMap::new();
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        views.insert(
            name.to_string(),
            TensorView::new(Dtype::F32, shape.clone(), b)
                .with_context(|| format!("{}: tensor {name}", path.display()))?,
        );
    }
    let blob = safetensors::serialize(&views, None)
        .with_context(|| format!("{}: serialising", path.display()))?;
    saeperf_kernels::sae::write_atomic(path, &blob).with_context(|| format!("{}", path.display()))
}

#[cfg(test)]
pub(crate) mod testutil {
    use rand::{Rng, SeedableRng};
    use saeperf_kernels::{Arch, Sae, SaeCfg};

    pub fn dict(arch: Arch, s: f32) -> Sae {
        let cfg = SaeCfg {
            d_in: 6,
            d_sae: 10,
            architecture: arch,
            k: arch.uses_k().then_some(3),
            l1_coefficient: 1.5,
            scaling_factor: s,
            seed: 4,
            steps: 100,
            batch_size: 32,
            lr: 1e-3,
            activation_set_sha256: "ab".into(),
            hook_name: Some("blocks.15.hook_resid_pre".into()),
            pruned_features: 0,
            dtype: "float32".into(),
            apply_b_dec_to_input: true,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let b_dec: Vec<f32> = (0..6).map(|_| rng.random::<f32>() - 0.5).collect();
        let mut sae = Sae::init(cfg, b_dec, 0.7, &mut rng);
        sae.b_enc
            .iter_mut()
            .for_each(|b| *b = rng.random::<f32>() - 0.6);
        if arch == Arch::JumpRelu {
            sae.threshold = Some((0..10).map(|_| 0.05 + 0.3 * rng.random::<f32>()).collect());
        } else if arch.has_threshold() {
            // BatchTopK and Matryoshka: one θ for every feature.
            sae.threshold = Some(vec![0.21; 10]);
        }
        if let Some(g) = &mut sae.gated {
            g.r_mag
                .iter_mut()
                .for_each(|r| *r = rng.random::<f32>() - 0.5);
            g.b_mag
                .iter_mut()
                .for_each(|b| *b = rng.random::<f32>() - 0.4);
        }
        sae
    }

    pub fn x(n: usize, d: usize) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        (0..n * d)
            .map(|_| 3.0 * (rng.random::<f32>() - 0.5))
            .collect()
    }

    pub fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (p, q)) in a.iter().zip(b).enumerate() {
            assert!(
                (p - q).abs() <= tol * (1.0 + q.abs()),
                "{what}[{i}]: {p} vs {q}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{close, dict, x};
    use super::*;
    use saeperf_kernels::Arch;

    fn same(back: &Sae, sae: &Sae) {
        assert_eq!(back.cfg, sae.cfg);
        close(&back.w_enc, &sae.w_enc, 1e-6, "W_enc");
        close(&back.b_enc, &sae.b_enc, 1e-6, "b_enc");
        close(&back.w_dec, &sae.w_dec, 1e-6, "W_dec");
        close(&back.b_dec, &sae.b_dec, 1e-6, "b_dec");
        assert_eq!(
            back.threshold.is_some(),
            sae.threshold.is_some(),
            "threshold"
        );
        if let (Some(a), Some(b)) = (&back.threshold, &sae.threshold) {
            close(a, b, 1e-6, "threshold");
        }
        let raw = x(12, sae.cfg.d_in);
        close(&back.encode(&raw, 12), &sae.encode(&raw, 12), 1e-5, "codes");
    }

    #[test]
    fn every_export_reads_back_as_the_same_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        for arch in Arch::ALL {
            let sae = dict(arch, 1.7);
            let out = dir.path().join(format!("{arch}-dl"));
            dictionary_learning::write(&sae, &out, Some("m"), Some(15)).unwrap();
            assert_eq!(detect(&out).unwrap(), Format::DictionaryLearning);
            same(&load(&out).unwrap(), &sae);
            if arch == Arch::TopK {
                let out = dir.path().join("topk-sparsify");
                sparsify::write(&sae, &out).unwrap();
                assert_eq!(detect(&out).unwrap(), Format::Sparsify);
                same(&load(&out).unwrap(), &sae);
            } else {
                let e = sparsify::write(&sae, &dir.path().join(format!("{arch}-sparsify")))
                    .unwrap_err();
                assert!(e.to_string().contains("TopK dictionaries only"), "{e}");
            }
        }
    }

    /// Without saeperf's block (as the other tools write them) the files alone give the folded dictionary: raw
    /// inputs, the original's codes.
    #[test]
    fn the_files_alone_are_the_folded_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        let sae = dict(Arch::TopK, 1.7);
        let raw = x(12, 6);
        let scaled: Vec<f32> = raw.iter().map(|v| v * 1.7).collect();
        let want = sae.encode(&scaled, 12);
        for (name, cfg_file) in [("dl", "config.json"), ("sp", "cfg.json")] {
            let out = dir.path().join(name);
            if name == "dl" {
                dictionary_learning::write(&sae, &out, None, None).unwrap();
            } else {
                sparsify::write(&sae, &out).unwrap();
            }
            let path = out.join(cfg_file);
            let mut c: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            c.as_object_mut().unwrap().remove("saeperf");
            std::fs::write(&path, c.to_string()).unwrap();
            let got = load(&out).unwrap();
            assert_eq!(got.cfg.scaling_factor, 1.0);
            close(&got.encode(&raw, 12), &want, 1e-5, name);
        }
    }

    #[test]
    fn unreadable_directories_are_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let e = format!("{:#}", load(dir.path()).unwrap_err());
        assert!(e.contains("not a dictionary directory"), "{e}");
        let sae = dict(Arch::Relu, 1.0);
        let out = dir.path().join("dl");
        dictionary_learning::write(&sae, &out, None, None).unwrap();
        let path = out.join("config.json");
        // A class saeperf does not run (dictionary_learning's p-annealing trainer's) is named and refused.
        std::fs::write(&path, r#"{"trainer": {"dict_class": "AutoEncoderNew"}}"#).unwrap();
        let e = format!("{:#}", load(&out).unwrap_err());
        assert!(
            e.contains("AutoEncoderNew") && e.contains("config.json"),
            "{e}"
        );
        // A GatedAutoEncoder's config over a ReLU state dict: the missing tensor is named.
        std::fs::write(&path, r#"{"trainer": {"dict_class": "GatedAutoEncoder"}}"#).unwrap();
        let e = format!("{:#}", load(&out).unwrap_err());
        assert!(
            e.contains("no tensor gate_bias") && e.contains("ae.pt"),
            "{e}"
        );
        std::fs::write(&path, r#"{"trainer": {"dict_class": "AutoEncoder"}}"#).unwrap();
        std::fs::write(out.join("ae.pt"), b"not a zip").unwrap();
        let e = format!("{:#}", load(&out).unwrap_err());
        assert!(e.contains("ae.pt") && !e.contains('\n'), "{e}");
    }
}
