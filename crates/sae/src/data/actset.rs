//! Activation sets: a directory with manifest.json and activations.safetensors holding the tensor `activations`
//! [n_tokens, d_in] (f16 or f32), optionally with per-row provenance tensors `token_id`, `doc`, `pos` (u32).
//!
//! Rows [0, n_train) are the training split and [n_train, n_tokens) the evaluation split: explicit in the manifest,
//! the same every time. Opening a set memory-maps the file and verifies it (SHA-256, shapes, dtype, truncation,
//! NaN/Inf); every error names the file.

use anyhow::{bail, ensure, Context, Result};
use half::f16;
use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const DATA_FILE: &str = "activations.safetensors";
pub const FORMAT_VERSION: u32 = 1;

/// manifest.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub d_in: usize,
    pub n_tokens: usize,
    /// Rows [0, n_train) are the training split.
    pub n_train: usize,
    /// Rows [n_train, n_tokens) are the evaluation split.
    pub n_eval: usize,
    /// "f16" or "f32".
    pub dtype: String,
    /// What the data is, for people.
    pub description: String,
    /// Where the data comes from; always has "kind": "synthetic" or "model", plus the parameters that made it.
    pub source: serde_json::Value,
    /// SHA-256 (hex) of activations.safetensors.
    pub sha256: String,
    /// Whether `token_id`, `doc` and `pos` tensors are present.
    pub has_provenance: bool,
}

impl Manifest {
    /// The manifest of the set in `dir` alone: no data read, nothing verified (for deciding whether to open it).
    pub fn read(dir: &Path) -> Result<Manifest> {
        let mpath = dir.join(MANIFEST_FILE);
        let text = std::fs::read(&mpath)
            .with_context(|| format!("activation set: cannot read {}", mpath.display()))?;
        serde_json::from_slice(&text)
            .with_context(|| format!("activation set: invalid {}", mpath.display()))
    }

    pub fn source_kind(&self) -> &str {
        self.source
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
    }
}

/// Activations to write, row-major [n_tokens, d_in].
#[derive(Clone, Copy)]
pub enum Activations<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl Activations<'_> {
    fn len(&self) -> usize {
        match self {
            Activations::F32(v) => v.len(),
            Activations::F16(v) => v.len(),
        }
    }
}

/// Where each row came from (one entry per row).
#[derive(Clone, Copy)]
pub struct Provenance<'a> {
    pub token_id: &'a [u32],
    pub doc: &'a [u32],
    pub pos: &'a [u32],
}

/// Owned provenance, as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct ProvenanceOwned {
    pub token_id: Vec<u32>,
    pub doc: Vec<u32>,
    pub pos: Vec<u32>,
}

/// A set to write.
pub struct NewSet<'a> {
    pub d_in: usize,
    pub n_train: usize,
    pub activations: Activations<'a>,
    pub description: String,
    pub source: serde_json::Value,
    pub provenance: Option<Provenance<'a>>,
}

