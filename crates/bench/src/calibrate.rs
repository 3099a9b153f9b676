//! `runner calibrate`: the speed detector measuring itself on the machine it runs on (docs/verdicts.md,
//! "Calibration"). For counted cost and for paired timing it makes A/A comparisons (the same build on both sides: every
//! flagged op row is a false alarm) and comparisons with an injected slowdown (`SAEPERF_INJECT_SLOWDOWN`, real extra
//! work in the head: every op row flagged as a regression is a catch), judged by the same functions `runner compare`
//! uses. The result is stored as a run (profile `calibrate`, one result per method and slowdown), so a machine's
//! calibration has a history and the dashboard shows it next to the machine's fingerprint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use saeperf_compare::paired::{judge_paired, pair_spread};
use saeperf_compare::rules::Rules;
use saeperf_compare::{judge_metric, Verdict};
use saeperf_store::schema::new_run_id;
use saeperf_store::{
    BenchKind, BenchResult, BenchStatus, Fingerprint, Run, RunBackend, RunMeta, RunState,
};
use serde::{Deserialize, Serialize};

use crate::count::{self, CountRequest, Counted, EST_CYCLES, INSTRUCTIONS};
use crate::ops::INJECT_ENV;
use crate::paired::{self, Worker};
use crate::suite::{BenchSpec, Suite};

/// The profile calibration runs are stored under: never the series of a bench run, so never a baseline.
pub const PROFILE: &str = saeperf_store::CALIBRATION_PROFILE;

/// What to measure.
#[derive(Debug, Clone)]
pub struct CalibrateRequest {
    pub suite: Option<PathBuf>,
    /// The suite profile whose ops (shapes, pairing settings) are calibrated.
    pub profile: String,
    pub filter: Option<String>,
    pub counted_aa: usize,
    pub timed_aa: usize,
    /// Comparisons per injected slowdown (timed; counted cost repeats exactly, so `counted_trials` may be 1).
    pub trials: usize,
    pub counted_trials: usize,
    pub slowdowns: Vec<f64>,
    pub counted: bool,
    pub timed: bool,
    pub progress: bool,
}

/// One line of the calibration table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CalibrationRow {
    /// "counted" or "timed".
    pub method: String,
    /// Injected slowdown (0 for A/A).
    pub slowdown: f64,
    pub comparisons: usize,
    /// Op rows judged, and how many were flagged (any verdict needing attention for A/A, a regression otherwise).
    pub rows: usize,
    pub flagged: usize,
    /// Per op: (flagged, judged).
    pub per_op: BTreeMap<String, (usize, usize)>,
    /// Median detectable change of the rows (timed).
    pub median_detectable: Option<f64>,
    /// Median per-pair spread of the log ratio (timed).
    pub pair_spread: Option<f64>,
    /// Wall seconds per comparison.
    pub secs_per_comparison: f64,
}

impl CalibrationRow {
    pub fn label(&self) -> String {
        if self.slowdown == 0.0 {
            "A/A".into()
        } else {
            format!("+{}%", (self.slowdown * 1000.0).round() / 10.0)
        }
    }
    pub fn rate(&self) -> f64 {
        self.flagged as f64 / self.rows.max(1) as f64
    }
}

fn new_row(method: &str, slowdown: f64) -> CalibrationRow {
    CalibrationRow {
        method: method.into(),
        slowdown,
        comparisons: 0,
        rows: 0,
        flagged: 0,
        per_op: BTreeMap::new(),
        median_detectable: None,
        pair_spread: None,
        secs_per_comparison: 0.0,
    }
}

fn tally(row: &mut CalibrationRow, op: &str, flagged: bool) {
    row.rows += 1;
    row.flagged += flagged as usize;
    let e = row.per_op.entry(op.to_string()).or_default();
    e.0 += flagged as usize;
    e.1 += 1;
}

fn as_result(name: &str, metrics: &BTreeMap<String, f64>) -> BenchResult {
    BenchResult {
        name: name.into(),
        kind: BenchKind::Op,
        status: BenchStatus::Ok,
        samples: vec![],
        yardstick: vec![],
        metrics: metrics.clone(),
        metric_seeds: Default::default(),
        deterministic: true,
        curve: vec![],
        extra: serde_json::Value::Null,
    }
}

/// Judge one counted comparison like `runner compare`: an op row is flagged when instructions or est_cycles is.
fn judge_counted(
    row: &mut CalibrationRow,
    base: &Counted,
    head: &Counted,
    rules: &Rules,
    aa: bool,
) {
    for (op, b) in base {
        let Some(h) = head.get(op) else { continue };
        let (rb, rh) = (as_result(op, b), as_result(op, h));
        let verdicts: Vec<Verdict> = [INSTRUCTIONS, EST_CYCLES]
            .iter()
            .filter_map(|m| {
                rules
                    .rule(m)
                    .map(|r| judge_metric(op, m, &rb, &rh, r).verdict)
            })
            .collect();
        let flagged = if aa {
            verdicts.iter().any(|v| v.needs_attention())
        } else {
            verdicts.contains(&Verdict::Regression)
        };
        tally(row, op, flagged);
    }
}

