//! saeperf-store: the results store. Every run ever benchmarked lives in a sled database (the command line defaults
//! it to `$SAEPERF_HOME/store`; `--db` for another). This crate knows nothing of comparison, benchmarking or reports.
//!
//! Layout (schema [`schema::SCHEMA_VERSION`]): the default tree holds `schema_version`; tree `runs` maps a run id to
//! its [`RunMeta`] as JSON; tree `results` maps `run id \0 benchmark name` to a [`BenchResult`] as JSON; tree
//! `triage` maps `run id \0 benchmark \0 metric \0 action` to a maintainer's [`Triage`] record as JSON (an ack or a
//! dismissal of a change flagged in that run; added within schema 1: a store without the tree simply has none).
//! Invariants: a run is written `Incomplete` when it starts and flipped to `Complete` in the same sled transaction
//! that writes all its results, so readers see either a finished run or one marked incomplete, never half of one;
//! incomplete runs are never returned as baselines. sled holds an exclusive file lock while a store is open: a second
//! process gets [`StoreError::InUse`] at once instead of waiting.

pub mod bundle;
pub mod document;
pub mod fingerprint;
pub mod samples;
pub mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use thiserror::Error;

pub use fingerprint::Fingerprint;
pub use schema::{
    BenchKind, BenchResult, BenchStatus, Run, RunBackend, RunMeta, RunState, Triage, TriageAction,
    CALIBRATION_PROFILE, SCHEMA_VERSION,
};

/// Errors from the store, each naming the store or the record involved.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store {path} is in use by another process (sled holds a lock on it); wait for that process to finish or pass --db for another store")]
    InUse { path: PathBuf },
    #[error("cannot open store {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("store {path}: {source}")]
    Sled { path: PathBuf, source: sled::Error },
    #[error("store {path} has schema version {found}, this runner understands version {expected}")]
    Schema {
        path: PathBuf,
        found: String,
        expected: u32,
    },
    #[error("store {path}: corrupt record {key}: {reason}")]
    Corrupt {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("no run matches {0:?} (give a run id or its prefix, a commit SHA or its prefix, or `latest`)")]
    NotFound(String),
    #[error("{spec:?} matches several runs ({candidates}); give more characters")]
    Ambiguous { spec: String, candidates: String },
    #[error("run {0} already exists with different contents")]
    Conflict(String),
    #[error("store {path} has no run {run}: a triage record names the run in which the change was flagged (its exact id)")]
    UnknownRun { path: PathBuf, run: String },
    #[error("triage record for run {run}: {reason}")]
    BadTriage { run: String, reason: String },
}

/// An open store. Dropping it flushes and releases the lock.
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    runs: sled::Tree,
    results: sled::Tree,
    triage: sled::Tree,
}

/// What `runner db check` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub complete: usize,
    pub incomplete: Vec<String>,
    pub results: usize,
    /// Triage records (acks and dismissals).
    #[serde(default)]
    pub triage: usize,
    pub problems: Vec<String>,
}

fn result_key(run_id: &str, bench: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(run_id.len() + bench.len() + 1);
    k.extend_from_slice(run_id.as_bytes());
    k.push(0);
    k.extend_from_slice(bench.as_bytes());
    k
}

fn triage_key(t: &Triage) -> Vec<u8> {
    let mut k = result_key(&t.run, &t.bench);
    for part in [t.metric.as_str(), t.action.as_str()] {
        k.push(0);
        k.extend_from_slice(part.as_bytes());
    }
    k
}

