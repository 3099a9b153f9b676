//! Training benchmarks (reference dictionaries and the pruning variant). Waiting for the engine on main.

use std::collections::BTreeMap;
use std::path::Path;

use crate::store::schema::{BenchKind, BenchStatus};
use crate::store::BenchResult;
use crate::suite::{ResolvedSuite, TrainSpec};

pub struct DataCtx;

impl DataCtx {
    pub fn prepare(_s: &ResolvedSuite, _home: &Path) -> anyhow::Result<DataCtx> {
        Ok(DataCtx)
    }
    pub fn digests(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}

pub fn run(t: &TrainSpec, prune: bool, _ctx: &DataCtx, _backend: &str) -> BenchResult {
    BenchResult {
        name: t.name.clone(),
        kind: if prune {
            BenchKind::Prune
        } else {
            BenchKind::Train
        },
        status: BenchStatus::Failed("the training engine is not in this build yet".into()),
        samples: vec![],
        yardstick: vec![],
        metrics: BTreeMap::new(),
        metric_seeds: BTreeMap::new(),
        deterministic: true,
        curve: vec![],
        extra: serde_json::Value::Null,
    }
}