fn le_bytes_u32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes a set into `dir` (created if missing): the data file first, then the manifest, each through a temporary
/// file and a rename, so a set whose manifest exists is complete.
pub fn write(dir: &Path, set: &NewSet) -> Result<Manifest> {
    ensure!(
        set.d_in > 0,
        "activation set {}: d_in must be positive",
        dir.display()
    );
    let n_vals = set.activations.len();
    ensure!(
        n_vals.is_multiple_of(set.d_in),
        "activation set {}: {} values do not make rows of d_in {}",
        dir.display(),
        n_vals,
        set.d_in
    );
    let n_tokens = n_vals / set.d_in;
    ensure!(
        set.n_train <= n_tokens,
        "activation set {}: n_train {} > n_tokens {n_tokens}",
        dir.display(),
        set.n_train
    );
    ensure!(
        set.source.get("kind").and_then(|k| k.as_str()).is_some(),
        "activation set {}: source must name its kind",
        dir.display()
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (dtype, st_dtype, bytes) = match set.activations {
        Activations::F32(v) => (
            "f32",
            Dtype::F32,
            v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
        ),
        Activations::F16(v) => (
            "f16",
            Dtype::F16,
            v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
        ),
    };
    let mut extra: Vec<(&str, Vec<u8>)> = Vec::new();
    if let Some(p) = set.provenance {
        for (name, v) in [("token_id", p.token_id), ("doc", p.doc), ("pos", p.pos)] {
            ensure!(
                v.len() == n_tokens,
                "activation set {}: provenance {name} has {} rows, expected {n_tokens}",
                dir.display(),
                v.len()
            );
            extra.push((name, le_bytes_u32(v)));
        }
    }
    let mut views = BTreeMap::new();
    views.insert(
        "activations".to_string(),
        TensorView::new(st_dtype, vec![n_tokens, set.d_in], &bytes)?,
    );
    for (name, b) in &extra {
        views.insert(
            name.to_string(),
            TensorView::new(Dtype::U32, vec![n_tokens], b)?,
        );
    }
    let blob = safetensors::serialize(&views, None)?;
    let sha256 = hex::encode(Sha256::digest(&blob));
    let data_path = dir.join(DATA_FILE);
    saeperf_kernels::sae::write_atomic(&data_path, &blob)
        .with_context(|| format!("writing {}", data_path.display()))?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        d_in: set.d_in,
        n_tokens,
        n_train: set.n_train,
        n_eval: n_tokens - set.n_train,
        dtype: dtype.into(),
        description: set.description.clone(),
        source: set.source.clone(),
        sha256,
        has_provenance: set.provenance.is_some(),
    };
    let mpath = dir.join(MANIFEST_FILE);
    saeperf_kernels::sae::write_atomic(&mpath, &serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("writing {}", mpath.display()))?;
    Ok(manifest)
}

/// An opened, verified activation set.
pub struct ActivationSet {
    dir: PathBuf,
    manifest: Manifest,
    mmap: Mmap,
    /// Byte offset of the activations inside the file.
    offset: usize,
    /// 2 for f16, 4 for f32.
    elem: usize,
    provenance_offsets: Option<[usize; 3]>,
}

impl std::fmt::Debug for ActivationSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivationSet")
            .field("dir", &self.dir)
            .field("manifest", &self.manifest)
            .finish()
    }
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

