//! A series as `runner history` lists it: one metric of one benchmark over complete runs, filtered by machine,
//! backend, profile and branch, oldest first.

use chrono::{DateTime, Utc};
use saeperf_store::{BenchStatus, RunBackend, RunMeta, RunState, Store, StoreError};
use serde::Serialize;

/// Which runs and which value.
#[derive(Debug, Clone, Default)]
pub struct SeriesQuery {
    pub bench: String,
    /// `time` (the median of the timing samples, seconds) or a metric name.
    pub metric: String,
    /// Only this machine fingerprint (None: every machine).
    pub fingerprint: Option<String>,
    pub backend: Option<RunBackend>,
    pub profile: Option<String>,
    pub branch: Option<String>,
    /// Only the newest N points.
    pub limit: Option<usize>,
}

/// One point of a series.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    pub run: String,
    pub time: DateTime<Utc>,
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub dirty: bool,
    pub fingerprint: String,
    pub backend: RunBackend,
    pub profile: String,
    pub value: Option<f64>,
    /// ok, failed, diverged, or missing (the run lists the benchmark but holds no result for it).
    pub status: String,
}

fn selected(q: &SeriesQuery, m: &RunMeta) -> bool {
    m.state == RunState::Complete
        && q.fingerprint
            .as_ref()
            .is_none_or(|f| &m.fingerprint_id == f)
        && q.backend.is_none_or(|b| m.backend == b)
        && q.profile.as_ref().is_none_or(|p| &m.profile == p)
        && q.branch
            .as_ref()
            .is_none_or(|b| m.branch.as_ref() == Some(b))
        && m.benchmarks.iter().any(|b| b == &q.bench)
}

/// The points of the series `q` describes.
pub fn points(store: &Store, q: &SeriesQuery) -> Result<Vec<SeriesPoint>, StoreError> {
    let metas: Vec<RunMeta> = store
        .list_runs()?
        .into_iter()
        .filter(|m| selected(q, m))
        .collect();
    let metas = match q.limit {
        Some(n) => metas[metas.len().saturating_sub(n)..].to_vec(),
        None => metas,
    };
    let mut points = Vec::with_capacity(metas.len());
    for m in metas {
        let r = store.result(&m.id, &q.bench)?;
        let (value, status) = match &r {
            Some(r) => (
                r.series_value(&q.metric),
                match &r.status {
                    BenchStatus::Ok => "ok".to_string(),
                    BenchStatus::Failed(_) => "failed".into(),
                    BenchStatus::Diverged(_) => "diverged".into(),
                },
            ),
            None => (None, "missing".into()),
        };
        points.push(SeriesPoint {
            run: m.id,
            time: m.started_at,
            commit: m.commit,
            branch: m.branch,
            dirty: m.dirty,
            fingerprint: m.fingerprint_id,
            backend: m.backend,
            profile: m.profile,
            value,
            status,
        });
    }
    Ok(points)
}
