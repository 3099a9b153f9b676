//! [`CudaBackend`]: the SAE ops on one CUDA device, behind the same [`Backend`] trait as the CPU backend, so the
//! training loop runs unchanged on either. Buffers are `CudaSlice<f32>`; kernels come from [`super::compile`].
//!
//! Every launch names its kernel's argument list in a SAFETY comment: the buffer lengths are checked against the
//! shape before the launch, and the grid covers exactly the shapes the kernel's header comment states.

use super::compile::{self, FILES};
use super::{toolkit, CudaError};
use crate::backend::{
    gated_backward_check, len_check, prefix_check, ArgCheck, Backend, BackendError, Params,
};
use crate::ops::{gated::Sums, Activation, AdamHyper, BatchStats, Shape};

/// The CUDA backend takes its sparse decode and backward when fewer than this share of the (token, feature) pairs
/// fire. It keeps the value the CPU used before its own crossovers were measured (`ops::SPARSE_DENSITY_*` now): the
/// GPU's crossover has not been measured yet (no GPU was lent), and a GPU's dense SGEMM is relatively faster than its
/// gathers, so the CPU's crossovers (0.4–0.45 for its blocked kernels) would likely be too high there.
pub const SPARSE_DENSITY: f64 = 1.0 / 16.0;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Which path the ops with a dense and a sparse variant (decode, backward) take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpPath {
    /// Sparse when fewer than [`SPARSE_DENSITY`] of the (token, feature) pairs fire.
    Auto = 0,
    Dense = 1,
    Sparse = 2,
}

const GEMM_TILE: u32 = 128;
const THREADS: u32 = 256;

/// The SAE ops on one CUDA device.
pub struct CudaBackend {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    arch: u32,
    name: String,
    scratch: Mutex<HashMap<&'static str, CudaSlice<f32>>>,
    path: AtomicU8,
}

fn div_up(a: usize, b: u32) -> u32 {
    a.div_ceil(b as usize) as u32
}

fn i32_of(what: &str, v: usize) -> Result<i32, BackendError> {
    i32::try_from(v).map_err(|_| {
        BackendError::Shape(format!(
            "{what} = {v} does not fit a 32-bit kernel argument"
        ))
    })
}

fn check(s: Shape) -> ArgCheck<CudaSlice<f32>> {
    ArgCheck {
        s,
        len: CudaSlice::len,
    }
}

/// (B, d, F) as kernel arguments.
fn dims(s: Shape) -> Result<(i32, i32, i32), BackendError> {
    Ok((
        i32_of("batch", s.batch)?,
        i32_of("d_in", s.d_in)?,
        i32_of("d_sae", s.d_sae)?,
    ))
}

fn gemm_cfg(m: usize, n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (div_up(n, GEMM_TILE), div_up(m, GEMM_TILE), 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn rows_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn elems_cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (div_up(n, THREADS).max(1), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// Opens device `ordinal`, compiles every kernel file with NVRTC for its architecture (once per process) and
    /// loads them. Without a driver, NVRTC or a device: [`BackendError::Unavailable`] with the reason, never a panic.
    pub fn new(ordinal: usize) -> Result<Self, BackendError> {
        Self::open(ordinal).map_err(BackendError::from)
    }

    fn open(ordinal: usize) -> Result<Self, CudaError> {
        let n = super::device_present().map_err(CudaError::Unavailable)?;
        if ordinal >= n {
            return Err(CudaError::Unavailable(format!(
                "no CUDA device {ordinal} (this machine has {n})"
            )));
        }
        toolkit::nvrtc().map_err(CudaError::Unavailable)?;
        let ctx = CudaContext::new(ordinal)?;
        let (major, minor) = ctx.compute_capability()?;
        let cc = (major * 10 + minor) as u32;
        // NVRTC may not know the newest architectures; PTX for an older one is JIT-compiled by the driver.
        let arch = [cc, 90, 80]
            .into_iter()
            .find(|&a| a <= cc && compile::ptx(&FILES[0], a).is_ok())
            .unwrap_or(80);
        let mut funcs = HashMap::new();
        for file in FILES {
            let ptx = compile::ptx(file, arch)?;
            let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx.as_str())).map_err(|e| {
                CudaError::Driver(format!(
                    "loading {} (PTX from {}) failed: {e:?}; if the driver is older than NVRTC, point SAEPERF_NVRTC \
                     at the toolkit's own libnvrtc",
                    file.name,
                    toolkit::nvrtc().unwrap_or_default()
                ))
            })?;
            for k in file.kernels {
                funcs.insert(*k, module.load_function(k)?);
            }
        }
        let name = format!(
            "cuda:{ordinal} {} (sm_{cc})",
            ctx.name().unwrap_or_else(|_| "unknown device".into())
        );
        let stream = ctx.default_stream();
        Ok(CudaBackend {
            ctx,
            stream,
            funcs,
            arch,
            name,
            scratch: Mutex::new(HashMap::new()),
            path: AtomicU8::new(0),
        })
    }

    /// The compute capability the kernels were compiled for (e.g. 90).
    pub fn arch(&self) -> u32 {
        self.arch
    }

    /// Forces the dense or the sparse variant of decode and backward (for checks and benchmarks).
    pub fn set_path(&self, p: OpPath) {
        self.path.store(p as u8, Ordering::Relaxed);
    }

    pub fn path(&self) -> OpPath {
        match self.path.load(Ordering::Relaxed) {
            1 => OpPath::Dense,
            2 => OpPath::Sparse,
            _ => OpPath::Auto,
        }
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), BackendError> {
        self.stream
            .synchronize()
            .map_err(|e| CudaError::from(e).into())
    }

    pub(crate) fn func(&self, name: &str) -> Result<&CudaFunction, CudaError> {
        self.funcs
            .get(name)
            .ok_or_else(|| CudaError::Driver(format!("kernel {name} was not loaded")))
    }

    fn take(&self, name: &'static str, len: usize) -> Result<CudaSlice<f32>, CudaError> {
        let old = self
            .scratch
            .lock()
            .expect("scratch lock poisoned")
            .remove(name);
        match old {
            Some(s) if s.len() >= len.max(1) => Ok(s),
            _ => Ok(self.stream.alloc_zeros::<f32>(len.max(1))?),
        }
    }

    fn give(&self, name: &'static str, s: CudaSlice<f32>) {
        self.scratch
            .lock()
            .expect("scratch lock poisoned")
            .insert(name, s);
    }

    /// Number of nonzero entries of f (one device reduction and an 8-byte download).
    pub fn count_nonzero(&self, f: &CudaSlice<f32>) -> Result<u64, BackendError> {
        let mut out = self.stream.alloc_zeros::<u64>(1).map_err(CudaError::from)?;
        let n = f.len() as i64;
        let mut cfg = elems_cfg(f.len());
        cfg.grid_dim.0 = cfg.grid_dim.0.min(4096);
        let mut l = self.stream.launch_builder(self.func("count_nonzero")?);
        l.arg(&n).arg(f).arg(&mut out);
        // SAFETY: count_nonzero(long long n, const float* f [n], u64* out [1]); n = f.len(), out zeroed, grid-stride.
        unsafe { l.launch(cfg) }.map_err(CudaError::from)?;
        let v = self.stream.clone_dtoh(&out).map_err(CudaError::from)?;
        Ok(v[0])
    }

    fn sparse(&self, s: Shape, f: &CudaSlice<f32>) -> Result<bool, BackendError> {
        Ok(match self.path() {
            OpPath::Dense => false,
            OpPath::Sparse => true,
            OpPath::Auto => {
                let total = (s.batch * s.d_sae).max(1) as f64;
                (self.count_nonzero(f)? as f64) / total < SPARSE_DENSITY
            }
        })
    }

    /// The codes-shaped buffers of the architectures' ops ([batch, d_sae] each), checked.
    fn codes_check(s: Shape, bufs: &[(&str, &CudaSlice<f32>)]) -> Result<(), BackendError> {
        for (what, b) in bufs {
            len_check(what, b.len(), s.batch * s.d_sae)?;
        }
        Ok(())
    }

    /// topk_rows in place on non-negative codes f (at least batch·d_sae long): the k largest of each row kept.
    fn topk_rows(&self, s: Shape, k: usize, f: &mut CudaSlice<f32>) -> Result<(), BackendError> {
        if k >= s.d_sae || s.batch == 0 {
            return Ok(());
        }
        let (b, _, fs) = dims(s)?;
        let k = i32_of("k", k)?;
        if f.len() < s.batch * s.d_sae {
            return Err(BackendError::Shape(format!(
                "f: {} values, expected at least {}",
                f.len(),
                s.batch * s.d_sae
            )));
        }
        let mut l = self.stream.launch_builder(self.func("topk_rows")?);
        l.arg(&b).arg(&fs).arg(&k).arg(f);
        // SAFETY: topk_rows(int B, int F, int k, float* f [B*F]); f has at least B*F (checked); one block per row.
        unsafe { l.launch(rows_cfg(s.batch)) }.map_err(CudaError::from)?;
        Ok(())
    }

    /// acc += add for every tensor of a parameter set (`accumulate`); each `add` tensor is at least as long as its
    /// `acc` tensor (the caller checked or allocated them so).
    fn add_params(
        &self,
        acc: &mut Params<CudaSlice<f32>>,
        add: &Params<CudaSlice<f32>>,
    ) -> Result<(), CudaError> {
        for (a, b) in [
            (&mut acc.w_enc, &add.w_enc),
            (&mut acc.b_enc, &add.b_enc),
            (&mut acc.w_dec, &add.w_dec),
            (&mut acc.b_dec, &add.b_dec),
        ] {
            if a.is_empty() {
                continue;
            }
            let n = a.len() as i64;
            let mut l = self.stream.launch_builder(self.func("accumulate")?);
            l.arg(&n).arg(a).arg(b);
            // SAFETY: accumulate(long long n, float* acc [n], const float* g [n]); n = acc.len() and the added
            // tensor has at least n (see above); one thread per entry, guarded.
            unsafe { l.launch(elems_cfg(n as usize)) }?;
        }
        Ok(())
    }

    fn col_sums(
        &self,
        rows: i32,
        cols: i32,
        m: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let mut l = self.stream.launch_builder(self.func("col_sums")?);
        l.arg(&rows).arg(&cols).arg(m).arg(out);
        // SAFETY: col_sums(int rows, int cols, const float* m [rows*cols], float* out [cols]); callers pass buffers
        // of at least those lengths; one thread per column.
        unsafe { l.launch(elems_cfg(cols as usize)) }?;
        Ok(())
    }

    fn adam_flat(
        &self,
        h: AdamHyper,
        c: (f32, f32),
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let n = p.len() as i64;
        let mut l = self.stream.launch_builder(self.func("adam_step")?);
        l.arg(&n)
            .arg(&h.lr)
            .arg(&h.beta1)
            .arg(&h.beta2)
            .arg(&h.eps)
            .arg(&c.0)
            .arg(&c.1)
            .arg(p)
            .arg(g)
            .arg(m)
            .arg(v);
        // SAFETY: adam_step(long long n, float lr, b1, b2, eps, c1, c2, float* p, const float* g, float* m,
        // float* v), all [n]: the caller checked that p, g, m and v have the same length n.
        unsafe { l.launch(elems_cfg(n as usize)) }?;
        Ok(())
    }
}

