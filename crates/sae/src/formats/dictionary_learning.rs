//! dictionary_learning's (saprmarks) dictionary directory: `ae.pt` (a torch state dict) + `config.json`, as its
//! trainers save them and `utils.load_dictionary(dir)` reads them (docs/formats.md, "dictionary_learning").
//!
//! - `AutoEncoder` (ReLU): encoder.weight = W_encᵀ [F, d_in], encoder.bias = b_enc [F], decoder.weight = W_decᵀ
//!   [d_in, F], bias = b_dec [d_in]; encode relu(encoder(x − bias)).
//! - `AutoEncoderTopK`: encoder.weight, encoder.bias, decoder.weight as above, b_dec [d_in], and the buffers k
//!   (a 0-dim integer) and threshold (a 0-dim float, −1: unused); encode relu(encoder(x − b_dec)), top k.
//! - `BatchTopKSAE` (BatchTopK, and Matryoshka, which encodes the same way at inference): the same tensors as
//!   `AutoEncoderTopK`, threshold = θ; encode
//!   a = relu(encoder(x − b_dec)), a·1[a > θ].
//! - `JumpReluAutoEncoder` (JumpReLU): W_enc [d_in, F], b_enc [F], W_dec [F, d_in], b_dec [d_in], threshold [F];
//!   it does not subtract b_dec from the input (`apply_b_dec_to_input` is an attribute that loading leaves False),
//!   so the export writes b_enc − b_dec·W_enc and reading absorbs b_dec back ([`super::absorb_b_dec`]).
//! - `GatedAutoEncoder` (Gated): encoder.weight = W_encᵀ [F, d_in] (no bias), gate_bias = b_gate [F], r_mag [F],
//!   mag_bias = b_mag [F], decoder.weight = W_decᵀ [d_in, F], decoder_bias = b_dec [d_in]; it subtracts
//!   decoder_bias from the input, as saeperf does.
//!
//! `ae.pt` is written here as torch's zip format (below, [`write_torch_state_dict`]) and read with candle's
//! reader of torch files.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use saeperf_kernels::{Arch, Sae, SaeCfg};
use serde_json::json;

pub const WEIGHTS_FILE: &str = "ae.pt";
pub const CFG_FILE: &str = "config.json";

