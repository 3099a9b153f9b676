//! The scheduler's status document (`status.json`, a [`StatusReport`]: the scheduler writes it, `runner status`
//! prints it) and the dashboard's status page (`status.html`) rendered from it: what `runner status` shows — each job with its schedule,
//! next fire and last attempt, the attempt running now, and the recent attempts with their outcome, their store run
//! (linked to its run page when the site has one) and their log.
//!
//! The scheduler writes `status.json` into the dashboard directory after every attempt (and at start and stop) and
//! re-renders this page itself; `runner dashboard` renders it too, at every build, so the nav link and the run
//! links stay current. Without `status.json` there is no status page (a stale one is removed) and no nav link.
//! Logs live in the scheduler's state directory, outside the site: the logs of the attempts shown are copied into
//! `status-logs/` (their last [`LOG_TAIL`] bytes) so that the links work from file:// and from a published site;
//! copies of attempts no longer shown are removed. A `status.json` that cannot be read is reported and skipped: the
//! status page is an extra, never a reason for the dashboard to fail.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use saeperf_store::document::{Document, Header};
use serde::{Deserialize, Serialize};

use crate::slug;

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still running (or the scheduler died during it; see [`State::recover`]).
    Running,
    /// Benchmarked; no regression against the baseline (or no baseline yet).
    Ok,
    /// Benchmarked; the comparison found a regression (notified).
    Regression,
    /// Benchmarked, but some benchmark failed or diverged.
    BenchmarkFailed,
    /// Fetch, worktree or build failed: nothing was benchmarked.
    BuildFailed,
    /// The bench command crashed, timed out or printed no result.
    BenchCrashed,
    /// Stopped by SIGTERM/SIGINT (or the scheduler died); the store run, if any, stays incomplete.
    Interrupted,
    /// A pull-request job could not list the pull requests, or benchmarked a head but could not post its comment
    /// and status (then `run_id` is set and the next fire posts again without benchmarking again).
    GithubFailed,
    /// A pull request's head could not be fetched (retried at the next fire).
    FetchFailed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Ok => "ok",
            Outcome::Regression => "regression",
            Outcome::BenchmarkFailed => "benchmark failed",
            Outcome::BuildFailed => "build failed",
            Outcome::BenchCrashed => "bench crashed",
            Outcome::Interrupted => "interrupted",
            Outcome::GithubFailed => "github failed",
            Outcome::FetchFailed => "fetch failed",
        }
    }

    /// Failures that would happen again on the same commit: not retried at later fires.
    pub fn is_final_failure(self) -> bool {
        matches!(self, Outcome::BuildFailed | Outcome::BenchCrashed)
    }
}

/// One attempt to benchmark one commit for one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub job: String,
    /// Empty when nothing was resolved (a pull-request listing that failed).
    pub commit: String,
    pub branch: String,
    /// The pull request, for pull-request jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr: Option<u64>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Outcome,
    /// The store's run id (from the bench's output), when the bench got that far.
    pub run_id: Option<String>,
    /// Combined output of the fetch/build/bench steps.
    pub log: PathBuf,
    /// One line: what happened (the regressed benchmarks, the failure's reason).
    pub detail: String,
}

