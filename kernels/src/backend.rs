//! One interface, several devices: the ops as methods on device buffers, so the training loop runs unchanged on any.
//!
//! [`CpuBackend`] runs the `fast` CPU ops (or, in [`CpuMode::Reference`], the plain reference loops, for measuring and
//! checking the fast path). A CUDA backend implements the same trait.

use crate::ops::{self, backward, resample, Activation, AdamHyper, BatchStats, Shape};
use thiserror::Error;

/// Why a backend could not do what was asked.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The device or its driver is not present on this machine.
    #[error("backend {backend} is not available: {reason}")]
    Unavailable { backend: String, reason: String },
    /// The device failed while working.
    #[error("{backend} device error: {message}")]
    Device { backend: String, message: String },
    /// A buffer had the wrong length for the shape.
    #[error("shape mismatch: {0}")]
    Shape(String),
}

/// The four parameters of a dictionary (or their gradients, or Adam moments) as buffers of one backend.
#[derive(Clone, Debug, PartialEq)]
pub struct Params<B> {
    pub w_enc: B,
    pub b_enc: B,
    pub w_dec: B,
    pub b_dec: B,
}

impl<B> Params<B> {
    pub fn try_map<C, E>(&self, mut f: impl FnMut(&B) -> Result<C, E>) -> Result<Params<C>, E> {
        Ok(Params {
            w_enc: f(&self.w_enc)?,
            b_enc: f(&self.b_enc)?,
            w_dec: f(&self.w_dec)?,
            b_dec: f(&self.b_dec)?,
        })
    }
}

impl Params<Vec<f32>> {
    /// The host parameters as the ops borrow them.
    pub fn weights(&self) -> backward::Weights<'_> {
        backward::Weights {
            w_enc: &self.w_enc,
            b_enc: &self.b_enc,
            w_dec: &self.w_dec,
            b_dec: &self.b_dec,
        }
    }
    /// The host gradient buffers as the ops overwrite them.
    pub fn grads_mut(&mut self) -> backward::GradsMut<'_> {
        backward::GradsMut {
            w_enc: &mut self.w_enc,
            b_enc: &mut self.b_enc,
            w_dec: &mut self.w_dec,
            b_dec: &mut self.b_dec,
        }
    }
    /// Zero buffers of the sizes of a dictionary of shape `s`.
    pub fn zeros(s: Shape) -> Self {
        Params {
            w_enc: vec![0.0; s.d_in * s.d_sae],
            b_enc: vec![0.0; s.d_sae],
            w_dec: vec![0.0; s.d_sae * s.d_in],
            b_dec: vec![0.0; s.d_in],
        }
    }
}

/// The SAE ops on one device. Buffers live on the device; `upload` / `download` move data to and from the host.
pub trait Backend {
    /// A buffer of f32 on the device.
    type Buf;
    /// A name for tables and logs (e.g. "cpu", "cpu-reference", "cuda:0 NVIDIA H100").
    fn name(&self) -> String;
    fn upload(&self, data: &[f32]) -> Result<Self::Buf, BackendError>;
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>, BackendError>;
    /// Overwrites a buffer of the same length with host data.
    fn write(&self, buf: &mut Self::Buf, data: &[f32]) -> Result<(), BackendError>;
    fn zeros(&self, len: usize) -> Result<Self::Buf, BackendError>;
    /// Waits until every op queued so far has finished (a no-op where ops run synchronously, as on the CPU): the
    /// training loop's per-phase clock calls it so that a phase's time is its own, not the launch of the next one.
    fn sync(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// f = act((x − b_dec)·W_enc + b_enc).
    fn encode(
        &self,
        s: Shape,
        act: Activation,
        x: &Self::Buf,
        p: &Params<Self::Buf>,
        f: &mut Self::Buf,
    ) -> Result<(), BackendError>;
    /// x̂ = f·W_dec + b_dec.
    fn decode(
        &self,
        s: Shape,
        f: &Self::Buf,
        p: &Params<Self::Buf>,
        xhat: &mut Self::Buf,
    ) -> Result<(), BackendError>;
    /// Gradients of mean ‖x − x̂‖² + l1·mean ‖f‖₁ into `g`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        s: Shape,
        l1: f32,
        x: &Self::Buf,
        f: &Self::Buf,
        xhat: &Self::Buf,
        p: &Params<Self::Buf>,
        g: &mut Params<Self::Buf>,
    ) -> Result<(), BackendError>;
    /// One Adam step on every parameter; decoder rows get the gradient projection and renormalisation.
    fn adam(
        &self,
        s: Shape,
        h: AdamHyper,
        p: &mut Params<Self::Buf>,
        g: &mut Params<Self::Buf>,
        m: &mut Params<Self::Buf>,
        v: &mut Params<Self::Buf>,
    ) -> Result<(), BackendError>;
    /// Squared error, L0 and L1 sums of the batch; `fire_counts` (host, [d_sae]) incremented per firing token.
    fn batch_stats(
        &self,
        s: Shape,
        x: &Self::Buf,
        xhat: &Self::Buf,
        f: &Self::Buf,
        fire_counts: &mut [u32],
    ) -> Result<BatchStats, BackendError>;
    /// ‖x_b − x̂_b‖² per token, on the host.
    fn per_token_sq_err(
        &self,
        s: Shape,
        x: &Self::Buf,
        xhat: &Self::Buf,
    ) -> Result<Vec<f32>, BackendError>;
    /// Gives each dead feature its new unit direction (`dirs`, n_dead × d_in, host) and resets its Adam moments.
    /// The encoder column gets 0.2 × the mean norm of the alive encoder columns.
    fn resample(
        &self,
        s: Shape,
        dead: &[usize],
        dirs: &[f32],
        p: &mut Params<Self::Buf>,
        m: &mut Params<Self::Buf>,
        v: &mut Params<Self::Buf>,
    ) -> Result<(), BackendError>;

