//! `runner schedule` and `runner status`: the scheduler run, checked, or asked what it is doing.

use std::path::PathBuf;

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;
use saeperf_service::schedule::{self, config::Config, state::SchedulerLock, state::State};

#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// The configuration file (saeperf.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Validate the configuration, print the next fires and exit.
    #[arg(long)]
    pub check: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The scheduler's configuration file.
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// `runner schedule --config FILE [--check]`.
pub fn run_schedule(a: &ScheduleArgs) -> Result<i32> {
    let cfg = Config::load(&a.config)?;
    if a.check {
        schedule::check(&cfg);
    } else {
        schedule::run(cfg)?;
    }
    Ok(0)
}

/// `runner status --config FILE`.
pub fn run_status(a: &StatusArgs) -> Result<i32> {
    let cfg = Config::load_for_status(&a.config)?;
    let st = State::load(&cfg.state_dir)?;
    let pid = SchedulerLock::holder(&cfg.state_dir);
    let rep = schedule::status_report(&cfg, &st, pid);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
        return Ok(0);
    }
    match pid {
        Some(p) => println!(
            "scheduler running (pid {p}), state {}",
            cfg.state_dir.display()
        ),
        None => println!("no scheduler running, state {}", cfg.state_dir.display()),
    }
    let fmt_t = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let short = |c: &str| c[..c.len().min(10)].to_string();
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "job",
        "cron",
        "target",
        "profile",
        "next fire (UTC)",
        "queued",
        "last attempt",
        "outcome",
    ]);
    for j in &rep.jobs {
        t.add_row([
            j.name.clone(),
            j.cron.clone(),
            j.target.clone(),
            j.profile.clone(),
            fmt_t(j.next_fire),
            if j.queued { "yes".into() } else { "".into() },
            j.last_attempt
                .as_ref()
                .map(|a| format!("{} {}", short(&a.commit), fmt_t(Some(a.started_at))))
                .unwrap_or_else(|| "-".into()),
            j.last_attempt
                .as_ref()
                .map(|a| a.outcome.as_str().to_string())
                .unwrap_or_default(),
        ]);
    }
    println!("{t}");
    if let Some(c) = &rep.current {
        println!(
            "running: job {} commit {} since {}",
            c.job,
            short(&c.commit),
            fmt_t(Some(c.started_at))
        );
    }
    if !rep.recent.is_empty() {
        let mut t = comfy_table::Table::new();
        t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
        t.set_header([
            "finished (UTC)",
            "job",
            "commit (PR)",
            "outcome",
            "run",
            "detail",
            "log",
        ]);
        for a in &rep.recent {
            t.add_row([
                fmt_t(a.finished_at),
                a.job.clone(),
                format!(
                    "{}{}",
                    short(&a.commit),
                    a.pr.map(|n| format!(" (#{n})")).unwrap_or_default()
                ),
                a.outcome.as_str().to_string(),
                a.run_id.clone().unwrap_or_default(),
                a.detail.clone(),
                a.log.display().to_string(),
            ]);
        }
        println!("{t}");
    }
    Ok(0)
}