fn corrections(h: &AdamHyper) -> (f32, f32) {
    let t = h.t.max(1) as i32;
    (1.0 - h.beta1.powi(t), 1.0 - h.beta2.powi(t))
}

impl Backend for CudaBackend {
    type Buf = CudaSlice<f32>;

    fn name(&self) -> String {
        self.name.clone()
    }
    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>, BackendError> {
        if data.is_empty() {
            return self.zeros(0);
        }
        Ok(self.stream.clone_htod(data).map_err(CudaError::from)?)
    }
    fn sync(&self) -> Result<(), BackendError> {
        self.synchronize()
    }
    fn download(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>, BackendError> {
        Ok(self.stream.clone_dtoh(buf).map_err(CudaError::from)?)
    }
    fn write(&self, buf: &mut CudaSlice<f32>, data: &[f32]) -> Result<(), BackendError> {
        len_check("write", data.len(), buf.len())?;
        Ok(self
            .stream
            .memcpy_htod(data, buf)
            .map_err(CudaError::from)?)
    }
    fn zeros(&self, len: usize) -> Result<CudaSlice<f32>, BackendError> {
        Ok(self
            .stream
            .alloc_zeros::<f32>(len)
            .map_err(CudaError::from)?)
    }

    fn encode(
        &self,
        s: Shape,
        act: Activation,
        x: &Self::Buf,
        p: &Params<Self::Buf>,
        f: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        check(s).encode(p, x, f)?;
        let (b, d, fs) = dims(s)?;
        if s.batch == 0 || s.d_sae == 0 {
            return Ok(());
        }
        if let Activation::TopK { k: 0 } = act {
            return Ok(self.stream.memset_zeros(f).map_err(CudaError::from)?);
        }
        let mut l = self.stream.launch_builder(self.func("encode_gemm_relu")?);
        l.arg(&b)
            .arg(&d)
            .arg(&fs)
            .arg(x)
            .arg(&p.w_enc)
            .arg(&p.b_enc)
            .arg(&p.b_dec)
            .arg(&mut *f);
        // SAFETY: encode_gemm_relu(int B, int d, int F, const float* x [B*d], const float* w_enc [d*F],
        // const float* b_enc [F], const float* b_dec [d], float* f [B*F]); lengths checked above; the grid
        // (ceil(F/128), ceil(B/128)) covers f and the kernel guards partial tiles.
        unsafe { l.launch(gemm_cfg(s.batch, s.d_sae)) }.map_err(CudaError::from)?;
        if let Activation::TopK { k } = act {
            self.topk_rows(s, k, f)?;
        }
        Ok(())
    }

    fn decode(
        &self,
        s: Shape,
        f: &Self::Buf,
        p: &Params<Self::Buf>,
        xhat: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        check(s).decode(p, f, xhat)?;
        let (b, d, fs) = dims(s)?;
        if s.batch == 0 || s.d_in == 0 {
            return Ok(());
        }
        if self.sparse(s, f)? {
            let cfg = LaunchConfig {
                grid_dim: (s.batch as u32, div_up(s.d_in, THREADS * 4), 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut l = self.stream.launch_builder(self.func("decode_sparse")?);
            l.arg(&b)
                .arg(&d)
                .arg(&fs)
                .arg(f)
                .arg(&p.w_dec)
                .arg(&p.b_dec)
                .arg(xhat);
            // SAFETY: decode_sparse(int B, int d, int F, const float* f [B*F], const float* w_dec [F*d],
            // const float* b_dec [d], float* xhat [B*d]); lengths checked above; grid (B, ceil(d/1024)).
            unsafe { l.launch(cfg) }.map_err(CudaError::from)?;
        } else {
            let mut l = self.stream.launch_builder(self.func("decode_gemm")?);
            l.arg(&b)
                .arg(&d)
                .arg(&fs)
                .arg(f)
                .arg(&p.w_dec)
                .arg(&p.b_dec)
                .arg(xhat);
            // SAFETY: decode_gemm(int B, int d, int F, const float* f [B*F], const float* w_dec [F*d],
            // const float* b_dec [d], float* xhat [B*d]); lengths checked above; grid (ceil(d/128), ceil(B/128)).
            unsafe { l.launch(gemm_cfg(s.batch, s.d_in)) }.map_err(CudaError::from)?;
        }
        Ok(())
    }

    fn backward(
        &self,
        s: Shape,
        l1: f32,
        x: &Self::Buf,
        f: &Self::Buf,
        xhat: &Self::Buf,
        p: &Params<Self::Buf>,
        g: &mut Params<Self::Buf>,
    ) -> Result<(), BackendError> {
        check(s).backward(p, g, [x, f, xhat])?;
        let (b, d, fs) = dims(s)?;
        let st = &self.stream;
        if s.batch == 0 || s.d_in == 0 || s.d_sae == 0 {
            for buf in [&mut g.w_enc, &mut g.b_enc, &mut g.w_dec, &mut g.b_dec] {
                if !buf.is_empty() {
                    st.memset_zeros(buf).map_err(CudaError::from)?;
                }
            }
            return Ok(());
        }
        let inv_b = 1.0 / s.batch as f32;
        let l1b = l1 * inv_b;
        let n = (s.batch * s.d_in) as i64;
        let mut dxh = self.take("dxh", s.batch * s.d_in)?;
        let mut l = st.launch_builder(self.func("bwd_residual")?);
        l.arg(&n).arg(&inv_b).arg(x).arg(xhat).arg(&mut dxh);
        // SAFETY: bwd_residual(long long n, float inv_b, const float* x [n], const float* xhat [n], float* dxh [n]);
        // n = B*d = x.len() = xhat.len() (checked), dxh has at least n.
        unsafe { l.launch(elems_cfg(s.batch * s.d_in)) }.map_err(CudaError::from)?;

        if self.sparse(s, f)? {
            st.memset_zeros(&mut g.w_dec).map_err(CudaError::from)?;
            st.memset_zeros(&mut g.b_enc).map_err(CudaError::from)?;
            let mut genc_t = self.take("genc_t", s.d_sae * s.d_in)?;
            st.memset_zeros(&mut genc_t).map_err(CudaError::from)?;
            let mut l = st.launch_builder(self.func("bwd_sparse_pairs")?);
            l.arg(&b)
                .arg(&d)
                .arg(&fs)
                .arg(&l1b)
                .arg(x)
                .arg(&p.b_dec)
                .arg(f)
                .arg(&dxh)
                .arg(&p.w_dec)
                .arg(&mut g.w_dec)
                .arg(&mut genc_t)
                .arg(&mut g.b_enc);
            // SAFETY: bwd_sparse_pairs(int B, int d, int F, float l1b, const float* x [B*d], const float* b_dec [d],
            // const float* f [B*F], const float* dxh [B*d], const float* w_dec [F*d], float* g_wdec [F*d],
            // float* g_wenc_t [F*d], float* g_benc [F]); lengths checked above, outputs zeroed; one block per token.
            unsafe { l.launch(rows_cfg(s.batch)) }.map_err(CudaError::from)?;
            let (rows, cols) = (fs, d);
            let cfg = LaunchConfig {
                grid_dim: (div_up(s.d_in, 32), div_up(s.d_sae, 32), 1),
                block_dim: (32, 8, 1),
                shared_mem_bytes: 0,
            };
            let mut l = st.launch_builder(self.func("transpose")?);
            l.arg(&rows).arg(&cols).arg(&genc_t).arg(&mut g.w_enc);
            // SAFETY: transpose(int rows, int cols, const float* in [rows*cols], float* out [cols*rows]) with
            // rows = F, cols = d: genc_t has at least F*d, g.w_enc exactly d*F (checked).
            unsafe { l.launch(cfg) }.map_err(CudaError::from)?;
            self.give("genc_t", genc_t);
        } else {
            let mut l = st.launch_builder(self.func("bwd_dwdec_gemm")?);
            l.arg(&b)
                .arg(&d)
                .arg(&fs)
                .arg(f)
                .arg(&dxh)
                .arg(&mut g.w_dec);
            // SAFETY: bwd_dwdec_gemm(int B, int d, int F, const float* f [B*F], const float* dxh [B*d],
            // float* g_wdec [F*d]); lengths checked above; grid (ceil(d/128), ceil(F/128)).
            unsafe { l.launch(gemm_cfg(s.d_sae, s.d_in)) }.map_err(CudaError::from)?;
            let mut dpre = self.take("dpre", s.batch * s.d_sae)?;
            let mut l = st.launch_builder(self.func("bwd_dpre_gemm")?);
            l.arg(&b)
                .arg(&d)
                .arg(&fs)
                .arg(&l1b)
                .arg(&dxh)
                .arg(&p.w_dec)
                .arg(f)
                .arg(&mut dpre);
            // SAFETY: bwd_dpre_gemm(int B, int d, int F, float l1b, const float* dxh [B*d], const float* w_dec [F*d],
            // const float* f [B*F], float* dpre [B*F]); dpre has at least B*F; grid (ceil(F/128), ceil(B/128)).
            unsafe { l.launch(gemm_cfg(s.batch, s.d_sae)) }.map_err(CudaError::from)?;
            let mut l = st.launch_builder(self.func("bwd_dwenc_gemm")?);
            l.arg(&b)
                .arg(&d)
                .arg(&fs)
                .arg(x)
                .arg(&p.b_dec)
                .arg(&dpre)
                .arg(&mut g.w_enc);
            // SAFETY: bwd_dwenc_gemm(int B, int d, int F, const float* x [B*d], const float* b_dec [d],
            // const float* dpre [B*F], float* g_wenc [d*F]); lengths checked; grid (ceil(F/128), ceil(d/128)).
            unsafe { l.launch(gemm_cfg(s.d_in, s.d_sae)) }.map_err(CudaError::from)?;
            self.col_sums(b, fs, &dpre, &mut g.b_enc)?;
            self.give("dpre", dpre);
        }
        let mut dsum = self.take("dxh_sum", s.d_in)?;
        self.col_sums(b, d, &dxh, &mut dsum)?;
        let mut l = st.launch_builder(self.func("bwd_bdec")?);
        l.arg(&d)
            .arg(&fs)
            .arg(&p.w_enc)
            .arg(&g.b_enc)
            .arg(&dsum)
            .arg(&mut g.b_dec);
        // SAFETY: bwd_bdec(int d, int F, const float* w_enc [d*F], const float* g_benc [F], const float* dxh_sum [d],
        // float* g_bdec [d]); lengths checked above (dsum has at least d); one block per j < d.
        unsafe { l.launch(rows_cfg(s.d_in)) }.map_err(CudaError::from)?;
        self.give("dxh_sum", dsum);
        self.give("dxh", dxh);
        Ok(())
    }

    fn adam(
        &self,
        s: Shape,
        h: AdamHyper,
        p: &mut Params<Self::Buf>,
        g: &mut Params<Self::Buf>,
        m: &mut Params<Self::Buf>,
        v: &mut Params<Self::Buf>,
    ) -> Result<(), BackendError> {
        check(s).adam([p, g, m, v])?;
        let c = corrections(&h);
        if s.d_in * s.d_sae > 0 {
            self.adam_flat(h, c, &mut p.w_enc, &g.w_enc, &mut m.w_enc, &mut v.w_enc)?;
        }
        if s.d_sae > 0 {
            self.adam_flat(h, c, &mut p.b_enc, &g.b_enc, &mut m.b_enc, &mut v.b_enc)?;
        }
        if s.d_in > 0 {
            self.adam_flat(h, c, &mut p.b_dec, &g.b_dec, &mut m.b_dec, &mut v.b_dec)?;
        }
        if s.d_in > 0 && s.d_sae > 0 {
            let (_, d, fs) = dims(s)?;
            let mut l = self.stream.launch_builder(self.func("adam_decoder_rows")?);
            l.arg(&fs)
                .arg(&d)
                .arg(&h.lr)
                .arg(&h.beta1)
                .arg(&h.beta2)
                .arg(&h.eps)
                .arg(&c.0)
                .arg(&c.1)
                .arg(&mut p.w_dec)
                .arg(&mut g.w_dec)
                .arg(&mut m.w_dec)
                .arg(&mut v.w_dec);
            // SAFETY: adam_decoder_rows(int rows, int d, float lr, b1, b2, eps, c1, c2, float* w, float* g, float* m,
            // float* v), all [rows*d] with rows = F: checked above; one block per row.
            unsafe { l.launch(rows_cfg(s.d_sae)) }.map_err(CudaError::from)?;
        }
        Ok(())
    }

    fn batch_stats(
        &self,
        s: Shape,
        x: &Self::Buf,
        xhat: &Self::Buf,
        f: &Self::Buf,
        fire_counts: &mut [u32],
    ) -> Result<BatchStats, BackendError> {
        check(s).batch_stats(x, xhat, f, fire_counts.len())?;
        let (b, d, fs) = dims(s)?;
        let mut st = BatchStats::default();
        if s.batch == 0 {
            return Ok(st);
        }
        let mut rows = self
            .stream
            .alloc_zeros::<f64>(s.batch * 3)
            .map_err(CudaError::from)?;
        let mut l = self.stream.launch_builder(self.func("row_stats")?);
        l.arg(&b)
            .arg(&d)
            .arg(&fs)
            .arg(x)
            .arg(xhat)
            .arg(f)
            .arg(&mut rows);
        // SAFETY: row_stats(int B, int d, int F, const float* x [B*d], const float* xhat [B*d], const float* f [B*F],
        // double* out [B*3]); lengths checked above; one block per token.
        unsafe { l.launch(rows_cfg(s.batch)) }.map_err(CudaError::from)?;
        if s.d_sae > 0 {
            let mut counts = self
                .stream
                .alloc_zeros::<u32>(s.d_sae)
                .map_err(CudaError::from)?;
            let mut l = self
                .stream
                .launch_builder(self.func("feature_fire_counts")?);
            l.arg(&b).arg(&fs).arg(f).arg(&mut counts);
            // SAFETY: feature_fire_counts(int B, int F, const float* f [B*F], unsigned* counts [F]); one thread per
            // feature.
            unsafe { l.launch(elems_cfg(s.d_sae)) }.map_err(CudaError::from)?;
            let c = self.stream.clone_dtoh(&counts).map_err(CudaError::from)?;
            fire_counts.iter_mut().zip(c).for_each(|(a, n)| *a += n);
        }
        let r = self.stream.clone_dtoh(&rows).map_err(CudaError::from)?;
        for row in r.chunks(3) {
            st.sse += row[0];
            st.l0 += row[1];
            st.l1 += row[2];
        }
        Ok(st)
    }

    fn per_token_sq_err(
        &self,
        s: Shape,
        x: &Self::Buf,
        xhat: &Self::Buf,
    ) -> Result<Vec<f32>, BackendError> {
        check(s).per_token_sq_err(x, xhat)?;
        if s.batch == 0 {
            return Ok(Vec::new());
        }
        let (b, d, _) = dims(s)?;
        let mut out = self
            .stream
            .alloc_zeros::<f32>(s.batch)
            .map_err(CudaError::from)?;
        let mut l = self.stream.launch_builder(self.func("per_token_sq_err")?);
        l.arg(&b).arg(&d).arg(x).arg(xhat).arg(&mut out);
        // SAFETY: per_token_sq_err(int B, int d, const float* x [B*d], const float* xhat [B*d], float* out [B]);
        // lengths checked above; one block per token.
        unsafe { l.launch(rows_cfg(s.batch)) }.map_err(CudaError::from)?;
        Ok(self.stream.clone_dtoh(&out).map_err(CudaError::from)?)
    }

    fn threshold(
        &self,
        s: Shape,
        a: &Self::Buf,
        log_theta: &Self::Buf,
        f: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        Self::codes_check(s, &[("a", a), ("f", f)])?;
        len_check("log θ", log_theta.len(), s.d_sae)?;
        let (b, _, fs) = dims(s)?;
        if s.batch == 0 || s.d_sae == 0 {
            return Ok(());
        }
        let mut l = self.stream.launch_builder(self.func("threshold_rows")?);
        l.arg(&b).arg(&fs).arg(a).arg(log_theta).arg(f);
        // SAFETY: threshold_rows(int B, int F, const float* a [B*F], const float* log_theta [F], float* f [B*F]);
        // lengths checked above; one thread per entry, guarded.
        unsafe { l.launch(elems_cfg(s.batch * s.d_sae)) }.map_err(CudaError::from)?;
        Ok(())
    }

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
        Self::codes_check(s, &[("a", a)])?;
        len_check("log θ", log_theta.len(), s.d_sae)?;
        len_check("x", x.len(), s.batch * s.d_in)?;
        len_check("x̂", xhat.len(), s.batch * s.d_in)?;
        len_check("params.W_dec", p.w_dec.len(), s.d_sae * s.d_in)?;
        len_check("∂log θ", g.len(), s.d_sae)?;
        let (b, d, fs) = dims(s)?;
        if s.d_sae == 0 {
            return Ok(());
        }
        let mut l = self.stream.launch_builder(self.func("threshold_grad")?);
        l.arg(&b)
            .arg(&d)
            .arg(&fs)
            .arg(&eps)
            .arg(&l0)
            .arg(a)
            .arg(log_theta)
            .arg(x)
            .arg(xhat)
            .arg(&p.w_dec)
            .arg(g);
        // SAFETY: threshold_grad(int B, int d, int F, float eps, float l0, const float* a [B*F],
        // const float* log_theta [F], const float* x [B*d], const float* xhat [B*d], const float* w_dec [F*d],
        // float* g [F]); lengths checked above; grid ceil(F/32), one lane per feature, guarded.
        let cfg = LaunchConfig {
            grid_dim: (div_up(s.d_sae, 32), 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { l.launch(cfg) }.map_err(CudaError::from)?;
        Ok(())
    }

    fn topk(
        &self,
        s: Shape,
        k: usize,
        a: &Self::Buf,
        f: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        Self::codes_check(s, &[("a", a), ("f", f)])?;
        if s.batch == 0 || s.d_sae == 0 {
            return Ok(());
        }
        if k == 0 {
            return Ok(self.stream.memset_zeros(f).map_err(CudaError::from)?);
        }
        // Lengths are equal (checked), so the copy's length assertion holds.
        self.stream.memcpy_dtod(a, f).map_err(CudaError::from)?;
        self.topk_rows(s, k, f)
    }

    fn adam_vec(
        &self,
        h: AdamHyper,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        for (what, n) in [("∂", g.len()), ("m", m.len()), ("v", v.len())] {
            len_check(what, n, p.len())?;
        }
        if p.is_empty() {
            return Ok(());
        }
        Ok(self.adam_flat(h, corrections(&h), p, g, m, v)?)
    }

    fn batch_topk(
        &self,
        s: Shape,
        k: usize,
        a: &Self::Buf,
        f: &mut Self::Buf,
    ) -> Result<f32, BackendError> {
        Self::codes_check(s, &[("a", a), ("f", f)])?;
        let (b, _, fs) = dims(s)?;
        if u32::try_from(s.batch * s.d_sae).is_err() {
            return Err(BackendError::Shape(format!(
                "batch·d_sae = {} does not fit the 32-bit counts of the batch-wide selection",
                s.batch * s.d_sae
            )));
        }
        let kk = k.saturating_mul(s.batch).min(s.batch * s.d_sae);
        if kk == 0 {
            self.stream.memset_zeros(f).map_err(CudaError::from)?;
            return Ok(0.0);
        }
        // The radix select's state (prefix, mask, rem, empty) and histogram, on the device. rem starts at K (at most
        // B·F, which fits u32: checked above); the first pick clamps it to the number of positive values.
        let st_err = CudaError::from;
        let mut st = self
            .stream
            .clone_htod(&[0u32, 0, kk as u32, 0])
            .map_err(st_err)?;
        let mut hist = self.stream.alloc_zeros::<u32>(256).map_err(st_err)?;
        let mut ties = self.stream.alloc_zeros::<u32>(s.batch).map_err(st_err)?;
        let n = (s.batch * s.d_sae) as i64;
        let mut hist_cfg = elems_cfg(s.batch * s.d_sae);
        hist_cfg.grid_dim.0 = hist_cfg.grid_dim.0.min(1024);
        let one = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1, 1, 1),
            shared_mem_bytes: 0,
        };
        for shift in [24i32, 16, 8, 0] {
            let mut l = self.stream.launch_builder(self.func("btk_hist")?);
            l.arg(&n).arg(&shift).arg(a).arg(&st).arg(&mut hist);
            // SAFETY: btk_hist(long long n, int shift, const float* a [n], const unsigned* st [4],
            // unsigned* hist [256]); n = B*F = a.len(), grid-stride.
            unsafe { l.launch(hist_cfg) }.map_err(CudaError::from)?;
            let mut l = self.stream.launch_builder(self.func("btk_pick")?);
            l.arg(&shift).arg(&mut st).arg(&mut hist);
            // SAFETY: btk_pick(int shift, unsigned* st [4], unsigned* hist [256]); one thread.
            unsafe { l.launch(one) }.map_err(CudaError::from)?;
        }
        let mut l = self.stream.launch_builder(self.func("btk_row_ties")?);
        l.arg(&b).arg(&fs).arg(a).arg(&st).arg(&mut ties);
        // SAFETY: btk_row_ties(int B, int F, const float* a [B*F], const unsigned* st [4], unsigned* ties [B]);
        // one block per row.
        unsafe { l.launch(rows_cfg(s.batch)) }.map_err(CudaError::from)?;
        let mut l = self.stream.launch_builder(self.func("btk_allow")?);
        l.arg(&b).arg(&st).arg(&mut ties);
        // SAFETY: btk_allow(int B, const unsigned* st [4], unsigned* ties [B]); one thread.
        unsafe { l.launch(one) }.map_err(CudaError::from)?;
        let mut l = self.stream.launch_builder(self.func("btk_apply")?);
        l.arg(&b).arg(&fs).arg(a).arg(&st).arg(&ties).arg(f);
        // SAFETY: btk_apply(int B, int F, const float* a [B*F], const unsigned* st [4], const unsigned* allow [B],
        // float* f [B*F]); lengths checked above; one block per row.
        unsafe { l.launch(rows_cfg(s.batch)) }.map_err(CudaError::from)?;
        let st_host = self.stream.clone_dtoh(&st).map_err(CudaError::from)?;
        // Nothing positive: nothing kept, and no threshold.
        Ok(if st_host[3] != 0 {
            0.0
        } else {
            f32::from_bits(st_host[0])
        })
    }

    fn prefix_mask(
        &self,
        s: Shape,
        m: usize,
        f: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        prefix_check(s, m)?;
        Self::codes_check(s, &[("f", f), ("out", out)])?;
        let (b, _, fs) = dims(s)?;
        let m = i32_of("prefix", m)?;
        if s.batch == 0 || s.d_sae == 0 {
            return Ok(());
        }
        let mut l = self.stream.launch_builder(self.func("prefix_mask")?);
        l.arg(&b).arg(&fs).arg(&m).arg(f).arg(out);
        // SAFETY: prefix_mask(int B, int F, int m, const float* f [B*F], float* out [B*F]); lengths checked above,
        // m <= F; one thread per entry, guarded.
        unsafe { l.launch(elems_cfg(s.batch * s.d_sae)) }.map_err(CudaError::from)?;
        Ok(())
    }

    fn accumulate(
        &self,
        s: Shape,
        acc: &mut Params<Self::Buf>,
        g: &Params<Self::Buf>,
    ) -> Result<(), BackendError> {
        check(s).params(acc, "accumulator")?;
        check(s).params(g, "grads")?;
        Ok(self.add_params(acc, g)?)
    }

    fn gated_encode(
        &self,
        s: Shape,
        x: &Self::Buf,
        p: &Params<Self::Buf>,
        mag: [&Self::Buf; 2],
        pi_gate: &mut Self::Buf,
        f: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        check(s).params(p, "params")?;
        len_check("x", x.len(), s.batch * s.d_in)?;
        len_check("r_mag", mag[0].len(), s.d_sae)?;
        len_check("b_mag", mag[1].len(), s.d_sae)?;
        Self::codes_check(s, &[("π_gate", pi_gate), ("f", f)])?;
        let (b, d, fs) = dims(s)?;
        if s.batch == 0 || s.d_sae == 0 {
            return Ok(());
        }
        let mut l = self.stream.launch_builder(self.func("gated_encode_gemm")?);
        l.arg(&b)
            .arg(&d)
            .arg(&fs)
            .arg(x)
            .arg(&p.w_enc)
            .arg(&p.b_enc)
            .arg(&p.b_dec)
            .arg(mag[0])
            .arg(mag[1])
            .arg(pi_gate)
            .arg(f);
        // SAFETY: gated_encode_gemm(int B, int d, int F, const float* x [B*d], const float* w_enc [d*F],
        // const float* b_gate [F], const float* b_dec [d], const float* r_mag [F], const float* b_mag [F],
        // float* pi_gate [B*F], float* f [B*F]); lengths checked above; grid (ceil(F/128), ceil(B/128)), partial
        // tiles guarded.
        unsafe { l.launch(gemm_cfg(s.batch, s.d_sae)) }.map_err(CudaError::from)?;
        Ok(())
    }

    /// Gated's backward on the device: the kernels of gated.cu between the ordinary backward, decode and reduction
    /// kernels, in the order of ops::gated::backward_fast (the sequence is listed in gated.cu's header).
    #[allow(clippy::too_many_arguments)]
    fn gated_backward(
        &self,
        s: Shape,
        l1: f32,
        [x, pi_gate, f, xhat]: [&Self::Buf; 4],
        p: &Params<Self::Buf>,
        [r_mag, b_mag]: [&Self::Buf; 2],
        g: &mut Params<Self::Buf>,
        [g_r, g_b]: [&mut Self::Buf; 2],
    ) -> Result<Sums, BackendError> {
        let c = check(s);
        c.params(p, "params")?;
        c.params(g, "grads")?;
        gated_backward_check(
            s,
            [x, xhat, pi_gate, f, r_mag, b_mag, &*g_r, &*g_b].map(CudaSlice::len),
        )?;
        let (b, d, fs) = dims(s)?;
        let st = &self.stream;
        let e = CudaError::from;
        if s.batch == 0 || s.d_in == 0 || s.d_sae == 0 {
            for buf in [
                &mut g.w_enc,
                &mut g.b_enc,
                &mut g.w_dec,
                &mut g.b_dec,
                &mut *g_r,
                &mut *g_b,
            ] {
                if !buf.is_empty() {
                    st.memset_zeros(buf).map_err(e)?;
                }
            }
            return Ok(Sums {
                aux_sse: 0.0,
                gate_l1: 0.0,
            });
        }
        let inv_b = 1.0 / s.batch as f32;
        let (zero, l1b) = (0.0f32, l1 * inv_b);
        let (n_x, n_f) = ((s.batch * s.d_in) as i64, (s.batch * s.d_sae) as i64);
        let codes = s.batch * s.d_sae;
        let residual = |xh: &CudaSlice<f32>, out: &mut CudaSlice<f32>| -> Result<(), CudaError> {
            let mut l = st.launch_builder(self.func("bwd_residual")?);
            l.arg(&n_x).arg(&inv_b).arg(x).arg(xh).arg(out);
            // SAFETY: bwd_residual(long long n, float inv_b, const float* x [n], const float* xhat [n],
            // float* dxh [n]); n = B*d = x.len() (checked); xh and out have at least n.
            unsafe { l.launch(elems_cfg(s.batch * s.d_in)) }?;
            Ok(())
        };
        let dpre =
            |scale: &f32, up: &CudaSlice<f32>, mask: &CudaSlice<f32>, out: &mut CudaSlice<f32>| {
                let mut l = st.launch_builder(self.func("bwd_dpre_gemm")?);
                l.arg(&b)
                    .arg(&d)
                    .arg(&fs)
                    .arg(scale)
                    .arg(up)
                    .arg(&p.w_dec)
                    .arg(mask)
                    .arg(out);
                // SAFETY: bwd_dpre_gemm(int B, int d, int F, float l1b, const float* dxh [B*d], const float* w_dec [F*d],
                // const float* f [B*F], float* dpre [B*F]): up has at least B*d, mask and out at least B*F; grid
                // (ceil(F/128), ceil(B/128)).
                unsafe { l.launch(gemm_cfg(s.batch, s.d_sae)) }?;
                Ok::<(), CudaError>(())
            };
        // Main term: ∂x̂, ∂W_dec = fᵀ·∂x̂, ∂π_mag = (∂x̂·W_decᵀ)·1[f > 0].
        let mut dxh = self.take("dxh", s.batch * s.d_in)?;
        residual(xhat, &mut dxh)?;
        let mut l = st.launch_builder(self.func("bwd_dwdec_gemm")?);
        l.arg(&b)
            .arg(&d)
            .arg(&fs)
            .arg(f)
            .arg(&dxh)
            .arg(&mut g.w_dec);
        // SAFETY: bwd_dwdec_gemm(int B, int d, int F, const float* f [B*F], const float* dxh [B*d],
        // float* g_wdec [F*d]); lengths checked above; grid (ceil(d/128), ceil(F/128)).
        unsafe { l.launch(gemm_cfg(s.d_sae, s.d_in)) }.map_err(e)?;
        let mut dmag = self.take("gated_dmag", codes)?;
        dpre(&zero, &dxh, f, &mut dmag)?;
        // Auxiliary term: a = ReLU(π_gate), x̂aux = a·W_dec + b_dec, its squared error and the gate's L1 (per row in
        // double, added on the host in row order), ∂π_gate = (∂x̂aux·W_decᵀ + λ/B)·1[a > 0].
        let mut a = self.take("gated_a", codes)?;
        let mut l = st.launch_builder(self.func("gated_relu")?);
        l.arg(&n_f).arg(pi_gate).arg(&mut a);
        // SAFETY: gated_relu(long long n, const float* pi_gate [n], float* a [n]); n = B*F = pi_gate.len(), a has at
        // least n.
        unsafe { l.launch(elems_cfg(codes)) }.map_err(e)?;
        let mut xaux = self.take("gated_xaux", s.batch * s.d_in)?;
        let mut l = st.launch_builder(self.func("decode_gemm")?);
        l.arg(&b)
            .arg(&d)
            .arg(&fs)
            .arg(&a)
            .arg(&p.w_dec)
            .arg(&p.b_dec)
            .arg(&mut xaux);
        // SAFETY: decode_gemm(int B, int d, int F, const float* f [B*F], const float* w_dec [F*d],
        // const float* b_dec [d], float* xhat [B*d]); a has at least B*F, xaux at least B*d.
        unsafe { l.launch(gemm_cfg(s.batch, s.d_in)) }.map_err(e)?;
        let mut rows = st.alloc_zeros::<f64>(s.batch * 3).map_err(e)?;
        let mut l = st.launch_builder(self.func("row_stats")?);
        l.arg(&b)
            .arg(&d)
            .arg(&fs)
            .arg(x)
            .arg(&xaux)
            .arg(&a)
            .arg(&mut rows);
        // SAFETY: row_stats(int B, int d, int F, const float* x [B*d], const float* xhat [B*d], const float* f [B*F],
        // double* out [B*3]); one block per token.
        unsafe { l.launch(rows_cfg(s.batch)) }.map_err(e)?;
        let mut daux = self.take("gated_daux", s.batch * s.d_in)?;
        residual(&xaux, &mut daux)?;
        let mut dgate = self.take("gated_dgate", codes)?;
        dpre(&l1b, &daux, &a, &mut dgate)?;
        // ∂z, the bias gradients, ∂r_mag, ∂W_enc = (x − b_dec)ᵀ·∂z and ∂b_dec = Σ_b ∂x̂_b − W_enc·Σ_b ∂z_b.
        let mut dz = self.take("gated_dz", codes)?;
        let mut l = st.launch_builder(self.func("gated_dz")?);
        l.arg(&b)
            .arg(&fs)
            .arg(&dgate)
            .arg(&dmag)
            .arg(r_mag)
            .arg(&mut dz);
        // SAFETY: gated_dz(int B, int F, const float* dgate [B*F], const float* dmag [B*F], const float* r_mag [F],
        // float* dz [B*F]); scratch buffers have at least B*F, r_mag exactly F (checked).
        unsafe { l.launch(elems_cfg(codes)) }.map_err(e)?;
        self.col_sums(b, fs, &dgate, &mut g.b_enc)?;
        self.col_sums(b, fs, &dmag, g_b)?;
        let mut l = st.launch_builder(self.func("gated_dr_mag")?);
        l.arg(&b)
            .arg(&fs)
            .arg(&dmag)
            .arg(pi_gate)
            .arg(&p.b_enc)
            .arg(r_mag)
            .arg(g_r);
        // SAFETY: gated_dr_mag(int B, int F, const float* dmag [B*F], const float* pi_gate [B*F],
        // const float* b_gate [F], const float* r_mag [F], float* g_rmag [F]); lengths checked; a thread per feature.
        unsafe { l.launch(elems_cfg(s.d_sae)) }.map_err(e)?;
        let mut l = st.launch_builder(self.func("bwd_dwenc_gemm")?);
        l.arg(&b)
            .arg(&d)
            .arg(&fs)
            .arg(x)
            .arg(&p.b_dec)
            .arg(&dz)
            .arg(&mut g.w_enc);
        // SAFETY: bwd_dwenc_gemm(int B, int d, int F, const float* x [B*d], const float* b_dec [d],
        // const float* dpre [B*F], float* g_wenc [d*F]); lengths checked; grid (ceil(F/128), ceil(d/128)).
        unsafe { l.launch(gemm_cfg(s.d_in, s.d_sae)) }.map_err(e)?;
        let mut dz_sum = self.take("gated_dz_sum", s.d_sae)?;
        self.col_sums(b, fs, &dz, &mut dz_sum)?;
        let mut dsum = self.take("dxh_sum", s.d_in)?;
        self.col_sums(b, d, &dxh, &mut dsum)?;
        let mut l = st.launch_builder(self.func("bwd_bdec")?);
        l.arg(&d)
            .arg(&fs)
            .arg(&p.w_enc)
            .arg(&dz_sum)
            .arg(&dsum)
            .arg(&mut g.b_dec);
        // SAFETY: bwd_bdec(int d, int F, const float* w_enc [d*F], const float* g_benc [F], const float* dxh_sum [d],
        // float* g_bdec [d]); dz_sum has at least F, dsum at least d; one block per j < d.
        unsafe { l.launch(rows_cfg(s.d_in)) }.map_err(e)?;
        let r = st.clone_dtoh(&rows).map_err(e)?;
        for (name, buf) in [
            ("dxh", dxh),
            ("gated_dmag", dmag),
            ("gated_a", a),
            ("gated_xaux", xaux),
            ("gated_daux", daux),
            ("gated_dgate", dgate),
            ("gated_dz", dz),
            ("gated_dz_sum", dz_sum),
            ("dxh_sum", dsum),
        ] {
            self.give(name, buf);
        }
        let (mut aux_sse, mut gate_l1) = (0.0, 0.0);
        for row in r.chunks(3) {
            aux_sse += row[0];
            gate_l1 += row[2];
        }
        Ok(Sums { aux_sse, gate_l1 })
    }

    /// AuxK on the device: auxk_mask_dead, then the ordinary kernels (the sequence is listed in auxk.cu's header).
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
        let c = check(s);
        c.params(p, "params")?;
        c.params(g, "grads")?;
        Self::codes_check(s, &[("a", a)])?;
        len_check("x", x.len(), s.batch * s.d_in)?;
        len_check("x̂", xhat.len(), s.batch * s.d_in)?;
        if let Some(&bad) = dead.iter().find(|&&i| i >= s.d_sae) {
            return Err(BackendError::Shape(format!(
                "dead feature {bad} ≥ d_sae {}",
                s.d_sae
            )));
        }
        // The scale min(n_dead / k_aux, 1) of ops::auxk; nothing to do when it is 0.
        if k_aux == 0 || dead.is_empty() || s.batch == 0 || s.d_in == 0 {
            return Ok(0.0);
        }
        let scale = (dead.len() as f32 / k_aux as f32).min(1.0);
        let (b, d, fs) = dims(s)?;
        let st = &self.stream;
        let e = CudaError::from;
        let mut mask = vec![0.0f32; s.d_sae];
        dead.iter().for_each(|&i| mask[i] = 1.0);
        let mask = st.clone_htod(&mask).map_err(e)?;
        let codes = s.batch * s.d_sae;
        let mut fa = self.take("auxk_f", codes)?;
        let mut l = st.launch_builder(self.func("auxk_mask_dead")?);
        l.arg(&b).arg(&fs).arg(a).arg(&mask).arg(&mut fa);
        // SAFETY: auxk_mask_dead(int B, int F, const float* a [B*F], const float* dead [F], float* out [B*F]);
        // a checked, mask has F, fa at least B*F; one thread per entry, guarded.
        unsafe { l.launch(elems_cfg(codes)) }.map_err(e)?;
        self.topk_rows(s, k_aux, &mut fa)?;
        let zeros_d = st.alloc_zeros::<f32>(s.d_in).map_err(e)?;
        let mut ehat = self.take("auxk_ehat", s.batch * s.d_in)?;
        let cfg = LaunchConfig {
            grid_dim: (s.batch as u32, div_up(s.d_in, THREADS * 4), 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = st.launch_builder(self.func("decode_sparse")?);
        l.arg(&b)
            .arg(&d)
            .arg(&fs)
            .arg(&fa)
            .arg(&p.w_dec)
            .arg(&zeros_d)
            .arg(&mut ehat);
        // SAFETY: decode_sparse(int B, int d, int F, const float* f [B*F], const float* w_dec [F*d],
        // const float* b_dec [d], float* xhat [B*d]); fa ≥ B*F, zeros_d = d, ehat ≥ B*d; grid (B, ceil(d/1024)).
        unsafe { l.launch(cfg) }.map_err(e)?;
        let n = (s.batch * s.d_in) as i64;
        let residual =
            |scale: f32, u: &CudaSlice<f32>, v: &CudaSlice<f32>, out: &mut CudaSlice<f32>| {
                let mut l = st.launch_builder(self.func("bwd_residual")?);
                l.arg(&n).arg(&scale).arg(u).arg(v).arg(out);
                // SAFETY: bwd_residual(long long n, float inv_b, const float* x [n], const float* xhat [n],
                // float* dxh [n]); every buffer here has at least n = B*d.
                unsafe { l.launch(elems_cfg(n as usize)) }?;
                Ok::<(), CudaError>(())
            };
        // e = x − x̂ (2·(x̂ − x)·(−1/2), exact), the loss, then ∂ê = 2·α·scale·(ê − e)/B.
        let mut target = self.take("auxk_e", s.batch * s.d_in)?;
        residual(-0.5, x, xhat, &mut target)?;
        let mut sq = st.alloc_zeros::<f32>(s.batch).map_err(e)?;
        let mut l = st.launch_builder(self.func("per_token_sq_err")?);
        l.arg(&b).arg(&d).arg(&target).arg(&ehat).arg(&mut sq);
        // SAFETY: per_token_sq_err(int B, int d, const float* x [B*d], const float* xhat [B*d], float* out [B]);
        // both scratch buffers have at least B*d; one block per token.
        unsafe { l.launch(rows_cfg(s.batch)) }.map_err(e)?;
        let sq = st.clone_dtoh(&sq).map_err(e)?;
        let loss =
            sq.iter().map(|v| *v as f64).sum::<f64>() * (coeff * scale) as f64 / s.batch as f64;
        let mut dehat = self.take("auxk_dehat", s.batch * s.d_in)?;
        residual(coeff * scale / s.batch as f32, &target, &ehat, &mut dehat)?;
        // The auxiliary gradients into zeroed scratch, then added to g.
        let mut ga = Params {
            w_enc: self.take("auxk_gwe", s.d_in * s.d_sae)?,
            b_enc: self.take("auxk_gbe", s.d_sae)?,
            w_dec: self.take("auxk_gwd", s.d_sae * s.d_in)?,
            b_dec: self.take("auxk_gbd", s.d_in)?,
        };
        let mut gwe_t = self.take("genc_t", s.d_sae * s.d_in)?;
        for buf in [&mut ga.w_dec, &mut ga.b_enc, &mut gwe_t] {
            st.memset_zeros(buf).map_err(e)?;
        }
        let zero = 0.0f32;
        let mut l = st.launch_builder(self.func("bwd_sparse_pairs")?);
        l.arg(&b)
            .arg(&d)
            .arg(&fs)
            .arg(&zero)
            .arg(x)
            .arg(&p.b_dec)
            .arg(&fa)
            .arg(&dehat)
            .arg(&p.w_dec)
            .arg(&mut ga.w_dec)
            .arg(&mut gwe_t)
            .arg(&mut ga.b_enc);
        // SAFETY: bwd_sparse_pairs(int B, int d, int F, float l1b, const float* x [B*d], const float* b_dec [d],
        // const float* f [B*F], const float* dxh [B*d], const float* w_dec [F*d], float* g_wdec [F*d],
        // float* g_wenc_t [F*d], float* g_benc [F]); scratch buffers at least that long and zeroed; a block per token.
        unsafe { l.launch(rows_cfg(s.batch)) }.map_err(e)?;
        let (rows, cols) = (fs, d);
        let tcfg = LaunchConfig {
            grid_dim: (div_up(s.d_in, 32), div_up(s.d_sae, 32), 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        let mut l = st.launch_builder(self.func("transpose")?);
        l.arg(&rows).arg(&cols).arg(&gwe_t).arg(&mut ga.w_enc);
        // SAFETY: transpose(int rows, int cols, const float* in [rows*cols], float* out [cols*rows]) with rows = F,
        // cols = d: both scratch buffers have at least F*d.
        unsafe { l.launch(tcfg) }.map_err(e)?;
        let mut l = st.launch_builder(self.func("bwd_bdec")?);
        l.arg(&d)
            .arg(&fs)
            .arg(&p.w_enc)
            .arg(&ga.b_enc)
            .arg(&zeros_d)
            .arg(&mut ga.b_dec);
        // SAFETY: bwd_bdec(int d, int F, const float* w_enc [d*F], const float* g_benc [F], const float* dxh_sum [d],
        // float* g_bdec [d]); zeros_d has d, the scratch at least F and d; one block per j < d.
        unsafe { l.launch(rows_cfg(s.d_in)) }.map_err(e)?;
        self.add_params(g, &ga)?;
        for (name, buf) in [
            ("auxk_f", fa),
            ("auxk_ehat", ehat),
            ("auxk_e", target),
            ("auxk_dehat", dehat),
            ("genc_t", gwe_t),
            ("auxk_gwe", ga.w_enc),
            ("auxk_gbe", ga.b_enc),
            ("auxk_gwd", ga.w_dec),
            ("auxk_gbd", ga.b_dec),
        ] {
            self.give(name, buf);
        }
        Ok(loss)
    }

    fn resample(
        &self,
        s: Shape,
        dead: &[usize],
        dirs: &[f32],
        p: &mut Params<Self::Buf>,
        m: &mut Params<Self::Buf>,
        v: &mut Params<Self::Buf>,
    ) -> Result<(), BackendError> {
        check(s).resample([p, m, v], dead, dirs.len())?;
        if dead.is_empty() || s.d_in == 0 {
            return Ok(());
        }
        let (_, d, fs) = dims(s)?;
        // Mean norm of the alive encoder columns, summed on the host in f64 like the CPU op.
        let mut sq = self.take("col_sq", s.d_sae)?;
        let mut l = self.stream.launch_builder(self.func("enc_col_sq_norms")?);
        l.arg(&d).arg(&fs).arg(&p.w_enc).arg(&mut sq);
        // SAFETY: enc_col_sq_norms(int d, int F, const float* w_enc [d*F], float* out [F]); sq has at least F.
        unsafe { l.launch(elems_cfg(s.d_sae)) }.map_err(CudaError::from)?;
        let sqh = self.stream.clone_dtoh(&sq).map_err(CudaError::from)?;
        self.give("col_sq", sq);
        let mut is_dead = vec![false; s.d_sae];
        dead.iter().for_each(|&i| is_dead[i] = true);
        let alive: Vec<f64> = (0..s.d_sae)
            .filter(|&i| !is_dead[i])
            .map(|i| (sqh[i] as f64).sqrt())
            .collect();
        let mean = if alive.is_empty() {
            0.0
        } else {
            alive.iter().sum::<f64>() / alive.len() as f64
        };
        let scale = 0.2 * mean as f32;
        // A feature listed twice gets its last direction, as with the sequential CPU writes.
        let mut last: HashMap<usize, usize> = HashMap::new();
        dead.iter().enumerate().for_each(|(n, &i)| {
            last.insert(i, n);
        });
        let mut order: Vec<(usize, usize)> = last.into_iter().collect();
        order.sort_unstable();
        let idx: Vec<i32> = order.iter().map(|&(i, _)| i as i32).collect();
        let mut dd = Vec::with_capacity(order.len() * s.d_in);
        for &(_, n) in &order {
            dd.extend_from_slice(&dirs[n * s.d_in..(n + 1) * s.d_in]);
        }
        let n_dead = idx.len() as i32;
        let idx_dev = self.stream.clone_htod(&idx).map_err(CudaError::from)?;
        let dirs_dev = self.stream.clone_htod(&dd).map_err(CudaError::from)?;
        let mut l = self.stream.launch_builder(self.func("resample_write")?);
        l.arg(&n_dead)
            .arg(&d)
            .arg(&fs)
            .arg(&scale)
            .arg(&idx_dev)
            .arg(&dirs_dev)
            .arg(&mut p.w_enc)
            .arg(&mut p.b_enc)
            .arg(&mut p.w_dec)
            .arg(&mut m.w_enc)
            .arg(&mut v.w_enc)
            .arg(&mut m.b_enc)
            .arg(&mut v.b_enc)
            .arg(&mut m.w_dec)
            .arg(&mut v.w_dec);
        // SAFETY: resample_write(int n_dead, int d, int F, float enc_scale, const int* dead [n_dead] (distinct, < F),
        // const float* dirs [n_dead*d], float* w_enc [d*F], float* b_enc [F], float* w_dec [F*d], m/v_w_enc [d*F],
        // m/v_b_enc [F], m/v_w_dec [F*d]); indices deduplicated and range-checked, lengths checked above.
        unsafe { l.launch(rows_cfg(idx.len())) }.map_err(CudaError::from)?;
        Ok(())
    }
}