    /// JumpReLU's activation: f = a·1[a > exp(t_i)] on the ReLU'd pre-activations a (encode's output with
    /// `Activation::Relu`), t = log θ [d_sae] (ops::threshold).
    ///
    /// The default runs the fast CPU op on host copies: correct on every backend, and the path a device takes until
    /// it has its own kernel for the op.
    fn threshold(
        &self,
        s: Shape,
        a: &Self::Buf,
        log_theta: &Self::Buf,
        f: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        let ht = self.download(log_theta)?;
        len_check("log θ", ht.len(), s.d_sae)?;
        on_host_codes(self, s, a, f, |a, f| ops::threshold::fast(s, a, &ht, f))
    }
    /// JumpReLU's pseudo-gradient of the loss with respect to t = log θ into `g` [d_sae] (ops::threshold).
    #[allow(clippy::too_many_arguments)]
    fn threshold_grad(
        &self,
        s: Shape,
        eps: f32,
        l0: f32,
        a: &Self::Buf,
        log_theta: &Self::Buf,
        x: &Self::Buf,
        xhat: &Self::Buf,
        p: &Params<Self::Buf>,
        g: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        let (ha, ht) = (self.download(a)?, self.download(log_theta)?);
        let (hx, hxh, hw) = (
            self.download(x)?,
            self.download(xhat)?,
            self.download(&p.w_dec)?,
        );
        len_check("a", ha.len(), s.batch * s.d_sae)?;
        len_check("log θ", ht.len(), s.d_sae)?;
        len_check("x", hx.len(), s.batch * s.d_in)?;
        len_check("x̂", hxh.len(), s.batch * s.d_in)?;
        len_check("params.W_dec", hw.len(), s.d_sae * s.d_in)?;
        let mut hg = self.download(g)?;
        len_check("∂log θ", hg.len(), s.d_sae)?;
        let inp = ops::threshold::GradInputs {
            a: &ha,
            log_theta: &ht,
            x: &hx,
            xhat: &hxh,
            w_dec: &hw,
            eps,
            l0,
        };
        ops::threshold::grad_fast(s, inp, &mut hg);
        self.write(g, &hg)
    }
    /// BatchTopK's selection: keeps the k·batch largest values of a over the whole batch, zeroes the rest, and
    /// returns the smallest kept value (ops::batchtopk). The default runs on host copies, as for `threshold`.
    fn batch_topk(
        &self,
        s: Shape,
        k: usize,
        a: &Self::Buf,
        f: &mut Self::Buf,
    ) -> Result<f32, BackendError> {
        on_host_codes(self, s, a, f, |a, f| ops::batchtopk::fast(s, k, a, f))
    }
    /// TopK on ReLU'd pre-activations a already computed: f = the k largest of each row (ops::encode::topk_*).
    /// The default runs on host copies, as for `threshold`.
    fn topk(
        &self,
        s: Shape,
        k: usize,
        a: &Self::Buf,
        f: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        on_host_codes(self, s, a, f, |a, f| ops::encode::topk_fast(s, k, a, f))
    }
    /// Matryoshka: `out` = f in the first m columns, 0 elsewhere (ops::matryoshka). Default on host copies.
    fn prefix_mask(
        &self,
        s: Shape,
        m: usize,
        f: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        prefix_check(s, m)?;
        on_host_codes(self, s, f, out, |f, o| {
            ops::matryoshka::prefix_mask_fast(s, m, f, o)
        })
    }
    /// acc += g for every parameter (Matryoshka sums its prefixes' gradients). Default on host copies.
    fn accumulate(
        &self,
        s: Shape,
        acc: &mut Params<Self::Buf>,
        g: &Params<Self::Buf>,
    ) -> Result<(), BackendError> {
        let _ = s;
        for (a, b) in [
            (&mut acc.w_enc, &g.w_enc),
            (&mut acc.b_enc, &g.b_enc),
            (&mut acc.w_dec, &g.w_dec),
            (&mut acc.b_dec, &g.b_dec),
        ] {
            let (mut ha, hb) = (self.download(a)?, self.download(b)?);
            len_check("accumulate", hb.len(), ha.len())?;
            ops::matryoshka::accumulate_fast(&mut ha, &hb);
            self.write(a, &ha)?;
        }
        Ok(())
    }
    /// AuxK: adds the auxiliary loss's gradients to `g` and returns the loss (ops::auxk). `dead` on the host.
    /// Default on host copies.
    #[allow(clippy::too_many_arguments)]
    fn auxk(
        &self,
        s: Shape,
        k_aux: usize,
        coeff: f32,
        a: &Self::Buf,
        dead: &[usize],
        x: &Self::Buf,
        xhat: &Self::Buf,
        p: &Params<Self::Buf>,
        g: &mut Params<Self::Buf>,
    ) -> Result<f64, BackendError> {
        let hp = p.try_map(|b| self.download(b))?;
        let mut hg = g.try_map(|b| self.download(b))?;
        let (ha, hx, hxh) = (self.download(a)?, self.download(x)?, self.download(xhat)?);
        let c = ArgCheck::<Vec<f32>> { s, len: Vec::len };
        c.params(&hp, "params")?;
        c.params(&hg, "grads")?;
        len_check("a", ha.len(), s.batch * s.d_sae)?;
        len_check("x", hx.len(), s.batch * s.d_in)?;
        len_check("x̂", hxh.len(), s.batch * s.d_in)?;
        if let Some(&bad) = dead.iter().find(|&&i| i >= s.d_sae) {
            return Err(BackendError::Shape(format!(
                "dead feature {bad} ≥ d_sae {}",
                s.d_sae
            )));
        }
        let loss = cpu_auxk(
            s,
            CpuMode::Fast,
            k_aux,
            coeff,
            [&ha, &hx, &hxh],
            dead,
            &hp,
            &mut hg,
        );
        self.write(&mut g.w_enc, &hg.w_enc)?;
        self.write(&mut g.b_enc, &hg.b_enc)?;
        self.write(&mut g.w_dec, &hg.w_dec)?;
        self.write(&mut g.b_dec, &hg.b_dec)?;
        Ok(loss)
    }
    /// One plain Adam step on a parameter vector outside [`Params`] (JumpReLU's log θ). The default runs on host
    /// copies, as for `threshold`.
    fn adam_vec(
        &self,
        h: AdamHyper,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        let (mut hp, hg) = (self.download(p)?, self.download(g)?);
        let (mut hm, mut hv) = (self.download(m)?, self.download(v)?);
        for (what, n) in [("∂", hg.len()), ("m", hm.len()), ("v", hv.len())] {
            len_check(what, n, hp.len())?;
        }
        ops::adam::fast(h, &mut hp, &hg, &mut hm, &mut hv);
        self.write(p, &hp)?;
        self.write(m, &hm)?;
        self.write(v, &hv)
    }
    /// Gated's encode (ops::gated): π_gate = (x − b_dec)·W_enc + b_gate, with b_gate in `p.b_enc`, and
    /// f = 1[π_gate > 0]·ReLU(π_mag); `mag` = [r_mag, b_mag]. The default runs on host copies, as for `threshold`.
    fn gated_encode(
        &self,
        s: Shape,
        x: &Self::Buf,
        p: &Params<Self::Buf>,
        mag: [&Self::Buf; 2],
        pi_gate: &mut Self::Buf,
        f: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        let hp = p.try_map(|b| self.download(b))?;
        let (hx, hr, hb) = (
            self.download(x)?,
            self.download(mag[0])?,
            self.download(mag[1])?,
        );
        let (mut hpg, mut hf) = (self.download(pi_gate)?, self.download(f)?);
        cpu_gated_encode(s, CpuMode::Fast, &hx, &hp, [&hr, &hb], &mut hpg, &mut hf)?;
        self.write(pi_gate, &hpg)?;
        self.write(f, &hf)
    }
    /// Gated's backward (ops::gated): the gradients of its loss (reconstruction, λ·L1 of the gate, the auxiliary
    /// reconstruction through a stopped decoder) into `g` and `g_mag` = [∂r_mag, ∂b_mag], overwritten; returns the
    /// batch's sums of the auxiliary squared error and of the gate's L1. The default runs on host copies.
    #[allow(clippy::too_many_arguments)]
    fn gated_backward(
        &self,
        s: Shape,
        l1: f32,
        [x, pi_gate, f, xhat]: [&Self::Buf; 4],
        p: &Params<Self::Buf>,
        mag: [&Self::Buf; 2],
        g: &mut Params<Self::Buf>,
        g_mag: [&mut Self::Buf; 2],
    ) -> Result<ops::gated::Sums, BackendError> {
        let hp = p.try_map(|b| self.download(b))?;
        let mut hg = g.try_map(|b| self.download(b))?;
        let [hx, hpg, hf, hxh] = [x, pi_gate, f, xhat].map(|b| self.download(b));
        let (hx, hpg, hf, hxh) = (hx?, hpg?, hf?, hxh?);
        let (hr, hb) = (self.download(mag[0])?, self.download(mag[1])?);
        let [gr, gb] = g_mag;
        let (mut hgr, mut hgb) = (self.download(gr)?, self.download(gb)?);
        let aux = cpu_gated_backward(
            s,
            CpuMode::Fast,
            l1,
            [&hx, &hpg, &hf, &hxh],
            &hp,
            [&hr, &hb],
            &mut hg,
            [&mut hgr, &mut hgb],
        )?;
        self.write(&mut g.w_enc, &hg.w_enc)?;
        self.write(&mut g.b_enc, &hg.b_enc)?;
        self.write(&mut g.w_dec, &hg.w_dec)?;
        self.write(&mut g.b_dec, &hg.b_dec)?;
        self.write(gr, &hgr)?;
        self.write(gb, &hgb)?;
        Ok(aux)
    }
}

