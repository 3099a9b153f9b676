//! Command-line faces of the store and the comparison: `runner db check|export|list|synth-history`,
//! `runner ingest`, `runner compare BASE HEAD`, `runner history BENCH METRIC`. main.rs only declares the
//! subcommands (the Args types here) and calls [`run_db`], [`run_ingest`], [`run_compare`], [`run_history`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::compare::{self, same_series};
use crate::fingerprint::Fingerprint;
use crate::store::schema::{new_run_id, BenchKind, BenchStatus};
use crate::store::{bundle, BenchResult, Run, RunMeta, RunState, Store};
use crate::suite::Suite;

/// `$SAEPERF_HOME`, else `~/.saeperf`.
pub fn saeperf_home() -> PathBuf {
    if let Some(h) = std::env::var_os("SAEPERF_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".saeperf")
}

/// The store path: `--db`, else `$SAEPERF_HOME/store`.
pub fn store_path(db: Option<&Path>) -> PathBuf {
    db.map(Path::to_path_buf)
        .unwrap_or_else(|| saeperf_home().join("store"))
}

pub fn open_store(db: Option<&Path>) -> Result<Store> {
    let p = store_path(db);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(Store::open(&p)?)
}

/// Store location shared by the store commands.
#[derive(Args, Debug, Clone)]
pub struct DbArg {
    /// The results store (a sled directory); default $SAEPERF_HOME/store (SAEPERF_HOME defaults to the user cache dir + saeperf).
    #[arg(long, env = "SAEPERF_DB", global = true)]
    pub db: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum DbCmd {
    /// Verify the store's integrity: schema version, every record readable, complete runs whole. Exit 1 on problems.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// List runs (newest last).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Write complete runs as a self-contained JSON bundle (to --out, or stdout).
    Export {
        /// Only these run ids (default: every complete run).
        #[arg(long = "run")]
        runs: Vec<String>,
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Fill a store with synthetic complete runs (for measuring compare/history speed on big stores).
    #[command(hide = true)]
    SynthHistory {
        #[arg(long, default_value_t = 10_000)]
        runs: usize,
    },
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Base run: run id (or unique prefix), commit SHA prefix (newest complete run of it), or `latest`.
    pub base: String,
    /// Head run, same forms.
    pub head: String,
    /// Suite whose regression rules apply (default bench/suite.toml, else the built-in copy).
    #[arg(long)]
    pub suite: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    /// Show every row, not only those that need attention.
    #[arg(long)]
    pub all: bool,
    /// Compare op timings raw, ignoring the paired yardstick samples.
    #[arg(long)]
    pub no_yardstick: bool,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Benchmark name (e.g. relu-l1, op/encode).
    pub bench: String,
    /// `time` (median of the timing samples, seconds) or a metric name (mse, l0, fve, ...).
    pub metric: String,
    #[arg(long)]
    pub json: bool,
    /// Machine fingerprint id (default: this machine's).
    #[arg(long, conflicts_with = "any_machine")]
    pub fingerprint: Option<String>,
    /// Runs from every machine (the series then mixes machines; the fingerprint column tells them apart).
    #[arg(long)]
    pub any_machine: bool,
    #[arg(long)]
    pub backend: Option<String>,
    #[arg(long)]
    pub profile: Option<String>,
    #[arg(long)]
    pub branch: Option<String>,
    /// Only the newest N points.
    #[arg(long)]
    pub limit: Option<usize>,
}

pub fn run_db(db: Option<&Path>, cmd: &DbCmd) -> Result<i32> {
    let store = open_store(db)?;
    match cmd {
        DbCmd::Check { json } => {
            let rep = store.check()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&rep)?);
            } else {
                println!(
                    "store {}: {} complete runs, {} incomplete, {} results",
                    store.path().display(),
                    rep.complete,
                    rep.incomplete.len(),
                    rep.results
                );
                for id in &rep.incomplete {
                    println!("incomplete (never a baseline): {id}");
                }
                for p in &rep.problems {
                    println!("problem: {p}");
                }
                println!(
                    "{}",
                    if rep.problems.is_empty() {
                        "ok"
                    } else {
                        "FAILED"
                    }
                );
            }
            Ok(if rep.problems.is_empty() { 0 } else { 1 })
        }
        DbCmd::List { json } => {
            let runs = store.list_runs()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                let mut t = comfy_table::Table::new();
                t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
                t.set_header([
                    "run", "state", "commit", "branch", "pr", "backend", "profile", "machine",
                ]);
                for m in &runs {
                    t.add_row([
                        m.id.clone(),
                        format!("{:?}", m.state).to_lowercase(),
                        m.commit
                            .as_deref()
                            .map(|c| c[..c.len().min(10)].to_string())
                            .unwrap_or_default()
                            + if m.dirty { "+dirty" } else { "" },
                        m.branch.clone().unwrap_or_default(),
                        m.pr.map(|p| p.to_string()).unwrap_or_default(),
                        m.backend.clone(),
                        m.profile.clone(),
                        m.fingerprint_id.clone(),
                    ]);
                }
                println!("{t}");
            }
            Ok(0)
        }
        DbCmd::Export { runs, out } => {
            let b = bundle::export(&store, runs)?;
            let text = serde_json::to_string(&b)?;
            match out {
                Some(p) => {
                    // Write beside and rename, so a cut-off export never leaves half a bundle under the name.
                    let tmp = p.with_extension("partial");
                    std::fs::write(&tmp, &text)
                        .with_context(|| format!("writing {}", tmp.display()))?;
                    std::fs::rename(&tmp, p)
                        .with_context(|| format!("renaming to {}", p.display()))?;
                    eprintln!("exported {} runs to {}", b.runs.len(), p.display());
                }
                None => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(text.as_bytes())?;
                    o.write_all(b"\n")?;
                }
            }
            Ok(0)
        }
        DbCmd::SynthHistory { runs } => {
            synth_history(&store, *runs)?;
            Ok(0)
        }
    }
}

