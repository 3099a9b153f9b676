//! Self-contained JSON bundles of runs: `runner db export` writes one, `runner ingest` reads one into a store.
//!
//! A bundle carries whole complete runs (metadata, fingerprint, raw samples, metrics, curves), so runs made on
//! several machines (CI runners, a GPU box) merge into one store, and the triage records (acks, dismissals) of the
//! runs it carries. Ingest is idempotent: a run already present with the same contents is skipped; the same id with
//! different contents is refused; a triage record is written unless the store holds the same or a newer one.

use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{Run, RunState, Store, StoreError, Triage, SCHEMA_VERSION};

/// The marker in every bundle's `format` field.
pub const BUNDLE_FORMAT: &str = "saeperf-bundle";

#[derive(Debug, Serialize, Deserialize)]
pub struct Bundle {
    pub format: String,
    pub schema_version: u32,
    pub exported_at: chrono::DateTime<chrono::Utc>,
    pub runs: Vec<Run>,
    /// The triage records of the bundled runs, oldest first (absent in bundles written before triage existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triage: Vec<Triage>,
}

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("cannot read bundle {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("bundle {path} is not valid JSON of a saeperf bundle: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("bundle {path}: format is {found:?}, expected {BUNDLE_FORMAT:?}")]
    Format { path: String, found: String },
    #[error("bundle {path} has schema version {found}, this runner understands version {SCHEMA_VERSION}")]
    Schema { path: String, found: u32 },
    #[error("bundle {path}: run {id} is incomplete; only complete runs can be ingested")]
    Incomplete { path: String, id: String },
    #[error("bundle {path}: a triage record names run {run}, which the bundle does not carry")]
    TriageRun { path: String, run: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Collect complete runs (all, or those whose ids are listed) and their triage records into a bundle.
pub fn export(store: &Store, ids: &[String]) -> Result<Bundle, StoreError> {
    let mut runs = Vec::new();
    for m in store.list_runs()? {
        if m.state != RunState::Complete || (!ids.is_empty() && !ids.contains(&m.id)) {
            continue;
        }
        runs.push(store.load_run(&m.id)?);
    }
    let triage = store
        .triage()?
        .into_iter()
        .filter(|t| runs.iter().any(|r| r.meta.id == t.run))
        .collect();
    Ok(Bundle {
        format: BUNDLE_FORMAT.into(),
        schema_version: SCHEMA_VERSION,
        exported_at: chrono::Utc::now(),
        runs,
        triage,
    })
}

/// Read and validate a bundle file.
pub fn read(path: &Path) -> Result<Bundle, BundleError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| BundleError::Read {
        path: p.clone(),
        source,
    })?;
    // Check the envelope first so that a bundle of another version gets the version error, not a field error.
    let env: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| BundleError::Parse {
            path: p.clone(),
            source,
        })?;
    let format = env
        .get("format")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    if format != BUNDLE_FORMAT {
        return Err(BundleError::Format {
            path: p,
            found: format,
        });
    }
    let version = env
        .get("schema_version")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as u32;
    if version != SCHEMA_VERSION {
        return Err(BundleError::Schema {
            path: p,
            found: version,
        });
    }
    let b: Bundle = serde_json::from_value(env).map_err(|source| BundleError::Parse {
        path: p.clone(),
        source,
    })?;
    if let Some(r) = b.runs.iter().find(|r| r.meta.state != RunState::Complete) {
        return Err(BundleError::Incomplete {
            path: p,
            id: r.meta.id.clone(),
        });
    }
    if let Some(t) = b
        .triage
        .iter()
        .find(|t| !b.runs.iter().any(|r| r.meta.id == t.run))
    {
        return Err(BundleError::TriageRun {
            path: p,
            run: t.run.clone(),
        });
    }
    Ok(b)
}

/// Ingest every run of a bundle, then its triage records; returns (runs added, runs skipped as already present).
pub fn ingest(store: &Store, bundle: &Bundle) -> Result<(usize, usize), BundleError> {
    let (mut added, mut skipped) = (0, 0);
    for run in &bundle.runs {
        if store.ingest_run(run)? {
            added += 1;
        } else {
            skipped += 1;
        }
    }
    for t in &bundle.triage {
        store.ingest_triage(t)?;
    }
    Ok((added, skipped))
}