/// Gated's encode on host vectors, in either CPU mode, after the argument checks every backend shares.
fn cpu_gated_encode(
    s: Shape,
    mode: CpuMode,
    x: &[f32],
    p: &Params<Vec<f32>>,
    [r_mag, b_mag]: [&[f32]; 2],
    pi_gate: &mut [f32],
    f: &mut [f32],
) -> Result<(), BackendError> {
    check(s).params(p, "params")?;
    len_check("x", x.len(), s.batch * s.d_in)?;
    len_check("r_mag", r_mag.len(), s.d_sae)?;
    len_check("b_mag", b_mag.len(), s.d_sae)?;
    len_check("π_gate", pi_gate.len(), s.batch * s.d_sae)?;
    len_check("f", f.len(), s.batch * s.d_sae)?;
    let w = p.weights();
    let m = ops::gated::Mag { r_mag, b_mag };
    match mode {
        CpuMode::Fast => ops::gated::encode_fast(s, x, w, m, pi_gate, f),
        CpuMode::Reference => ops::gated::encode_reference(s, x, w, m, pi_gate, f),
    }
    Ok(())
}

/// Gated's backward on host vectors, in either CPU mode, after the shared argument checks.
#[allow(clippy::too_many_arguments)]
fn cpu_gated_backward(
    s: Shape,
    mode: CpuMode,
    l1: f32,
    [x, pi_gate, f, xhat]: [&[f32]; 4],
    p: &Params<Vec<f32>>,
    [r_mag, b_mag]: [&[f32]; 2],
    g: &mut Params<Vec<f32>>,
    [g_r, g_b]: [&mut [f32]; 2],
) -> Result<ops::gated::Sums, BackendError> {
    let c = check(s);
    c.params(p, "params")?;
    c.params(g, "grads")?;
    gated_backward_check(
        s,
        [x, xhat, pi_gate, f, r_mag, b_mag, g_r, g_b].map(<[f32]>::len),
    )?;
    let i = ops::gated::BackInputs {
        x,
        pi_gate,
        f,
        xhat,
        l1,
    };
    let w = p.weights();
    let gm = g.grads_mut();
    let m = ops::gated::Mag { r_mag, b_mag };
    let mg = ops::gated::MagGradsMut {
        r_mag: g_r,
        b_mag: g_b,
    };
    Ok(match mode {
        CpuMode::Fast => ops::gated::backward_fast(s, i, w, m, gm, mg),
        CpuMode::Reference => ops::gated::backward_reference(s, i, w, m, gm, mg),
    })
}

