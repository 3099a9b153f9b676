//! Maintainers' triage applied to comparisons (docs/verdicts.md, "Triage"): an ack turns a regression row into
//! `acknowledged`, a dismissal turns it into `noise`, and an ack restarts the series' noise band at the acked run.
//!
//! The records come from the store's `triage` tree, read by whoever opened the store (the command line, the report
//! crate, the bench crate) and handed here as plain data in a [`TriageSet`]. The one place they act on a comparison is
//! [`apply`]; [`crate::compare_stored`] (`runner compare`, `runner bench`, the pull-request comment, `report post`) and
//! the dashboard both call it, and both build their speed history through [`crate::SpeedHistory::push_run`], which
//! restarts a benchmark's history at an acked run. So every output gives a pair of runs the same verdict.
//!
//! Rules, for a comparison of `base` with `head` and a row of (bench, metric) judged a regression:
//! 1. The record of (head, bench, metric) that applies (the newer of an ack and a dismissal): an ack makes the row
//!    `acknowledged`, a dismissal `noise` (a false alarm); the row carries the record.
//! 2. Otherwise an ack carries over from an earlier run R of the head's series (same machine, backend, profile and,
//!    when the head has one, branch) for the same (bench, metric) when base < R < head in start order (the newest such
//!    R): the baseline precedes the acked change, so the change is in this comparison too. The row is re-judged with R
//!    as the base and the history of the runs from R on; if that row is no regression, the head is at the acked level
//!    and the row is `acknowledged` (naming R); if it is, the head regressed beyond the acked level and stays a
//!    regression.
//!
//! Dismissals never carry over and never touch the history: the level did not change.

use std::collections::BTreeMap;

use saeperf_store::{RunMeta, RunState, Triage, TriageAction};

use crate::{overall, same_series, Comparison, Row, Verdict};

/// The triage records a comparison may use, with the metadata of the runs they name (records of runs not given are
/// left out: they can apply to no comparison).
#[derive(Debug, Clone, Default)]
pub struct TriageSet {
    /// (run, bench, metric) → the record that applies (the newest of its ack and dismissal).
    effective: BTreeMap<(String, String, String), Triage>,
    /// Metadata of the runs with an effective ack, by id.
    runs: BTreeMap<String, RunMeta>,
}

impl TriageSet {
    /// The set of `records` (as the store lists them) over the runs `runs` (the store's runs, or some of them).
    pub fn new(records: &[Triage], runs: &[RunMeta]) -> TriageSet {
        let mut effective: BTreeMap<(String, String, String), Triage> = BTreeMap::new();
        for t in records {
            if !runs.iter().any(|m| m.id == t.run) {
                continue;
            }
            let key = (t.run.clone(), t.bench.clone(), t.metric.clone());
            match effective.get(&key) {
                Some(have) if have.at > t.at => {}
                _ => {
                    effective.insert(key, t.clone());
                }
            }
        }
        let runs = runs
            .iter()
            .filter(|m| {
                effective
                    .values()
                    .any(|t| t.run == m.id && t.action == TriageAction::Ack)
            })
            .map(|m| (m.id.clone(), m.clone()))
            .collect();
        TriageSet { effective, runs }
    }

    pub fn is_empty(&self) -> bool {
        self.effective.is_empty()
    }

    /// The record that applies to (run, bench, metric), if any.
    pub fn effective(&self, run: &str, bench: &str, metric: &str) -> Option<&Triage> {
        self.effective
            .get(&(run.to_string(), bench.to_string(), metric.to_string()))
    }

    /// Every record that applies, in key order.
    pub fn records(&self) -> impl Iterator<Item = &Triage> {
        self.effective.values()
    }

    /// Whether `bench`'s speed was acknowledged in `run`: its history restarts there.
    pub fn restarts(&self, run: &str, bench: &str) -> bool {
        self.effective(run, bench, "time")
            .is_some_and(|t| t.action == TriageAction::Ack)
    }

    /// The ack that carries over to a comparison of `base` with `head` for (bench, metric): on the newest run R of
    /// the head's series and branch with base < R < head in start order (rule 2 of the module). With R's metadata.
    pub fn carried(
        &self,
        base: &RunMeta,
        head: &RunMeta,
        bench: &str,
        metric: &str,
    ) -> Option<(&Triage, &RunMeta)> {
        let key = |m: &RunMeta| (m.started_at, m.id.clone());
        self.effective
            .values()
            .filter(|t| t.action == TriageAction::Ack && t.bench == bench && t.metric == metric)
            .filter_map(|t| Some((t, self.runs.get(&t.run)?)))
            .filter(|(_, r)| {
                r.state == RunState::Complete
                    && same_series(r, head)
                    && (head.branch.is_none() || r.branch == head.branch)
                    && key(base) < key(r)
                    && key(r) < key(head)
            })
            .max_by_key(|(_, r)| key(r))
    }
}