impl Store {
    /// Open (creating if needed) the store at `path`. Fails at once with [`StoreError::InUse`] when another process has it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|e| match &e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::InUse {
                        path: path.to_path_buf(),
                    }
                }
                _ => StoreError::Open {
                    path: path.to_path_buf(),
                    source: e,
                },
            })?;
        let sled_err = |source| StoreError::Sled {
            path: path.to_path_buf(),
            source,
        };
        match db.get("schema_version").map_err(sled_err)? {
            Some(v) => {
                let found = String::from_utf8_lossy(&v).to_string();
                if found != SCHEMA_VERSION.to_string() {
                    return Err(StoreError::Schema {
                        path: path.to_path_buf(),
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
            }
            None => {
                db.insert("schema_version", SCHEMA_VERSION.to_string().as_bytes())
                    .map_err(sled_err)?;
            }
        }
        let runs = db.open_tree("runs").map_err(sled_err)?;
        let results = db.open_tree("results").map_err(sled_err)?;
        let triage = db.open_tree("triage").map_err(sled_err)?;
        Ok(Store {
            path: path.to_path_buf(),
            db,
            runs,
            results,
            triage,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sled_err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.sled_err(e))?;
        Ok(())
    }

    /// Record that a run has started (state `Incomplete`), durably.
    pub fn begin_run(&self, meta: &RunMeta) -> Result<(), StoreError> {
        let mut meta = meta.clone();
        meta.state = RunState::Incomplete;
        let v = serde_json::to_vec(&meta).expect("RunMeta serializes");
        self.runs
            .insert(meta.id.as_bytes(), v)
            .map_err(|e| self.sled_err(e))?;
        self.flush()
    }

    /// Save one finished benchmark of a run in progress (kept for diagnosis if the run never completes).
    pub fn add_partial_result(&self, run_id: &str, r: &BenchResult) -> Result<(), StoreError> {
        let v = serde_json::to_vec(r).expect("BenchResult serializes");
        self.results
            .insert(result_key(run_id, &r.name), v)
            .map_err(|e| self.sled_err(e))?;
        self.flush()
    }

    /// Commit a whole run atomically: every result and the metadata flipped to `Complete`, in one transaction.
    pub fn commit_run(&self, run: &Run) -> Result<(), StoreError> {
        let mut meta = run.meta.clone();
        meta.state = RunState::Complete;
        meta.benchmarks = run.results.iter().map(|r| r.name.clone()).collect();
        let meta_v = serde_json::to_vec(&meta).expect("RunMeta serializes");
        let results: Vec<(Vec<u8>, Vec<u8>)> = run
            .results
            .iter()
            .map(|r| {
                (
                    result_key(&meta.id, &r.name),
                    serde_json::to_vec(r).expect("BenchResult serializes"),
                )
            })
            .collect();
        (&self.runs, &self.results)
            .transaction(|(runs, res)| {
                for (k, v) in &results {
                    res.insert(k.as_slice(), v.as_slice())?;
                }
                runs.insert(meta.id.as_bytes(), meta_v.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(s) => self.sled_err(s),
                TransactionError::Abort(()) => unreachable!("the transaction never aborts"),
            })?;
        self.flush()
    }

    /// Add a complete run from elsewhere (a bundle). Identical runs already present are skipped (returns false).
    pub fn ingest_run(&self, run: &Run) -> Result<bool, StoreError> {
        if let Some(existing) = self.run_meta(&run.meta.id)? {
            if existing.state == RunState::Complete {
                let have = self.load_run(&run.meta.id)?;
                let mut want = run.clone();
                want.meta.state = RunState::Complete;
                want.meta.benchmarks = run.results.iter().map(|r| r.name.clone()).collect();
                return if have == want {
                    Ok(false)
                } else {
                    Err(StoreError::Conflict(run.meta.id.clone()))
                };
            }
        }
        self.commit_run(run)?;
        Ok(true)
    }

    fn parse_meta(&self, k: &[u8], v: &[u8]) -> Result<RunMeta, StoreError> {
        serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            key: format!("runs/{}", String::from_utf8_lossy(k)),
            reason: e.to_string(),
        })
    }

    pub fn run_meta(&self, id: &str) -> Result<Option<RunMeta>, StoreError> {
        match self.runs.get(id.as_bytes()).map_err(|e| self.sled_err(e))? {
            Some(v) => Ok(Some(self.parse_meta(id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Every run's metadata, oldest first (ids sort by start time).
    pub fn list_runs(&self) -> Result<Vec<RunMeta>, StoreError> {
        let mut out = Vec::new();
        for kv in self.runs.iter() {
            let (k, v) = kv.map_err(|e| self.sled_err(e))?;
            out.push(self.parse_meta(&k, &v)?);
        }
        out.sort_by(|a, b| {
            a.started_at
                .cmp(&b.started_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// One benchmark's result within a run.
    pub fn result(&self, run_id: &str, bench: &str) -> Result<Option<BenchResult>, StoreError> {
        let key = result_key(run_id, bench);
        match self.results.get(&key).map_err(|e| self.sled_err(e))? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    key: format!("results/{run_id}/{bench}"),
                    reason: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    /// A run with all its results (for an incomplete run: whatever results were saved).
    pub fn load_run(&self, id: &str) -> Result<Run, StoreError> {
        let meta = self
            .run_meta(id)?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let mut prefix = id.as_bytes().to_vec();
        prefix.push(0);
        let mut results = Vec::new();
        for kv in self.results.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(|e| self.sled_err(e))?;
            let r: BenchResult = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                key: format!("results/{}", String::from_utf8_lossy(&k).replace('\0', "/")),
                reason: e.to_string(),
            })?;
            results.push(r);
        }
        // Keep the suite's order for complete runs.
        if meta.state == RunState::Complete {
            let order: BTreeMap<&str, usize> = meta
                .benchmarks
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), i))
                .collect();
            results.sort_by_key(|r| order.get(r.name.as_str()).copied().unwrap_or(usize::MAX));
        }
        Ok(Run { meta, results })
    }

    /// The newest run (by id, i.e. start time) that `f` accepts.
    pub fn newest(&self, f: impl Fn(&RunMeta) -> bool) -> Result<Option<RunMeta>, StoreError> {
        Ok(self.list_runs()?.into_iter().rev().find(|m| f(m)))
    }

    /// Resolve a user's run reference: a run id or unique prefix, `latest` (newest complete run), or a commit SHA
    /// prefix (newest complete run of that commit). `filter` narrows commit and `latest` lookups (same machine...).
    pub fn resolve(
        &self,
        spec: &str,
        filter: &dyn Fn(&RunMeta) -> bool,
    ) -> Result<RunMeta, StoreError> {
        if let Some(m) = self.run_meta(spec)? {
            return Ok(m);
        }
        let runs = self.list_runs()?;
        if spec == "latest" {
            return runs
                .into_iter()
                .rev()
                .find(|m| m.state == RunState::Complete && filter(m))
                .ok_or_else(|| StoreError::NotFound(spec.to_string()));
        }
        let by_id: Vec<&RunMeta> = runs.iter().filter(|m| m.id.starts_with(spec)).collect();
        match by_id.len() {
            1 => return Ok(by_id[0].clone()),
            n if n > 1 => {
                return Err(StoreError::Ambiguous {
                    spec: spec.to_string(),
                    candidates: by_id
                        .iter()
                        .take(5)
                        .map(|m| m.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
            _ => {}
        }
        if spec.len() >= 4 && spec.chars().all(|c| c.is_ascii_hexdigit()) {
            if let Some(m) = runs.iter().rev().find(|m| {
                m.state == RunState::Complete
                    && m.commit
                        .as_deref()
                        .is_some_and(|c| c.starts_with(&spec.to_ascii_lowercase()))
                    && filter(m)
            }) {
                return Ok(m.clone());
            }
        }
        Err(StoreError::NotFound(spec.to_string()))
    }

    /// Record a maintainer's ack or dismissal of a change flagged in `t.run` (durably). The run must be stored (its
    /// exact id); benchmark and metric must be non-empty and free of NUL bytes. Recording the same (run, bench,
    /// metric, action) again replaces the earlier record. Whether the benchmark and metric exist in the run is the
    /// caller's check (the command line and the scheduler know which rows a comparison had).
    pub fn record_triage(&self, t: &Triage) -> Result<(), StoreError> {
        self.put_triage(t)?;
        self.flush()
    }

    fn put_triage(&self, t: &Triage) -> Result<(), StoreError> {
        let bad = |reason: &str| StoreError::BadTriage {
            run: t.run.clone(),
            reason: reason.to_string(),
        };
        for (name, v) in [("benchmark", &t.bench), ("metric", &t.metric)] {
            if v.trim().is_empty() {
                return Err(bad(&format!("the {name} is empty")));
            }
            if v.contains('\0') {
                return Err(bad(&format!("the {name} contains a NUL byte")));
            }
        }
        if t.run.contains('\0') || self.run_meta(&t.run)?.is_none() {
            return Err(StoreError::UnknownRun {
                path: self.path.clone(),
                run: t.run.clone(),
            });
        }
        let v = serde_json::to_vec(t).expect("Triage serializes");
        self.triage
            .insert(triage_key(t), v)
            .map_err(|e| self.sled_err(e))?;
        Ok(())
    }

    /// Add a triage record from elsewhere (a bundle): written when the store has none under its key or an older one
    /// (by `at`); returns whether it was written.
    pub fn ingest_triage(&self, t: &Triage) -> Result<bool, StoreError> {
        let newer = match self
            .triage
            .get(triage_key(t))
            .map_err(|e| self.sled_err(e))?
        {
            Some(v) => match serde_json::from_slice::<Triage>(&v) {
                Ok(have) => have != *t && have.at < t.at,
                Err(_) => true,
            },
            None => true,
        };
        if newer {
            self.record_triage(t)?;
        }
        Ok(newer)
    }

    /// Every triage record, oldest first (by `at`, then key).
    pub fn triage(&self) -> Result<Vec<Triage>, StoreError> {
        let mut out = Vec::new();
        for kv in self.triage.iter() {
            let (k, v) = kv.map_err(|e| self.sled_err(e))?;
            let t: Triage = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                key: format!("triage/{}", String::from_utf8_lossy(&k).replace('\0', "/")),
                reason: e.to_string(),
            })?;
            out.push((k, t));
        }
        out.sort_by(|(ka, a), (kb, b)| a.at.cmp(&b.at).then_with(|| ka.cmp(kb)));
        Ok(out.into_iter().map(|(_, t)| t).collect())
    }

    /// Verify integrity: schema version, every record parses, results and triage records belong to known runs,
    /// complete runs have all the results they list.
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let mut rep = CheckReport::default();
        match self
            .db
            .get("schema_version")
            .map_err(|e| self.sled_err(e))?
        {
            Some(v) if v.as_ref() == SCHEMA_VERSION.to_string().as_bytes() => {}
            other => rep.problems.push(format!(
                "schema_version is {other:?}, expected {SCHEMA_VERSION}"
            )),
        }
        let mut metas: BTreeMap<String, RunMeta> = BTreeMap::new();
        for kv in self.runs.iter() {
            let (k, v) = kv.map_err(|e| self.sled_err(e))?;
            let key = String::from_utf8_lossy(&k).to_string();
            match serde_json::from_slice::<RunMeta>(&v) {
                Ok(m) if m.id == key => {
                    match m.state {
                        RunState::Complete => rep.complete += 1,
                        RunState::Incomplete => rep.incomplete.push(m.id.clone()),
                    }
                    metas.insert(key, m);
                }
                Ok(m) => rep
                    .problems
                    .push(format!("runs/{key}: record says id {}", m.id)),
                Err(e) => rep.problems.push(format!("runs/{key}: unreadable: {e}")),
            }
        }
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for kv in self.results.iter() {
            let (k, v) = kv.map_err(|e| self.sled_err(e))?;
            rep.results += 1;
            let key = String::from_utf8_lossy(&k).to_string();
            let Some((run, bench)) = key.split_once('\0') else {
                rep.problems.push(format!("results/{key}: malformed key"));
                continue;
            };
            if !metas.contains_key(run) {
                rep.problems
                    .push(format!("results/{run}/{bench}: belongs to no run"));
            }
            match serde_json::from_slice::<BenchResult>(&v) {
                Ok(r) if r.name == bench => seen
                    .entry(run.to_string())
                    .or_default()
                    .push(bench.to_string()),
                Ok(r) => rep
                    .problems
                    .push(format!("results/{run}/{bench}: record names {}", r.name)),
                Err(e) => rep
                    .problems
                    .push(format!("results/{run}/{bench}: unreadable: {e}")),
            }
        }
        for kv in self.triage.iter() {
            let (k, v) = kv.map_err(|e| self.sled_err(e))?;
            rep.triage += 1;
            let key = String::from_utf8_lossy(&k).replace('\0', "/");
            match serde_json::from_slice::<Triage>(&v) {
                Ok(t) if triage_key(&t) != k.as_ref() => rep
                    .problems
                    .push(format!("triage/{key}: record names another key")),
                Ok(t) if !metas.contains_key(&t.run) => rep
                    .problems
                    .push(format!("triage/{key}: belongs to no run")),
                Ok(_) => {}
                Err(e) => rep.problems.push(format!("triage/{key}: unreadable: {e}")),
            }
        }
        for m in metas.values().filter(|m| m.state == RunState::Complete) {
            let have = seen.get(&m.id).cloned().unwrap_or_default();
            for b in &m.benchmarks {
                if !have.contains(b) {
                    rep.problems
                        .push(format!("run {}: result {b} is missing", m.id));
                }
            }
        }
        Ok(rep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{BenchKind, BenchStatus};

    pub(crate) fn meta(id: &str) -> RunMeta {
        RunMeta {
            id: id.to_string(),
            state: RunState::Incomplete,
            commit: Some("abcdef0123".into()),
            branch: Some("main".into()),
            pr: None,
            dirty: false,
            started_at: chrono::Utc::now(),
            finished_at: None,
            fingerprint: crate::fingerprint::Fingerprint::default(),
            fingerprint_id: "fp".into(),
            backend: crate::RunBackend::Cpu,
            suite: "t".into(),
            profile: "quick".into(),
            suite_hash: "h".into(),
            activation_sets: BTreeMap::new(),
            benchmarks: vec![],
            runner_version: "0".into(),
            skipped: Default::default(),
        }
    }

    fn result(name: &str) -> BenchResult {
        BenchResult {
            name: name.into(),
            kind: BenchKind::Op,
            status: BenchStatus::Ok,
            samples: vec![1.0, 2.0],
            yardstick: vec![],
            metrics: BTreeMap::new(),
            metric_seeds: BTreeMap::new(),
            deterministic: true,
            curve: vec![],
            extra: serde_json::Value::Null,
        }
    }

    #[test]
    fn begin_commit_check_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let m = meta("20250101T000000-000001");
        s.begin_run(&m).unwrap();
        s.add_partial_result(&m.id, &result("a")).unwrap();
        let m2 = meta("20250101T000001-000002");
        s.begin_run(&m2).unwrap();
        s.commit_run(&Run {
            meta: m2.clone(),
            results: vec![result("a"), result("b")],
        })
        .unwrap();
        let rep = s.check().unwrap();
        assert_eq!(rep.complete, 1);
        assert_eq!(rep.incomplete, vec![m.id.clone()]);
        assert!(rep.problems.is_empty(), "{:?}", rep.problems);
        // `latest` skips the incomplete run even when it is newer.
        let s2 = s.resolve("latest", &|_| true).unwrap();
        assert_eq!(s2.id, m2.id);
        assert_eq!(s.load_run(&m2.id).unwrap().results.len(), 2);
        assert_eq!(s.resolve("abcdef", &|_| true).unwrap().id, m2.id);
        assert!(matches!(
            s.resolve("2025", &|_| true),
            Err(StoreError::Ambiguous { .. })
        ));
        // The lock is per process (flock): a second open in the same process is not a good test; the child-process
        // test in tests/it/store.rs covers it. Re-ingesting the same run is a no-op.
        let r = s.load_run(&m2.id).unwrap();
        assert!(!s.ingest_run(&r).unwrap());
        let mut changed = r.clone();
        changed.results[0].samples.push(3.0);
        assert!(matches!(
            s.ingest_run(&changed),
            Err(StoreError::Conflict(_))
        ));
    }

    fn triage(run: &str, metric: &str, action: TriageAction, minutes: i64) -> Triage {
        Triage {
            run: run.into(),
            bench: "op/encode".into(),
            metric: metric.into(),
            action,
            by: "alice".into(),
            reason: "new steps".into(),
            at: chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .unwrap()
                .with_timezone(&chrono::Utc)
                + chrono::Duration::minutes(minutes),
            source: "cli".into(),
        }
    }

    #[test]
    fn triage_records_replace_list_oldest_first_and_refuse_unknown_runs() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let m = meta("20250101T000000-000001");
        s.begin_run(&m).unwrap();
        s.commit_run(&Run {
            meta: m.clone(),
            results: vec![result("op/encode")],
        })
        .unwrap();
        assert!(s.triage().unwrap().is_empty());
        s.record_triage(&triage(&m.id, "time", TriageAction::Dismiss, 5))
            .unwrap();
        s.record_triage(&triage(&m.id, "time", TriageAction::Ack, 1))
            .unwrap();
        // The same (run, bench, metric, action) again replaces the record.
        let mut again = triage(&m.id, "time", TriageAction::Ack, 9);
        again.reason = "new steps, measured twice".into();
        s.record_triage(&again).unwrap();
        let all = s.triage().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].action, TriageAction::Dismiss, "oldest first");
        assert_eq!(all[1], again);
        // An unknown run is a clear one-line error; so are an empty benchmark and a NUL byte.
        let e = s
            .record_triage(&triage(
                "20990101T000000-ffffff",
                "time",
                TriageAction::Ack,
                0,
            ))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no run 20990101T000000-ffffff"), "{e}");
        assert!(!e.contains('\n'));
        let mut empty = triage(&m.id, "time", TriageAction::Ack, 0);
        empty.bench = " ".into();
        assert!(matches!(
            s.record_triage(&empty),
            Err(StoreError::BadTriage { .. })
        ));
        empty.bench = "a\0b".into();
        assert!(s.record_triage(&empty).is_err());
        // Ingest keeps the newer of two records under one key.
        assert!(!s
            .ingest_triage(&triage(&m.id, "time", TriageAction::Ack, 2))
            .unwrap());
        assert!(!s.ingest_triage(&again).unwrap(), "identical: skipped");
        let newer = triage(&m.id, "time", TriageAction::Ack, 20);
        assert!(s.ingest_triage(&newer).unwrap());
        assert_eq!(s.triage().unwrap()[1], newer);
        // JSON: lowercase actions.
        let v = serde_json::to_value(&newer).unwrap();
        assert_eq!(v["action"], "ack");
        let rep = s.check().unwrap();
        assert_eq!(rep.triage, 2);
        assert!(rep.problems.is_empty(), "{:?}", rep.problems);
        // A corrupt record is a one-line error naming its key, never a panic.
        s.triage
            .insert(b"x\0y\0z\0ack", b"{not json".to_vec())
            .unwrap();
        let e = s.triage().unwrap_err().to_string();
        assert!(e.contains("corrupt record triage/x/y/z/ack"), "{e}");
        assert!(!s.check().unwrap().problems.is_empty());
    }
}
