//! Every CUDA kernel against its CPU reference (`runner kernels check --backend cuda`), llm.c style: fresh random
//! inputs (never zeros), outputs poisoned with NaN before each launch, shapes that are and are not multiples of the
//! tiles, both paths (dense and sparse) of the ops that have two. A result passes when ‖gpu − ref‖ / ‖ref‖ ≤
//! [`TOLERANCE`] for every output (a NaN anywhere fails).

use super::backend::{CudaBackend, OpPath};
use crate::backend::{Backend, BackendError, CpuBackend, Params};
use crate::ops::inputs::{rel_err, sparse_codes, uniform as randv};
use crate::ops::{gated::Sums, Activation, AdamHyper, Op, Shape};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The largest relative error (norm of the difference over norm of the reference) a float32 kernel may have.
pub const TOLERANCE: f64 = 1e-4;

/// Shapes (batch, d_in, d_sae): tile multiples (128) and not, down to one element.
pub const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (7, 13, 29),
    (77, 50, 301),
    (130, 129, 257),
    (256, 128, 512),
    (64, 576, 2304),
];

/// One comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckRow {
    pub op: String,
    /// Variant and output, e.g. "topk k=5 / f" or "sparse / ∂W_enc".
    pub variant: String,
    pub shape: Shape,
    pub rel_err: f64,
    pub pass: bool,
}

struct Ctx<'a> {
    gpu: &'a CudaBackend,
    cpu: CpuBackend,
    rows: Vec<CheckRow>,
}

impl Ctx<'_> {
    fn push(&mut self, op: &str, variant: String, s: Shape, got: &[f32], want: &[f32]) {
        let e = rel_err(got, want);
        self.rows.push(CheckRow {
            op: op.into(),
            variant,
            shape: s,
            rel_err: e,
            pass: e <= TOLERANCE,
        });
    }
    fn nan(&self, n: usize) -> Result<cudarc::driver::CudaSlice<f32>, BackendError> {
        self.gpu.upload(&vec![f32::NAN; n])
    }
    fn params_up(
        &self,
        p: &Params<Vec<f32>>,
    ) -> Result<Params<cudarc::driver::CudaSlice<f32>>, BackendError> {
        p.try_map(|v| self.gpu.upload(v))
    }
    fn params_down(
        &self,
        p: &Params<cudarc::driver::CudaSlice<f32>>,
    ) -> Result<Params<Vec<f32>>, BackendError> {
        p.try_map(|v| self.gpu.download(v))
    }
}

fn rand_params(r: &mut ChaCha8Rng, s: Shape) -> Params<Vec<f32>> {
    let mut w_dec = randv(r, s.d_sae * s.d_in, 1.0);
    for row in w_dec.chunks_mut(s.d_in.max(1)) {
        let n: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= n);
    }
    Params {
        w_enc: randv(r, s.d_in * s.d_sae, 0.5),
        b_enc: randv(r, s.d_sae, 0.2),
        w_dec,
        b_dec: randv(r, s.d_in, 0.1),
    }
}

const NAMES: [&str; 4] = ["W_enc", "b_enc", "W_dec", "b_dec"];

fn params_vec(p: &Params<Vec<f32>>) -> [&Vec<f32>; 4] {
    [&p.w_enc, &p.b_enc, &p.w_dec, &p.b_dec]
}

