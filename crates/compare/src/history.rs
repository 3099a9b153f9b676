//! The speed history of a series: per benchmark, the median times of the runs before a base, from which the noise
//! fence is learned (docs/verdicts.md). One selection rule ([`select`]) and one builder ([`SpeedHistory::push`])
//! serve `runner compare`, `runner bench`, the comment and the dashboard, so a pair of runs gets the same verdict
//! wherever it is shown.

use std::collections::BTreeMap;

use saeperf_store::{BenchResult, RunMeta, RunState, Store, StoreError};

use crate::same_series;
use crate::stats;

/// Per benchmark, the series of median times (`raw`) and of median yardstick-normalized times (`normalized`, only
/// runs that have a yardstick), oldest first, ending at the base.
#[derive(Debug, Default, Clone)]
pub struct SpeedHistory {
    pub raw: BTreeMap<String, Vec<f64>>,
    pub normalized: BTreeMap<String, Vec<f64>>,
}

impl SpeedHistory {
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

/// The history of `base`'s series from the store.
pub fn stored(store: &Store, base: &RunMeta, window: usize) -> Result<SpeedHistory, StoreError> {
    let metas = store.list_runs()?;
    let mut out = SpeedHistory::default();
    for m in select(&metas, |m| m, base, window) {
        for name in &m.benchmarks {
            if let Some(r) = store.result(&m.id, name)? {
                out.push(&r);
            }
        }
    }
    Ok(out)
}