fn count_ops(exe: &Path, req: &CalibrateRequest, slowdown: f64) -> Result<Counted> {
    let creq = CountRequest {
        suite: req.suite.clone(),
        profile: Some(req.profile.clone()),
        filter: req.filter.clone(),
        backend: RunBackend::Cpu,
        only_ops: true,
        skip_ops: false,
    };
    let set: Vec<(&str, String)> = if slowdown > 0.0 {
        vec![(INJECT_ENV, slowdown.to_string())]
    } else {
        vec![]
    };
    let c = count::count(exe, None, &creq, &[INJECT_ENV], &set)?;
    if c.is_empty() {
        anyhow::bail!("nothing was counted (no op benchmark in the profile?)");
    }
    Ok(c)
}

fn worker_cmd(exe: &Path, req: &CalibrateRequest, slowdown: f64) -> Command {
    let mut c = Command::new(exe);
    c.env_remove(INJECT_ENV);
    if slowdown > 0.0 {
        c.env(INJECT_ENV, slowdown.to_string());
    }
    c.args([
        "--quiet",
        "bench-worker",
        "--profile",
        &req.profile,
        "--backend",
        "cpu",
    ]);
    if let Some(f) = &req.filter {
        c.args(["--filter", f]);
    }
    if let Some(s) = &req.suite {
        c.arg("--suite")
            .arg(std::path::absolute(s).unwrap_or(s.clone()));
    }
    c
}

/// Run the calibration; returns its table (rows in the order measured).
pub fn calibrate(req: &CalibrateRequest, exe: &Path) -> Result<Vec<CalibrationRow>> {
    let (suite, _) = Suite::load(req.suite.as_deref())?;
    let rules = suite.rules();
    let resolved = suite.resolve(Some(&req.profile), req.filter.as_deref().or(Some("op/")))?;
    let warmup = resolved
        .benches
        .iter()
        .find_map(|b| match b {
            BenchSpec::Op { warmup, .. } => Some(*warmup),
            _ => None,
        })
        .context("the profile has no op benchmark to calibrate")?;
    let total = (req.counted as usize)
        * (req.counted_aa + 1 + req.slowdowns.len() * req.counted_trials)
        + (req.timed as usize) * (req.timed_aa + req.slowdowns.len() * req.trials);
    let pb = crate::run::progress_bar(total, req.progress);
    let mut table = Vec::new();
    if req.counted {
        if let Some(why) = count::unavailable() {
            pb.suspend(|| eprintln!("counted cost not calibrated: {why}"));
        } else {
            pb.set_message("counted cost: the clean count");
            let t0 = std::time::Instant::now();
            let clean = count_ops(exe, req, 0.0)?;
            pb.inc(1);
            let mut aa = new_row("counted", 0.0);
            for i in 0..req.counted_aa {
                pb.set_message(format!("counted cost: A/A {}/{}", i + 1, req.counted_aa));
                let again = count_ops(exe, req, 0.0)?;
                judge_counted(&mut aa, &clean, &again, &rules, true);
                aa.comparisons += 1;
                pb.inc(1);
            }
            aa.secs_per_comparison = t0.elapsed().as_secs_f64() / (req.counted_aa + 1) as f64;
            table.push(aa);
            for &s in &req.slowdowns {
                let t0 = std::time::Instant::now();
                let mut row = new_row("counted", s);
                for _ in 0..req.counted_trials {
                    pb.set_message(format!("counted cost: +{}%", (s * 1000.0).round() / 10.0));
                    let head = count_ops(exe, req, s)?;
                    judge_counted(&mut row, &clean, &head, &rules, false);
                    row.comparisons += 1;
                    pb.inc(1);
                }
                row.secs_per_comparison =
                    t0.elapsed().as_secs_f64() / req.counted_trials.max(1) as f64;
                table.push(row);
            }
        }
    }
    if req.timed {
        let mut seed = chrono::Utc::now().timestamp_micros() as u64;
        let plan: Vec<(f64, usize)> = std::iter::once((0.0, req.timed_aa))
            .chain(req.slowdowns.iter().map(|&s| (s, req.trials)))
            .collect();
        for (s, n) in plan {
            let mut row = new_row("timed", s);
            let (mut dets, mut spreads) = (vec![], vec![]);
            let t0 = std::time::Instant::now();
            for i in 0..n {
                pb.set_message(format!("paired timing: {} {}/{n}", row.label(), i + 1));
                let mut start = |base_first: bool| -> Result<(Worker, Worker)> {
                    let (b, h) = (worker_cmd(exe, req, 0.0), worker_cmd(exe, req, s));
                    Ok(if base_first {
                        let b = Worker::start(b, "the base")?;
                        (b, Worker::start(h, "the head")?)
                    } else {
                        let h = Worker::start(h, "the head")?;
                        (Worker::start(b, "the base")?, h)
                    })
                };
                seed = seed.wrapping_add(0x9e37_79b9);
                let (ops, _, _) =
                    paired::time_pairs(&mut start, warmup, &resolved.paired, &rules, seed)?;
                for o in &ops {
                    let r = judge_paired(&o.name, &o.base, &o.head, &rules);
                    let flagged = if s == 0.0 {
                        r.verdict.needs_attention()
                    } else {
                        r.verdict == Verdict::Regression
                    };
                    dets.extend(r.detectable);
                    spreads.extend(pair_spread(&o.base, &o.head));
                    tally(&mut row, &o.name, flagged);
                }
                row.comparisons += 1;
                pb.inc(1);
            }
            row.secs_per_comparison = t0.elapsed().as_secs_f64() / n.max(1) as f64;
            row.median_detectable = saeperf_compare::stats::median(&dets);
            row.pair_spread = saeperf_compare::stats::median(&spreads);
            table.push(row);
        }
    }
    pb.finish_and_clear();
    Ok(table)
}

