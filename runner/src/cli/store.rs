//! `runner db check|list|export|synth-history`, `runner ingest`, `runner bundle`, `runner compare BASE HEAD` and
//! `runner history BENCH METRIC`: the store and the comparison from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use saeperf_bench::document::ResultMeta;
use saeperf_bench::{BenchDocument, Suite};
use saeperf_compare::baseline;
use saeperf_compare::series::{self, SeriesQuery};
use saeperf_store::{bundle, Fingerprint, RunBackend};

use super::open_store;

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
    #[arg(long, value_parser = parse_run_backend)]
    pub backend: Option<RunBackend>,
    #[arg(long)]
    pub profile: Option<String>,
    #[arg(long)]
    pub branch: Option<String>,
    /// Only the newest N points.
    #[arg(long)]
    pub limit: Option<usize>,
}

fn parse_run_backend(s: &str) -> Result<RunBackend, String> {
    s.parse()
}

/// `runner bundle`: what the bench workflow uploads for the comment workflow.
#[derive(Args, Debug)]
pub struct BundleArgs {
    /// The `runner bench --json` document.
    #[arg(long = "from")]
    pub from: PathBuf,
    /// The pull request the run belongs to.
    #[arg(long)]
    pub pr: u64,
    /// The head commit that was benchmarked (the pull request's head SHA).
    #[arg(long)]
    pub head_sha: String,
    /// Output directory: runs.json (the head run and its baseline, as `runner db export` writes them) and
    /// meta.json (a result-meta document naming them).
    #[arg(long)]
    pub out: PathBuf,
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
                        m.backend.to_string(),
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
            saeperf_bench::synthetic::synthetic_history(&store, *runs)?;
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
    let base = baseline::resolve_base(&store, &a.base, &head)?;
    let c = saeperf_compare::compare_stored(
        &store,
        &base,
        &head,
        &rules,
        !a.no_yardstick,
        &store.triage()?,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", saeperf_compare::render(&c, a.all));
    }
    Ok(c.exit_code())
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
    let points = series::points(
        &store,
        &SeriesQuery {
            bench: a.bench.clone(),
            metric: a.metric.clone(),
            fingerprint: fp.clone(),
            backend: a.backend,
            profile: a.profile.clone(),
            branch: a.branch.clone(),
            limit: a.limit,
        },
    )?;
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
            p.backend.to_string(),
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

/// `runner bundle`: read the bench document through its type, export its head run and baseline, and write the
/// result-meta document that `runner report post --bundle` reads. A malformed document writes nothing.
pub fn run_bundle(db: Option<&Path>, a: &BundleArgs) -> Result<i32> {
    let text = std::fs::read_to_string(&a.from)
        .with_context(|| format!("reading {}", a.from.display()))?;
    let doc = BenchDocument::parse(&text).with_context(|| a.from.display().to_string())?;
    let meta = ResultMeta::new(a.pr, &a.head_sha, &doc)?;
    let store = open_store(db)?;
    let ids: Vec<String> = std::iter::once(meta.head_run.clone())
        .chain(meta.base_run.clone())
        .collect();
    let b = bundle::export(&store, &ids)?;
    drop(store);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let write = |name: &str, bytes: Vec<u8>| -> Result<()> {
        let p = a.out.join(name);
        saeperf_kernels::sae::write_atomic(&p, &bytes)
            .with_context(|| format!("writing {}", p.display()))
    };
    write("runs.json", serde_json::to_vec(&b)?)?;
    write("meta.json", serde_json::to_vec_pretty(&meta)?)?;
    eprintln!(
        "bundle of {} runs (head {}{}) in {}",
        b.runs.len(),
        meta.head_run,
        meta.base_run
            .as_deref()
            .map(|r| format!(", base {r}"))
            .unwrap_or_default(),
        a.out.display()
    );
    Ok(0)
}
