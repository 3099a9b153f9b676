//! Op micro-benchmarks: each op of the chosen backend at fixed shapes, warm-up iterations, then one raw timing
//! sample per iteration.
//!
//! Inputs are deterministic (seeded) and realistic: codes for decode/backward/reduce/matryoshka have 32 firing
//! features per token (the sparse path a trained dictionary takes), resample replaces 1/8 of the features; the ops
//! that read pre-activations (threshold, batchtopk, auxk) get ReLU'd ones of which about half are positive, with
//! thresholds that keep about half of those, a batch-wide k of 32 per token, and 1/8 of the features dead for AuxK.
//!
//! Every op sample is paired with a yardstick sample taken just before it: a fixed multi-threaded workload that does
//! not depend on saeperf's code ([`yardstick`]). The comparison divides one by the other, so load from other processes
//! (the main noise on shared machines) cancels out (docs/verdicts.md, "Speed").
//!
//! `SAEPERF_INJECT_SLOWDOWN=<fraction>` (e.g. 0.03) makes every op do that fraction more of its own real work: each
//! call also runs the same op on inputs with that fraction of the features (the same batch, d_in and firing density;
//! every op's cost is proportional to the dictionary size). Time and counted cost
//! both see it, as they would see a real regression. It exists only to measure the detector (`runner calibrate`, the
//! tests); it is read here and nowhere else, and never affects training or metrics.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use saeperf_kernels::ops::inputs::{sparse_codes, uniform as randn};
use saeperf_kernels::ops::matryoshka::default_prefixes;
use saeperf_kernels::{Activation, AdamHyper, Backend, Op, Params, Shape};

/// The environment variable read by the timing loop (see the module doc).
pub const INJECT_ENV: &str = "SAEPERF_INJECT_SLOWDOWN";

fn injected_slowdown() -> Result<f64> {
    match std::env::var(INJECT_ENV) {
        Err(_) => Ok(0.0),
        Ok(v) => match v.parse::<f64>() {
            Ok(f) if f.is_finite() && f >= 0.0 => Ok(f),
            _ => bail!("{INJECT_ENV}={v:?} is not a non-negative number"),
        },
    }
}

/// Firing features per token in the codes the ops read (decode, backward, reduce): the sparse path of a trained
/// dictionary at the reference shape.
const FIRING: usize = 32;

/// The shape of the injected extra work, `frac` of the op's own: the same batch and d_in with `frac` of the
/// features (every op's cost is proportional to the dictionary size, packing of the weights included; scaling the
/// batch instead would leave the per-weight costs of backward and adam whole).
fn injected_shape(s: Shape, frac: f64) -> Shape {
    Shape::new(
        s.batch,
        s.d_in,
        ((s.d_sae as f64 * frac).round() as usize).max(1),
    )
}

/// One op at one shape on one backend, with its inputs and outputs allocated once.
pub struct OpBench<'a, B: Backend> {
    be: &'a B,
    op: Op,
    s: Shape,
    p: Params<B::Buf>,
    g: Params<B::Buf>,
    m: Params<B::Buf>,
    v: Params<B::Buf>,
    x: B::Buf,
    f: B::Buf,
    xhat: B::Buf,
    out_f: B::Buf,
    /// A second codes-shaped output (gated's π_gate).
    out_f2: B::Buf,
    out_x: B::Buf,
    counts: Vec<u32>,
    dead: Vec<usize>,
    dirs: Vec<f32>,
    /// ReLU'd pre-activations [batch, d_sae] (threshold, batchtopk, auxk).
    a: B::Buf,
    /// Per-feature vectors [d_sae]: log θ (threshold), r_mag and b_mag (gated), and their gradients.
    vecs: [B::Buf; 3],
    vec_grads: [B::Buf; 3],
    /// A second gradient set (matryoshka's per-prefix gradients).
    g2: Params<B::Buf>,
    step: u64,
    /// The injected extra work (see the module doc).
    extra: Option<Box<OpBench<'a, B>>>,
}

impl<'a, B: Backend> OpBench<'a, B> {
    /// Allocate deterministic inputs for `op` at `s` (and for the injected extra work, if any).
    pub fn new(be: &'a B, op: Op, s: Shape) -> Result<Self> {
        let frac = injected_slowdown()?;
        let mut b = Self::plain(be, op, s, FIRING)?;
        if frac > 0.0 {
            let x = injected_shape(s, frac);
            // The same firing density as the op's own codes.
            let firing = ((FIRING * x.d_sae) as f64 / s.d_sae.max(1) as f64)
                .round()
                .max(1.0) as usize;
            b.extra = Some(Box::new(Self::plain(be, op, x, firing)?));
        }
        Ok(b)
    }

