//! The scheduler's persistent state (`<state_dir>/state.json`) and its lock (`<state_dir>/scheduler.lock`).
//!
//! The state remembers, per job, the newest cron fire already handled (so that after downtime a missed fire runs
//! once, not once per missed slot), the jobs queued behind the running one (a set: fires coalesce), the attempt in
//! progress, and the history of attempts with their outcome and log. It is written atomically (temp file + rename)
//! after every change, so a crash leaves the previous or the next version, never half of one. The lock is an
//! exclusive `flock` on the lock file, which also holds the owner's pid for the error message; the kernel releases
//! it when the process dies, so a crashed scheduler never blocks the next.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use saeperf_report::status::{Attempt, Outcome};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Per job: the newest cron fire already handled (queued or run).
    #[serde(default)]
    pub last_fire: BTreeMap<String, DateTime<Utc>>,
    /// Jobs waiting for the running one, in order; each at most once.
    #[serde(default)]
    pub pending: Vec<String>,
    /// The attempt in progress.
    #[serde(default)]
    pub current: Option<Attempt>,
    /// Finished attempts, oldest first (the newest [`HISTORY_CAP`] kept).
    #[serde(default)]
    pub history: Vec<Attempt>,
    /// Per open pull request (by number): its head and when this scheduler first saw it. An approval counts only
    /// for a head seen before it was given (or named by its SHA).
    #[serde(default)]
    pub pr_heads: BTreeMap<u64, SeenHead>,
    /// `job#pr@sha` of heads already told (a pending status) that they wait for a maintainer's approval.
    #[serde(default)]
    pub awaiting: Vec<String>,
    /// Ids of `/saeperf ack` comments already handled (recorded, or refused with a reason in the log).
    #[serde(default)]
    pub handled_comments: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenHead {
    pub sha: String,
    pub first_seen: DateTime<Utc>,
}

pub const HISTORY_CAP: usize = 1000;

impl State {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Read the state (an empty one when the file does not exist yet).
    pub fn load(dir: &Path) -> Result<State> {
        let p = State::path(dir);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| {
                format!(
                    "scheduler state {} is unreadable (move it away to start afresh)",
                    p.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Write atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let p = State::path(dir);
        let tmp = dir.join("state.json.tmp");
        let text = serde_json::to_vec_pretty(self).expect("state serializes");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("renaming to {}", p.display()))?;
        Ok(())
    }

    /// After a crash of the scheduler itself: the attempt it was running is recorded as interrupted.
    pub fn recover(&mut self) -> Option<Attempt> {
        let mut a = self.current.take()?;
        a.outcome = Outcome::Interrupted;
        a.finished_at = Some(Utc::now());
        a.detail = "the scheduler stopped without finishing this attempt".into();
        self.push_history(a.clone());
        Some(a)
    }

    pub fn push_history(&mut self, a: Attempt) {
        self.history.push(a);
        if self.history.len() > HISTORY_CAP {
            let n = self.history.len() - HISTORY_CAP;
            self.history.drain(..n);
        }
    }

    /// Queue a job unless it is already queued (fires coalesce).
    pub fn enqueue(&mut self, job: &str) -> bool {
        if self.pending.iter().any(|j| j == job) {
            false
        } else {
            self.pending.push(job.to_string());
            true
        }
    }

    /// The newest attempt of a job.
    pub fn last_attempt(&self, job: &str) -> Option<&Attempt> {
        self.current
            .iter()
            .filter(|a| a.job == job)
            .chain(self.history.iter().rev().filter(|a| a.job == job))
            .next()
    }
}

/// The exclusive lock of one scheduler on one store (held while the value lives).
#[derive(Debug)]
pub struct SchedulerLock {
    _file: File,
    pub path: PathBuf,
}

impl SchedulerLock {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("scheduler.lock")
    }

    /// Take the lock or fail at once, naming the pid that holds it.
    pub fn acquire(dir: &Path) -> Result<SchedulerLock> {
        let path = SchedulerLock::path(dir);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = f.read_to_string(&mut pid);
                bail!(
                    "another scheduler (pid {}) already runs on this store (lock {})",
                    pid.trim(),
                    path.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        f.set_len(0)?;
        f.rewind()?;
        write!(f, "{}", std::process::id())?;
        f.flush()?;
        Ok(SchedulerLock { _file: f, path })
    }

    /// The pid of the scheduler holding the lock, if one does.
    pub fn holder(dir: &Path) -> Option<u32> {
        let path = SchedulerLock::path(dir);
        let f = File::open(&path).ok()?;
        match f.try_lock_shared() {
            Ok(()) => None,
            Err(_) => std::fs::read_to_string(&path).ok()?.trim().parse().ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enqueue_coalesces_and_state_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let mut s = State::default();
        assert!(s.enqueue("a"));
        assert!(!s.enqueue("a"));
        assert!(s.enqueue("b"));
        s.current = Some(Attempt {
            job: "a".into(),
            commit: "c".into(),
            branch: "main".into(),
            pr: None,
            started_at: Utc::now(),
            finished_at: None,
            outcome: Outcome::Running,
            run_id: None,
            log: "l".into(),
            detail: String::new(),
        });
        s.save(d.path()).unwrap();
        let mut t = State::load(d.path()).unwrap();
        assert_eq!(t.pending, vec!["a", "b"]);
        let a = t.recover().unwrap();
        assert_eq!(a.outcome, Outcome::Interrupted);
        assert_eq!(t.history.len(), 1);
        assert!(t.current.is_none());
    }
}