/// The lengths Gated's backward checks besides its parameter sets, on every backend:
/// [x, x̂, π_gate, f, r_mag, b_mag, ∂r_mag, ∂b_mag].
pub(crate) fn gated_backward_check(s: Shape, lens: [usize; 8]) -> Result<(), BackendError> {
    let (bd, bf, f) = (s.batch * s.d_in, s.batch * s.d_sae, s.d_sae);
    let names = [
        "x", "x̂", "π_gate", "f", "r_mag", "b_mag", "∂r_mag", "∂b_mag",
    ];
    for ((what, n), want) in names
        .into_iter()
        .zip(lens)
        .zip([bd, bd, bf, bf, f, f, f, f])
    {
        len_check(what, n, want)?;
    }
    Ok(())
}

/// AuxK on host vectors, in either CPU mode.
#[allow(clippy::too_many_arguments)]
fn cpu_auxk(
    s: Shape,
    mode: CpuMode,
    k_aux: usize,
    coeff: f32,
    [a, x, xhat]: [&Vec<f32>; 3],
    dead: &[usize],
    p: &Params<Vec<f32>>,
    g: &mut Params<Vec<f32>>,
) -> f64 {
    let i = ops::auxk::AuxInputs {
        a,
        dead,
        x,
        xhat,
        k_aux,
        coeff,
    };
    let w = p.weights();
    let gm = g.grads_mut();
    match mode {
        CpuMode::Fast => ops::auxk::fast(s, i, w, gm),
        CpuMode::Reference => ops::auxk::reference(s, i, w, gm),
    }
}

/// The default path of the ops a device has no kernel for: `op` on host copies of the codes-shaped `a` and `out`
/// ([batch, d_sae] both), and `out` written back.
fn on_host_codes<B: Backend + ?Sized, T>(
    be: &B,
    s: Shape,
    a: &B::Buf,
    out: &mut B::Buf,
    op: impl FnOnce(&[f32], &mut [f32]) -> T,
) -> Result<T, BackendError> {
    let ha = be.download(a)?;
    len_check("a", ha.len(), s.batch * s.d_sae)?;
    let mut ho = be.download(out)?;
    len_check("out", ho.len(), s.batch * s.d_sae)?;
    let t = op(&ha, &mut ho);
    be.write(out, &ho)?;
    Ok(t)
}

/// A Matryoshka prefix lies inside the dictionary.
pub(crate) fn prefix_check(s: Shape, m: usize) -> Result<(), BackendError> {
    if m > s.d_sae {
        Err(BackendError::Shape(format!(
            "prefix {m} > d_sae {}",
            s.d_sae
        )))
    } else {
        Ok(())
    }
}

type AdamFn = fn(AdamHyper, &mut [f32], &[f32], &mut [f32], &mut [f32]);
type DecoderAdamFn = fn(AdamHyper, usize, &mut [f32], &mut [f32], &mut [f32], &mut [f32]);

/// Which CPU ops to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMode {
    /// gemm + rayon, sparse where f is sparse.
    Fast,
    /// The plain reference loops (slow; for checking and for measuring the fast path).
    Reference,
}

/// The CPU backend: buffers are `Vec<f32>`.
#[derive(Clone, Copy, Debug)]
pub struct CpuBackend {
    pub mode: CpuMode,
}

impl CpuBackend {
    pub fn fast() -> Self {
        CpuBackend {
            mode: CpuMode::Fast,
        }
    }
    pub fn reference() -> Self {
        CpuBackend {
            mode: CpuMode::Reference,
        }
    }
}

/// A buffer's length against the shape's: every backend checks its inputs the same way, with the same message.
pub(crate) fn len_check(what: &str, got: usize, want: usize) -> Result<(), BackendError> {
    if got == want {
        Ok(())
    } else {
        Err(BackendError::Shape(format!(
            "{what}: {got} values, expected {want}"
        )))
    }
}

/// The argument checks every backend runs before an op, so that all of them refuse the same bad input with the
/// same message. `len` says how long one of the backend's buffers is (host vectors, device slices).
pub(crate) struct ArgCheck<T> {
    pub s: Shape,
    pub len: fn(&T) -> usize,
}