/// Runs the checks of the op families in `ops` (all of [`Op::ALL`] when empty) on every shape of [`SHAPES`].
pub fn verify(
    gpu: &CudaBackend,
    ops: &[Op],
    mut progress: impl FnMut(&str),
) -> Result<Vec<CheckRow>, BackendError> {
    let want = |o: &str| ops.is_empty() || ops.iter().any(|x| x.as_str() == o);
    let mut c = Ctx {
        gpu,
        cpu: CpuBackend::reference(),
        rows: Vec::new(),
    };
    let saved = gpu.path();
    for (n, &(b, d, fs)) in SHAPES.iter().enumerate() {
        let s = Shape::new(b, d, fs);
        progress(&format!("{b}×{d}×{fs}"));
        let mut r = ChaCha8Rng::seed_from_u64(0x5ae + n as u64);
        let x = randv(&mut r, b * d, 1.0);
        let p = rand_params(&mut r, s);
        let pg = c.params_up(&p)?;
        let xg = gpu.upload(&x)?;
        let k_small = (fs / 8).max(1);
        let acts = [Activation::Relu, Activation::TopK { k: k_small }];
        if want("encode") {
            for act in acts {
                let mut wantf = vec![f32::NAN; b * fs];
                c.cpu.encode(s, act, &x, &p, &mut wantf)?;
                let mut fg = c.nan(b * fs)?;
                gpu.encode(s, act, &xg, &pg, &mut fg)?;
                c.push("encode", format!("{act:?}"), s, &gpu.download(&fg)?, &wantf);
            }
        }
        // Codes for the ops downstream: a real ReLU encoding (dense, ~half fire) and a sparse one (~2%).
        let mut f_dense = vec![0.0; b * fs];
        c.cpu.encode(s, Activation::Relu, &x, &p, &mut f_dense)?;
        let f_sparse = sparse_codes(&mut r, s, ((fs as f32 * 0.02).round() as usize).max(1));
        for (label, f) in [("dense f", &f_dense), ("sparse f", &f_sparse)] {
            let fg = gpu.upload(f)?;
            let mut xhat = vec![f32::NAN; b * d];
            c.cpu.decode(s, f, &p, &mut xhat)?;
            for path in [OpPath::Dense, OpPath::Sparse] {
                gpu.set_path(path);
                if want("decode") {
                    let mut xg2 = c.nan(b * d)?;
                    gpu.decode(s, &fg, &pg, &mut xg2)?;
                    c.push(
                        "decode",
                        format!("{path:?} / {label}"),
                        s,
                        &gpu.download(&xg2)?,
                        &xhat,
                    );
                }
                if want("backward") {
                    let l1 = 0.3;
                    let mut gw = Params::zeros(s);
                    for q in [&mut gw.w_enc, &mut gw.b_enc, &mut gw.w_dec, &mut gw.b_dec] {
                        q.fill(f32::NAN);
                    }
                    let mut gg = c.params_up(&gw)?;
                    c.cpu.backward(s, l1, &x, f, &xhat, &p, &mut gw)?;
                    let xhg = gpu.upload(&xhat)?;
                    gpu.backward(s, l1, &xg, &fg, &xhg, &pg, &mut gg)?;
                    let got = c.params_down(&gg)?;
                    for (i, (g, w)) in params_vec(&got).iter().zip(params_vec(&gw)).enumerate() {
                        c.push(
                            "backward",
                            format!("{path:?} / {label} / ∂{}", NAMES[i]),
                            s,
                            g,
                            w,
                        );
                    }
                }
            }
            gpu.set_path(saved);
            if want("reduce") {
                let xhat_r = randv(&mut r, b * d, 1.0);
                let (xhg, fgr) = (gpu.upload(&xhat_r)?, &fg);
                let mut c_cpu = vec![3u32; fs];
                let mut c_gpu = vec![3u32; fs];
                let a = c.cpu.batch_stats(s, &x, &xhat_r, f, &mut c_cpu)?;
                let g = gpu.batch_stats(s, &xg, &xhg, fgr, &mut c_gpu)?;
                let st = |v: &crate::ops::BatchStats| [v.sse as f32, v.l0 as f32, v.l1 as f32];
                c.push(
                    "reduce",
                    format!("batch_stats / {label}"),
                    s,
                    &st(&g),
                    &st(&a),
                );
                let cf = |v: &[u32]| v.iter().map(|&n| n as f32).collect::<Vec<_>>();
                c.push(
                    "reduce",
                    format!("fire counts / {label}"),
                    s,
                    &cf(&c_gpu),
                    &cf(&c_cpu),
                );
                let nnz = gpu.count_nonzero(&fg)? as f32;
                let want_nnz = f.iter().filter(|v| **v != 0.0).count() as f32;
                c.push(
                    "reduce",
                    format!("count_nonzero / {label}"),
                    s,
                    &[nnz],
                    &[want_nnz],
                );
            }
        }
        if want("adam") {
            let h = AdamHyper::new(1e-2, 3);
            let mut p1 = p.clone();
            let mut g1 = rand_params(&mut r, s);
            let mut m1 = rand_params(&mut r, s);
            let mut v1 = rand_params(&mut r, s);
            for q in [&mut v1.w_enc, &mut v1.b_enc, &mut v1.w_dec, &mut v1.b_dec] {
                q.iter_mut().for_each(|x| *x = x.abs());
            }
            let (mut pg2, mut gg, mut mg, mut vg) = (
                c.params_up(&p1)?,
                c.params_up(&g1)?,
                c.params_up(&m1)?,
                c.params_up(&v1)?,
            );
            c.cpu.adam(s, h, &mut p1, &mut g1, &mut m1, &mut v1)?;
            gpu.adam(s, h, &mut pg2, &mut gg, &mut mg, &mut vg)?;
            for (what, got, want) in [
                ("param", &pg2, &p1),
                ("grad (projected)", &gg, &g1),
                ("m", &mg, &m1),
                ("v", &vg, &v1),
            ] {
                let got = c.params_down(got)?;
                for (i, (g, w)) in params_vec(&got).iter().zip(params_vec(want)).enumerate() {
                    c.push("adam", format!("{what} {}", NAMES[i]), s, g, w);
                }
            }
        }
        if want("resample") {
            let xhat_r = randv(&mut r, b * d, 1.0);
            let want_err = c.cpu.per_token_sq_err(s, &x, &xhat_r)?;
            let got_err = gpu.per_token_sq_err(s, &xg, &gpu.upload(&xhat_r)?)?;
            c.push(
                "resample",
                "per_token_sq_err".into(),
                s,
                &got_err,
                &want_err,
            );
            let dead: Vec<usize> = (0..fs).filter(|i| i % 3 == 1).collect();
            let mut dirs = randv(&mut r, dead.len() * d, 1.0);
            for row in dirs.chunks_mut(d.max(1)) {
                let n: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                row.iter_mut().for_each(|x| *x /= n);
            }
            let (mut p1, mut m1, mut v1) =
                (p.clone(), rand_params(&mut r, s), rand_params(&mut r, s));
            let (mut pg2, mut mg, mut vg) =
                (c.params_up(&p1)?, c.params_up(&m1)?, c.params_up(&v1)?);
            c.cpu.resample(s, &dead, &dirs, &mut p1, &mut m1, &mut v1)?;
            gpu.resample(s, &dead, &dirs, &mut pg2, &mut mg, &mut vg)?;
            for (what, got, want) in [("param", &pg2, &p1), ("m", &mg, &m1), ("v", &vg, &v1)] {
                let got = c.params_down(got)?;
                for (i, (g, w)) in params_vec(&got).iter().zip(params_vec(want)).enumerate() {
                    c.push("resample", format!("{what} {}", NAMES[i]), s, g, w);
                }
            }
        }
        architectures(&mut c, &want, s, &mut r, &x, &p)?;
    }
    gpu.synchronize()?;
    Ok(c.rows)
}

