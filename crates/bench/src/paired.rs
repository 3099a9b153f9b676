//! Paired, interleaved timing of two builds in one job (docs/verdicts.md, "Paired timing").
//!
//! Each side runs as one long-lived worker process (`runner bench-worker`): it allocates every op's inputs once,
//! pins its threads to cores, and answers requests "time op i for n iterations" on stdin with one line on stdout.
//! The parent alternates the two workers in pairs, the order within each pair drawn at random, so that drift and
//! neighbours hit both sides of a pair alike. Pairs come in blocks: before each block both workers allocate the op's
//! inputs anew, because where the buffers land in memory moves a memory-bound op by several percent per allocation
//! (measured on the 2-core VM: resample ±15% between two processes of the same binary, decode and backward ±2–4%),
//! and two fixed allocations would be a fixed bias no number of pairs removes. A block's geometric means are one
//! pair for the verdict ([`saeperf_compare::paired`]), so the layout's spread is in the error, not in the verdict.
//! Sampling is sequential: an op stops when its detectable change reaches the target or its block count the
//! maximum, and the whole phase when the time budget is spent. A borderline op is then measured again with as many
//! blocks again before its verdict is final (confirmation).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use saeperf_compare::paired::{judge_paired, log_ratio_se};
use saeperf_compare::rules::Rules;
use saeperf_compare::stats::{detectable_change, signed_rank_min_pairs};
use saeperf_kernels::{Backend, Shape};
use saeperf_store::{BenchKind, BenchResult, BenchStatus};
use serde::{Deserialize, Serialize};

use crate::ops::OpBench;
use crate::suite::{BenchSpec, PairSettings};

/// A sample should take at least this long (tiny shapes repeat the op within one sample).
const MIN_SAMPLE: Duration = Duration::from_millis(2);

/// What a worker says when it is ready: the op benchmarks it can time, in order, and those it cannot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ready {
    pub ops: Vec<String>,
    pub failed: Vec<(String, String)>,
}

/// Pin the calling process's rayon threads one per core (Linux; elsewhere a no-op). Called once, before any op runs.
pub fn pin_threads() {
    #[cfg(target_os = "linux")]
    {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .start_handler(move |i| {
                // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity on the calling thread.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(i % n, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
            })
            .build_global();
    }
}

/// The worker (`runner bench-worker`): allocate, say ready, then serve "<op index> <iterations>" lines with the
/// mean seconds per iteration, until stdin closes.
pub fn serve<B: Backend>(be: &B, specs: &[&BenchSpec]) -> Result<()> {
    let mut benches = Vec::new();
    let mut ready = Ready::default();
    for spec in specs {
        if let BenchSpec::Op {
            name, op, shape, ..
        } = spec
        {
            let s = Shape::new(shape.batch, shape.d_in, shape.d_sae);
            match OpBench::new(be, *op, s) {
                Ok(b) => {
                    benches.push((b, *op, s));
                    ready.ops.push(name.clone());
                }
                Err(e) => ready.failed.push((name.clone(), format!("{e:#}"))),
            }
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "{}", serde_json::to_string(&ready)?)?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut it = line.split_whitespace();
        let (Some(i), Some(n)) = (it.next(), it.next()) else {
            bail!("bench-worker: bad request {line:?} (want \"<op index> <iterations>\" or \"new <op index>\")");
        };
        if i == "new" {
            // Fresh inputs at fresh addresses: a new draw of the memory layout (see the module doc).
            let i: usize = n.parse()?;
            let (b, op, s) = benches
                .get_mut(i)
                .with_context(|| format!("bench-worker: no op {i}"))?;
            *b = OpBench::new(be, *op, *s)?;
            b.call()?;
            writeln!(out, "0")?;
            out.flush()?;
            continue;
        }
        let (i, n): (usize, usize) = (i.parse()?, n.parse()?);
        let (b, _, _) = benches
            .get_mut(i)
            .with_context(|| format!("bench-worker: no op {i}"))?;
        let t = Instant::now();
        for _ in 0..n.max(1) {
            b.call()?;
        }
        writeln!(out, "{:e}", t.elapsed().as_secs_f64() / n.max(1) as f64)?;
        out.flush()?;
    }
    Ok(())
}