impl<T> ArgCheck<T> {
    fn buf(&self, what: &str, b: &T, want: usize) -> Result<(), BackendError> {
        len_check(what, (self.len)(b), want)
    }
    /// Every tensor of a parameter set (parameters, gradients or Adam moments).
    pub fn params(&self, p: &Params<T>, what: &str) -> Result<(), BackendError> {
        let s = self.s;
        self.buf(&format!("{what}.W_enc"), &p.w_enc, s.d_in * s.d_sae)?;
        self.buf(&format!("{what}.b_enc"), &p.b_enc, s.d_sae)?;
        self.buf(&format!("{what}.W_dec"), &p.w_dec, s.d_sae * s.d_in)?;
        self.buf(&format!("{what}.b_dec"), &p.b_dec, s.d_in)
    }
    fn x(&self, what: &str, x: &T) -> Result<(), BackendError> {
        self.buf(what, x, self.s.batch * self.s.d_in)
    }
    fn f(&self, f: &T) -> Result<(), BackendError> {
        self.buf("f", f, self.s.batch * self.s.d_sae)
    }
    pub fn encode(&self, p: &Params<T>, x: &T, f: &T) -> Result<(), BackendError> {
        self.params(p, "params")?;
        self.x("x", x)?;
        self.f(f)
    }
    pub fn decode(&self, p: &Params<T>, f: &T, xhat: &T) -> Result<(), BackendError> {
        self.params(p, "params")?;
        self.f(f)?;
        self.x("x̂", xhat)
    }
    pub fn backward(
        &self,
        p: &Params<T>,
        g: &Params<T>,
        [x, f, xhat]: [&T; 3],
    ) -> Result<(), BackendError> {
        self.params(p, "params")?;
        self.params(g, "grads")?;
        self.x("x", x)?;
        self.f(f)?;
        self.x("x̂", xhat)
    }
    pub fn adam(&self, [p, g, m, v]: [&Params<T>; 4]) -> Result<(), BackendError> {
        for (what, q) in [("params", p), ("grads", g), ("m", m), ("v", v)] {
            self.params(q, what)?;
        }
        Ok(())
    }
    pub fn batch_stats(
        &self,
        x: &T,
        xhat: &T,
        f: &T,
        fire_counts: usize,
    ) -> Result<(), BackendError> {
        self.x("x", x)?;
        self.x("x̂", xhat)?;
        self.f(f)?;
        len_check("fire counts", fire_counts, self.s.d_sae)
    }
    pub fn per_token_sq_err(&self, x: &T, xhat: &T) -> Result<(), BackendError> {
        self.x("x", x)?;
        self.x("x̂", xhat)
    }
    /// Resampling: parameters, moments, one direction per dead feature, and dead indices inside the dictionary.
    pub fn resample(
        &self,
        [p, m, v]: [&Params<T>; 3],
        dead: &[usize],
        dirs: usize,
    ) -> Result<(), BackendError> {
        self.params(p, "params")?;
        self.params(m, "m")?;
        self.params(v, "v")?;
        len_check("directions", dirs, dead.len() * self.s.d_in)?;
        match dead.iter().find(|&&i| i >= self.s.d_sae) {
            Some(&bad) => Err(BackendError::Shape(format!(
                "dead feature {bad} ≥ d_sae {}",
                self.s.d_sae
            ))),
            None => Ok(()),
        }
    }
}