/// The architectures' ops (threshold, batchtopk, matryoshka, gated, auxk) at one shape, against the CPU reference.
fn architectures(
    c: &mut Ctx,
    want: &dyn Fn(&str) -> bool,
    s: Shape,
    r: &mut ChaCha8Rng,
    x: &[f32],
    p: &Params<Vec<f32>>,
) -> Result<(), BackendError> {
    let (b, d, fs) = (s.batch, s.d_in, s.d_sae);
    let gpu = c.gpu;
    let x = &x.to_vec(); // the CPU backend's buffer type
    let (xg, pg) = (gpu.upload(x)?, c.params_up(p)?);
    let mut a = vec![0.0; b * fs];
    c.cpu.encode(s, Activation::Relu, x, p, &mut a)?;
    let ag = gpu.upload(&a)?;
    let xhat = randv(r, b * d, 1.0);
    let xhg = gpu.upload(&xhat)?;
    if want("encode") {
        // TopK on pre-activations already computed (the TopK and AuxK training path).
        let k = (fs / 8).max(1);
        let mut wantf = vec![f32::NAN; b * fs];
        c.cpu.topk(s, k, &a, &mut wantf)?;
        let mut fg = c.nan(b * fs)?;
        gpu.topk(s, k, &ag, &mut fg)?;
        c.push(
            "encode",
            format!("topk on a, k={k}"),
            s,
            &gpu.download(&fg)?,
            &wantf,
        );
    }
    if want("threshold") {
        // Thresholds near the codes' scale, so that some pairs pass and some fall inside the band.
        let lt: Vec<f32> = randv(r, fs, 1.0)
            .iter()
            .map(|u| (0.3 + 0.25 * u).ln())
            .collect();
        let ltg = gpu.upload(&lt)?;
        let mut wantf = vec![f32::NAN; b * fs];
        c.cpu.threshold(s, &a, &lt, &mut wantf)?;
        let mut fg = c.nan(b * fs)?;
        gpu.threshold(s, &ag, &ltg, &mut fg)?;
        c.push("threshold", "f".into(), s, &gpu.download(&fg)?, &wantf);
        let mut wg = vec![f32::NAN; fs];
        c.cpu
            .threshold_grad(s, 0.2, 0.5, &a, &lt, x, &xhat, p, &mut wg)?;
        let mut gg = c.nan(fs)?;
        gpu.threshold_grad(s, 0.2, 0.5, &ag, &ltg, &xg, &xhg, &pg, &mut gg)?;
        c.push("threshold", "∂log θ".into(), s, &gpu.download(&gg)?, &wg);
    }
    if want("batchtopk") {
        // The codes as they are, and quantized to 1/8 so that ties at the threshold span rows.
        let aq: Vec<f32> = a.iter().map(|v| (v * 8.0).floor() / 8.0).collect();
        for (label, src) in [("codes", &a), ("ties", &aq)] {
            let srcg = gpu.upload(src)?;
            for k in [1, (fs / 7).max(1), fs] {
                let mut wantf = vec![f32::NAN; b * fs];
                let tw = c.cpu.batch_topk(s, k, src, &mut wantf)?;
                let mut fg = c.nan(b * fs)?;
                let tg = gpu.batch_topk(s, k, &srcg, &mut fg)?;
                c.push(
                    "batchtopk",
                    format!("{label} k={k} / f"),
                    s,
                    &gpu.download(&fg)?,
                    &wantf,
                );
                c.push(
                    "batchtopk",
                    format!("{label} k={k} / min kept"),
                    s,
                    &[tg],
                    &[tw],
                );
            }
        }
    }
    if want("matryoshka") {
        for m in [0, fs / 3, fs] {
            let mut wantf = vec![f32::NAN; b * fs];
            c.cpu.prefix_mask(s, m, &a, &mut wantf)?;
            let mut fg = c.nan(b * fs)?;
            gpu.prefix_mask(s, m, &ag, &mut fg)?;
            c.push(
                "matryoshka",
                format!("prefix_mask m={m}"),
                s,
                &gpu.download(&fg)?,
                &wantf,
            );
        }
        let (mut acc, g) = (rand_params(r, s), rand_params(r, s));
        let (mut accg, gg) = (c.params_up(&acc)?, c.params_up(&g)?);
        c.cpu.accumulate(s, &mut acc, &g)?;
        gpu.accumulate(s, &mut accg, &gg)?;
        let got = c.params_down(&accg)?;
        for (i, (gv, wv)) in params_vec(&got).iter().zip(params_vec(&acc)).enumerate() {
            c.push("matryoshka", format!("accumulate {}", NAMES[i]), s, gv, wv);
        }
    }
    if want("gated") {
        let (rm, bm) = (randv(r, fs, 0.5), randv(r, fs, 0.2));
        let (rmg, bmg) = (gpu.upload(&rm)?, gpu.upload(&bm)?);
        let (mut wpg, mut wf) = (vec![f32::NAN; b * fs], vec![f32::NAN; b * fs]);
        c.cpu.gated_encode(s, x, p, [&rm, &bm], &mut wpg, &mut wf)?;
        let (mut pgg, mut fg) = (c.nan(b * fs)?, c.nan(b * fs)?);
        gpu.gated_encode(s, &xg, &pg, [&rmg, &bmg], &mut pgg, &mut fg)?;
        c.push(
            "gated",
            "encode / π_gate".into(),
            s,
            &gpu.download(&pgg)?,
            &wpg,
        );
        c.push("gated", "encode / f".into(), s, &gpu.download(&fg)?, &wf);
        // The backward on that encoding, with a reconstruction that is not its decode (nonzero residuals).
        let l1 = 0.4;
        let mut gw = Params::zeros(s);
        let (mut grw, mut gbw) = (vec![f32::NAN; fs], vec![f32::NAN; fs]);
        let sw = c.cpu.gated_backward(
            s,
            l1,
            [x, &wpg, &wf, &xhat],
            p,
            [&rm, &bm],
            &mut gw,
            [&mut grw, &mut gbw],
        )?;
        let mut gg =
            c.params_up(&gw.try_map(|v| Ok::<_, BackendError>(vec![f32::NAN; v.len()]))?)?;
        let (mut grg, mut gbg) = (c.nan(fs)?, c.nan(fs)?);
        let sg = gpu.gated_backward(
            s,
            l1,
            [&xg, &pgg, &fg, &xhg],
            &pg,
            [&rmg, &bmg],
            &mut gg,
            [&mut grg, &mut gbg],
        )?;
        let got = c.params_down(&gg)?;
        for (i, (gv, wv)) in params_vec(&got).iter().zip(params_vec(&gw)).enumerate() {
            c.push("gated", format!("backward / ∂{}", NAMES[i]), s, gv, wv);
        }
        c.push(
            "gated",
            "backward / ∂r_mag".into(),
            s,
            &gpu.download(&grg)?,
            &grw,
        );
        c.push(
            "gated",
            "backward / ∂b_mag".into(),
            s,
            &gpu.download(&gbg)?,
            &gbw,
        );
        let sums = |v: Sums| [v.aux_sse as f32, v.gate_l1 as f32];
        c.push(
            "gated",
            "backward / aux_sse, gate_l1".into(),
            s,
            &sums(sg),
            &sums(sw),
        );
    }
    if want("auxk") {
        let dead: Vec<usize> = (0..fs).filter(|i| i % 4 == 1).collect();
        // From zero gradients, so that the comparison sees the auxiliary gradients alone.
        let mut gw = Params::zeros(s);
        let mut gg = c.params_up(&gw)?;
        let lw = c
            .cpu
            .auxk(s, 4, 1.0 / 32.0, &a, &dead, x, &xhat, p, &mut gw)?;
        let lg = gpu.auxk(s, 4, 1.0 / 32.0, &ag, &dead, &xg, &xhg, &pg, &mut gg)?;
        c.push("auxk", "loss".into(), s, &[lg as f32], &[lw as f32]);
        let got = c.params_down(&gg)?;
        for (i, (gv, wv)) in params_vec(&got).iter().zip(params_vec(&gw)).enumerate() {
            c.push("auxk", format!("∂{}", NAMES[i]), s, gv, wv);
        }
    }
    Ok(())
}