/// "@alice" for a login; a name with spaces, or "unknown" (no --by and no $USER), as it is.
pub fn who(by: &str) -> String {
    if by.is_empty() || by == "unknown" || by.contains(char::is_whitespace) || by.starts_with('@') {
        by.to_string()
    } else {
        format!("@{by}")
    }
}

/// Apply `set` to `c` (the module's rules) and recompute its overall verdict. `recheck(acked, row)` judges the head's
/// row again with the acked run `acked` as the base and the history of the runs from it on (rule 2); None when it
/// cannot (the acked run lacks the benchmark), which keeps the regression.
pub fn apply(
    c: &mut Comparison,
    set: &TriageSet,
    recheck: &mut dyn FnMut(&RunMeta, &Row) -> anyhow::Result<Option<Row>>,
) -> anyhow::Result<()> {
    if set.is_empty() {
        return Ok(());
    }
    for row in c.rows.iter_mut() {
        if row.verdict != Verdict::Regression {
            continue;
        }
        if let Some(t) = set.effective(&c.head.id, &row.bench, &row.metric) {
            match t.action {
                TriageAction::Ack => {
                    row.verdict = Verdict::Acknowledged;
                    row.detail = format!(
                        "regression acknowledged by {}: {}; {}",
                        who(&t.by),
                        t.reason,
                        row.detail
                    );
                }
                TriageAction::Dismiss => {
                    row.verdict = Verdict::Noise;
                    row.detail = format!(
                        "flagged as a regression, dismissed as a false alarm by {}: {}; {}",
                        who(&t.by),
                        t.reason,
                        row.detail
                    );
                }
            }
            row.triage = Some(t.clone());
            continue;
        }
        let Some((t, acked)) = set.carried(&c.base, &c.head, &row.bench, &row.metric) else {
            continue;
        };
        let Some(again) = recheck(acked, row)? else {
            continue;
        };
        if matches!(again.verdict, Verdict::Noise | Verdict::Improvement) {
            row.verdict = Verdict::Acknowledged;
            row.detail = format!(
                "the change acknowledged in run {} by {}: {}; against that run {} ({}); {}",
                t.run,
                who(&t.by),
                t.reason,
                again
                    .change
                    .map(|x| format!("{:+.1}%", x * 100.0))
                    .unwrap_or_else(|| "-".into()),
                again.verdict.as_str(),
                row.detail
            );
            row.triage = Some(t.clone());
        } else {
            row.detail = format!(
                "worse than the level acknowledged in run {} ({} against it); {}",
                t.run,
                again
                    .change
                    .map(|x| format!("{:+.1}%", x * 100.0))
                    .unwrap_or_else(|| "-".into()),
                row.detail
            );
        }
    }
    c.overall = overall(&c.rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;
    use saeperf_store::{BenchKind, BenchResult, BenchStatus, Run, RunBackend};

    use super::*;
    use crate::rules::Rules;
    use crate::{compare, exit_code, SpeedHistory};

    fn meta(id: &str, minutes: i64, branch: &str) -> RunMeta {
        RunMeta {
            id: id.into(),
            state: RunState::Complete,
            commit: None,
            branch: Some(branch.into()),
            pr: None,
            dirty: false,
            started_at: chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
                + chrono::Duration::minutes(minutes),
            finished_at: None,
            fingerprint: Default::default(),
            fingerprint_id: "fp".into(),
            backend: RunBackend::Cpu,
            suite: "s".into(),
            profile: "quick".into(),
            suite_hash: "h".into(),
            activation_sets: BTreeMap::new(),
            benchmarks: vec!["relu".into()],
            runner_version: "0".into(),
            skipped: Default::default(),
        }
    }

    fn run(m: RunMeta, mse: f64, fve: f64) -> Run {
        Run {
            meta: m,
            results: vec![BenchResult {
                name: "relu".into(),
                kind: BenchKind::Train,
                status: BenchStatus::Ok,
                samples: vec![],
                yardstick: vec![],
                metrics: BTreeMap::from([("mse".to_string(), mse), ("fve".to_string(), fve)]),
                metric_seeds: BTreeMap::new(),
                deterministic: true,
                curve: vec![],
                extra: serde_json::Value::Null,
            }],
        }
    }

    fn record(run: &str, metric: &str, action: TriageAction, minutes: i64) -> Triage {
        Triage {
            run: run.into(),
            bench: "relu".into(),
            metric: metric.into(),
            action,
            by: "alice".into(),
            reason: "new steps".into(),
            at: chrono::Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap()
                + chrono::Duration::minutes(minutes),
            source: "cli".into(),
        }
    }

    /// Judge with triage the way compare_stored does, the recheck comparing with the acked run from `runs`.
    fn judged(base: &Run, head: &Run, runs: &[Run], records: &[Triage]) -> Comparison {
        let rules = Rules::default();
        let metas: Vec<RunMeta> = runs.iter().map(|r| r.meta.clone()).collect();
        let set = TriageSet::new(records, &metas);
        let mut c = compare(base, head, &SpeedHistory::default(), &rules);
        apply(&mut c, &set, &mut |acked, row| {
            let a = runs.iter().find(|r| r.meta.id == acked.id).unwrap();
            Ok(crate::judge_against(
                a,
                head,
                &row.bench,
                &row.metric,
                &SpeedHistory::default(),
                &rules,
            ))
        })
        .unwrap();
        c
    }

    fn verdict(c: &Comparison, metric: &str) -> Verdict {
        c.rows.iter().find(|r| r.metric == metric).unwrap().verdict
    }

    #[test]
    fn acks_dismissals_and_carried_acks() {
        let b = run(meta("b", 0, "main"), 0.020, 0.90);
        let r = run(meta("r", 10, "main"), 0.023, 0.90);
        let later = run(meta("l", 20, "main"), 0.023, 0.85);
        let worse = run(meta("w", 30, "main"), 0.026, 0.90);
        let runs = [b.clone(), r.clone(), later.clone(), worse.clone()];
        // Without triage: a regression, exit 2.
        let c = judged(&b, &r, &runs, &[]);
        assert_eq!(c.overall, Verdict::Regression);
        // Acked in the head: acknowledged, exit 0, the row carries the record.
        let ack = record("r", "mse", TriageAction::Ack, 0);
        let c = judged(&b, &r, &runs, std::slice::from_ref(&ack));
        assert_eq!(verdict(&c, "mse"), Verdict::Acknowledged);
        assert_eq!(c.overall, Verdict::Acknowledged);
        assert_eq!(exit_code(c.overall), 0);
        let row = c.rows.iter().find(|r| r.metric == "mse").unwrap();
        assert_eq!(row.triage.as_ref(), Some(&ack));
        assert!(
            row.detail
                .starts_with("regression acknowledged by @alice: new steps"),
            "{}",
            row.detail
        );
        assert!(!Verdict::Acknowledged.needs_attention());
        // A later dismissal of the same row wins over the ack: noise.
        let dismiss = record("r", "mse", TriageAction::Dismiss, 5);
        let c = judged(&b, &r, &runs, &[ack.clone(), dismiss.clone()]);
        assert_eq!(verdict(&c, "mse"), Verdict::Noise);
        assert_eq!(c.overall, Verdict::Noise);
        let c = judged(&b, &r, &runs, std::slice::from_ref(&dismiss));
        let row = c.rows.iter().find(|r| r.metric == "mse").unwrap();
        assert!(
            row.detail.contains("dismissed as a false alarm by @alice"),
            "{}",
            row.detail
        );
        // A later run at the acked level compared with the old base: the ack carries over; the unrelated fve
        // regression is still flagged.
        let c = judged(&b, &later, &runs, std::slice::from_ref(&ack));
        assert_eq!(verdict(&c, "mse"), Verdict::Acknowledged);
        assert_eq!(verdict(&c, "fve"), Verdict::Regression);
        assert_eq!(c.overall, Verdict::Regression);
        // Beyond the acked level: still a regression, and it says so.
        let c = judged(&b, &worse, &runs, std::slice::from_ref(&ack));
        assert_eq!(verdict(&c, "mse"), Verdict::Regression);
        assert!(c.rows.iter().any(|r| r
            .detail
            .contains("worse than the level acknowledged in run r")));
        // A dismissal does not carry over.
        let c = judged(&b, &later, &runs, &[dismiss]);
        assert_eq!(verdict(&c, "mse"), Verdict::Regression);
        // Not for a base at or after the acked run (the change is not in the comparison), nor another branch.
        let set = TriageSet::new(
            std::slice::from_ref(&ack),
            &[b.meta.clone(), r.meta.clone()],
        );
        assert!(set.carried(&r.meta, &later.meta, "relu", "mse").is_none());
        assert!(set.carried(&b.meta, &later.meta, "relu", "mse").is_some());
        let mut other = later.meta.clone();
        other.branch = Some("feature".into());
        assert!(set.carried(&b.meta, &other, "relu", "mse").is_none());
        assert!(!set.restarts("r", "relu") && set.effective("r", "relu", "mse").is_some());
        // A record of a run not given is left out.
        assert!(TriageSet::new(&[ack], std::slice::from_ref(&b.meta)).is_empty());
    }

    #[test]
    fn who_marks_logins() {
        assert_eq!(who("alice"), "@alice");
        assert_eq!(who("@alice"), "@alice");
        assert_eq!(who("Alice Smith"), "Alice Smith");
        assert_eq!(who("unknown"), "unknown");
    }
}