fn check(s: Shape) -> ArgCheck<Vec<f32>> {
    ArgCheck { s, len: Vec::len }
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;

    fn name(&self) -> String {
        match self.mode {
            CpuMode::Fast => "cpu".into(),
            CpuMode::Reference => "cpu-reference".into(),
        }
    }
    fn upload(&self, data: &[f32]) -> Result<Vec<f32>, BackendError> {
        Ok(data.to_vec())
    }
    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>, BackendError> {
        Ok(buf.clone())
    }
    fn write(&self, buf: &mut Vec<f32>, data: &[f32]) -> Result<(), BackendError> {
        len_check("write", data.len(), buf.len())?;
        buf.copy_from_slice(data);
        Ok(())
    }
    fn zeros(&self, len: usize) -> Result<Vec<f32>, BackendError> {
        Ok(vec![0.0; len])
    }
    fn encode(
        &self,
        s: Shape,
        act: Activation,
        x: &Vec<f32>,
        p: &Params<Vec<f32>>,
        f: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        check(s).encode(p, x, f)?;
        match self.mode {
            CpuMode::Fast => ops::encode::fast(s, act, x, &p.w_enc, &p.b_enc, &p.b_dec, f),
            CpuMode::Reference => {
                ops::encode::reference(s, act, x, &p.w_enc, &p.b_enc, &p.b_dec, f)
            }
        }
        Ok(())
    }
    fn decode(
        &self,
        s: Shape,
        f: &Vec<f32>,
        p: &Params<Vec<f32>>,
        xhat: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        check(s).decode(p, f, xhat)?;
        match self.mode {
            CpuMode::Fast => ops::decode::fast(s, f, &p.w_dec, &p.b_dec, xhat),
            CpuMode::Reference => ops::decode::reference(s, f, &p.w_dec, &p.b_dec, xhat),
        }
        Ok(())
    }
    fn backward(
        &self,
        s: Shape,
        l1: f32,
        x: &Vec<f32>,
        f: &Vec<f32>,
        xhat: &Vec<f32>,
        p: &Params<Vec<f32>>,
        g: &mut Params<Vec<f32>>,
    ) -> Result<(), BackendError> {
        check(s).backward(p, g, [x, f, xhat])?;
        let w = p.weights();
        let gm = g.grads_mut();
        match self.mode {
            CpuMode::Fast => backward::fast(s, x, f, xhat, l1, w, gm),
            CpuMode::Reference => backward::reference(s, x, f, xhat, l1, w, gm),
        }
        Ok(())
    }
    fn adam(
        &self,
        s: Shape,
        h: AdamHyper,
        p: &mut Params<Vec<f32>>,
        g: &mut Params<Vec<f32>>,
        m: &mut Params<Vec<f32>>,
        v: &mut Params<Vec<f32>>,
    ) -> Result<(), BackendError> {
        check(s).adam([p, g, m, v])?;
        let (step, dec): (AdamFn, DecoderAdamFn) = match self.mode {
            CpuMode::Fast => (ops::adam::fast, ops::adam::decoder_fast),
            CpuMode::Reference => (ops::adam::reference, ops::adam::decoder_reference),
        };
        step(h, &mut p.w_enc, &g.w_enc, &mut m.w_enc, &mut v.w_enc);
        step(h, &mut p.b_enc, &g.b_enc, &mut m.b_enc, &mut v.b_enc);
        step(h, &mut p.b_dec, &g.b_dec, &mut m.b_dec, &mut v.b_dec);
        dec(
            h,
            s.d_in,
            &mut p.w_dec,
            &mut g.w_dec,
            &mut m.w_dec,
            &mut v.w_dec,
        );
        Ok(())
    }
    fn batch_stats(
        &self,
        s: Shape,
        x: &Vec<f32>,
        xhat: &Vec<f32>,
        f: &Vec<f32>,
        fire_counts: &mut [u32],
    ) -> Result<BatchStats, BackendError> {
        check(s).batch_stats(x, xhat, f, fire_counts.len())?;
        Ok(match self.mode {
            CpuMode::Fast => ops::reduce::fast(s, x, xhat, f, fire_counts),
            CpuMode::Reference => ops::reduce::reference(s, x, xhat, f, fire_counts),
        })
    }
    fn per_token_sq_err(
        &self,
        s: Shape,
        x: &Vec<f32>,
        xhat: &Vec<f32>,
    ) -> Result<Vec<f32>, BackendError> {
        check(s).per_token_sq_err(x, xhat)?;
        let mut out = vec![0.0; s.batch];
        ops::reduce::per_token_sq_err(s, x, xhat, &mut out);
        Ok(out)
    }
    fn resample(
        &self,
        s: Shape,
        dead: &[usize],
        dirs: &[f32],
        p: &mut Params<Vec<f32>>,
        m: &mut Params<Vec<f32>>,
        v: &mut Params<Vec<f32>>,
    ) -> Result<(), BackendError> {
        check(s).resample([p, m, v], dead, dirs.len())?;
        let scale = 0.2 * resample::mean_alive_encoder_norm(s, &p.w_enc, dead);
        let t = resample::ResampleTargets {
            w_enc: &mut p.w_enc,
            b_enc: &mut p.b_enc,
            w_dec: &mut p.w_dec,
            m_w_enc: &mut m.w_enc,
            v_w_enc: &mut v.w_enc,
            m_b_enc: &mut m.b_enc,
            v_b_enc: &mut v.b_enc,
            m_w_dec: &mut m.w_dec,
            v_w_dec: &mut v.w_dec,
        };
        match self.mode {
            CpuMode::Fast => resample::fast(s, dead, dirs, scale, t),
            CpuMode::Reference => resample::reference(s, dead, dirs, scale, t),
        }
        Ok(())
    }
    fn threshold(
        &self,
        s: Shape,
        a: &Vec<f32>,
        log_theta: &Vec<f32>,
        f: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        len_check("a", a.len(), s.batch * s.d_sae)?;
        len_check("log θ", log_theta.len(), s.d_sae)?;
        len_check("f", f.len(), s.batch * s.d_sae)?;
        match self.mode {
            CpuMode::Fast => ops::threshold::fast(s, a, log_theta, f),
            CpuMode::Reference => ops::threshold::reference(s, a, log_theta, f),
        }
        Ok(())
    }
    fn threshold_grad(
        &self,
        s: Shape,
        eps: f32,
        l0: f32,
        a: &Vec<f32>,
        log_theta: &Vec<f32>,
        x: &Vec<f32>,
        xhat: &Vec<f32>,
        p: &Params<Vec<f32>>,
        g: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        len_check("a", a.len(), s.batch * s.d_sae)?;
        len_check("log θ", log_theta.len(), s.d_sae)?;
        len_check("x", x.len(), s.batch * s.d_in)?;
        len_check("x̂", xhat.len(), s.batch * s.d_in)?;
        len_check("params.W_dec", p.w_dec.len(), s.d_sae * s.d_in)?;
        len_check("∂log θ", g.len(), s.d_sae)?;
        let inp = ops::threshold::GradInputs {
            a,
            log_theta,
            x,
            xhat,
            w_dec: &p.w_dec,
            eps,
            l0,
        };
        match self.mode {
            CpuMode::Fast => ops::threshold::grad_fast(s, inp, g),
            CpuMode::Reference => ops::threshold::grad_reference(s, inp, g),
        }
        Ok(())
    }
    fn batch_topk(
        &self,
        s: Shape,
        k: usize,
        a: &Vec<f32>,
        f: &mut Vec<f32>,
    ) -> Result<f32, BackendError> {
        len_check("a", a.len(), s.batch * s.d_sae)?;
        len_check("f", f.len(), s.batch * s.d_sae)?;
        Ok(match self.mode {
            CpuMode::Fast => ops::batchtopk::fast(s, k, a, f),
            CpuMode::Reference => ops::batchtopk::reference(s, k, a, f),
        })
    }
    fn adam_vec(
        &self,
        h: AdamHyper,
        p: &mut Vec<f32>,
        g: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        for (what, n) in [("∂", g.len()), ("m", m.len()), ("v", v.len())] {
            len_check(what, n, p.len())?;
        }
        match self.mode {
            CpuMode::Fast => ops::adam::fast(h, p, g, m, v),
            CpuMode::Reference => ops::adam::reference(h, p, g, m, v),
        }
        Ok(())
    }
    fn topk(&self, s: Shape, k: usize, a: &Vec<f32>, f: &mut Vec<f32>) -> Result<(), BackendError> {
        len_check("a", a.len(), s.batch * s.d_sae)?;
        len_check("f", f.len(), s.batch * s.d_sae)?;
        match self.mode {
            CpuMode::Fast => ops::encode::topk_fast(s, k, a, f),
            CpuMode::Reference => ops::encode::topk_reference(s, k, a, f),
        }
        Ok(())
    }
    fn prefix_mask(
        &self,
        s: Shape,
        m: usize,
        f: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        len_check("f", f.len(), s.batch * s.d_sae)?;
        len_check("out", out.len(), s.batch * s.d_sae)?;
        prefix_check(s, m)?;
        match self.mode {
            CpuMode::Fast => ops::matryoshka::prefix_mask_fast(s, m, f, out),
            CpuMode::Reference => ops::matryoshka::prefix_mask_reference(s, m, f, out),
        }
        Ok(())
    }
    fn accumulate(
        &self,
        s: Shape,
        acc: &mut Params<Vec<f32>>,
        g: &Params<Vec<f32>>,
    ) -> Result<(), BackendError> {
        check(s).params(acc, "accumulator")?;
        check(s).params(g, "grads")?;
        let add = match self.mode {
            CpuMode::Fast => ops::matryoshka::accumulate_fast,
            CpuMode::Reference => ops::matryoshka::accumulate_reference,
        };
        add(&mut acc.w_enc, &g.w_enc);
        add(&mut acc.b_enc, &g.b_enc);
        add(&mut acc.w_dec, &g.w_dec);
        add(&mut acc.b_dec, &g.b_dec);
        Ok(())
    }
    fn auxk(
        &self,
        s: Shape,
        k_aux: usize,
        coeff: f32,
        a: &Vec<f32>,
        dead: &[usize],
        x: &Vec<f32>,
        xhat: &Vec<f32>,
        p: &Params<Vec<f32>>,
        g: &mut Params<Vec<f32>>,
    ) -> Result<f64, BackendError> {
        check(s).params(p, "params")?;
        check(s).params(g, "grads")?;
        len_check("a", a.len(), s.batch * s.d_sae)?;
        len_check("x", x.len(), s.batch * s.d_in)?;
        len_check("x̂", xhat.len(), s.batch * s.d_in)?;
        if let Some(&bad) = dead.iter().find(|&&i| i >= s.d_sae) {
            return Err(BackendError::Shape(format!(
                "dead feature {bad} ≥ d_sae {}",
                s.d_sae
            )));
        }
        Ok(cpu_auxk(
            s,
            self.mode,
            k_aux,
            coeff,
            [a, x, xhat],
            dead,
            p,
            g,
        ))
    }
    fn gated_encode(
        &self,
        s: Shape,
        x: &Vec<f32>,
        p: &Params<Vec<f32>>,
        mag: [&Vec<f32>; 2],
        pi_gate: &mut Vec<f32>,
        f: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        cpu_gated_encode(s, self.mode, x, p, [mag[0], mag[1]], pi_gate, f)
    }
    fn gated_backward(
        &self,
        s: Shape,
        l1: f32,
        [x, pi_gate, f, xhat]: [&Vec<f32>; 4],
        p: &Params<Vec<f32>>,
        mag: [&Vec<f32>; 2],
        g: &mut Params<Vec<f32>>,
        [g_r, g_b]: [&mut Vec<f32>; 2],
    ) -> Result<ops::gated::Sums, BackendError> {
        cpu_gated_backward(
            s,
            self.mode,
            l1,
            [x, pi_gate, f, xhat],
            p,
            [mag[0], mag[1]],
            g,
            [g_r, g_b],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::inputs::{rng, uniform};

    /// The CPU backend with only the trait's required methods: every op with a default runs its default, the path
    /// a device without a kernel for it takes (the CUDA backend today).
    struct Defaults(CpuBackend);

    impl Backend for Defaults {
        type Buf = Vec<f32>;
        fn name(&self) -> String {
            "defaults".into()
        }
        fn upload(&self, d: &[f32]) -> Result<Vec<f32>, BackendError> {
            self.0.upload(d)
        }
        fn download(&self, b: &Vec<f32>) -> Result<Vec<f32>, BackendError> {
            self.0.download(b)
        }
        fn write(&self, b: &mut Vec<f32>, d: &[f32]) -> Result<(), BackendError> {
            self.0.write(b, d)
        }
        fn zeros(&self, n: usize) -> Result<Vec<f32>, BackendError> {
            self.0.zeros(n)
        }
        fn encode(
            &self,
            s: Shape,
            act: Activation,
            x: &Vec<f32>,
            p: &Params<Vec<f32>>,
            f: &mut Vec<f32>,
        ) -> Result<(), BackendError> {
            self.0.encode(s, act, x, p, f)
        }
        fn decode(
            &self,
            s: Shape,
            f: &Vec<f32>,
            p: &Params<Vec<f32>>,
            xh: &mut Vec<f32>,
        ) -> Result<(), BackendError> {
            self.0.decode(s, f, p, xh)
        }
        fn backward(
            &self,
            s: Shape,
            l1: f32,
            x: &Vec<f32>,
            f: &Vec<f32>,
            xh: &Vec<f32>,
            p: &Params<Vec<f32>>,
            g: &mut Params<Vec<f32>>,
        ) -> Result<(), BackendError> {
            self.0.backward(s, l1, x, f, xh, p, g)
        }
        fn adam(
            &self,
            s: Shape,
            h: AdamHyper,
            p: &mut Params<Vec<f32>>,
            g: &mut Params<Vec<f32>>,
            m: &mut Params<Vec<f32>>,
            v: &mut Params<Vec<f32>>,
        ) -> Result<(), BackendError> {
            self.0.adam(s, h, p, g, m, v)
        }
        fn batch_stats(
            &self,
            s: Shape,
            x: &Vec<f32>,
            xh: &Vec<f32>,
            f: &Vec<f32>,
            c: &mut [u32],
        ) -> Result<BatchStats, BackendError> {
            self.0.batch_stats(s, x, xh, f, c)
        }
        fn per_token_sq_err(
            &self,
            s: Shape,
            x: &Vec<f32>,
            xh: &Vec<f32>,
        ) -> Result<Vec<f32>, BackendError> {
            self.0.per_token_sq_err(s, x, xh)
        }
        fn resample(
            &self,
            s: Shape,
            dead: &[usize],
            dirs: &[f32],
            p: &mut Params<Vec<f32>>,
            m: &mut Params<Vec<f32>>,
            v: &mut Params<Vec<f32>>,
        ) -> Result<(), BackendError> {
            self.0.resample(s, dead, dirs, p, m, v)
        }
    }

    /// Each default gives what the CPU backend's own method gives (the reference mode's, for the ops whose fast
    /// and reference versions add in the same order), and both refuse a wrong length in the same way.
    #[test]
    fn the_host_copy_defaults_match_the_cpu_backend() {
        let s = Shape::new(9, 7, 20);
        let mut r = rng(21);
        let (cpu, def) = (CpuBackend::reference(), Defaults(CpuBackend::fast()));
        let x = uniform(&mut r, s.batch * s.d_in, 1.0);
        let xh = uniform(&mut r, s.batch * s.d_in, 1.0);
        let p = Params {
            w_enc: uniform(&mut r, s.d_in * s.d_sae, 0.5),
            b_enc: uniform(&mut r, s.d_sae, 0.2),
            w_dec: uniform(&mut r, s.d_sae * s.d_in, 0.5),
            b_dec: uniform(&mut r, s.d_in, 0.1),
        };
        let mut a = vec![0.0; s.batch * s.d_sae];
        cpu.encode(s, Activation::Relu, &x, &p, &mut a).unwrap();
        let t: Vec<f32> = uniform(&mut r, s.d_sae, 0.5)
            .iter()
            .map(|v| v - 1.5)
            .collect();
        let fresh = || vec![f32::NAN; s.batch * s.d_sae];
        let (mut f1, mut f2) = (fresh(), fresh());
        cpu.threshold(s, &a, &t, &mut f1).unwrap();
        def.threshold(s, &a, &t, &mut f2).unwrap();
        assert_eq!(f1, f2, "threshold");
        let (mut f1, mut f2) = (fresh(), fresh());
        let k1 = cpu.batch_topk(s, 3, &a, &mut f1).unwrap();
        let k2 = def.batch_topk(s, 3, &a, &mut f2).unwrap();
        assert_eq!((f1, k1), (f2, k2), "batch_topk");
        let (mut f1, mut f2) = (fresh(), fresh());
        cpu.topk(s, 4, &a, &mut f1).unwrap();
        def.topk(s, 4, &a, &mut f2).unwrap();
        assert_eq!(f1, f2, "topk");
        let (mut f1, mut f2) = (fresh(), fresh());
        cpu.prefix_mask(s, 6, &a, &mut f1).unwrap();
        def.prefix_mask(s, 6, &a, &mut f2).unwrap();
        assert_eq!(f1, f2, "prefix_mask");
        let (mut g1, mut g2) = (vec![0.0; s.d_sae], vec![0.0; s.d_sae]);
        cpu.threshold_grad(s, 0.4, 0.3, &a, &t, &x, &xh, &p, &mut g1)
            .unwrap();
        def.threshold_grad(s, 0.4, 0.3, &a, &t, &x, &xh, &p, &mut g2)
            .unwrap();
        assert!(ops::inputs::rel_err(&g2, &g1) < 1e-5, "threshold_grad");
        let dead: Vec<usize> = (0..s.d_sae).step_by(2).collect();
        let (mut ga, mut gb) = (p.clone(), p.clone());
        let l1 = cpu
            .auxk(s, 3, 0.5, &a, &dead, &x, &xh, &p, &mut ga)
            .unwrap();
        let l2 = def
            .auxk(s, 3, 0.5, &a, &dead, &x, &xh, &p, &mut gb)
            .unwrap();
        assert_eq!((ga.clone(), l1), (gb.clone(), l2), "auxk");
        cpu.accumulate(s, &mut ga, &p).unwrap();
        def.accumulate(s, &mut gb, &p).unwrap();
        assert_eq!(ga, gb, "accumulate");
        let (mut p1, mut p2) = (t.clone(), t.clone());
        let (mut m1, mut v1) = (vec![0.0; s.d_sae], vec![0.0; s.d_sae]);
        let (mut m2, mut v2) = (m1.clone(), v1.clone());
        let h = AdamHyper::new(1e-2, 1);
        CpuBackend::fast()
            .adam_vec(h, &mut p1, &g1, &mut m1, &mut v1)
            .unwrap();
        def.adam_vec(h, &mut p2, &g1, &mut m2, &mut v2).unwrap();
        assert_eq!((p1, m1, v1), (p2, m2, v2), "adam_vec");
        let (rm, bm) = (uniform(&mut r, s.d_sae, 0.4), uniform(&mut r, s.d_sae, 0.2));
        let (mut pg1, mut pg2, mut f1, mut f2) = (fresh(), fresh(), fresh(), fresh());
        cpu.gated_encode(s, &x, &p, [&rm, &bm], &mut pg1, &mut f1)
            .unwrap();
        def.gated_encode(s, &x, &p, [&rm, &bm], &mut pg2, &mut f2)
            .unwrap();
        assert!(ops::inputs::rel_err(&pg2, &pg1) < 1e-5, "gated π_gate");
        assert!(ops::inputs::rel_err(&f2, &f1) < 1e-5, "gated f");
        let (mut ga, mut gb) = (p.clone(), p.clone());
        let [mut r1, mut b1, mut r2, mut b2] = [0; 4].map(|_| vec![f32::NAN; s.d_sae]);
        let a1 = cpu
            .gated_backward(
                s,
                0.3,
                [&x, &pg1, &f1, &xh],
                &p,
                [&rm, &bm],
                &mut ga,
                [&mut r1, &mut b1],
            )
            .unwrap();
        let a2 = def
            .gated_backward(
                s,
                0.3,
                [&x, &pg1, &f1, &xh],
                &p,
                [&rm, &bm],
                &mut gb,
                [&mut r2, &mut b2],
            )
            .unwrap();
        assert!(
            (a1.aux_sse - a2.aux_sse).abs() < 1e-4 * a1.aux_sse
                && (a1.gate_l1 - a2.gate_l1).abs() < 1e-4 * a1.gate_l1,
            "gated sums {a1:?} vs {a2:?}"
        );
        for (n, (u, w)) in [
            (&ga.w_enc, &gb.w_enc),
            (&ga.b_enc, &gb.b_enc),
            (&ga.w_dec, &gb.w_dec),
            (&ga.b_dec, &gb.b_dec),
            (&r1, &r2),
            (&b1, &b2),
        ]
        .into_iter()
        .enumerate()
        {
            assert!(ops::inputs::rel_err(w, u) < 1e-4, "gated gradient {n}");
        }
        // The same refusal, with the same words, on a buffer of the wrong length.
        let mut short = vec![0.0; 3];
        let e1 = cpu.topk(s, 4, &a, &mut short).unwrap_err().to_string();
        let e2 = def.topk(s, 4, &a, &mut short).unwrap_err().to_string();
        assert!(
            e1.contains("expected 180") && e2.contains("expected 180"),
            "{e1} / {e2}"
        );
        let e = def.prefix_mask(s, 21, &a, &mut fresh()).unwrap_err();
        assert!(e.to_string().contains("prefix 21 > d_sae 20"), "{e}");
    }
}