/// The parent's handle on one worker.
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub ready: Ready,
    who: String,
}

impl Worker {
    /// Start `cmd` (a `runner … bench-worker …` command line) and wait until it is ready.
    pub fn start(mut cmd: Command, who: &str) -> Result<Worker> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {who} bench-worker"))?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line).ok();
        let ready: Ready = match serde_json::from_str(line.trim()) {
            Ok(r) => r,
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().ok();
                let err = out
                    .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
                    .unwrap_or_default();
                bail!(
                    "{who} `runner bench-worker` did not start: {} (a merge base older than paired timing cannot \
                     be timed this way; run `runner bench` on it and store the run instead)",
                    err.lines().last().unwrap_or("no output")
                );
            }
        };
        Ok(Worker {
            child,
            stdin,
            stdout,
            ready,
            who: who.to_string(),
        })
    }

    /// Give op `i` fresh inputs (new allocations: a new draw of the memory layout).
    pub fn renew(&mut self, i: usize) -> Result<()> {
        writeln!(self.stdin, "new {i}")
            .and_then(|_| self.stdin.flush())
            .with_context(|| format!("{} bench-worker stopped", self.who))?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.trim() != "0" {
            let tail = self.stderr_tail();
            bail!("{} bench-worker failed renewing op {i}: {tail}", self.who);
        }
        Ok(())
    }

    /// Mean seconds per iteration of op `i` over `iters` iterations.
    pub fn time(&mut self, i: usize, iters: usize) -> Result<f64> {
        writeln!(self.stdin, "{i} {iters}")
            .and_then(|_| self.stdin.flush())
            .with_context(|| format!("{} bench-worker stopped", self.who))?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        match line.trim().parse::<f64>() {
            Ok(t) => Ok(t),
            Err(_) => {
                let tail = self.stderr_tail();
                bail!(
                    "{} bench-worker failed on op {}: {tail}",
                    self.who,
                    self.ready.ops.get(i).map(String::as_str).unwrap_or("?")
                )
            }
        }
    }

    fn stderr_tail(&mut self) -> String {
        let _ = self.child.kill();
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("it exited")
            .to_string()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The blocks of one op: per block, the geometric mean of the base's and of the head's seconds per iteration over
/// the block's pairs (the verdict treats a block as one pair: the layout drawn for the block is shared by its pairs).
#[derive(Debug, Clone, Default)]
pub struct OpPairs {
    pub name: String,
    /// The op's index in the base's and in the head's worker.
    idx: (usize, usize),
    pub base: Vec<f64>,
    pub head: Vec<f64>,
    pub iters: usize,
    /// The spread (robust sd) of single pairs' log ratios, over every pair taken.
    pub pair_logs: Vec<f64>,
    /// Blocks before confirmation, and the verdict they gave, when the op was confirmed.
    pub confirmed: Option<(usize, String)>,
}

/// How a paired timing phase went (for the run's notes and `runner calibrate`).
#[derive(Debug, Clone, Default)]
pub struct PairReport {
    pub secs: f64,
    pub budget_spent: bool,
}

fn take_pair<R: Rng>(
    base: &mut Worker,
    head: &mut Worker,
    o: &OpPairs,
    rng: &mut R,
) -> Result<(f64, f64)> {
    let (bi, hi) = o.idx;
    Ok(if rng.random_bool(0.5) {
        let b = base.time(bi, o.iters)?;
        (b, head.time(hi, o.iters)?)
    } else {
        let h = head.time(hi, o.iters)?;
        (base.time(bi, o.iters)?, h)
    })
}

/// One block: fresh inputs on both sides, then `n` pairs.
fn take_block<R: Rng>(
    base: &mut Worker,
    head: &mut Worker,
    o: &mut OpPairs,
    n: usize,
    rng: &mut R,
) -> Result<()> {
    // The side renewed last has its fresh inputs in cache: which one that is must be drawn too (always renewing the
    // head last made resample 4.5% "faster" in A/A).
    if rng.random_bool(0.5) {
        base.renew(o.idx.0)?;
        head.renew(o.idx.1)?;
    } else {
        head.renew(o.idx.1)?;
        base.renew(o.idx.0)?;
    }
    let (mut lb, mut lh) = (0.0, 0.0);
    for _ in 0..n.max(1) {
        let (b, h) = take_pair(base, head, o, rng)?;
        o.pair_logs.push((h / b).ln());
        lb += b.ln();
        lh += h.ln();
    }
    o.base.push((lb / n.max(1) as f64).exp());
    o.head.push((lh / n.max(1) as f64).exp());
    Ok(())
}

fn done(o: &OpPairs, s: &PairSettings, rules: &Rules) -> bool {
    let n = o.base.len();
    // Never stop before the signed-rank test can reach alpha at all: with fewer blocks a narrow spread would look
    // precise while no change, however large, could be flagged.
    if n < s.min_blocks.max(signed_rank_min_pairs(rules.speed.alpha)) {
        return false;
    }
    if n >= s.max_blocks {
        return true;
    }
    let se = log_ratio_se(&o.base, &o.head);
    detectable_change(se, rules.speed.alpha, rules.speed.paired_threshold) <= s.target
}

/// Starts a (base, head) pair of workers; the flag says whether the base starts first.
pub type StartWorkers<'a> = dyn FnMut(bool) -> Result<(Worker, Worker)> + 'a;

/// Time every op both workers have, in blocks of pairs (see the module doc); `seed` draws the order within pairs.
/// Both workers are restarted every `rounds_per_process` rounds, the side that starts first alternating, so that
/// what one process pair happens to get (start order, its memory) is spread over the blocks instead of biasing all.
pub fn time_pairs(
    start_workers: &mut StartWorkers,
    warmup: usize,
    s: &PairSettings,
    rules: &Rules,
    seed: u64,
) -> Result<(Vec<OpPairs>, PairReport, (Ready, Ready))> {
    let start = Instant::now();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut base_first = rng.random_bool(0.5);
    let (mut base, mut head) = start_workers(base_first)?;
    let ready = (base.ready.clone(), head.ready.clone());
    let mut ops: Vec<OpPairs> = Vec::new();
    for (bi, name) in base.ready.ops.clone().into_iter().enumerate() {
        let Some(hi) = head.ready.ops.iter().position(|n| *n == name) else {
            continue;
        };
        // Warm-up, and the iterations that make a sample last at least MIN_SAMPLE.
        let mut t = f64::INFINITY;
        for _ in 0..warmup.max(1) {
            t = t.min(base.time(bi, 1)?).min(head.time(hi, 1)?);
        }
        let iters = ((MIN_SAMPLE.as_secs_f64() / t.max(1e-9)).ceil() as usize).clamp(1, 10_000);
        ops.push(OpPairs {
            name,
            idx: (bi, hi),
            iters,
            ..Default::default()
        });
    }
    let budget = Duration::from_secs_f64(s.budget_secs);
    let mut report = PairReport::default();
    let mut round = 0usize;
    let mut restart = |round: &mut usize, base: &mut Worker, head: &mut Worker| -> Result<()> {
        *round += 1;
        if (*round).is_multiple_of(s.rounds_per_process.max(1)) {
            base_first = !base_first;
            // The old pair stops before the new one allocates.
            let (b, h) = {
                let _ = (base.child.kill(), head.child.kill());
                start_workers(base_first)?
            };
            (*base, *head) = (b, h);
        }
        Ok(())
    };
    loop {
        let active: Vec<usize> = (0..ops.len())
            .filter(|&i| !done(&ops[i], s, rules))
            .collect();
        if active.is_empty() {
            break;
        }
        if start.elapsed() > budget {
            report.budget_spent = true;
            break;
        }
        for i in active {
            take_block(
                &mut base,
                &mut head,
                &mut ops[i],
                s.pairs_per_block,
                &mut rng,
            )?;
        }
        restart(&mut round, &mut base, &mut head)?;
    }
    // Confirmation: a borderline op gets as many blocks again (within a quarter of the budget more) before its
    // verdict, so sampling, confirmation included, stays within 1.25 budgets.
    let confirm_until = start.elapsed() + budget / 4;
    for o in ops.iter_mut() {
        let row = judge_paired(&o.name, &o.base, &o.head, rules);
        if !saeperf_compare::paired::borderline(&row, rules) {
            continue;
        }
        let n0 = o.base.len();
        for _ in 0..n0.min(s.max_blocks) {
            if start.elapsed() > confirm_until {
                report.budget_spent = true;
                break;
            }
            take_block(&mut base, &mut head, o, s.pairs_per_block, &mut rng)?;
            restart(&mut round, &mut base, &mut head)?;
        }
        o.confirmed = Some((n0, row.verdict.as_str().to_string()));
    }
    report.secs = start.elapsed().as_secs_f64();
    Ok((ops, report, ready))
}

/// The op results of both sides from their pairs; `token` ties the two results of one pairing together.
pub fn results(
    ops: &[OpPairs],
    specs: &[&BenchSpec],
    ready: (&Ready, &Ready),
    token: &str,
) -> (Vec<BenchResult>, Vec<BenchResult>) {
    let mut base = Vec::new();
    let mut head = Vec::new();
    for spec in specs {
        let BenchSpec::Op {
            name, op, shape, ..
        } = spec
        else {
            continue;
        };
        let flops = matches!(
            op,
            saeperf_kernels::Op::Encode | saeperf_kernels::Op::Decode
        )
        .then(|| 2.0 * (shape.batch * shape.d_in * shape.d_sae) as f64);
        let mk = |samples: Vec<f64>, status: BenchStatus, extra: serde_json::Value| BenchResult {
            name: name.clone(),
            kind: BenchKind::Op,
            status,
            samples,
            yardstick: vec![],
            metrics: Default::default(),
            metric_seeds: Default::default(),
            deterministic: true,
            curve: vec![],
            extra,
        };
        let info = serde_json::json!({ "op": op, "shape": shape, "dense_flops": flops });
        match ops.iter().find(|o| &o.name == name) {
            Some(o) => {
                let mut e = info.clone();
                e["paired"] = serde_json::json!({
                    "with": token,
                    "pairs": o.base.len(),
                    "pairs_per_block": o.pair_logs.len() / o.base.len().max(1),
                    "pair_spread": saeperf_compare::stats::robust_sd(&o.pair_logs),
                    "iters_per_sample": o.iters,
                    "confirmed": o.confirmed.as_ref().map(|(n, v)| serde_json::json!({
                        "pairs_before": n, "verdict_before": v,
                    })),
                });
                base.push(mk(o.base.clone(), BenchStatus::Ok, e.clone()));
                head.push(mk(o.head.clone(), BenchStatus::Ok, e));
            }
            None => {
                // Failed on one side (or both): each side says its own reason.
                let why = |r: &Ready| match r.failed.iter().find(|(n, _)| n == name) {
                    Some((_, w)) => BenchStatus::Failed(w.clone()),
                    None if r.ops.contains(name) => BenchStatus::Ok,
                    None => BenchStatus::Failed("not timed by this build".into()),
                };
                base.push(mk(vec![], why(ready.0), info.clone()));
                head.push(mk(vec![], why(ready.1), info.clone()));
            }
        }
    }
    (base, head)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tight blocks would reach any detectable target after 4 blocks, but the signed-rank test cannot reach alpha
    /// 0.002 before 10: sampling goes on to 10, and a judge of fewer blocks shows nothing detectable.
    #[test]
    fn sampling_never_stops_before_the_test_can_reject() {
        let rules = Rules::default();
        let s = PairSettings {
            min_blocks: 4,
            max_blocks: 40,
            ..PairSettings::default()
        };
        let mut o = OpPairs::default();
        for i in 0..12 {
            // Distinct ratios (no ties: the exact test applies), all about 3x.
            let w = 1.0 + 1e-3 * (i % 3) as f64;
            o.base.push(1e-3 * w);
            o.head.push(3e-3 * w * (1.0 + 1e-4 * (i * i) as f64));
            let n = o.base.len();
            assert_eq!(done(&o, &s, &rules), n >= 10, "{n} blocks");
            let row = judge_paired("op", &o.base, &o.head, &rules);
            if (3..10).contains(&n) {
                assert_eq!(row.detectable, None, "{row:?}");
                assert!(row.detail.contains("cannot reach alpha"), "{row:?}");
            }
            if n >= 10 {
                assert_eq!(row.verdict, saeperf_compare::Verdict::Regression, "{row:?}");
            }
        }
    }
}
