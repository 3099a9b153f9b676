//! The status document of a scheduler (`runner status`, and `status.json` beside the dashboard): each job's
//! schedule, queue flag, last and next fire and last attempt, the attempt running now, and the recent attempts.

use chrono::Utc;
use saeperf_report::status::{JobStatus, StatusReport};
use saeperf_store::document::Header;

use super::config::{Config, Target};
use super::scheduler::next_fire;
use super::state::State;

pub fn status_report(cfg: &Config, st: &State, pid: Option<u32>) -> StatusReport {
    let now = Utc::now();
    StatusReport {
        header: Header::of::<StatusReport>(),
        scheduler_pid: pid,
        generated_at: Some(now),
        state_dir: cfg.state_dir.clone(),
        jobs: cfg
            .jobs
            .iter()
            .map(|j| {
                let last = st.last_fire.get(&j.name).copied();
                JobStatus {
                    name: j.name.clone(),
                    cron: j.cron.source.clone(),
                    target: match &j.target {
                        Target::Branch(b) => format!("branch {b}"),
                        Target::PullRequests { label } => format!("pull requests labelled {label}"),
                    },
                    profile: j.profile.clone(),
                    queued: st.pending.contains(&j.name),
                    last_fire: last,
                    next_fire: next_fire(j, cfg.timezone, last.unwrap_or(now).max(now)),
                    last_attempt: st.last_attempt(&j.name).cloned(),
                }
            })
            .collect(),
        current: st.current.clone(),
        recent: st.history.iter().rev().take(20).cloned().collect(),
    }
}