/// The calibration as a run: one result per table row (`calibrate/<method>/<label>`), metrics `flagged_fraction`,
/// `flagged`, `rows`, `comparisons`, `secs_per_comparison` and, for timing, `median_detectable`, `pair_spread`.
pub fn as_run(
    table: &[CalibrationRow],
    git: &saeperf_git::GitState,
    suite_name: &str,
    started: chrono::DateTime<chrono::Utc>,
) -> Run {
    let fp = Fingerprint::detect();
    let results: Vec<BenchResult> = table
        .iter()
        .map(|r| {
            let mut metrics = BTreeMap::from([
                ("flagged_fraction".to_string(), r.rate()),
                ("flagged".to_string(), r.flagged as f64),
                ("rows".to_string(), r.rows as f64),
                ("comparisons".to_string(), r.comparisons as f64),
                ("secs_per_comparison".to_string(), r.secs_per_comparison),
            ]);
            if let Some(d) = r.median_detectable {
                metrics.insert("median_detectable".into(), d);
            }
            if let Some(s) = r.pair_spread {
                metrics.insert("pair_spread".into(), s);
            }
            BenchResult {
                name: format!("calibrate/{}/{}", r.method, r.label()),
                kind: BenchKind::Calibration,
                status: BenchStatus::Ok,
                samples: vec![],
                yardstick: vec![],
                metrics,
                metric_seeds: Default::default(),
                deterministic: true,
                curve: vec![],
                extra: serde_json::to_value(r).expect("row serializes"),
            }
        })
        .collect();
    let meta = RunMeta {
        id: new_run_id(started),
        state: RunState::Complete,
        commit: git.commit.clone(),
        branch: git.branch.clone(),
        pr: None,
        dirty: git.dirty,
        started_at: started,
        finished_at: Some(chrono::Utc::now()),
        fingerprint_id: fp.id(),
        fingerprint: fp,
        backend: RunBackend::Cpu,
        suite: suite_name.into(),
        profile: PROFILE.into(),
        suite_hash: String::new(),
        activation_sets: Default::default(),
        benchmarks: results.iter().map(|r| r.name.clone()).collect(),
        runner_version: env!("CARGO_PKG_VERSION").to_string(),
        skipped: Default::default(),
    };
    Run { meta, results }
}

/// The table for people.
pub fn render(table: &[CalibrationRow]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "method",
        "change",
        "comparisons",
        "op rows flagged",
        "rate",
        "per op",
        "median detectable",
        "pair spread",
        "s / comparison",
    ]);
    for r in table {
        let per_op: Vec<String> = r
            .per_op
            .iter()
            .map(|(k, (f, n))| format!("{} {f}/{n}", k.trim_start_matches("op/")))
            .collect();
        t.add_row([
            r.method.clone(),
            r.label(),
            r.comparisons.to_string(),
            format!("{}/{}", r.flagged, r.rows),
            format!("{:.1}%", r.rate() * 100.0),
            per_op.join(", "),
            r.median_detectable
                .map(|d| format!("±{:.1}%", d * 100.0))
                .unwrap_or_else(|| "-".into()),
            r.pair_spread
                .map(|d| format!("{:.1}%", d * 100.0))
                .unwrap_or_else(|| "-".into()),
            format!("{:.1}", r.secs_per_comparison),
        ]);
    }
    format!(
        "{t}\nA/A rows: any flagged op row is a false alarm. Injected rows: op rows flagged as a regression.\n"
    )
}