/// What `runner status` shows (and, as status.json, the dashboard's status page).
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusReport {
    #[serde(flatten)]
    pub header: Header,
    pub scheduler_pid: Option<u32>,
    /// When this report was made.
    #[serde(default)]
    pub generated_at: Option<DateTime<Utc>>,
    pub state_dir: PathBuf,
    pub jobs: Vec<JobStatus>,
    pub current: Option<Attempt>,
    /// Newest attempts first.
    pub recent: Vec<Attempt>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JobStatus {
    pub name: String,
    pub cron: String,
    pub target: String,
    pub profile: String,
    pub queued: bool,
    pub last_fire: Option<DateTime<Utc>>,
    pub next_fire: Option<DateTime<Utc>>,
    pub last_attempt: Option<Attempt>,
}

impl Document for StatusReport {
    const KIND: &'static str = "status";
    const VERSION: u32 = 1;
}

impl Attempt {
    /// An attempt starting now (`running`), with its log; `run_id` when it posts a run already stored.
    pub fn start(
        job: &str,
        commit: &str,
        branch: &str,
        pr: Option<u64>,
        run_id: Option<String>,
        log: PathBuf,
    ) -> Attempt {
        Attempt {
            job: job.to_string(),
            commit: commit.to_string(),
            branch: branch.to_string(),
            pr,
            started_at: Utc::now(),
            finished_at: None,
            outcome: Outcome::Running,
            run_id,
            log,
            detail: String::new(),
        }
    }
}

/// The file the scheduler writes beside the dashboard.
pub const STATUS_JSON: &str = "status.json";
/// The page.
pub const STATUS_HTML: &str = "status.html";
/// Where log copies go, under the site.
pub const LOG_DIR: &str = "status-logs";
/// Bytes kept from the end of each copied log.
pub const LOG_TAIL: u64 = 256 * 1024;

#[derive(Debug, Serialize)]
struct AttemptView {
    job: String,
    commit: String,
    commit_href: Option<String>,
    branch: String,
    pr: String,
    started: String,
    finished: String,
    outcome: String,
    class: &'static str,
    run_id: String,
    run_href: Option<String>,
    log_href: Option<String>,
    detail: String,
}

#[derive(Debug, Serialize)]
struct JobView {
    name: String,
    cron: String,
    target: String,
    profile: String,
    next_fire: String,
    queued: bool,
    last: Option<AttemptView>,
}

fn fmt_t(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "–".into())
}

/// The CSS class of an outcome (the verdict colours of the other pages).
fn class(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Regression => "regression",
        Outcome::Running => "running",
        Outcome::Interrupted => "interrupted",
        Outcome::BenchmarkFailed
        | Outcome::BuildFailed
        | Outcome::BenchCrashed
        | Outcome::GithubFailed
        | Outcome::FetchFailed => "failed",
    }
}

/// The site-relative name of an attempt's log copy.
fn log_copy_name(a: &Attempt) -> Option<String> {
    let name = a.log.file_name()?.to_string_lossy().to_string();
    Some(slug(&name))
}

fn view(a: &Attempt, out: &Path, repo_url: Option<&str>, logs: &[String]) -> AttemptView {
    let commit_ok = !a.commit.is_empty() && a.commit.chars().all(|c| c.is_ascii_hexdigit());
    let run_href = a.run_id.as_deref().and_then(|r| {
        let rel = format!("runs/{}.html", slug(r));
        out.join(&rel).is_file().then_some(rel)
    });
    AttemptView {
        job: a.job.clone(),
        commit: if a.commit.is_empty() {
            "–".into()
        } else {
            a.commit[..a.commit.len().min(10)].to_string()
        },
        commit_href: match repo_url {
            Some(u) if commit_ok => {
                Some(format!("{}/commit/{}", u.trim_end_matches('/'), a.commit))
            }
            _ => None,
        },
        branch: a.branch.clone(),
        pr: a.pr.map(|n| format!("#{n}")).unwrap_or_default(),
        started: fmt_t(Some(a.started_at)),
        finished: fmt_t(a.finished_at),
        outcome: a.outcome.as_str().to_string(),
        class: class(a.outcome),
        run_id: a.run_id.clone().unwrap_or_default(),
        run_href,
        log_href: log_copy_name(a)
            .filter(|n| logs.contains(n))
            .map(|n| format!("{LOG_DIR}/{n}")),
        detail: a.detail.clone(),
    }
}

/// Copy the last [`LOG_TAIL`] bytes of a log.
fn copy_tail(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut f = std::fs::File::open(from)?;
    let len = f.metadata()?.len();
    let mut buf = Vec::new();
    if len > LOG_TAIL {
        f.seek(SeekFrom::Start(len - LOG_TAIL))?;
        buf.extend_from_slice(b"[... earlier output cut ...]\n");
    }
    f.read_to_end(&mut buf)?;
    std::fs::write(to, buf)
}