pub fn run_ingest(db: Option<&Path>, bundles: &[PathBuf]) -> Result<i32> {
    let store = open_store(db)?;
    for p in bundles {
        let b = bundle::read(p)?;
        let (added, skipped) =
            bundle::ingest(&store, &b).with_context(|| format!("ingesting {}", p.display()))?;
        println!(
            "{}: {added} runs added, {skipped} already present",
            p.display()
        );
    }
    Ok(0)
}

pub fn run_compare(db: Option<&Path>, a: &CompareArgs) -> Result<i32> {
    let (suite, _) = Suite::load(a.suite.as_deref())?;
    let rules = suite.rules();
    let store = open_store(db)?;
    let head = store.resolve(&a.head, &|_| true)?;
    // A commit or `latest` for the base means: on the head's machine, backend and profile.
    let base = store.resolve(&a.base, &|m: &RunMeta| {
        same_series(m, &head) && m.id != head.id
    })?;
    let c = compare::compare_stored(&store, &base, &head, &rules, !a.no_yardstick)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", compare::render(&c, a.all));
    }
    Ok(c.exit_code())
}

#[derive(serde::Serialize)]
struct HistoryPoint {
    run: String,
    time: chrono::DateTime<chrono::Utc>,
    commit: Option<String>,
    branch: Option<String>,
    dirty: bool,
    fingerprint: String,
    backend: String,
    profile: String,
    value: Option<f64>,
    status: String,
}

