//! The dictionaries a run keeps, and the feature diff of each reference dictionary against its baseline's.
//!
//! Every reference dictionary a run trains is saved (SAELens layout) under `$SAEPERF_HOME/dicts/<run>/<bench>/`;
//! the newest [`KEEP_RUNS`] runs' dictionaries are kept, older ones deleted. When the run's baseline (chosen before
//! the run starts: the stored merge-base run, or `--baseline RUN`) kept the same benchmark's dictionary on this
//! machine, trained on the same activation set, the two are matched feature by feature by decoder cosine
//! (docs/feature-diff.md) and the result goes into the head result's `extra.feature_diff`: the counts (kept,
//! split, merged, died, new, moved density band), the most-changed features and, on a model set, their top
//! contexts under both dictionaries. Where there is nothing to diff with, `extra.feature_diff.unavailable` says
//! why, so the comment and the run page say what they could not see.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use saeperf_kernels::Sae;
use saeperf_store::BenchResult;

use crate::run::Prepared;
use crate::suite::TrainSpec;

/// Runs whose dictionaries stay on disk (the newest by run id, which starts with its start time).
pub const KEEP_RUNS: usize = 8;

/// Features whose top contexts are kept with the diff (each under both dictionaries).
pub const CONTEXT_FEATURES: usize = 8;

/// The directory holding a run's dictionaries.
pub fn run_dir(home: &Path, run: &str) -> PathBuf {
    home.join("dicts").join(run)
}

/// Where one benchmark's dictionary of one run is kept.
pub fn dict_dir(home: &Path, run: &str, bench: &str) -> PathBuf {
    run_dir(home, run).join(bench.replace(['/', '\\'], "_"))
}

/// Deletes the dictionaries of all but the newest [`KEEP_RUNS`] runs (never `current`'s).
pub fn prune_old(home: &Path, current: &str) {
    let Ok(rd) = std::fs::read_dir(home.join("dicts")) else {
        return;
    };
    let mut runs: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != current)
        .collect();
    runs.sort();
    let keep = KEEP_RUNS.saturating_sub(1);
    if runs.len() > keep {
        for r in &runs[..runs.len() - keep] {
            if let Err(e) = std::fs::remove_dir_all(run_dir(home, r)) {
                tracing::warn!("cannot delete the old dictionaries of run {r}: {e}");
            }
        }
    }
}

/// Keep the dictionary of a finished training benchmark and diff it with the baseline's (see the module doc).
/// Never fails the benchmark: a dictionary that cannot be saved or diffed is noted in `extra`.
pub fn keep_and_diff(p: &Prepared, t: &TrainSpec, r: &mut BenchResult, sae: &Sae) {
    if !r.status.is_ok() {
        return;
    }
    if !r.extra.is_object() {
        r.extra = serde_json::json!({});
    }
    let dir = dict_dir(&p.home, &p.meta.id, &t.name);
    if let Err(e) = saeperf_sae::formats::save(sae, &dir) {
        tracing::warn!(
            "{}: cannot keep the dictionary in {}: {e}",
            t.name,
            dir.display()
        );
        r.extra["feature_diff"] = serde_json::json!({ "unavailable": format!("this run's dictionary could not be kept: {e}") });
        return;
    }
    let Some(base) = &p.diff_base else {
        r.extra["feature_diff"] =
            serde_json::json!({ "unavailable": "no baseline run chosen before the run" });
        return;
    };
    let diff = match diff_with_base(p, t, base, sae, &dir) {
        Ok(v) => v,
        Err(e) => serde_json::json!({ "base_run": base, "unavailable": format!("{e:#}") }),
    };
    r.extra["feature_diff"] = diff;
}

fn diff_with_base(
    p: &Prepared,
    t: &TrainSpec,
    base: &str,
    head: &Sae,
    head_dir: &Path,
) -> Result<serde_json::Value> {
    let bdir = dict_dir(&p.home, base, &t.name);
    anyhow::ensure!(
        bdir.join("cfg.json").exists(),
        "the baseline run {base} kept no dictionary of {} on this machine (it ran elsewhere, before dictionaries \
         were kept, or more than {KEEP_RUNS} runs ago)",
        t.name
    );
    let base_meta = p
        .store
        .run_meta(base)?
        .context("the baseline run is not in the store")?;
    let (bs, hs) = (
        base_meta.activation_sets.get(&t.data),
        p.meta.activation_sets.get(&t.data),
    );
    anyhow::ensure!(
        bs.is_some() && bs == hs,
        "the baseline trained {} on another activation set (SHA-256 {} vs {})",
        t.name,
        bs.map_or("none", |s| &s[..s.len().min(12)]),
        hs.map_or("none", |s| &s[..s.len().min(12)])
    );
    let set = p
        .data
        .set(&t.data)
        .context("the activation set is not open")?;
    let base_sae =
        saeperf_sae::formats::load(&bdir).with_context(|| format!("loading {}", bdir.display()))?;
    let rows = set.eval_rows();
    let bd = saeperf_sae::metrics::feature_density(&base_sae, set, rows.clone());
    let hd = saeperf_sae::metrics::feature_density(head, set, rows);
    let d = saeperf_sae::diff::diff(
        &base_sae,
        head,
        &bd,
        &hd,
        &saeperf_sae::diff::DiffOptions::default(),
    )?;
    let mut v = serde_json::to_value(&d)?;
    v["base_run"] = base.into();
    if set.manifest().source_kind() == "model" {
        // The most-changed features' top contexts under both dictionaries (what a reader checks by eye).
        let (mut hb, mut bb): (Vec<usize>, Vec<usize>) = (vec![], vec![]);
        for c in d.most_changed.iter().take(CONTEXT_FEATURES) {
            hb.extend(c.head.iter().map(|&i| i as usize));
            bb.extend(c.base.iter().map(|&i| i as usize));
        }
        let opts = |include: Vec<usize>| saeperf_sae::lm::features::FeatureOptions {
            per_band: 0,
            examples: 4,
            include,
            ..Default::default()
        };
        match (
            saeperf_sae::lm::features::feature_report(head, head_dir, set, &opts(hb)),
            saeperf_sae::lm::features::feature_report(&base_sae, &bdir, set, &opts(bb)),
        ) {
            (Ok(h), Ok(b)) => {
                v["contexts"] = serde_json::json!({ "head": h, "base": b });
            }
            (Err(e), _) | (_, Err(e)) => {
                v["contexts_unavailable"] = format!("{e:#}").into();
            }
        }
    }
    Ok(v)
}