/// Copy the logs of the attempts shown into `status-logs/`, drop the copies of attempts no longer shown; returns
/// the names copied.
fn copy_logs(out: &Path, attempts: &[&Attempt]) -> Vec<String> {
    let dir = out.join(LOG_DIR);
    let mut copied = Vec::new();
    for a in attempts {
        let Some(name) = log_copy_name(a) else {
            continue;
        };
        if copied.contains(&name) || !a.log.is_file() {
            continue;
        }
        let r = std::fs::create_dir_all(&dir).and_then(|_| copy_tail(&a.log, &dir.join(&name)));
        match r {
            Ok(()) => copied.push(name),
            Err(e) => tracing::warn!("cannot copy the log {}: {e}", a.log.display()),
        }
    }
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if !copied.contains(&n) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    copied
}

/// The page's template context.
fn context(
    rep: &StatusReport,
    out: &Path,
    repo_url: Option<&str>,
    logs: &[String],
) -> minijinja::Value {
    let jobs: Vec<JobView> = rep
        .jobs
        .iter()
        .map(|j| JobView {
            name: j.name.clone(),
            cron: j.cron.clone(),
            target: j.target.clone(),
            profile: j.profile.clone(),
            next_fire: fmt_t(j.next_fire),
            queued: j.queued,
            last: j
                .last_attempt
                .as_ref()
                .map(|a| view(a, out, repo_url, logs)),
        })
        .collect();
    let recent: Vec<AttemptView> = rep
        .recent
        .iter()
        .map(|a| view(a, out, repo_url, logs))
        .collect();
    minijinja::context! {
        root => "",
        page_title => "Scheduler status",
        has_status => true,
        pid => rep.scheduler_pid,
        generated => rep.generated_at.map(|t| format!("{} UTC", t.format("%Y-%m-%d %H:%M:%S"))).unwrap_or_else(|| "an unknown time".into()),
        jobs => jobs,
        current => rep.current.as_ref().map(|a| view(a, out, repo_url, logs)),
        recent => recent,
    }
}

/// Read `out/status.json`: None when there is none, or when it cannot be read (reported).
pub fn read(out: &Path) -> Option<StatusReport> {
    let p = out.join(STATUS_JSON);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("cannot read {}: {e}; no status page", p.display());
            return None;
        }
    };
    match saeperf_store::document::parse::<StatusReport>(&String::from_utf8_lossy(&bytes)) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(
                "{} is not a scheduler status ({e}); no status page",
                p.display()
            );
            None
        }
    }
}