/// Writes `sae` into `out` in dictionary_learning's layout, folded to raw units. `lm_name` and `layer` go into
/// config.json's `trainer` when known.
pub fn write(sae: &Sae, out: &Path, lm_name: Option<&str>, layer: Option<usize>) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    let folded = super::fold_scaling(sae);
    let (d, f) = (sae.cfg.d_in, sae.cfg.d_sae);
    let enc = super::transpose(&folded.w_enc, d, f); // [F, d]
    let dec = super::transpose(&folded.w_dec, f, d); // [d, F]
    let threshold = super::threshold_of(sae)?.unwrap_or_default();
    let theta = [threshold.first().copied().unwrap_or(-1.0)];
    // JumpReluAutoEncoder encodes x·W_enc + b_enc: b_dec is folded into its bias.
    let mut b_enc_no_dec = folded.b_enc.clone();
    if sae.cfg.architecture == Arch::JumpRelu {
        for (j, b) in b_enc_no_dec.iter_mut().enumerate() {
            let dot: f64 = (0..d)
                .map(|i| folded.b_dec[i] as f64 * folded.w_enc[i * f + j] as f64)
                .sum();
            *b = (*b as f64 - dot) as f32;
        }
    }
    if matches!(sae.cfg.architecture, Arch::BatchTopK | Arch::Matryoshka)
        && threshold.iter().any(|t| *t != theta[0])
    {
        bail!("dictionary_learning's BatchTopKSAE has one threshold; this dictionary's thresholds differ");
    }
    let (class, tensors) = match sae.cfg.architecture {
        Arch::Relu => (
            "AutoEncoder",
            vec![
                ("bias", TorchTensor::F32(vec![d], &folded.b_dec)),
                ("encoder.weight", TorchTensor::F32(vec![f, d], &enc)),
                ("encoder.bias", TorchTensor::F32(vec![f], &folded.b_enc)),
                ("decoder.weight", TorchTensor::F32(vec![d, f], &dec)),
            ],
        ),
        Arch::TopK => (
            "AutoEncoderTopK",
            vec![
                ("k", TorchTensor::I64Scalar(sae.cfg.k.unwrap_or(0) as i64)),
                ("threshold", TorchTensor::F32(vec![], &[-1.0])),
                ("decoder.weight", TorchTensor::F32(vec![d, f], &dec)),
                ("encoder.weight", TorchTensor::F32(vec![f, d], &enc)),
                ("encoder.bias", TorchTensor::F32(vec![f], &folded.b_enc)),
                ("b_dec", TorchTensor::F32(vec![d], &folded.b_dec)),
            ],
        ),
        // A Matryoshka dictionary encodes at inference exactly as BatchTopK does; its prefixes are a training matter.
        Arch::BatchTopK | Arch::Matryoshka => (
            "BatchTopKSAE",
            vec![
                ("k", TorchTensor::I64Scalar(sae.cfg.k.unwrap_or(0) as i64)),
                ("threshold", TorchTensor::F32(vec![], &theta)),
                ("decoder.weight", TorchTensor::F32(vec![d, f], &dec)),
                ("encoder.weight", TorchTensor::F32(vec![f, d], &enc)),
                ("encoder.bias", TorchTensor::F32(vec![f], &folded.b_enc)),
                ("b_dec", TorchTensor::F32(vec![d], &folded.b_dec)),
            ],
        ),
        Arch::Gated => {
            let Some(g) = &folded.gated else {
                bail!("the gated dictionary has no magnitude path (r_mag, b_mag) to write");
            };
            (
                "GatedAutoEncoder",
                vec![
                    ("decoder_bias", TorchTensor::F32(vec![d], &folded.b_dec)),
                    ("encoder.weight", TorchTensor::F32(vec![f, d], &enc)),
                    ("r_mag", TorchTensor::F32(vec![f], &g.r_mag)),
                    ("gate_bias", TorchTensor::F32(vec![f], &folded.b_enc)),
                    ("mag_bias", TorchTensor::F32(vec![f], &g.b_mag)),
                    ("decoder.weight", TorchTensor::F32(vec![d, f], &dec)),
                ],
            )
        }
        Arch::JumpRelu => (
            "JumpReluAutoEncoder",
            vec![
                ("W_enc", TorchTensor::F32(vec![d, f], &folded.w_enc)),
                ("b_enc", TorchTensor::F32(vec![f], &b_enc_no_dec)),
                ("W_dec", TorchTensor::F32(vec![f, d], &folded.w_dec)),
                ("b_dec", TorchTensor::F32(vec![d], &folded.b_dec)),
                ("threshold", TorchTensor::F32(vec![f], &threshold)),
            ],
        ),
    };
    let mut trainer = json!({
        "dict_class": class,
        "activation_dim": d,
        "dict_size": f,
    });
    if let Some(k) = sae.cfg.k {
        trainer["k"] = json!(k);
    }
    if let Some(m) = lm_name {
        trainer["lm_name"] = json!(m);
    }
    if let Some(l) = layer {
        trainer["layer"] = json!(l);
    }
    let cfg = json!({
        "trainer": trainer,
        "saeperf": super::saeperf_block(sae),
    });
    write_torch_state_dict(&out.join(WEIGHTS_FILE), &tensors)?;
    super::write_json(&out.join(CFG_FILE), &cfg)
}

