//! A llama forward pass (RMSNorm, rotary attention with grouped key/value heads, SwiGLU) written
//! on candle tensors, with one hook point: the residual stream entering block L
//! (TransformerLens `blocks.L.hook_resid_pre`). The hook sees that tensor and may keep it,
//! replace it, or stop the pass there (harvesting needs only the blocks before L).
//!
//! Conventions of GGUF llama files: weights are stored `[out, in]`; the query and key weights are
//! permuted by the converter so the rotary embedding rotates adjacent pairs `(2i, 2i+1)` with
//! angle `pos * base^(-2i / head_dim)`; query head h reads key/value head `h / (n_head / n_kv_head)`;
//! without `output.weight` the output layer is the token embedding (tied).

use super::gguf::{GgufFile, LlamaConfig};
use super::LmError;
use candle_core::{DType, Device, Tensor, D};
use std::path::Path;

/// What the hook decides for the residual it was shown.
pub enum HookAction {
    /// Continue with the residual unchanged.
    Continue,
    /// Continue with this tensor instead (same shape `[batch, seq, d_model]`).
    Replace(Tensor),
    /// Stop the forward pass here (no logits are computed).
    Stop,
}

struct Block {
    attn_norm: Tensor,
    wq: Tensor, // [d, n_head*hd]
    wk: Tensor, // [d, n_kv*hd]
    wv: Tensor,
    wo: Tensor, // [n_head*hd, d]
    ffn_norm: Tensor,
    w_gate: Tensor, // [d, ff]
    w_up: Tensor,
    w_down: Tensor, // [ff, d]
}

/// A llama model with f32 weights on the CPU.
pub struct Llama {
    pub cfg: LlamaConfig,
    tok_embd: Tensor, // [vocab, d]
    blocks: Vec<Block>,
    out_norm: Tensor,
    w_out_t: Tensor, // [d, vocab]
}

fn transposed(t: Tensor) -> Result<Tensor, LmError> {
    Ok(t.t()?.contiguous()?)
}

impl Llama {
    /// Loads a llama GGUF, dequantizing every weight to f32.
    pub fn load(path: &Path) -> Result<Llama, LmError> {
        let g = GgufFile::open(path)?;
        Self::from_gguf(&g)
    }

