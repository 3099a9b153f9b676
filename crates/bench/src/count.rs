//! Counted cost: instructions and estimated cycles of each op benchmark and of a fixed number of training steps,
//! counted by Valgrind's callgrind instead of timed (docs/verdicts.md, "Counted cost").
//!
//! The parent (`runner bench`) starts one child, `valgrind --tool=callgrind … runner count-ops …`, with one rayon
//! thread that is the child's main thread, so the counts are those of one deterministic thread. The child runs each
//! benchmark's work once inside [`saeperf_counted_region`]; callgrind collects only inside that function
//! (`--collect-atstart=no --toggle-collect`) and writes one dump after each call (`--dump-after`), so set-up, input
//! generation and process start-up are never counted. The child prints which benchmark each region was, in order;
//! the parent reads the dumps in the same order.
//!
//! Estimated cycles use iai-callgrind's weighting of callgrind's simulated caches: every L1 hit costs 1, every
//! last-level hit 5, every access that misses the last level 35. Valgrind presents a CPU without AVX-512, so the
//! counts describe the AVX2 code paths, whatever the machine runs natively.
//!
//! Ops are counted at the count shape (the op's shape with the batch capped at `[count] batch`; the op's cost is
//! linear in the batch), training at `[count] train_steps` steps with the batch capped at `[count] train_batch` and
//! at [`TRAIN_STEP_MACS`] per GEMM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use saeperf_kernels::{Backend, Shape};
use serde::{Deserialize, Serialize};

use crate::ops::OpBench;
use crate::suite::{BenchSpec, CountSettings, TrainSpec};
use crate::train::DataCtx;

/// The function inside which callgrind counts (its symbol name; `#[no_mangle]` keeps it as written).
pub const REGION_SYMBOL: &str = "saeperf_counted_region";

/// Environment variable: the valgrind program to use (default `valgrind` on PATH); `off` skips counting.
pub const VALGRIND_ENV: &str = "SAEPERF_VALGRIND";

/// Metric names the counted cost is stored under.
pub const INSTRUCTIONS: &str = "instructions";
pub const EST_CYCLES: &str = "est_cycles";

/// Run `work` once; callgrind counts exactly this call (see the module doc). Never inlined, never renamed.
#[no_mangle]
#[inline(never)]
pub fn saeperf_counted_region(work: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    std::hint::black_box(work())
}

/// Callgrind's event totals of one region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub ir: u64,
    pub dr: u64,
    pub dw: u64,
    pub i1mr: u64,
    pub d1mr: u64,
    pub d1mw: u64,
    pub ilmr: u64,
    pub dlmr: u64,
    pub dlmw: u64,
}

impl Counts {
    /// iai-callgrind's estimate: L1 hits + 5 · last-level hits + 35 · last-level misses.
    pub fn est_cycles(&self) -> u64 {
        let ram = self.ilmr + self.dlmr + self.dlmw;
        let l1_miss = self.i1mr + self.d1mr + self.d1mw;
        let ll_hits = l1_miss.saturating_sub(ram);
        let l1_hits = (self.ir + self.dr + self.dw).saturating_sub(l1_miss);
        l1_hits + 5 * ll_hits + 35 * ram
    }

    /// Parse the totals of a callgrind output file (its `events:` line names the columns of `summary:`/`totals:`).
    pub fn parse(text: &str) -> Result<Counts> {
        let events: Vec<&str> = text
            .lines()
            .find_map(|l| l.strip_prefix("events:"))
            .context("no `events:` line in the callgrind output")?
            .split_whitespace()
            .collect();
        let totals: Vec<u64> = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .context("no `summary:` line in the callgrind output")?
            .split_whitespace()
            .map(|v| v.parse::<u64>())
            .collect::<Result<_, _>>()
            .context("a callgrind total is not a number")?;
        let get = |name: &str| -> Result<u64> {
            let i = events.iter().position(|e| *e == name).with_context(|| {
                format!("callgrind did not record {name} (was --cache-sim=yes given?)")
            })?;
            // Trailing zero columns may be left out.
            Ok(totals.get(i).copied().unwrap_or(0))
        };
        Ok(Counts {
            ir: get("Ir")?,
            dr: get("Dr")?,
            dw: get("Dw")?,
            i1mr: get("I1mr")?,
            d1mr: get("D1mr")?,
            d1mw: get("D1mw")?,
            ilmr: get("ILmr")?,
            dlmr: get("DLmr")?,
            dlmw: get("DLmw")?,
        })
    }
}

/// What the child counts.
#[derive(Debug, Clone)]
pub struct CountRequest {
    pub suite: Option<PathBuf>,
    pub profile: Option<String>,
    pub filter: Option<String>,
    /// The CPU backend to count (fast or reference).
    pub backend: saeperf_store::RunBackend,
    /// Count only the op benchmarks (the merge base's ops under `--baseline auto`).
    pub only_ops: bool,
    /// Count no op benchmarks (the merge base's once-through run).
    pub skip_ops: bool,
}