/// Reads a dictionary_learning directory (the five classes of the module doc; any other class refused in one line).
pub fn read(dir: &Path) -> Result<Sae> {
    let cpath = dir.join(CFG_FILE);
    let cfg = super::read_json(&cpath)?;
    let p = cpath.display();
    let class = cfg["trainer"]["dict_class"]
        .as_str()
        .with_context(|| format!("{p}: no trainer.dict_class"))?;
    let arch = match class {
        "AutoEncoder" => Arch::Relu,
        "AutoEncoderTopK" => Arch::TopK,
        "BatchTopKSAE" => Arch::BatchTopK,
        "JumpReluAutoEncoder" => Arch::JumpRelu,
        "GatedAutoEncoder" => Arch::Gated,
        other => bail!(
            "{p}: trainer.dict_class {other:?} is not one saeperf runs (it reads AutoEncoder, AutoEncoderTopK, \
             BatchTopKSAE, JumpReluAutoEncoder and GatedAutoEncoder)"
        ),
    };
    let wpath = dir.join(WEIGHTS_FILE);
    if !wpath.exists() {
        bail!("{}: no such file", wpath.display());
    }
    let tensors = candle_core::pickle::read_all(&wpath).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a torch state dict candle can read: {e}",
            wpath.display()
        )
    })?;
    let w = wpath.display();
    let get = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
        let t = tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .with_context(|| {
                let have: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
                format!("{w}: no tensor {name} (it has {})", have.join(", "))
            })?;
        let v = t
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| anyhow::anyhow!("{w}: tensor {name}: {e}"))?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!("{w}: tensor {name} holds a non-finite value at index {i}");
        }
        Ok((t.dims().to_vec(), v))
    };
    if arch == Arch::JumpRelu {
        return read_jumprelu(&get, &cfg, &cpath);
    }
    let (es, enc) = get("encoder.weight")?;
    let [f, d] = es[..] else {
        bail!("{w}: encoder.weight has shape {es:?}, expected [dict_size, activation_dim]");
    };
    let expect = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let (s, v) = get(name)?;
        if s != shape {
            bail!("{w}: tensor {name} has shape {s:?}, encoder.weight implies {shape:?}");
        }
        Ok(v)
    };
    let gated = arch == Arch::Gated;
    let b_enc = expect(if gated { "gate_bias" } else { "encoder.bias" }, &[f])?;
    let dec = expect("decoder.weight", &[d, f])?;
    let b_dec_name = match arch {
        Arch::Relu => "bias",
        Arch::Gated => "decoder_bias",
        _ => "b_dec",
    };
    let b_dec = expect(b_dec_name, &[d])?;
    let gated = if gated {
        Some(saeperf_kernels::GatedMag {
            r_mag: expect("r_mag", &[f])?,
            b_mag: expect("mag_bias", &[f])?,
        })
    } else {
        None
    };
    let k = if arch.uses_k() {
        let k = match cfg["trainer"]["k"].as_u64() {
            Some(k) => k as usize,
            None => get("k")?.1.first().copied().unwrap_or(0.0) as usize,
        };
        if k == 0 || k > f {
            bail!("{p}: k {k} is not between 1 and dict_size {f}");
        }
        Some(k)
    } else {
        None
    };
    let threshold = if arch == Arch::BatchTopK {
        let (_, t) = get("threshold")?;
        match t[..] {
            [t] if t >= 0.0 => Some(vec![t; f]),
            _ => bail!("{w}: BatchTopKSAE's threshold is {t:?}, not one value ≥ 0 (a dictionary still training?)"),
        }
    } else {
        None
    };
    let sae = Sae {
        threshold,
        gated,
        w_enc: super::transpose(&enc, f, d),
        b_enc,
        w_dec: super::transpose(&dec, d, f),
        b_dec,
        cfg: SaeCfg {
            l1_coefficient: cfg["trainer"]["l1_penalty"].as_f64().unwrap_or(0.0) as f32,
            seed: cfg["trainer"]["seed"].as_u64().unwrap_or(0),
            steps: cfg["trainer"]["steps"].as_u64().unwrap_or(0) as usize,
            lr: cfg["trainer"]["lr"].as_f64().unwrap_or(0.0) as f32,
            ..SaeCfg::inference(d, f, arch, k)
        },
    };
    super::restore_saeperf(sae, &cfg, &cpath)
}

/// One tensor of a torch state dict: f32 of a shape (empty: 0-dim), or a 0-dim int64.
pub enum TorchTensor<'a> {
    F32(Vec<usize>, &'a [f32]),
    I64Scalar(i64),
}

