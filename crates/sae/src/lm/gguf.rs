//! Reading a llama GGUF file: the hyper-parameters from its metadata and every weight dequantized
//! to f32. Files of another architecture, or with tensors of a type we do not dequantize, are
//! refused with an error naming the file and the offending value.

use super::LmError;
use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};

/// Hyper-parameters of a llama model, read from GGUF metadata.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LlamaConfig {
    pub n_layer: usize,
    pub d_model: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub vocab: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub context_length: usize,
}

/// Tensor types we dequantize (everything candle 0.11 dequantizes on the CPU that llama files use).
const SUPPORTED: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// An opened GGUF file: its metadata and tensor directory (tensor data is read on demand).
pub struct GgufFile {
    pub path: PathBuf,
    pub content: gguf_file::Content,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses the header; checks the architecture is llama.
    pub fn open(path: &Path) -> Result<GgufFile, LmError> {
        let bad = |what: String| LmError::BadGguf {
            path: path.to_path_buf(),
            what,
        };
        let mut f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let content = gguf_file::Content::read(&mut f).map_err(|e| bad(e.to_string()))?;
        let g = GgufFile {
            path: path.to_path_buf(),
            content,
        };
        let arch = g.string("general.architecture")?;
        if arch != "llama" {
            return Err(LmError::Unsupported {
                path: g.path.clone(),
                what: format!("architecture `{arch}` (only `llama` is supported)"),
            });
        }
        for (name, info) in &g.content.tensor_infos {
            if !SUPPORTED.contains(&info.ggml_dtype) {
                return Err(LmError::Unsupported {
                    path: g.path.clone(),
                    what: format!(
                        "tensor `{name}` has type {:?}; supported: {SUPPORTED:?}",
                        info.ggml_dtype
                    ),
                });
            }
        }
        Ok(g)
    }

