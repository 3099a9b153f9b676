//! `runner triage ack|dismiss RUN BENCH METRIC --reason TEXT [--by WHO]` and `runner triage list [--json]`: a
//! maintainer acknowledges a regression (accepted: the row reads `acknowledged`, the check passes, the noise band
//! restarts at the run) or dismisses a false alarm (the row reads `noise`); docs/verdicts.md, "Triage".

use std::path::Path;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use saeperf_store::{RunState, Store, Triage, TriageAction};

use super::open_store;

#[derive(Subcommand, Debug)]
pub enum TriageCmd {
    /// Acknowledge a regression flagged in RUN: accepted, it no longer fails the comparison or the commit status, and
    /// the benchmark's noise band restarts at RUN.
    Ack(TriageArgs),
    /// Dismiss a change flagged in RUN as a false alarm: the row reads noise.
    Dismiss(TriageArgs),
    /// Every ack and dismissal, oldest first.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct TriageArgs {
    /// The run in which the change was flagged (the compared head): run id or unique prefix, commit SHA prefix, or
    /// `latest`.
    pub run: String,
    /// The benchmark, e.g. op/encode or relu-l1.
    pub bench: String,
    /// `time` or a metric name (mse, fve, ...), as in the comparison's row.
    pub metric: String,
    /// Why (shown in the comment, the status and the dashboard).
    #[arg(long)]
    pub reason: String,
    /// Who decided (default: $USER, else "unknown").
    #[arg(long)]
    pub by: Option<String>,
}

pub fn run(db: Option<&Path>, cmd: &TriageCmd) -> Result<i32> {
    let store = open_store(db)?;
    match cmd {
        TriageCmd::Ack(a) => record(&store, a, TriageAction::Ack),
        TriageCmd::Dismiss(a) => record(&store, a, TriageAction::Dismiss),
        TriageCmd::List { json } => list(&store, *json),
    }
}

/// The (run, bench, metric) must be in the run's results: a stored benchmark with that value.
fn check_target(store: &Store, run: &str, bench: &str, metric: &str) -> Result<()> {
    let Some(r) = store.result(run, bench)? else {
        let have = store.load_run(run)?.results;
        let names: Vec<&str> = have.iter().map(|r| r.name.as_str()).collect();
        bail!(
            "run {run} has no benchmark {bench:?} (it has: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    if r.series_value(metric).is_none() {
        let mut names: Vec<&str> = Vec::new();
        if r.median_time().is_some() {
            names.push("time");
        }
        names.extend(r.metrics.keys().map(String::as_str));
        bail!(
            "benchmark {bench} of run {run} has no metric {metric:?} (it has: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    Ok(())
}

fn record(store: &Store, a: &TriageArgs, action: TriageAction) -> Result<i32> {
    let meta = store.resolve(&a.run, &|m| !m.is_calibration())?;
    if meta.state != RunState::Complete {
        bail!(
            "run {} is incomplete (cut off before it finished); it was never compared, so there is nothing to {}",
            meta.id,
            action
        );
    }
    check_target(store, &meta.id, &a.bench, &a.metric)?;
    let reason = a.reason.trim();
    if reason.is_empty() {
        bail!("--reason is empty: say why (it is shown wherever the verdict is)");
    }
    let by =
        a.by.clone()
            .or_else(|| std::env::var("USER").ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into());
    let t = Triage {
        run: meta.id.clone(),
        bench: a.bench.clone(),
        metric: a.metric.clone(),
        action,
        by,
        reason: reason.to_string(),
        at: chrono::Utc::now(),
        source: "cli".into(),
    };
    store.record_triage(&t)?;
    println!(
        "{} {} {} in run {} (by {}: {})",
        match action {
            TriageAction::Ack => "acknowledged",
            TriageAction::Dismiss => "dismissed",
        },
        t.bench,
        t.metric,
        t.run,
        t.by,
        t.reason
    );
    Ok(0)
}

fn list(store: &Store, json: bool) -> Result<i32> {
    let all = store.triage()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    if all.is_empty() {
        println!("no acks or dismissals recorded");
        return Ok(0);
    }
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "at",
        "action",
        "run",
        "benchmark",
        "metric",
        "by",
        "reason",
        "source",
    ]);
    for r in &all {
        t.add_row([
            r.at.format("%Y-%m-%d %H:%M UTC").to_string(),
            r.action.to_string(),
            r.run.clone(),
            r.bench.clone(),
            r.metric.clone(),
            r.by.clone(),
            r.reason.clone(),
            r.source.clone(),
        ]);
    }
    println!("{t}");
    Ok(0)
}