    fn plain(be: &'a B, op: Op, s: Shape, firing: usize) -> Result<Self> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5ae);
        let up = |v: &[f32]| {
            be.upload(v)
                .with_context(|| format!("uploading inputs of {op}"))
        };
        let host = Params {
            w_enc: randn(&mut rng, s.d_in * s.d_sae, 0.05),
            b_enc: randn(&mut rng, s.d_sae, 0.01),
            w_dec: randn(&mut rng, s.d_sae * s.d_in, 0.05),
            b_dec: randn(&mut rng, s.d_in, 0.01),
        };
        let zeros = || -> Result<Params<B::Buf>> {
            Ok(Params {
                w_enc: be.zeros(s.d_in * s.d_sae)?,
                b_enc: be.zeros(s.d_sae)?,
                w_dec: be.zeros(s.d_sae * s.d_in)?,
                b_dec: be.zeros(s.d_in)?,
            })
        };
        let dead: Vec<usize> = (0..s.d_sae).step_by(8).collect();
        let mut dirs = randn(&mut rng, dead.len() * s.d_in, 1.0);
        for d in dirs.chunks_mut(s.d_in.max(1)) {
            let n = d.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            d.iter_mut().for_each(|x| *x /= n);
        }
        let a: Vec<f32> = randn(&mut rng, s.batch * s.d_sae, 1.0)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        let vec_up = |v: f32| be.upload(&vec![v; s.d_sae]);
        Ok(OpBench {
            be,
            op,
            s,
            a: up(&a)?,
            vecs: [vec_up(0.5f32.ln())?, vec_up(0.0)?, vec_up(0.0)?],
            vec_grads: [be.zeros(s.d_sae)?, be.zeros(s.d_sae)?, be.zeros(s.d_sae)?],
            g2: zeros()?,
            p: host.try_map(|v| up(v))?,
            g: zeros()?,
            m: zeros()?,
            v: zeros()?,
            x: up(&randn(&mut rng, s.batch * s.d_in, 1.0))?,
            f: up(&sparse_codes(&mut rng, s, firing))?,
            xhat: up(&randn(&mut rng, s.batch * s.d_in, 1.0))?,
            out_f: be.zeros(s.batch * s.d_sae)?,
            out_f2: be.zeros(s.batch * s.d_sae)?,
            out_x: be.zeros(s.batch * s.d_in)?,
            counts: vec![0u32; s.d_sae],
            dead,
            dirs,
            step: 0,
            extra: None,
        })
    }

    /// One call of the op (and of the injected extra work): the work a sample times and a count counts.
    pub fn call(&mut self) -> Result<()> {
        self.call_one()
            .with_context(|| format!("op {} at {:?}", self.op, self.s))?;
        if let Some(x) = &mut self.extra {
            x.call_one()?;
        }
        Ok(())
    }

    fn call_one(&mut self) -> Result<()> {
        let (be, s) = (self.be, self.s);
        match self.op {
            Op::Encode => be.encode(s, Activation::Relu, &self.x, &self.p, &mut self.out_f)?,
            Op::Decode => be.decode(s, &self.f, &self.p, &mut self.out_x)?,
            Op::Backward => {
                be.backward(s, 1e-3, &self.x, &self.f, &self.xhat, &self.p, &mut self.g)?
            }
            Op::Adam => {
                self.step += 1;
                be.adam(
                    s,
                    AdamHyper::new(1e-4, self.step),
                    &mut self.p,
                    &mut self.g,
                    &mut self.m,
                    &mut self.v,
                )?
            }
            Op::Resample => be.resample(
                s,
                &self.dead,
                &self.dirs,
                &mut self.p,
                &mut self.m,
                &mut self.v,
            )?,
            Op::Reduce => {
                be.batch_stats(s, &self.x, &self.xhat, &self.f, &mut self.counts)?;
            }
            Op::Threshold => {
                be.threshold(s, &self.a, &self.vecs[0], &mut self.out_f)?;
                be.threshold_grad(
                    s,
                    0.05,
                    1e-3,
                    &self.a,
                    &self.vecs[0],
                    &self.x,
                    &self.xhat,
                    &self.p,
                    &mut self.vec_grads[0],
                )?;
            }
            Op::BatchTopK => {
                be.batch_topk(s, FIRING, &self.a, &mut self.out_f)?;
            }
            Op::Matryoshka => {
                let prefixes = default_prefixes(s.d_sae);
                for &m in &prefixes[..prefixes.len().saturating_sub(1)] {
                    be.prefix_mask(s, m, &self.f, &mut self.out_f)?;
                    be.decode(s, &self.out_f, &self.p, &mut self.out_x)?;
                    be.per_token_sq_err(s, &self.x, &self.out_x)?;
                    be.backward(
                        s,
                        0.0,
                        &self.x,
                        &self.out_f,
                        &self.out_x,
                        &self.p,
                        &mut self.g2,
                    )?;
                    be.accumulate(s, &mut self.g, &self.g2)?;
                }
            }
            Op::Gated => {
                let [_, r, bm] = &self.vecs;
                be.gated_encode(
                    s,
                    &self.x,
                    &self.p,
                    [r, bm],
                    &mut self.out_f2,
                    &mut self.out_f,
                )?;
                let [_, gr, gb] = &mut self.vec_grads;
                be.gated_backward(
                    s,
                    1e-3,
                    [&self.x, &self.out_f2, &self.out_f, &self.xhat],
                    &self.p,
                    [r, bm],
                    &mut self.g,
                    [gr, gb],
                )?;
            }
            Op::AuxK => {
                be.auxk(
                    s,
                    2 * FIRING,
                    1.0 / 32.0,
                    &self.a,
                    &self.dead,
                    &self.x,
                    &self.xhat,
                    &self.p,
                    &mut self.g,
                )?;
            }
        }
        Ok(())
    }