pub fn run_history(db: Option<&Path>, a: &HistoryArgs) -> Result<i32> {
    let store = open_store(db)?;
    let fp = if a.any_machine {
        None
    } else {
        Some(
            a.fingerprint
                .clone()
                .unwrap_or_else(|| Fingerprint::detect().id()),
        )
    };
    let metas: Vec<RunMeta> = store
        .list_runs()?
        .into_iter()
        .filter(|m| {
            m.state == RunState::Complete
                && fp.as_ref().is_none_or(|f| &m.fingerprint_id == f)
                && a.backend.as_ref().is_none_or(|b| &m.backend == b)
                && a.profile.as_ref().is_none_or(|p| &m.profile == p)
                && a.branch
                    .as_ref()
                    .is_none_or(|b| m.branch.as_ref() == Some(b))
                && m.benchmarks.iter().any(|b| b == &a.bench)
        })
        .collect();
    let metas = match a.limit {
        Some(n) => metas[metas.len().saturating_sub(n)..].to_vec(),
        None => metas,
    };
    let mut points = Vec::with_capacity(metas.len());
    for m in metas {
        let r = store.result(&m.id, &a.bench)?;
        let (value, status) = match &r {
            Some(r) => (
                r.series_value(&a.metric),
                match &r.status {
                    BenchStatus::Ok => "ok".to_string(),
                    BenchStatus::Failed(_) => "failed".into(),
                    BenchStatus::Diverged(_) => "diverged".into(),
                },
            ),
            None => (None, "missing".into()),
        };
        points.push(HistoryPoint {
            run: m.id,
            time: m.started_at,
            commit: m.commit,
            branch: m.branch,
            dirty: m.dirty,
            fingerprint: m.fingerprint_id,
            backend: m.backend,
            profile: m.profile,
            value,
            status,
        });
    }
    if points.is_empty() {
        let hint = if fp.is_some() {
            " on this machine (try --any-machine)"
        } else {
            ""
        };
        anyhow::bail!("no complete run has benchmark {:?}{hint}", a.bench);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&points)?);
        return Ok(0);
    }
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "run", "commit", "branch", "machine", "backend", "profile", "status", &a.metric,
    ]);
    for p in &points {
        t.add_row([
            p.run.clone(),
            p.commit
                .as_deref()
                .map(|c| c[..c.len().min(10)].to_string())
                .unwrap_or_default()
                + if p.dirty { "+dirty" } else { "" },
            p.branch.clone().unwrap_or_default(),
            p.fingerprint.clone(),
            p.backend.clone(),
            p.profile.clone(),
            p.status.clone(),
            p.value
                .map(|v| format!("{v:.6e}"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{t}");
    Ok(0)
}

/// Write `n` synthetic complete runs on this machine's fingerprint (one commit each, branch main), each with the
/// default suite's benchmark names, 20 timing samples per op, a 40-point curve and a dozen metrics — about the size
/// of a real standard-profile run.
fn synth_history(store: &Store, n: usize) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let (suite, _) = Suite::load(None)?;
    let resolved = suite.resolve(None, None)?;
    let fp = Fingerprint::detect();
    let fp_id = fp.id();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let start = chrono::Utc::now() - chrono::Duration::hours(n as i64);
    let pb = indicatif::ProgressBar::new(n as u64);
    for i in 0..n {
        let t = start + chrono::Duration::hours(i as i64);
        let meta = RunMeta {
            id: new_run_id(t),
            state: RunState::Complete,
            commit: Some(format!("{:040x}", rng.random::<u128>())),
            branch: Some("main".into()),
            pr: None,
            dirty: false,
            started_at: t,
            finished_at: Some(t),
            fingerprint: fp.clone(),
            fingerprint_id: fp_id.clone(),
            backend: "cpu".into(),
            suite: resolved.suite.clone(),
            profile: resolved.profile.clone(),
            suite_hash: resolved.hash(),
            activation_sets: BTreeMap::new(),
            benchmarks: vec![],
            runner_version: env!("CARGO_PKG_VERSION").into(),
        };
        let results = resolved
            .benches
            .iter()
            .map(|b| {
                let is_op = matches!(b, crate::suite::BenchSpec::Op { .. });
                let n_samples = if is_op { 20 } else { 1 };
                let samples = (0..n_samples)
                    .map(|_| 1e-3 * rng.random_range(0.95..1.05))
                    .collect();
                let metrics = [
                    "mse",
                    "l0",
                    "l1",
                    "fvu",
                    "fve",
                    "dead_fraction",
                    "dense_fraction",
                    "mmcs",
                ]
                .iter()
                .map(|k| (k.to_string(), rng.random_range(0.0..1.0)))
                .collect();
                let curve = (0..40)
                    .map(|s| crate::store::schema::CurvePoint {
                        step: s * 50,
                        loss: 1.0,
                        mse: 0.5,
                        l0: 10.0,
                    })
                    .collect();
                BenchResult {
                    name: b.name().to_string(),
                    kind: if is_op {
                        BenchKind::Op
                    } else {
                        BenchKind::Train
                    },
                    status: BenchStatus::Ok,
                    samples,
                    yardstick: vec![],
                    metrics: if is_op { BTreeMap::new() } else { metrics },
                    metric_seeds: BTreeMap::new(),
                    deterministic: true,
                    curve: if is_op { vec![] } else { curve },
                    extra: serde_json::Value::Null,
                }
            })
            .collect();
        store.commit_run(&Run { meta, results })?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    eprintln!("wrote {n} synthetic runs to {}", store.path().display());
    Ok(())
}