/// Render `out/status.html` from `out/status.json` with `env`; returns whether the page exists now. Without a
/// readable status.json a stale page and its log copies are removed.
pub fn render(env: &minijinja::Environment, out: &Path, repo_url: Option<&str>) -> Result<bool> {
    let Some(rep) = read(out) else {
        let _ = std::fs::remove_file(out.join(STATUS_HTML));
        let _ = std::fs::remove_dir_all(out.join(LOG_DIR));
        return Ok(false);
    };
    let shown: Vec<&Attempt> = rep
        .current
        .iter()
        .chain(rep.recent.iter())
        .chain(rep.jobs.iter().filter_map(|j| j.last_attempt.as_ref()))
        .collect();
    let logs = copy_logs(out, &shown);
    let html = env
        .get_template("status.html")
        .and_then(|t| t.render(context(&rep, out, repo_url, &logs)))
        .context("rendering status.html")?;
    let path: PathBuf = out.join(STATUS_HTML);
    std::fs::write(&path, html).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn attempt(
        job: &str,
        commit: &str,
        outcome: Outcome,
        minute: u32,
        run: Option<&str>,
        log: PathBuf,
    ) -> Attempt {
        Attempt {
            job: job.into(),
            commit: commit.into(),
            branch: "main".into(),
            pr: None,
            started_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, minute, 0).unwrap(),
            finished_at: Some(Utc.with_ymd_and_hms(2026, 1, 2, 3, minute + 1, 30).unwrap()),
            outcome,
            run_id: run.map(str::to_string),
            log,
            detail: String::new(),
        }
    }

    #[test]
    fn status_page_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("site");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(out.join("runs")).unwrap();
        std::fs::create_dir_all(&logs).unwrap();
        // One run page exists in the site; the other run does not have one.
        std::fs::write(out.join("runs/20260102T030000-aaaa.html"), "run").unwrap();
        let log1 = logs.join("20260102T030000-nightly-aaaaaaaaaa.log");
        std::fs::write(&log1, "build ok\n").unwrap();
        let ok = attempt(
            "nightly",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            Outcome::Ok,
            0,
            Some("20260102T030000-aaaa"),
            log1,
        );
        let mut reg = attempt(
            "prs",
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            Outcome::Regression,
            10,
            Some("20260102T031000-bbbb"),
            logs.join("gone.log"),
        );
        reg.pr = Some(7);
        reg.branch = "<script>alert(1)</script>".into();
        reg.detail = "tiny-relu mse & \"quotes\"".into();
        let mut failed = attempt(
            "nightly",
            "cccccccccccccccccccccccccccccccccccccccc",
            Outcome::BuildFailed,
            20,
            None,
            logs.join("20260102T032000-nightly-cccccccccc.log"),
        );
        failed.detail = "build exited exit status: 101 (see the log)".into();
        std::fs::write(&failed.log, "error[E0425]\n").unwrap();
        let mut running = attempt(
            "prs",
            "dddddddddddddddddddddddddddddddddddddddd",
            Outcome::Running,
            29,
            None,
            logs.join("20260102T032900-prs-dddddddddd.log"),
        );
        running.pr = Some(8);
        running.finished_at = None;
        running.branch = "fix/speed".into();
        std::fs::write(&running.log, "build: cargo build --release\n").unwrap();
        let rep = StatusReport {
            header: Header::of::<StatusReport>(),
            scheduler_pid: Some(4242),
            generated_at: Some(Utc.with_ymd_and_hms(2026, 1, 2, 3, 30, 0).unwrap()),
            state_dir: dir.path().join("state"),
            jobs: vec![
                JobStatus {
                    name: "nightly".into(),
                    cron: "0 0 3 * * *".into(),
                    target: "branch main".into(),
                    profile: "full".into(),
                    queued: false,
                    last_fire: None,
                    next_fire: Some(Utc.with_ymd_and_hms(2026, 1, 3, 3, 0, 0).unwrap()),
                    last_attempt: Some(failed.clone()),
                },
                JobStatus {
                    name: "prs".into(),
                    cron: "0 0 * * * *".into(),
                    target: "pull requests labelled benchmark".into(),
                    profile: "quick".into(),
                    queued: true,
                    last_fire: None,
                    next_fire: Some(Utc.with_ymd_and_hms(2026, 1, 2, 4, 0, 0).unwrap()),
                    last_attempt: Some(reg.clone()),
                },
            ],
            current: Some(running),
            recent: vec![failed, reg, ok],
        };
        std::fs::write(out.join(STATUS_JSON), serde_json::to_vec(&rep).unwrap()).unwrap();
        // A stale copy of an old log goes.
        std::fs::create_dir_all(out.join(LOG_DIR)).unwrap();
        std::fs::write(out.join(LOG_DIR).join("old.log"), "x").unwrap();
        let env = super::super::environment();
        assert!(render(&env, &out, Some("https://github.com/octo/saeperf")).unwrap());
        let html = std::fs::read_to_string(out.join(STATUS_HTML)).unwrap();
        assert!(!html.contains("<script>alert"), "escaped");
        let plain = html.replace("&#x2f;", "/");
        assert!(plain.contains("href=\"runs/20260102T030000-aaaa.html\""));
        assert!(
            !plain.contains("runs/20260102T031000-bbbb.html"),
            "no page, no link"
        );
        let mut copies: Vec<String> = std::fs::read_dir(out.join(LOG_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        copies.sort();
        assert_eq!(
            copies,
            [
                "20260102T030000-nightly-aaaaaaaaaa.log",
                "20260102T032000-nightly-cccccccccc.log",
                "20260102T032900-prs-dddddddddd.log"
            ]
        );
        insta::assert_snapshot!(html);

        // Without status.json: no page, no log copies.
        std::fs::remove_file(out.join(STATUS_JSON)).unwrap();
        assert!(!render(&env, &out, None).unwrap());
        assert!(!out.join(STATUS_HTML).exists() && !out.join(LOG_DIR).exists());
    }
}
