//! SAELens' dictionary directory: `cfg.json` + `sae_weights.safetensors` with W_enc [d_in, d_sae], b_enc [d_sae],
//! W_dec [d_sae, d_in], b_dec [d_in] (and `threshold` [d_sae] for "jumprelu"; b_gate in place of b_enc, with r_mag
//! and b_mag [d_sae], for "gated"), as `SAE.save_model` writes it and
//! `SAE.load_from_disk` reads it (docs/formats.md, "SAELens"). BatchTopK is written as SAELens saves it for
//! inference: a "jumprelu" dictionary whose thresholds all equal the learned θ; the saeperf block keeps "batchtopk".
//!
//! Writing: the weights folded to raw units ([`super::fold_scaling`]); the keys SAELens' own `save_model` writes
//! (`architecture` by its registry name, `dtype` by its torch name, `metadata.sae_lens_version`, so that its loader
//! takes the current path; never a null where it expects a string); and a `saeperf` object, which SAELens ignores,
//! with the folded factor and the saeperf configuration.
//!
//! Reading: unknown keys are tolerated; `apply_b_dec_to_input: false` is honoured (b_dec absorbed into b_enc,
//! [`super::absorb_b_dec`]); the training fields SAELens does not have are left unknown (zero, an empty set
//! digest); what saeperf cannot run exactly (another architecture, activation normalisation whose factor is not in
//! the directory, TopK activations rescaled by decoder norm) is refused in one line naming the key.

use std::path::Path;

use anyhow::{bail, Context, Result};
use saeperf_kernels::sae::{CFG_FILE, WEIGHTS_FILE};
use saeperf_kernels::{Arch, Sae, SaeCfg};
use serde_json::{json, Value};

/// The SAELens version whose `save_model` layout the export follows (checked with its loader; docs/formats.md).
pub const SAE_LENS_VERSION: &str = "6.54.12";

/// Where a dictionary's inputs came from, for SAELens' `metadata` (keys left out when unknown).
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// The model's name as SAELens and TransformerLens know it (e.g. `HuggingFaceTB/SmolLM2-135M`).
    pub model_name: Option<String>,
    /// The hook point, e.g. `blocks.15.hook_resid_pre` (default: the dictionary's own `hook_name`).
    pub hook_name: Option<String>,
}

/// Writes `sae` into `out` (created if missing) in SAELens' layout, folded to raw units.
pub fn write(sae: &Sae, out: &Path, prov: &Provenance) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    let folded = super::fold_scaling(sae);
    let (d, f) = (sae.cfg.d_in, sae.cfg.d_sae);
    let mut cfg = json!({
        "architecture": match sae.cfg.architecture.inference() {
            Arch::Relu => "standard",
            Arch::TopK => "topk",
            Arch::JumpRelu | Arch::BatchTopK | Arch::Matryoshka => "jumprelu",
            Arch::Gated => "gated",
        },
        "d_in": d,
        "d_sae": f,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": true,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": { "sae_lens_version": SAE_LENS_VERSION },
        "saeperf": super::saeperf_block(sae),
    });
    if sae.cfg.architecture == Arch::TopK {
        cfg["k"] = json!(sae.cfg.k);
        cfg["rescale_acts_by_decoder_norm"] = json!(false);
    }
    let hook = prov.hook_name.clone().or_else(|| sae.cfg.hook_name.clone());
    if let Some(h) = hook {
        cfg["metadata"]["hook_name"] = json!(h);
    }
    if let Some(m) = &prov.model_name {
        cfg["metadata"]["model_name"] = json!(m);
    }
    let b_name = if folded.gated.is_some() {
        "b_gate"
    } else {
        "b_enc"
    };
    let mut tensors: Vec<(&str, Vec<usize>, &[f32])> = vec![
        ("W_enc", vec![d, f], &folded.w_enc),
        (b_name, vec![f], &folded.b_enc),
        ("W_dec", vec![f, d], &folded.w_dec),
        ("b_dec", vec![d], &folded.b_dec),
    ];
    let threshold = super::threshold_of(sae)?;
    if let Some(t) = &threshold {
        tensors.push(("threshold", vec![f], t));
    }
    // Folding leaves the magnitude path as it is: π_mag = z·exp(r_mag) + b_mag with z unchanged.
    match (&folded.gated, sae.cfg.architecture == Arch::Gated) {
        (Some(g), true) => {
            tensors.push(("r_mag", vec![f], &g.r_mag));
            tensors.push(("b_mag", vec![f], &g.b_mag));
        }
        (None, false) => {}
        _ => bail!(
            "the {} dictionary's magnitude path (r_mag, b_mag) does not match its architecture",
            sae.cfg.architecture
        ),
    }
    super::write_f32(&out.join(WEIGHTS_FILE), &tensors)?;
    super::write_json(&out.join(CFG_FILE), &cfg)
}