/// What the child prints: the benchmark each region was, in order, and what it could not count.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CountDocument {
    pub regions: Vec<String>,
    pub skipped: Vec<(String, String)>,
}

/// The shape an op is counted at.
pub fn count_shape(s: Shape, c: &CountSettings) -> Shape {
    Shape::new(s.batch.min(c.batch.max(1)), s.d_in, s.d_sae)
}

/// A counted training step does at most this many multiply-adds per GEMM (batch · d_in · d_sae): about the counted
/// encode's, so a language-model dictionary (576 × 4608) is counted at batch 25 rather than for minutes.
pub const TRAIN_STEP_MACS: usize = 1 << 26;

fn train_count_config(
    t: &TrainSpec,
    d_in: usize,
    c: &CountSettings,
) -> saeperf_sae::train::TrainConfig {
    let mut t = t.clone();
    t.steps = c.train_steps.max(1);
    let by_work = (TRAIN_STEP_MACS / (d_in * t.d_sae).max(1)).max(1);
    t.batch = t.batch.min(c.train_batch.max(1)).min(by_work);
    t.log_every = t.steps + 1;
    t.resample = None;
    crate::train::train_config(&t, t.seed)
}

/// The child (`runner count-ops`, run under callgrind): each countable benchmark once, inside the region.
pub fn count_child<B: Backend>(
    req: &CountRequest,
    backend: &B,
    home: &Path,
) -> Result<CountDocument> {
    let (suite, _) = crate::suite::Suite::load(req.suite.as_deref())?;
    let resolved = suite.resolve(req.profile.as_deref(), req.filter.as_deref())?;
    let c = resolved.count;
    let mut doc = CountDocument::default();
    let wants_train = !req.only_ops
        && resolved
            .benches
            .iter()
            .any(|b| matches!(b, BenchSpec::Train(_) | BenchSpec::Prune(_)));
    // Sets harvested from a model are never opened here: training on them is not counted (below), and verifying
    // their checksum under Valgrind alone took minutes.
    let model_sets: std::collections::BTreeSet<String> = resolved
        .data
        .iter()
        .filter(|(_, spec)| match spec {
            crate::suite::DataSpec::Prepared { path, .. } => {
                let p = if Path::new(path).is_absolute() {
                    PathBuf::from(path)
                } else {
                    home.join(path)
                };
                saeperf_sae::data::actset::Manifest::read(&p)
                    .is_ok_and(|m| m.source_kind() == "model")
            }
            _ => false,
        })
        .map(|(name, _)| name.clone())
        .collect();
    let data = if wants_train {
        let mut counted_sets = resolved.clone();
        counted_sets
            .data
            .retain(|name, _| !model_sets.contains(name));
        Some(DataCtx::prepare(
            &counted_sets,
            home,
            crate::train::DataPrep::NEVER,
        )?)
    } else {
        None
    };
    for spec in &resolved.benches {
        match spec {
            BenchSpec::Op {
                name, op, shape, ..
            } if !req.skip_ops => {
                let s = count_shape(Shape::new(shape.batch, shape.d_in, shape.d_sae), &c);
                let mut bench = match OpBench::new(backend, *op, s) {
                    Ok(b) => b,
                    Err(e) => {
                        doc.skipped.push((name.clone(), format!("{e:#}")));
                        continue;
                    }
                };
                match saeperf_counted_region(&mut || bench.call()) {
                    Ok(()) => doc.regions.push(name.clone()),
                    Err(e) => bail!(
                        "{name}: {e:#} (the counted region failed; its dump cannot be attributed)"
                    ),
                }
            }
            BenchSpec::Train(t) | BenchSpec::Prune(t) if !req.only_ops => {
                if model_sets.contains(&t.data) {
                    // At the model's shapes one training step under Valgrind takes minutes; the ops, counted at the
                    // reference shape (the model's d_model, an 8x dictionary), cover the same kernels.
                    doc.skipped.push((
                        t.name.clone(),
                        "training on a model set is not counted (minutes per step under Valgrind); the op counts at \
                         the reference shape cover its kernels"
                            .to_string(),
                    ));
                    continue;
                }
                let Some(set) = data.as_ref().and_then(|d| d.set(&t.data)) else {
                    doc.skipped.push((
                        t.name.clone(),
                        format!("activation set {:?} is not prepared", t.data),
                    ));
                    continue;
                };
                let cfg = train_count_config(t, set.d_in(), &c);
                let mut run = || {
                    saeperf_sae::train::train_on(backend, &cfg, set, false).map(|o| {
                        std::hint::black_box(o);
                    })
                };
                match saeperf_counted_region(&mut run) {
                    Ok(()) => doc.regions.push(t.name.clone()),
                    Err(e) => bail!("{}: {e:#} (the counted region failed)", t.name),
                }
            }
            _ => {}
        }
    }
    Ok(doc)
}