impl ActivationSet {
    /// Opens and verifies the set in `dir`.
    pub fn open(dir: &Path) -> Result<ActivationSet> {
        let mpath = dir.join(MANIFEST_FILE);
        let manifest = Manifest::read(dir)?;
        ensure!(
            manifest.format_version == FORMAT_VERSION,
            "{}: format_version {} is not supported (expected {FORMAT_VERSION})",
            mpath.display(),
            manifest.format_version
        );
        ensure!(
            manifest.n_train + manifest.n_eval == manifest.n_tokens,
            "{}: n_train {} + n_eval {} ≠ n_tokens {}",
            mpath.display(),
            manifest.n_train,
            manifest.n_eval,
            manifest.n_tokens
        );
        let dpath = dir.join(DATA_FILE);
        let file = std::fs::File::open(&dpath)
            .with_context(|| format!("activation set: cannot open {}", dpath.display()))?;
        // SAFETY: the file is opened read-only and saeperf never writes a set in place (writes go through a rename);
        // a concurrent external modification would be caught by the checksum below or give wrong values, not UB in
        // practice for plain byte reads.
        let mmap = unsafe { Mmap::map(&file) }
            .with_context(|| format!("activation set: cannot map {}", dpath.display()))?;
        let sha = hex::encode(Sha256::digest(&mmap[..]));
        ensure!(
            sha == manifest.sha256,
            "{}: checksum mismatch (SHA-256 {sha}, manifest says {}); the file is corrupt or was changed",
            dpath.display(),
            manifest.sha256
        );
        let st = SafeTensors::deserialize(&mmap[..]).map_err(|e| {
            anyhow::anyhow!("{}: not a valid safetensors file: {e}", dpath.display())
        })?;
        let t = st
            .tensor("activations")
            .map_err(|e| anyhow::anyhow!("{}: no tensor `activations`: {e}", dpath.display()))?;
        let (elem, want_dtype) = match manifest.dtype.as_str() {
            "f16" => (2, Dtype::F16),
            "f32" => (4, Dtype::F32),
            other => bail!(
                "{}: dtype {other:?} is not supported (f16 or f32)",
                mpath.display()
            ),
        };
        ensure!(
            t.dtype() == want_dtype,
            "{}: activations are {:?}, manifest says {}",
            dpath.display(),
            t.dtype(),
            manifest.dtype
        );
        ensure!(
            t.shape() == [manifest.n_tokens, manifest.d_in],
            "{}: activations have shape {:?}, manifest says [{}, {}]",
            dpath.display(),
            t.shape(),
            manifest.n_tokens,
            manifest.d_in
        );
        let offset = t.data().as_ptr() as usize - mmap.as_ptr() as usize;
        let provenance_offsets = if manifest.has_provenance {
            let mut offs = [0usize; 3];
            for (k, name) in ["token_id", "doc", "pos"].iter().enumerate() {
                let p = st.tensor(name).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: provenance tensor `{name}` missing: {e}",
                        dpath.display()
                    )
                })?;
                ensure!(
                    p.dtype() == Dtype::U32 && p.shape() == [manifest.n_tokens],
                    "{}: provenance tensor `{name}` must be u32 [{}]",
                    dpath.display(),
                    manifest.n_tokens
                );
                offs[k] = p.data().as_ptr() as usize - mmap.as_ptr() as usize;
            }
            Some(offs)
        } else {
            None
        };
        drop(st);
        let set = ActivationSet {
            dir: dir.to_path_buf(),
            manifest,
            mmap,
            offset,
            elem,
            provenance_offsets,
        };
        set.check_finite(&dpath)?;
        Ok(set)
    }

    fn check_finite(&self, dpath: &Path) -> Result<()> {
        use rayon::prelude::*;
        let n = self.manifest.n_tokens * self.manifest.d_in;
        let bytes = &self.mmap[self.offset..self.offset + n * self.elem];
        let elem = self.elem;
        let bad = bytes
            .par_chunks(elem * 4096)
            .enumerate()
            .find_map_first(|(c, chunk)| {
                chunk
                    .chunks_exact(elem)
                    .position(|b| !decode(b).is_finite())
                    .map(|p| c * 4096 + p)
            });
        if let Some(i) = bad {
            let d = self.manifest.d_in;
            bail!(
                "{}: non-finite value (NaN or Inf) at row {}, column {}",
                dpath.display(),
                i / d,
                i % d
            );
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn d_in(&self) -> usize {
        self.manifest.d_in
    }
    pub fn n_tokens(&self) -> usize {
        self.manifest.n_tokens
    }
    pub fn train_rows(&self) -> Range<usize> {
        0..self.manifest.n_train
    }
    pub fn eval_rows(&self) -> Range<usize> {
        self.manifest.n_train..self.manifest.n_tokens
    }

    fn row_bytes(&self, r: usize) -> &[u8] {
        let w = self.manifest.d_in * self.elem;
        &self.mmap[self.offset + r * w..self.offset + (r + 1) * w]
    }

    /// Rows in `rows`, as f32, row-major.
    pub fn rows_f32(&self, rows: Range<usize>) -> Vec<f32> {
        assert!(rows.end <= self.n_tokens(), "rows {rows:?} out of range");
        let w = self.manifest.d_in * self.elem;
        let bytes = &self.mmap[self.offset + rows.start * w..self.offset + rows.end * w];
        let mut out = Vec::with_capacity(bytes.len() / self.elem);
        decode_into(bytes, self.elem, &mut out);
        out
    }

    /// The rows at `idx`, in that order, as f32, row-major.
    pub fn gather_f32(&self, idx: &[usize]) -> Vec<f32> {
        let mut out = Vec::with_capacity(idx.len() * self.manifest.d_in);
        for &r in idx {
            decode_into(self.row_bytes(r), self.elem, &mut out);
        }
        out
    }

    /// Where each row came from, when the set records it.
    pub fn provenance(&self) -> Option<ProvenanceOwned> {
        let offs = self.provenance_offsets?;
        let n = self.manifest.n_tokens;
        let read = |o: usize| -> Vec<u32> {
            self.mmap[o..o + 4 * n]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        Some(ProvenanceOwned {
            token_id: read(offs[0]),
            doc: read(offs[1]),
            pos: read(offs[2]),
        })
    }
}

/// Appends the little-endian f16 (`elem` 2) or f32 (`elem` 4) values in `bytes` to `out`. One loop per dtype, so
/// the loop's cost does not hinge on whether the compiler inlines a per-value branch (it did not in some builds:
/// counted training cost moved by 30% with unrelated changes).
fn decode_into(bytes: &[u8], elem: usize, out: &mut Vec<f32>) {
    if elem == 2 {
        out.extend(bytes.chunks_exact(2).map(f16_le));
    } else {
        out.extend(bytes.chunks_exact(4).map(f32_le));
    }
}

/// One value, f16 or f32 by its width.
#[inline]
fn decode(b: &[u8]) -> f32 {
    if b.len() == 2 {
        f16_le(b)
    } else {
        f32_le(b)
    }
}

#[inline]
fn f16_le(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

#[inline]
fn f32_le(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("saeperf-actset-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn sample(dir: &Path, dtype16: bool) -> Manifest {
        let vals: Vec<f32> = (0..30).map(|i| i as f32 * 0.5).collect();
        let h: Vec<f16> = vals.iter().map(|v| f16::from_f32(*v)).collect();
        let ids: Vec<u32> = (0..10).collect();
        write(
            dir,
            &NewSet {
                d_in: 3,
                n_train: 7,
                activations: if dtype16 {
                    Activations::F16(&h)
                } else {
                    Activations::F32(&vals)
                },
                description: "test".into(),
                source: serde_json::json!({"kind": "synthetic"}),
                provenance: Some(Provenance {
                    token_id: &ids,
                    doc: &ids,
                    pos: &ids,
                }),
            },
        )
        .unwrap()
    }

    #[test]
    fn round_trip_both_dtypes() {
        for f16 in [false, true] {
            let dir = tmp(&format!("rt{f16}"));
            let m = sample(&dir, f16);
            let set = ActivationSet::open(&dir).unwrap();
            assert_eq!(set.manifest(), &m);
            assert_eq!(set.train_rows(), 0..7);
            assert_eq!(set.eval_rows(), 7..10);
            assert_eq!(set.rows_f32(1..2), vec![1.5, 2.0, 2.5]);
            assert_eq!(
                set.gather_f32(&[9, 0]),
                vec![13.5, 14.0, 14.5, 0.0, 0.5, 1.0]
            );
            assert_eq!(set.provenance().unwrap().pos[4], 4);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn corruption_is_refused_with_the_file_named() {
        let dir = tmp("corrupt");
        sample(&dir, false);
        let data = dir.join(DATA_FILE);
        let mut bytes = std::fs::read(&data).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0x40;
        std::fs::write(&data, &bytes).unwrap();
        let e = format!("{:#}", ActivationSet::open(&dir).unwrap_err());
        assert!(
            e.contains("checksum mismatch") && e.contains(DATA_FILE),
            "{e}"
        );
        // Truncated, with a manifest that matches the truncated bytes: the safetensors header catches it.
        bytes.truncate(n - 8);
        std::fs::write(&data, &bytes).unwrap();
        let mut m: Manifest =
            serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
        m.sha256 = sha256_file(&data).unwrap();
        std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        let e = format!("{:#}", ActivationSet::open(&dir).unwrap_err());
        assert!(
            e.contains("not a valid safetensors") && e.contains(DATA_FILE),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nan_and_wrong_shape_are_refused() {
        let dir = tmp("nan");
        let mut vals = vec![1.0f32; 12];
        vals[7] = f32::NAN;
        write(
            &dir,
            &NewSet {
                d_in: 4,
                n_train: 2,
                activations: Activations::F32(&vals),
                description: "nan".into(),
                source: serde_json::json!({"kind": "synthetic"}),
                provenance: None,
            },
        )
        .unwrap();
        let e = format!("{:#}", ActivationSet::open(&dir).unwrap_err());
        assert!(
            e.contains("non-finite") && e.contains("row 1, column 3"),
            "{e}"
        );
        let mut m: Manifest =
            serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
        m.d_in = 6;
        m.n_tokens = 2;
        m.n_train = 1;
        m.n_eval = 1;
        std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        let e = format!("{:#}", ActivationSet::open(&dir).unwrap_err());
        assert!(e.contains("shape [3, 4]"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