/// Writes a state dict (an `OrderedDict` of name → tensor) as `torch.save` does: a zip archive (stored, entries
/// aligned to 64 bytes) with `archive/data.pkl` (pickle protocol 2, each tensor rebuilt by
/// `torch._utils._rebuild_tensor_v2` from a persistent storage id), one `archive/data/N` per storage (the raw
/// little-endian values), `archive/byteorder` and `archive/version`. `torch.load` reads it with `weights_only=True`:
/// it names only `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` and torch's storage types.
pub fn write_torch_state_dict(path: &Path, tensors: &[(&str, TorchTensor)]) -> Result<()> {
    let mut pkl = Vec::new();
    let global = |out: &mut Vec<u8>, module: &str, name: &str| {
        out.push(b'c');
        out.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    };
    let unicode = |out: &mut Vec<u8>, s: &str| {
        out.push(b'X');
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    let int = |out: &mut Vec<u8>, v: usize| {
        let v = i32::try_from(v).expect("tensor sizes here fit in an i32");
        out.push(b'J');
        out.extend_from_slice(&v.to_le_bytes());
    };
    let ints_tuple = |out: &mut Vec<u8>, vs: &[usize]| {
        out.push(b'(');
        for &v in vs {
            int(out, v);
        }
        out.push(b't');
    };
    pkl.extend_from_slice(&[0x80, 2]); // PROTO 2
    global(&mut pkl, "collections", "OrderedDict");
    pkl.extend_from_slice(b")R"); // OrderedDict()
    pkl.push(b'('); // MARK: the items
    let mut storages: Vec<Vec<u8>> = Vec::new();
    for (name, t) in tensors {
        let (shape, storage_class, bytes): (Vec<usize>, &str, Vec<u8>) = match t {
            TorchTensor::F32(shape, v) => {
                let n: usize = shape.iter().product();
                if n != v.len() {
                    bail!(
                        "{}: tensor {name}: {} values for shape {shape:?}",
                        path.display(),
                        v.len()
                    );
                }
                (
                    shape.clone(),
                    "FloatStorage",
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            }
            TorchTensor::I64Scalar(x) => (vec![], "LongStorage", x.to_le_bytes().to_vec()),
        };
        let numel: usize = shape.iter().product();
        let key = storages.len().to_string();
        unicode(&mut pkl, name);
        global(&mut pkl, "torch._utils", "_rebuild_tensor_v2");
        pkl.push(b'('); // MARK: the arguments
                        // Persistent id ('storage', torch.<Class>, key, 'cpu', numel).
        pkl.push(b'(');
        unicode(&mut pkl, "storage");
        global(&mut pkl, "torch", storage_class);
        unicode(&mut pkl, &key);
        unicode(&mut pkl, "cpu");
        int(&mut pkl, numel);
        pkl.push(b't');
        pkl.push(b'Q'); // BINPERSID
        int(&mut pkl, 0); // storage offset
        ints_tuple(&mut pkl, &shape);
        // Contiguous strides.
        let mut stride = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * shape[i + 1];
        }
        ints_tuple(&mut pkl, &stride);
        pkl.push(0x89); // NEWFALSE: requires_grad
        global(&mut pkl, "collections", "OrderedDict");
        pkl.extend_from_slice(b")R"); // backward hooks
        pkl.push(b't'); // the arguments tuple
        pkl.push(b'R'); // REDUCE: the tensor
        storages.push(bytes);
    }
    pkl.push(b'u'); // SETITEMS
    pkl.push(b'.'); // STOP

    let tmp = path.with_extension(format!("pt.tmp{}", std::process::id()));
    let file = std::fs::File::create(&tmp).with_context(|| format!("{}", tmp.display()))?;
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64);
    let mut entry = |name: &str, bytes: &[u8]| -> Result<()> {
        zip.start_file(format!("archive/{name}"), opts)
            .and_then(|_| zip.write_all(bytes).map_err(Into::into))
            .with_context(|| format!("{}: writing {name}", path.display()))
    };
    entry("data.pkl", &pkl)?;
    entry("byteorder", b"little")?;
    for (i, s) in storages.iter().enumerate() {
        entry(&format!("data/{i}"), s)?;
    }
    entry("version", b"3\n")?;
    zip.finish()
        .with_context(|| format!("{}: finishing the archive", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}", path.display()))
}

/// A tensor of ae.pt by name: its shape and values as f32.
type GetTensor<'a> = dyn Fn(&str) -> Result<(Vec<usize>, Vec<f32>)> + 'a;

/// `JumpReluAutoEncoder`: its own tensor names, and b_dec not subtracted from the input.
fn read_jumprelu(get: &GetTensor, cfg: &serde_json::Value, cpath: &Path) -> Result<Sae> {
    let (es, w_enc) = get("W_enc")?;
    let [d, f] = es[..] else {
        bail!(
            "{}: W_enc has shape {es:?}, expected [activation_dim, dict_size]",
            cpath.display()
        );
    };
    let expect = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let (s, v) = get(name)?;
        if s != shape {
            bail!(
                "{}: tensor {name} has shape {s:?}, W_enc implies {shape:?}",
                cpath.display()
            );
        }
        Ok(v)
    };
    let threshold = expect("threshold", &[f])?;
    if let Some(i) = threshold.iter().position(|t| *t < 0.0) {
        bail!("{}: threshold is negative at feature {i}", cpath.display());
    }
    let mut sae = Sae {
        w_enc,
        b_enc: expect("b_enc", &[f])?,
        w_dec: expect("W_dec", &[f, d])?,
        b_dec: expect("b_dec", &[d])?,
        threshold: Some(threshold),
        gated: None,
        cfg: SaeCfg {
            apply_b_dec_to_input: false,
            ..SaeCfg::inference(d, f, Arch::JumpRelu, None)
        },
    };
    super::absorb_b_dec(&mut sae);
    super::restore_saeperf(sae, cfg, cpath)
}