/// Why counting cannot run here, if it cannot (one line).
pub fn unavailable() -> Option<String> {
    let prog = std::env::var(VALGRIND_ENV).unwrap_or_else(|_| "valgrind".into());
    if prog == "off" {
        return Some(format!("{VALGRIND_ENV}=off"));
    }
    match Command::new(&prog).arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some(format!(
            "{prog} is not installed (Debian: apt-get install valgrind); instructions and est_cycles not recorded"
        )),
    }
}

/// Counted metrics per benchmark name.
pub type Counted = BTreeMap<String, BTreeMap<String, f64>>;

/// The parent: run `runner count-ops` of `runner` (this binary or the merge base's) under callgrind, in `workdir`,
/// and read one dump per region. Err is one line saying why nothing was counted.
pub fn count(
    runner: &Path,
    workdir: Option<&Path>,
    req: &CountRequest,
    env_remove: &[&str],
    env_set: &[(&str, String)],
) -> Result<Counted> {
    let prog = std::env::var(VALGRIND_ENV).unwrap_or_else(|_| "valgrind".into());
    let tmp = tempfile::tempdir().context("creating a directory for callgrind's dumps")?;
    let out = tmp.path().join("cg.out");
    let mut c = Command::new(&prog);
    if let Some(w) = workdir {
        c.current_dir(w);
    }
    for e in env_remove {
        c.env_remove(e);
    }
    for (k, v) in env_set {
        c.env(k, v);
    }
    c.env("RAYON_NUM_THREADS", "1")
        .args([
            "--tool=callgrind",
            "--cache-sim=yes",
            "--collect-atstart=no",
            "--trace-children=no",
        ])
        .arg(format!("--toggle-collect={REGION_SYMBOL}"))
        .arg(format!("--dump-after={REGION_SYMBOL}"))
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(runner)
        .args(["--quiet", "count-ops"]);
    if let Some(s) = &req.suite {
        c.arg("--suite")
            .arg(std::path::absolute(s).unwrap_or(s.clone()));
    }
    if let Some(p) = &req.profile {
        c.args(["--profile", p]);
    }
    if let Some(f) = &req.filter {
        c.args(["--filter", f]);
    }
    c.args(["--backend", req.backend.as_str()]);
    if req.only_ops {
        c.arg("--only-ops");
    }
    if req.skip_ops {
        c.arg("--skip-ops");
    }
    let o = c.output().with_context(|| format!("starting {prog}"))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.starts_with("==") && !l.trim().is_empty())
            .unwrap_or("");
        bail!("counting under callgrind failed ({}): {last}", o.status);
    }
    let doc: CountDocument = serde_json::from_slice(&o.stdout)
        .context("reading `runner count-ops` output (a runner older than counted cost?)")?;
    for (b, why) in &doc.skipped {
        eprintln!("{b}: counted cost skipped: {why}");
    }
    let mut counted = Counted::new();
    for (i, name) in doc.regions.iter().enumerate() {
        // callgrind numbers the dumps made by --dump-after from 1.
        let path = PathBuf::from(format!("{}.{}", out.display(), i + 1));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading callgrind dump {} of {name}", path.display()))?;
        let n = Counts::parse(&text).with_context(|| format!("callgrind dump of {name}"))?;
        counted.insert(
            name.clone(),
            BTreeMap::from([
                (INSTRUCTIONS.to_string(), n.ir as f64),
                (EST_CYCLES.to_string(), n.est_cycles() as f64),
            ]),
        );
    }
    Ok(counted)
}

/// Add the counted metrics to results with the same benchmark name.
pub fn merge(results: &mut [saeperf_store::BenchResult], counted: &Counted) {
    for r in results {
        if let Some(m) = counted.get(&r.name) {
            r.metrics.extend(m.iter().map(|(k, v)| (k.clone(), *v)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_callgrind_totals_and_weights_cycles() {
        let text = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\n\
                    fn=x\n0 1 2\nsummary: 1000 300 100 10 20 5 2 3 1\n";
        let c = Counts::parse(text).unwrap();
        assert_eq!(c.ir, 1000);
        assert_eq!(c.dlmw, 1);
        // L1 misses 35, of which 6 miss the last level: L1 hits 1400 − 35, LL hits 29, RAM 6.
        assert_eq!(c.est_cycles(), (1400 - 35) + 5 * 29 + 35 * 6);
        // Without cache simulation the miss columns are absent: a clear error.
        let e = Counts::parse("events: Ir\nsummary: 5\n").unwrap_err();
        assert!(format!("{e:#}").contains("cache-sim"), "{e:#}");
        assert!(Counts::parse("nothing").is_err());
    }

    #[test]
    fn count_shape_caps_the_batch_only() {
        let c = CountSettings::default();
        let s = count_shape(Shape::REFERENCE, &c);
        assert_eq!((s.batch, s.d_in, s.d_sae), (c.batch, 576, 4608));
        assert_eq!(count_shape(Shape::new(4, 8, 16), &c), Shape::new(4, 8, 16));
    }
}
