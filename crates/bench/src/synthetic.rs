//! Synthetic history (`runner db synth-history`): a store filled with runs the size of real standard-profile runs,
//! for measuring how `compare`, `history` and the dashboard scale with a long history.

use std::collections::BTreeMap;

use anyhow::Result;
use saeperf_store::schema::{new_run_id, CurvePoint};
use saeperf_store::{
    BenchKind, BenchResult, BenchStatus, Fingerprint, Run, RunBackend, RunMeta, RunState, Store,
};

use crate::suite::{BenchSpec, Suite};

/// Write `n` synthetic complete runs on this machine's fingerprint (one commit each, branch main), each with the
/// default suite's benchmark names, 20 timing samples per op, a 40-point curve and a dozen metrics — about the size
/// of a real standard-profile run.
pub fn synthetic_history(store: &Store, n: usize) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let (suite, _) = Suite::load(None)?;
    let resolved = suite.resolve(None, None)?;
    let fp = Fingerprint::detect();
    let fp_id = fp.id();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let start = chrono::Utc::now() - chrono::Duration::hours(n as i64);
    let pb = indicatif::ProgressBar::new(n as u64);
    for i in 0..n {
        let t = start + chrono::Duration::hours(i as i64);
        let meta = RunMeta {
            id: new_run_id(t),
            state: RunState::Complete,
            commit: Some(format!("{:040x}", rng.random::<u128>())),
            branch: Some("main".into()),
            pr: None,
            dirty: false,
            started_at: t,
            finished_at: Some(t),
            fingerprint: fp.clone(),
            fingerprint_id: fp_id.clone(),
            backend: RunBackend::Cpu,
            suite: resolved.suite.clone(),
            profile: resolved.profile.clone(),
            suite_hash: resolved.hash(),
            activation_sets: BTreeMap::new(),
            benchmarks: vec![],
            runner_version: env!("CARGO_PKG_VERSION").into(),
            skipped: Default::default(),
        };
        let results = resolved
            .benches
            .iter()
            .map(|b| {
                let is_op = matches!(b, BenchSpec::Op { .. });
                let n_samples = if is_op { 20 } else { 1 };
                let samples = (0..n_samples)
                    .map(|_| 1e-3 * rng.random_range(0.95..1.05))
                    .collect();
                let metrics = [
                    "mse",
                    "l0",
                    "l1",
                    "fvu",
                    "fve",
                    "dead_fraction",
                    "dense_fraction",
                    "mmcs",
                ]
                .iter()
                .map(|k| (k.to_string(), rng.random_range(0.0..1.0)))
                .collect();
                let curve = (0..40)
                    .map(|s| CurvePoint {
                        step: s * 50,
                        loss: 1.0,
                        mse: 0.5,
                        l0: 10.0,
                    })
                    .collect();
                BenchResult {
                    name: b.name().to_string(),
                    kind: if is_op {
                        BenchKind::Op
                    } else {
                        BenchKind::Train
                    },
                    status: BenchStatus::Ok,
                    samples,
                    yardstick: vec![],
                    metrics: if is_op { BTreeMap::new() } else { metrics },
                    metric_seeds: BTreeMap::new(),
                    deterministic: true,
                    curve: if is_op { vec![] } else { curve },
                    extra: serde_json::Value::Null,
                }
            })
            .collect();
        store.commit_run(&Run { meta, results })?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    eprintln!("wrote {n} synthetic runs to {}", store.path().display());
    Ok(())
}
