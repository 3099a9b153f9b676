//! EleutherAI sparsify's sparse-coder directory: `cfg.json` + `sae.safetensors` with encoder.weight [F, d_in],
//! encoder.bias [F], W_dec [F, d_in], b_dec [d_in], as `SparseCoder.save_to_disk` writes it and `load_from_disk`
//! reads it (docs/formats.md, "sparsify"). TopK only: sparsify encodes relu(encoder(x − b_dec)) and keeps the top k,
//! which is saeperf's TopK.

use std::path::Path;

use anyhow::{bail, Context, Result};
use saeperf_kernels::{Arch, Sae, SaeCfg};
use serde_json::{json, Value};

pub const CFG_FILE: &str = "cfg.json";
pub const WEIGHTS_FILE: &str = "sae.safetensors";

/// Writes a TopK `sae` into `out` in sparsify's layout, folded to raw units.
pub fn write(sae: &Sae, out: &Path) -> Result<()> {
    if sae.cfg.architecture != Arch::TopK {
        bail!(
            "sparsify holds TopK dictionaries only; this one is {} (export it as saelens or dictionary-learning)",
            sae.cfg.architecture
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    let folded = super::fold_scaling(sae);
    let (d, f) = (sae.cfg.d_in, sae.cfg.d_sae);
    let cfg = json!({
        "activation": "topk",
        "expansion_factor": (f / d).max(1),
        // The folded decoder rows are not unit norm; sparsify only renormalises while training.
        "normalize_decoder": false,
        "num_latents": f,
        "k": sae.cfg.k,
        "multi_topk": false,
        "skip_connection": false,
        "transcode": false,
        "d_in": d,
        "saeperf": super::saeperf_block(sae),
    });
    super::write_f32(
        &out.join(WEIGHTS_FILE),
        &[
            (
                "encoder.weight",
                vec![f, d],
                &super::transpose(&folded.w_enc, d, f),
            ),
            ("encoder.bias", vec![f], &folded.b_enc),
            ("W_dec", vec![f, d], &folded.w_dec),
            ("b_dec", vec![d], &folded.b_dec),
        ],
    )?;
    super::write_json(&out.join(CFG_FILE), &cfg)
}

/// Reads a sparsify directory; a configuration saeperf cannot run exactly is refused in one line naming the key.
pub fn read(dir: &Path) -> Result<Sae> {
    let cpath = dir.join(CFG_FILE);
    let cfg = super::read_json(&cpath)?;
    let p = cpath.display();
    match cfg.get("activation").and_then(Value::as_str) {
        None | Some("topk") => {}
        Some(other) => {
            bail!("{p}: activation {other:?} is not one saeperf runs (it reads \"topk\")")
        }
    }
    for key in ["skip_connection", "transcode"] {
        if cfg.get(key) == Some(&Value::Bool(true)) {
            bail!("{p}: {key} is true, which saeperf's dictionaries do not have");
        }
    }
    let wpath = dir.join(WEIGHTS_FILE);
    let blob = std::fs::read(&wpath).with_context(|| format!("{}", wpath.display()))?;
    let st = safetensors::SafeTensors::deserialize(&blob)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", wpath.display()))?;
    let shape_of = |name: &str| st.tensor(name).ok().map(|t| t.shape().to_vec());
    let d = match cfg.get("d_in").and_then(Value::as_u64) {
        Some(d) if d > 0 => d as usize,
        _ => match shape_of("b_dec").as_deref() {
            Some([d]) => *d,
            _ => bail!(
                "{p}: no positive integer d_in, and {} has no b_dec to take it from",
                wpath.display()
            ),
        },
    };
    let f = match cfg.get("num_latents").and_then(Value::as_u64) {
        Some(n) if n > 0 => n as usize,
        _ => {
            let e = cfg
                .get("expansion_factor")
                .and_then(Value::as_u64)
                .unwrap_or(32) as usize;
            d * e
        }
    };
    let k = match cfg.get("k").and_then(Value::as_u64) {
        Some(k) if k > 0 && k as usize <= f => k as usize,
        None => 32, // sparsify's default
        Some(k) => bail!("{p}: k {k} is not between 1 and num_latents {f}"),
    };
    let enc_t = super::read_f32(&st, &wpath, "encoder.weight", &[f, d])?;
    let sae = Sae {
        threshold: None,
        gated: None,
        w_enc: super::transpose(&enc_t, f, d),
        b_enc: super::read_f32(&st, &wpath, "encoder.bias", &[f])?,
        w_dec: super::read_f32(&st, &wpath, "W_dec", &[f, d])?,
        b_dec: super::read_f32(&st, &wpath, "b_dec", &[d])?,
        cfg: SaeCfg::inference(d, f, Arch::TopK, Some(k)),
    };
    super::restore_saeperf(sae, &cfg, &cpath)
}