/// Reads a SAELens directory (see the module doc for what is tolerated and what is refused).
pub fn read(dir: &Path) -> Result<Sae> {
    let cpath = dir.join(CFG_FILE);
    let cfg = super::read_json(&cpath)?;
    let p = cpath.display();
    let uint = |key: &str| -> Result<usize> {
        match cfg.get(key).and_then(Value::as_u64) {
            Some(v) if v > 0 => Ok(v as usize),
            _ => bail!(
                "{p}: key {key} is missing or not a positive integer (got {})",
                cfg.get(key).unwrap_or(&Value::Null)
            ),
        }
    };
    let (d, f) = (uint("d_in")?, uint("d_sae")?);
    let arch = match cfg.get("architecture").and_then(Value::as_str) {
        Some("standard") | None => Arch::Relu,
        Some("topk") => Arch::TopK,
        Some("jumprelu") => Arch::JumpRelu,
        Some("gated") => Arch::Gated,
        Some(other) => bail!(
            "{p}: architecture {other:?} is not one saeperf runs (it reads \"standard\", \"topk\", \"jumprelu\" and \"gated\")"
        ),
    };
    let k = if arch == Arch::TopK {
        let k = uint("k").map_err(|e| {
            e.context("a topk dictionary needs k (SAELens would silently take 100)")
        })?;
        if k > f {
            bail!("{p}: k {k} is above d_sae {f}");
        }
        Some(k)
    } else {
        None
    };
    for (key, ok) in [
        ("normalize_activations", "none"),
        ("reshape_activations", "none"),
    ] {
        match cfg.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == ok => {}
            Some(v) => bail!(
                "{p}: {key} is {v}, and the factor it applies is not stored in the directory; fold it into the \
                 weights (SAELens: fold_activation_norm_scaling_factor) and save again"
            ),
        }
    }
    if cfg.get("rescale_acts_by_decoder_norm") == Some(&Value::Bool(true)) {
        bail!("{p}: rescale_acts_by_decoder_norm is true, which saeperf's TopK does not do");
    }
    let apply_b_dec = match cfg.get("apply_b_dec_to_input") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => bail!("{p}: apply_b_dec_to_input is {v}, not true or false"),
    };
    let wpath = dir.join(WEIGHTS_FILE);
    let blob = std::fs::read(&wpath).with_context(|| format!("{}", wpath.display()))?;
    let st = safetensors::SafeTensors::deserialize(&blob)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", wpath.display()))?;
    let threshold = if arch == Arch::JumpRelu {
        let t = super::read_f32(&st, &wpath, "threshold", &[f])?;
        if let Some(i) = t.iter().position(|v| *v < 0.0) {
            bail!(
                "{}: tensor threshold is negative at feature {i} ({}); saeperf's JumpReLU needs θ ≥ 0",
                wpath.display(),
                t[i]
            );
        }
        Some(t)
    } else {
        None
    };
    let gated = if arch == Arch::Gated {
        Some(saeperf_kernels::GatedMag {
            r_mag: super::read_f32(&st, &wpath, "r_mag", &[f])?,
            b_mag: super::read_f32(&st, &wpath, "b_mag", &[f])?,
        })
    } else {
        None
    };
    let b_name = if gated.is_some() { "b_gate" } else { "b_enc" };
    let mut sae = Sae {
        threshold,
        gated,
        w_enc: super::read_f32(&st, &wpath, "W_enc", &[d, f])?,
        b_enc: super::read_f32(&st, &wpath, b_name, &[f])?,
        w_dec: super::read_f32(&st, &wpath, "W_dec", &[f, d])?,
        b_dec: super::read_f32(&st, &wpath, "b_dec", &[d])?,
        cfg: SaeCfg {
            l1_coefficient: cfg
                .get("l1_coefficient")
                .and_then(Value::as_f64)
                .unwrap_or(0.0) as f32,
            hook_name: cfg["metadata"]["hook_name"]
                .as_str()
                .or_else(|| cfg["hook_name"].as_str())
                .map(String::from),
            apply_b_dec_to_input: apply_b_dec,
            ..SaeCfg::inference(d, f, arch, k)
        },
    };
    if !apply_b_dec {
        super::absorb_b_dec(&mut sae);
    }
    super::restore_saeperf(sae, &cfg, &cpath)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{close, dict, x};
    use super::*;

    #[test]
    fn folding_gives_the_same_codes_on_raw_inputs_and_reconstructions_in_raw_units() {
        for arch in Arch::ALL {
            let s = 1.7;
            let sae = dict(arch, s);
            let raw = x(20, 6);
            let scaled: Vec<f32> = raw.iter().map(|v| v * s).collect();
            let folded = super::super::fold_scaling(&sae);
            let f0 = sae.encode(&scaled, 20);
            let f1 = folded.encode(&raw, 20);
            close(&f1, &f0, 1e-5, "codes");
            let xh0: Vec<f32> = sae.decode(&f0, 20).iter().map(|v| v / s).collect();
            close(&folded.decode(&f1, 20), &xh0, 1e-5, "reconstruction");
        }
    }

    #[test]
    fn export_and_read_back_restores_the_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        for arch in Arch::ALL {
            let sae = dict(arch, 1.7);
            let out = dir.path().join(format!("{arch}"));
            write(&sae, &out, &Provenance::default()).unwrap();
            let cfg: Value =
                serde_json::from_slice(&std::fs::read(out.join(CFG_FILE)).unwrap()).unwrap();
            // What SAELens' loader needs: registry names, a version, strings where it wants strings.
            let want = match arch {
                Arch::Relu => "standard",
                Arch::TopK => "topk",
                Arch::JumpRelu | Arch::BatchTopK | Arch::Matryoshka => "jumprelu",
                Arch::Gated => "gated",
            };
            assert_eq!(cfg["architecture"], want);
            assert_eq!(cfg["dtype"], "float32");
            assert_eq!(cfg["metadata"]["sae_lens_version"], SAE_LENS_VERSION);
            assert_eq!(cfg["metadata"]["hook_name"], "blocks.15.hook_resid_pre");
            assert!(cfg.get("hook_name").is_none());
            assert_eq!(
                super::super::detect(&out).unwrap(),
                super::super::Format::SaeLens
            );
            let back = super::super::load(&out).unwrap();
            assert_eq!(back.cfg, sae.cfg);
            close(&back.w_enc, &sae.w_enc, 1e-6, "W_enc");
            close(&back.w_dec, &sae.w_dec, 1e-6, "W_dec");
            close(&back.b_dec, &sae.b_dec, 1e-6, "b_dec");
            assert_eq!(back.b_enc, sae.b_enc);
            assert_eq!(back.threshold, sae.threshold, "{arch}: threshold");
            assert_eq!(back.gated, sae.gated, "{arch}: r_mag, b_mag");
        }
    }

    /// A directory as SAELens' `save_model` writes it (its keys, metadata, no saeperf block, b_dec not applied).
    #[test]
    fn reads_a_directory_saelens_wrote_and_honours_apply_b_dec_false() {
        let dir = tempfile::tempdir().unwrap();
        let sae = dict(Arch::Relu, 1.0);
        super::super::write_f32(
            &dir.path().join(WEIGHTS_FILE),
            &[
                ("W_enc", vec![6, 10], &sae.w_enc),
                ("b_enc", vec![10], &sae.b_enc),
                ("W_dec", vec![10, 6], &sae.w_dec),
                ("b_dec", vec![6], &sae.b_dec),
            ],
        )
        .unwrap();
        let cfg = json!({
            "d_in": 6, "d_sae": 10, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": false,
            "normalize_activations": "none", "reshape_activations": "none", "architecture": "standard",
            "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12",
                         "model_name": "gpt2", "hook_name": "blocks.8.hook_resid_pre", "hook_head_index": null,
                         "prepend_bos": true, "dataset_path": "x", "context_size": 128},
        });
        std::fs::write(dir.path().join(CFG_FILE), cfg.to_string()).unwrap();
        let got = super::super::load(dir.path()).unwrap();
        assert_eq!(
            got.cfg.hook_name.as_deref(),
            Some("blocks.8.hook_resid_pre")
        );
        assert_eq!(got.cfg.scaling_factor, 1.0);
        // SAELens without b_dec on the input: relu(x·W_enc + b_enc).
        let raw = x(15, 6);
        let mut want = vec![0f32; 15 * 10];
        for n in 0..15 {
            for j in 0..10 {
                let pre: f32 = (0..6)
                    .map(|i| raw[n * 6 + i] * sae.w_enc[i * 10 + j])
                    .sum::<f32>()
                    + sae.b_enc[j];
                want[n * 10 + j] = pre.max(0.0);
            }
        }
        close(&got.encode(&raw, 15), &want, 1e-5, "codes");
    }

    #[test]
    fn what_saeperf_cannot_run_is_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let sae = dict(Arch::TopK, 1.0);
        write(&sae, dir.path(), &Provenance::default()).unwrap();
        let cpath = dir.path().join(CFG_FILE);
        let good: Value = serde_json::from_slice(&std::fs::read(&cpath).unwrap()).unwrap();
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: [(&str, Edit); 7] = [
            (
                "architecture \"matching_pursuit\"",
                Box::new(|c| c["architecture"] = json!("matching_pursuit")),
            ),
            // A gated cfg over a TopK dictionary's tensors: the missing tensor is named.
            (
                "no tensor r_mag",
                Box::new(|c| c["architecture"] = json!("gated")),
            ),
            (
                "needs k",
                Box::new(|c| {
                    c.as_object_mut().unwrap().remove("k");
                }),
            ),
            (
                "normalize_activations",
                Box::new(|c| c["normalize_activations"] = json!("expected_average_only_in")),
            ),
            (
                "rescale_acts_by_decoder_norm",
                Box::new(|c| c["rescale_acts_by_decoder_norm"] = json!(true)),
            ),
            ("key d_sae", Box::new(|c| c["d_sae"] = json!("ten"))),
            (
                "tensor W_enc has shape",
                Box::new(|c| {
                    c["d_in"] = json!(7);
                    c["saeperf"]["cfg"]["d_in"] = json!(7);
                }),
            ),
        ];
        for (want, edit) in &cases {
            let mut c = good.clone();
            edit(&mut c);
            std::fs::write(&cpath, c.to_string()).unwrap();
            let e = format!("{:#}", super::super::load(dir.path()).unwrap_err());
            assert!(e.contains(want), "{want}: {e}");
            assert!(e.contains("cfg.json") || e.contains("safetensors"), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