    /// Builds the model from an opened GGUF.
    pub fn from_gguf(g: &GgufFile) -> Result<Llama, LmError> {
        let c = g.config()?;
        let (d, hd, ff) = (c.d_model, c.head_dim, c.d_ff);
        let tok_embd = g.tensor_f32("token_embd.weight", &[c.vocab, d])?;
        let mut blocks = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            blocks.push(Block {
                attn_norm: g.tensor_f32(&n("attn_norm"), &[d])?,
                wq: transposed(g.tensor_f32(&n("attn_q"), &[c.n_head * hd, d])?)?,
                wk: transposed(g.tensor_f32(&n("attn_k"), &[c.n_kv_head * hd, d])?)?,
                wv: transposed(g.tensor_f32(&n("attn_v"), &[c.n_kv_head * hd, d])?)?,
                wo: transposed(g.tensor_f32(&n("attn_output"), &[d, c.n_head * hd])?)?,
                ffn_norm: g.tensor_f32(&n("ffn_norm"), &[d])?,
                w_gate: transposed(g.tensor_f32(&n("ffn_gate"), &[ff, d])?)?,
                w_up: transposed(g.tensor_f32(&n("ffn_up"), &[ff, d])?)?,
                w_down: transposed(g.tensor_f32(&n("ffn_down"), &[d, ff])?)?,
            });
        }
        let out_norm = g.tensor_f32("output_norm.weight", &[d])?;
        let w_out_t = if g.has("output.weight") {
            transposed(g.tensor_f32("output.weight", &[c.vocab, d])?)?
        } else {
            transposed(tok_embd.clone())?
        };
        Ok(Llama {
            cfg: c,
            tok_embd,
            blocks,
            out_norm,
            w_out_t,
        })
    }

    /// The unembedding as `[d_model, vocab]` (column v is token v's output direction).
    pub fn unembedding(&self) -> &Tensor {
        &self.w_out_t
    }

    /// Token embeddings for a `[batch, seq]` block of token ids, as `[batch, seq, d_model]`.
    pub fn embed(&self, tokens: &[u32], batch: usize, seq: usize) -> Result<Tensor, LmError> {
        if tokens.len() != batch * seq || seq == 0 {
            return Err(LmError::Input(format!(
                "{} token ids for batch {batch} x seq {seq}",
                tokens.len()
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(LmError::Input(format!(
                "token id {bad} outside the vocabulary of {}",
                self.cfg.vocab
            )));
        }
        let ids = Tensor::from_slice(tokens, tokens.len(), &Device::Cpu)?;
        Ok(self
            .tok_embd
            .index_select(&ids, 0)?
            .reshape((batch, seq, self.cfg.d_model))?)
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor, LmError> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (ms + self.cfg.rms_eps as f64)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
    }

    /// cos / sin tables `[seq, 1, hd/2, 1]` for the interleaved rotary embedding.
    fn rope_tables(&self, seq: usize) -> Result<(Tensor, Tensor), LmError> {
        let half = self.cfg.head_dim / 2;
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for p in 0..seq {
            for i in 0..half {
                let freq =
                    (self.cfg.rope_base as f64).powf(-(2.0 * i as f64) / self.cfg.head_dim as f64);
                let a = p as f64 * freq;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let dev = &Device::Cpu;
        Ok((
            Tensor::from_vec(cos, (seq, 1, half, 1), dev)?,
            Tensor::from_vec(sin, (seq, 1, half, 1), dev)?,
        ))
    }

    /// x: [b, t, heads, hd] -> rotated, same shape.
    fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, LmError> {
        let (b, t, h, hd) = x.dims4()?;
        let x = x.reshape((b, t, h, hd / 2, 2))?;
        let x0 = x.narrow(4, 0, 1)?;
        let x1 = x.narrow(4, 1, 1)?;
        let r0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
        let r1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
        Ok(Tensor::cat(&[r0, r1], 4)?.reshape((b, t, h, hd))?)
    }

    fn block(
        &self,
        blk: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor, LmError> {
        let c = &self.cfg;
        let (b, t, d) = x.dims3()?;
        let (hd, nh, nkv) = (c.head_dim, c.n_head, c.n_kv_head);
        let group = nh / nkv;
        let h = self.rms_norm(x, &blk.attn_norm)?.reshape((b * t, d))?;
        let q = h.matmul(&blk.wq)?.reshape((b, t, nh, hd))?;
        let k = h.matmul(&blk.wk)?.reshape((b, t, nkv, hd))?;
        let v = h.matmul(&blk.wv)?.reshape((b, t, nkv, hd))?;
        let q = Self::rope(&q, cos, sin)?.transpose(1, 2)?.contiguous()?; // [b, nh, t, hd]
        let k = Self::rope(&k, cos, sin)?.transpose(1, 2)?; // [b, nkv, t, hd]
        let v = v.transpose(1, 2)?;
        let expand = |z: Tensor| -> Result<Tensor, LmError> {
            Ok(z.unsqueeze(2)?
                .expand((b, nkv, group, t, hd))?
                .reshape((b, nh, t, hd))?)
        };
        let k = expand(k)?;
        let v = expand(v)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let att = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(mask)?;
        let att = {
            let m = att.max_keepdim(D::Minus1)?;
            let e = att.broadcast_sub(&m)?.exp()?;
            let s = e.sum_keepdim(D::Minus1)?;
            e.broadcast_div(&s)?
        };
        let o = att
            .matmul(&v)? // [b, nh, t, hd]
            .transpose(1, 2)?
            .reshape((b * t, nh * hd))?
            .matmul(&blk.wo)?
            .reshape((b, t, d))?;
        let x = (x + o)?;
        let h = self.rms_norm(&x, &blk.ffn_norm)?.reshape((b * t, d))?;
        let g = h.matmul(&blk.w_gate)?.silu()?;
        let u = h.matmul(&blk.w_up)?;
        let f = (g * u)?.matmul(&blk.w_down)?.reshape((b, t, d))?;
        Ok((x + f)?)
    }

    fn causal_mask(t: usize) -> Result<Tensor, LmError> {
        let m: Vec<f32> = (0..t * t)
            .map(|i| {
                if i % t > i / t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Tensor::from_vec(m, (t, t), &Device::Cpu)?)
    }

    /// Runs blocks `from..to` on a residual `[batch, seq, d_model]` (positions start at 0).
    pub fn run_blocks(&self, x: Tensor, from: usize, to: usize) -> Result<Tensor, LmError> {
        if from > to || to > self.cfg.n_layer {
            return Err(LmError::Input(format!(
                "block range {from}..{to} outside 0..{}",
                self.cfg.n_layer
            )));
        }
        let (_, t, d) = x.dims3()?;
        if d != self.cfg.d_model || x.dtype() != DType::F32 {
            return Err(LmError::Input(format!(
                "residual of shape {:?} / {:?}, expected [batch, seq, {}] f32",
                x.dims(),
                x.dtype(),
                self.cfg.d_model
            )));
        }
        let (cos, sin) = self.rope_tables(t)?;
        let mask = Self::causal_mask(t)?;
        let mut x = x;
        for blk in &self.blocks[from..to] {
            x = self.block(blk, &x, &cos, &sin, &mask)?;
        }
        Ok(x)
    }

    /// Final norm and output layer: residual `[batch, seq, d]` -> logits `[batch, seq, vocab]`.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor, LmError> {
        let (b, t, d) = x.dims3()?;
        let h = self.final_norm(x)?.reshape((b * t, d))?;
        Ok(h.matmul(&self.w_out_t)?.reshape((b, t, self.cfg.vocab))?)
    }

    /// The final norm alone: residual `[.., d]` -> the output layer's input `[.., d]` (logits = this · unembedding).
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor, LmError> {
        self.rms_norm(x, &self.out_norm)
    }

    /// The full forward pass: logits `[batch, seq, vocab]`.
    pub fn forward(&self, tokens: &[u32], batch: usize, seq: usize) -> Result<Tensor, LmError> {
        let x = self.embed(tokens, batch, seq)?;
        let x = self.run_blocks(x, 0, self.cfg.n_layer)?;
        self.logits(&x)
    }

    /// The forward pass with a hook on the residual entering block `layer`
    /// (`layer == n_layer` hooks the input of the final norm). Returns the logits, or `None`
    /// when the hook stopped the pass.
    pub fn forward_hooked(
        &self,
        tokens: &[u32],
        batch: usize,
        seq: usize,
        layer: usize,
        hook: &mut dyn FnMut(&Tensor) -> Result<HookAction, LmError>,
    ) -> Result<Option<Tensor>, LmError> {
        if layer > self.cfg.n_layer {
            return Err(LmError::Input(format!(
                "hook layer {layer} outside 0..={}",
                self.cfg.n_layer
            )));
        }
        let x = self.embed(tokens, batch, seq)?;
        let x = self.run_blocks(x, 0, layer)?;
        let x = match hook(&x)? {
            HookAction::Continue => x,
            HookAction::Replace(r) => {
                if r.dims() != x.dims() {
                    return Err(LmError::Input(format!(
                        "hook replacement of shape {:?}, expected {:?}",
                        r.dims(),
                        x.dims()
                    )));
                }
                r
            }
            HookAction::Stop => return Ok(None),
        };
        let x = self.run_blocks(x, layer, self.cfg.n_layer)?;
        Ok(Some(self.logits(&x)?))
    }

    /// The residual stream entering block `layer` (`blocks.{layer}.hook_resid_pre`),
    /// `[batch, seq, d_model]`; runs only the blocks before it.
    pub fn resid_pre(
        &self,
        tokens: &[u32],
        batch: usize,
        seq: usize,
        layer: usize,
    ) -> Result<Tensor, LmError> {
        let mut out = None;
        self.forward_hooked(tokens, batch, seq, layer, &mut |x| {
            out = Some(x.clone());
            Ok(HookAction::Stop)
        })?;
        Ok(out.expect("the hook always runs"))
    }

    /// Continues a forward pass from the residual entering block `layer` to the logits.
    pub fn forward_from(&self, resid: Tensor, layer: usize) -> Result<Tensor, LmError> {
        let x = self.run_blocks(resid, layer, self.cfg.n_layer)?;
        self.logits(&x)
    }
}

/// Per-position next-token cross-entropy (nats) and log-probabilities, from logits
/// `[batch, seq, vocab]` and the token ids `[batch * seq]`: position p predicts token p+1, so
/// each context gives `seq - 1` losses. Returns (losses `[batch * (seq-1)]`, log-probs
/// `[batch, seq-1, vocab]`).
pub fn next_token_losses(logits: &Tensor, tokens: &[u32]) -> Result<(Vec<f32>, Tensor), LmError> {
    let (b, t, v) = logits.dims3()?;
    if tokens.len() != b * t || t < 2 {
        return Err(LmError::Input(format!(
            "{} tokens for logits of shape {:?}",
            tokens.len(),
            logits.dims()
        )));
    }
    let pred = logits.narrow(1, 0, t - 1)?;
    let m = pred.max_keepdim(D::Minus1)?;
    let shifted = pred.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?; // [b, t-1, v]
    let flat = logp.reshape((b * (t - 1), v))?;
    let targets: Vec<u32> = (0..b)
        .flat_map(|i| tokens[i * t + 1..(i + 1) * t].iter().copied())
        .collect();
    let idx = Tensor::from_vec(targets, (b * (t - 1), 1), &Device::Cpu)?;
    let picked = flat.gather(&idx, 1)?.squeeze(1)?;
    let losses = picked.neg()?.to_vec1::<f32>()?;
    Ok((losses, logp))
}