    /// One timed iteration, in seconds.
    pub fn sample(&mut self) -> Result<f64> {
        let t = Instant::now();
        self.call()?;
        Ok(t.elapsed().as_secs_f64())
    }
}

/// The yardstick: one pass of a fixed FMA workload over 4 MiB per thread, on every core, timed (seconds).
pub fn yardstick(buf: &mut [Vec<f32>]) -> f64 {
    let t = Instant::now();
    std::thread::scope(|sc| {
        for chunk in buf.iter_mut() {
            sc.spawn(move || {
                for pass in 0..4 {
                    let a = 1.0 + pass as f32 * 1e-7;
                    for v in chunk.iter_mut() {
                        *v = v.mul_add(a, 1e-7);
                    }
                }
                std::hint::black_box(&chunk);
            });
        }
    });
    t.elapsed().as_secs_f64()
}

/// Timing of one op: its samples and the paired yardstick samples.
pub struct OpTiming {
    pub samples: Vec<f64>,
    pub yardstick: Vec<f64>,
}

/// Time several ops in rounds (op 1, op 2, ..., op 1, op 2, ...) so that a burst of load from other processes spreads
/// over every op's samples instead of landing on all samples of one op; each sample is preceded by a yardstick
/// sample. Returns, per op, its timing or its error.
pub fn time_ops<B: Backend>(
    be: &B,
    ops: &[(Op, Shape)],
    samples: usize,
    warmup: usize,
) -> Vec<Result<OpTiming>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut yard_buf: Vec<Vec<f32>> = (0..threads).map(|_| vec![1.0f32; 1 << 20]).collect();
    let mut benches: Vec<Result<OpBench<B>>> = ops
        .iter()
        .map(|(op, s)| OpBench::new(be, *op, *s))
        .collect();
    let mut out: Vec<Result<OpTiming>> = (0..ops.len())
        .map(|_| {
            Ok(OpTiming {
                samples: Vec::with_capacity(samples),
                yardstick: Vec::with_capacity(samples),
            })
        })
        .collect();
    for round in 0..warmup + samples {
        for (b, o) in benches.iter_mut().zip(out.iter_mut()) {
            let (Ok(b), Ok(v)) = (b, o.as_mut()) else {
                continue;
            };
            let y = yardstick(&mut yard_buf);
            match b.sample() {
                Ok(t) if round >= warmup => {
                    v.samples.push(t);
                    v.yardstick.push(y);
                }
                Ok(_) => {}
                Err(e) => *o = Err(e),
            }
        }
    }
    benches
        .into_iter()
        .zip(out)
        .map(|(b, o)| b.and(o))
        .collect()
}

#[cfg(test)]
/// Time one op: `warmup` untimed iterations, then `samples` timed ones.
pub fn time_op<B: Backend>(
    be: &B,
    op: &str,
    s: Shape,
    samples: usize,
    warmup: usize,
) -> Result<Vec<f64>> {
    let op: Op = op.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    time_ops(be, &[(op, s)], samples, warmup)
        .pop()
        .expect("one result")
        .map(|t| t.samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use saeperf_kernels::CpuBackend;

    #[test]
    fn every_op_times_at_a_small_shape() {
        let s = Shape::new(8, 16, 64);
        for op in Op::ALL.map(Op::as_str) {
            let t = time_op(&CpuBackend::fast(), op, s, 3, 1).unwrap();
            assert_eq!(t.len(), 3);
            assert!(t.iter().all(|x| x.is_finite() && *x > 0.0), "{op}: {t:?}");
        }
        assert!(time_op(&CpuBackend::fast(), "nope", s, 1, 0).is_err());
    }
}