    fn meta(&self, key: &str) -> Result<&gguf_file::Value, LmError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| LmError::Metadata {
                path: self.path.clone(),
                key: key.to_string(),
                what: "missing".into(),
            })
    }

    fn meta_err(&self, key: &str, e: impl std::fmt::Display) -> LmError {
        LmError::Metadata {
            path: self.path.clone(),
            key: key.to_string(),
            what: e.to_string(),
        }
    }

    /// A string metadata value.
    pub fn string(&self, key: &str) -> Result<String, LmError> {
        self.meta(key)?
            .to_string()
            .cloned()
            .map_err(|e| self.meta_err(key, e))
    }

    /// An integer metadata value of any width.
    pub fn usize(&self, key: &str) -> Result<usize, LmError> {
        use gguf_file::Value::*;
        let v = self.meta(key)?;
        let n: i128 = match v {
            U8(x) => *x as i128,
            I8(x) => *x as i128,
            U16(x) => *x as i128,
            I16(x) => *x as i128,
            U32(x) => *x as i128,
            I32(x) => *x as i128,
            U64(x) => *x as i128,
            I64(x) => *x as i128,
            other => return Err(self.meta_err(key, format!("expected an integer, got {other:?}"))),
        };
        usize::try_from(n).map_err(|_| self.meta_err(key, format!("out of range: {n}")))
    }

    /// A float metadata value.
    pub fn f32(&self, key: &str) -> Result<f32, LmError> {
        use gguf_file::Value::*;
        match self.meta(key)? {
            F32(x) => Ok(*x),
            F64(x) => Ok(*x as f32),
            other => Err(self.meta_err(key, format!("expected a float, got {other:?}"))),
        }
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<String>, LmError> {
        let arr = self
            .meta(key)?
            .to_vec()
            .map_err(|e| self.meta_err(key, e))?;
        arr.iter()
            .map(|v| v.to_string().cloned().map_err(|e| self.meta_err(key, e)))
            .collect()
    }

    /// An array of integers.
    pub fn ints(&self, key: &str) -> Result<Vec<i64>, LmError> {
        use gguf_file::Value::*;
        let arr = self
            .meta(key)?
            .to_vec()
            .map_err(|e| self.meta_err(key, e))?;
        arr.iter()
            .map(|v| match v {
                I32(x) => Ok(*x as i64),
                U32(x) => Ok(*x as i64),
                I64(x) => Ok(*x),
                U8(x) => Ok(*x as i64),
                I8(x) => Ok(*x as i64),
                other => Err(self.meta_err(key, format!("expected integers, got {other:?}"))),
            })
            .collect()
    }

    /// The llama hyper-parameters, checked for consistency with the embedding tensor.
    pub fn config(&self) -> Result<LlamaConfig, LmError> {
        let d_model = self.usize("llama.embedding_length")?;
        let n_head = self.usize("llama.attention.head_count")?;
        let n_kv_head = match self.usize("llama.attention.head_count_kv") {
            Ok(n) => n,
            Err(LmError::Metadata { what, .. }) if what == "missing" => n_head,
            Err(e) => return Err(e),
        };
        if n_head == 0 || n_kv_head == 0 || d_model % n_head != 0 || n_head % n_kv_head != 0 {
            return Err(self.meta_err(
                "llama.attention.head_count",
                format!("inconsistent: d_model {d_model}, {n_head} heads, {n_kv_head} kv heads"),
            ));
        }
        let head_dim = d_model / n_head;
        if let Ok(rd) = self.usize("llama.rope.dimension_count") {
            if rd != head_dim {
                return Err(LmError::Unsupported {
                    path: self.path.clone(),
                    what: format!("partial rotary embedding ({rd} of {head_dim} dimensions)"),
                });
            }
        }
        let embd = self.info("token_embd.weight")?;
        let dims = embd.shape.dims();
        if dims.len() != 2 || dims[1] != d_model {
            return Err(self.tensor_err(
                "token_embd.weight",
                format!("shape {dims:?}, expected [vocab, {d_model}]"),
            ));
        }
        let rope_base = match self.f32("llama.rope.freq_base") {
            Ok(b) => b,
            Err(LmError::Metadata { what, .. }) if what == "missing" => 10_000.0,
            Err(e) => return Err(e),
        };
        Ok(LlamaConfig {
            n_layer: self.usize("llama.block_count")?,
            d_model,
            n_head,
            n_kv_head,
            head_dim,
            d_ff: self.usize("llama.feed_forward_length")?,
            vocab: dims[0],
            rope_base,
            rms_eps: self.f32("llama.attention.layer_norm_rms_epsilon")?,
            context_length: self.usize("llama.context_length").unwrap_or(2048),
        })
    }

    fn tensor_err(&self, name: &str, what: impl std::fmt::Display) -> LmError {
        LmError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            what: what.to_string(),
        }
    }

    fn info(&self, name: &str) -> Result<&gguf_file::TensorInfo, LmError> {
        self.content
            .tensor_infos
            .get(name)
            .ok_or_else(|| self.tensor_err(name, "missing"))
    }

    /// Whether the file has a tensor of that name.
    pub fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads one tensor, dequantized to f32, checking its shape (candle order: outer dim first).
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor, LmError> {
        let info = self.info(name)?;
        if info.shape.dims() != shape {
            return Err(self.tensor_err(
                name,
                format!("shape {:?}, expected {shape:?}", info.shape.dims()),
            ));
        }
        let mut f = std::fs::File::open(&self.path).map_err(|e| self.tensor_err(name, e))?;
        let q = info
            .read(&mut f, self.content.tensor_data_offset, &Device::Cpu)
            .map_err(|e| self.tensor_err(name, e))?;
        let t = q
            .dequantize(&Device::Cpu)
            .map_err(|e| self.tensor_err(name, e))?;
        // Reject NaN / Inf weights here rather than producing NaN losses later.
        let bad = t
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.tensor_err(name, e))?
            .iter()
            .any(|x| !x.is_finite());
        if bad {
            return Err(self.tensor_err(name, "contains NaN or Inf"));
        }
        Ok(t)
    }
}
