//! The speed history of a series: per benchmark, the median times of the runs before a base, from which the noise
//! fence is learned (docs/verdicts.md). One selection rule ([`select`]) and one builder ([`SpeedHistory::push_run`])
//! serve `runner compare`, `runner bench`, the comment and the dashboard, so a pair of runs gets the same verdict
//! wherever it is shown. The builder restarts a benchmark's history at a run where a maintainer acknowledged its
//! speed change (the noise band restarts, docs/verdicts.md "Triage"): only that run and later ones count.

use std::collections::BTreeMap;

use saeperf_store::{BenchResult, RunMeta, RunState, Store, StoreError};

use crate::same_series;
use crate::stats;
use crate::triage::TriageSet;

/// Per benchmark, the series of median times (`raw`) and of median yardstick-normalized times (`normalized`, only
/// runs that have a yardstick), oldest first, ending at the base.
#[derive(Debug, Default, Clone)]
pub struct SpeedHistory {
    pub raw: BTreeMap<String, Vec<f64>>,
    pub normalized: BTreeMap<String, Vec<f64>>,
}

impl SpeedHistory {
    /// Add one run's results (oldest run first). A benchmark whose speed change was acknowledged in this run
    /// ([`TriageSet::restarts`]) starts its history again here: the points before it are dropped.
    pub fn push_run<'r>(
        &mut self,
        run: &str,
        results: impl IntoIterator<Item = &'r BenchResult>,
        triage: &TriageSet,
    ) {
        for r in results {
            if triage.restarts(run, &r.name) {
                self.raw.remove(&r.name);
                self.normalized.remove(&r.name);
            }
            self.push(r);
        }
    }

    /// Add one run's result (oldest run first); failed results and results without samples add nothing.
    pub fn push(&mut self, r: &BenchResult) {
        if !r.status.is_ok() {
            return;
        }
        if let Some(t) = r.median_time() {
            self.raw.entry(r.name.clone()).or_default().push(t);
        }
        if let Some(t) = r.normalized().and_then(|n| stats::median(&n)) {
            self.normalized.entry(r.name.clone()).or_default().push(t);
        }
    }
}

/// The runs that make the history of `base`'s series, oldest first: complete runs on the same machine, backend and
/// profile (and branch, when the base has one), started no later than the base (the base included), the newest
/// `window + 1` of them. `items` must be in store order (oldest first); `meta` reads an item's run metadata.
pub fn select<'a, 'm, T>(
    items: &'a [T],
    meta: impl Fn(&'a T) -> &'m RunMeta,
    base: &RunMeta,
    window: usize,
) -> Vec<&'a T> {
    let runs: Vec<&T> = items
        .iter()
        .filter(|i| {
            let m = meta(i);
            m.state == RunState::Complete
                && same_series(m, base)
                && (base.branch.is_none() || m.branch == base.branch)
                && (m.started_at, &m.id) <= (base.started_at, &base.id)
        })
        .collect();
    runs[runs.len().saturating_sub(window + 1)..].to_vec()
}

/// The runs before `head` in its series (the [`select`] rule with `head` as the base, `head` itself left out): the
/// history a head is judged with against an acked run ([`crate::triage`]), which [`SpeedHistory::push_run`] then
/// restarts at the acked run.
pub fn before<'a, 'm, T>(
    items: &'a [T],
    meta: impl Fn(&'a T) -> &'m RunMeta + Copy,
    head: &RunMeta,
    window: usize,
) -> Vec<&'a T> {
    select(items, meta, head, window + 1)
        .into_iter()
        .filter(|i| meta(*i).id != head.id)
        .collect()
}

/// The history of `base`'s series from the store, restarted at acked runs (`triage`).
pub fn stored(
    store: &Store,
    base: &RunMeta,
    window: usize,
    triage: &TriageSet,
) -> Result<SpeedHistory, StoreError> {
    let metas = store.list_runs()?;
    let mut out = SpeedHistory::default();
    for m in select(&metas, |m| m, base, window) {
        let mut results = Vec::with_capacity(m.benchmarks.len());
        for name in &m.benchmarks {
            if let Some(r) = store.result(&m.id, name)? {
                results.push(r);
            }
        }
        out.push_run(&m.id, &results, triage);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use saeperf_store::{BenchKind, BenchStatus, RunBackend, Triage, TriageAction};

    use super::*;

    fn result(name: &str, t: f64) -> BenchResult {
        BenchResult {
            name: name.into(),
            kind: BenchKind::Op,
            status: BenchStatus::Ok,
            samples: vec![t, t],
            yardstick: vec![],
            metrics: BTreeMap::new(),
            metric_seeds: BTreeMap::new(),
            deterministic: true,
            curve: vec![],
            extra: serde_json::Value::Null,
        }
    }

    fn meta(id: &str) -> RunMeta {
        RunMeta {
            id: id.into(),
            state: RunState::Complete,
            commit: None,
            branch: Some("main".into()),
            pr: None,
            dirty: false,
            started_at: chrono::Utc::now(),
            finished_at: None,
            fingerprint: Default::default(),
            fingerprint_id: "fp".into(),
            backend: RunBackend::Cpu,
            suite: "s".into(),
            profile: "quick".into(),
            suite_hash: "h".into(),
            activation_sets: BTreeMap::new(),
            benchmarks: vec![],
            runner_version: "0".into(),
            skipped: Default::default(),
        }
    }

    #[test]
    fn an_acked_speed_change_restarts_only_its_benchmarks_history() {
        let ack = Triage {
            run: "r2".into(),
            bench: "op/encode".into(),
            metric: "time".into(),
            action: TriageAction::Ack,
            by: "alice".into(),
            reason: "new steps".into(),
            at: chrono::Utc::now(),
            source: "cli".into(),
        };
        let metas = [meta("r1"), meta("r2"), meta("r3")];
        let mut dismissed = ack.clone();
        dismissed.action = TriageAction::Dismiss;
        dismissed.bench = "op/decode".into();
        let set = TriageSet::new(&[ack, dismissed], &metas);
        let mut h = SpeedHistory::default();
        for (m, t) in metas.iter().zip([1.0, 1.3, 1.31]) {
            h.push_run(
                &m.id,
                &[result("op/encode", t), result("op/decode", t)],
                &set,
            );
        }
        assert_eq!(h.raw["op/encode"], vec![1.3, 1.31], "restarted at the ack");
        assert_eq!(
            h.raw["op/decode"],
            vec![1.0, 1.3, 1.31],
            "a dismissal keeps it"
        );
        // `before`: the head's series without the head.
        let ids: Vec<&str> = before(&metas, |m| m, &metas[2], 30)
            .into_iter()
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(ids, ["r1", "r2"]);
    }
}
