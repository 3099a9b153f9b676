//! The pull-request comment: one Markdown document rendered from a head run, its base run and their comparison
//! (dashboards/comment.md).
//!
//! Its first line is the overall verdict; then the significant changes (benchmark, metric, base, head, change,
//! threshold, verdict), the quality of each reference dictionary, the speed (tokens/s, each op's time, share of the
//! hardware peak, ratio to the yardstick), the environment of both runs and links to the dashboard, with the long
//! tables folded in `<details>`. It ends with a hidden marker so `runner report post` finds and updates the same
//! comment. Everything here is plain data; escaping happens in the template.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use saeperf_compare::baseline::{self, Baseline};
use saeperf_compare::rules::Rules;
use saeperf_git::Repo;
use saeperf_store::{RunState, Store};
use serde::Serialize;

use saeperf_compare::{Comparison, Row, Verdict};
use saeperf_store::{BenchKind, BenchResult, BenchStatus, Run, RunBackend, RunMeta};

use crate::view::{icon, RowView, TriageView};
use crate::{fmt_change, fmt_value, short_sha, slug};

/// Quality metrics shown per reference dictionary, in this order.
pub const QUALITY_METRICS: &[&str] = &[
    "mse",
    "l0",
    "fve",
    "loss_recovered",
    "delta_ce",
    "dead_fraction",
    "dense_fraction",
];

/// How the comment is put together.
#[derive(Debug, Clone, Default)]
pub struct CommentOptions {
    /// Where the dashboard is published (e.g. https://owner.github.io/repo); links are omitted without it.
    pub dashboard_url: Option<String>,
    /// Key of the hidden marker (one sticky comment per key).
    pub key: String,
    /// Peak FP32 GFLOP/s of the machine, when known better than the built-in GPU table (CPUs have none built in).
    pub peak_gflops: Option<f64>,
}

/// One reference dictionary's features matched with the baseline's (`extra.feature_diff`, docs/feature-diff.md).
#[derive(Debug, Serialize)]
struct FeatureDiffView {
    bench: String,
    kept: String,
    split: String,
    merged: String,
    died: String,
    new: String,
    band_moved: String,
}

/// The feature diffs of the head run's training benchmarks, and one line per benchmark that has none, saying why.
fn feature_diffs(head: &Run) -> (Vec<FeatureDiffView>, Vec<String>) {
    let (mut views, mut missing) = (vec![], vec![]);
    for r in head.results.iter().filter(|r| r.kind == BenchKind::Train) {
        let Some(d) = r.extra.get("feature_diff") else {
            continue;
        };
        if let Some(why) = d.get("unavailable").and_then(|w| w.as_str()) {
            missing.push(format!("{}: {why}", r.name));
            continue;
        }
        let c = &d["counts"];
        let n = |k: &str| {
            c.get(k)
                .and_then(|v| v.as_u64())
                .map_or("–".into(), |v| v.to_string())
        };
        views.push(FeatureDiffView {
            bench: r.name.clone(),
            kept: n("kept"),
            split: n("split"),
            merged: n("merged"),
            died: n("died"),
            new: n("new"),
            band_moved: n("band_moved"),
        });
    }
    (views, missing)
}

#[derive(Debug, Serialize)]
struct QualityView {
    bench: String,
    kind: String,
    cells: Vec<String>,
}

#[derive(Debug, Serialize)]
struct TrainSpeedView {
    bench: String,
    base: String,
    head: String,
    change: String,
    wall: String,
    /// The phase of the step that moved most (steady state, ms per step), or the largest one without a base.
    phase: String,
}

/// A training benchmark's steady-state milliseconds per step by phase (encode, decode, backward, optimizer, other).
fn steady_phase_ms(r: &BenchResult) -> Option<BTreeMap<String, f64>> {
    let o = r.extra.get("steady_phase_ms")?.as_object()?;
    Some(
        o.iter()
            .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
            .collect(),
    )
}

/// Names the phase a training speed change came from: the phase whose steady-state time per step moved most
/// between base and head ("backward +3.1 ms (+25%)"); without a base, the largest phase and its share.
fn phase_note(base: Option<&BenchResult>, head: &BenchResult) -> String {
    let Some(h) = steady_phase_ms(head) else {
        return "–".into();
    };
    let total: f64 = h.values().sum();
    match base.and_then(steady_phase_ms) {
        Some(b) => h
            .iter()
            .filter_map(|(k, hv)| b.get(k).map(|bv| (k, hv - bv, *bv)))
            .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
            .map(|(k, d, bv)| {
                let rel = if bv > 0.0 {
                    format!(" ({})", fmt_change(Some(d / bv)))
                } else {
                    String::new()
                };
                format!("{k} {d:+.1} ms{rel}")
            })
            .unwrap_or_else(|| "–".into()),
        None => h
            .iter()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|(k, v)| format!("{k} {v:.1} of {total:.1} ms"))
            .unwrap_or_else(|| "–".into()),
    }
}

#[derive(Debug, Serialize)]
struct OpSpeedView {
    bench: String,
    base: String,
    head: String,
    change: String,
    gflops: String,
    peak_share: String,
    yardstick: String,
    verdict: String,
}

#[derive(Debug, Serialize)]
struct EnvRow {
    field: &'static str,
    base: String,
    head: String,
    differs: bool,
}

#[derive(Debug, Serialize)]
struct Links {
    head_run: String,
    base_run: Option<String>,
    compare: Option<String>,
    index: String,
    regressions: String,
}

/// A row a maintainer acknowledged or dismissed, for the comment's triage tables.
#[derive(Debug, Serialize)]
struct TriagedView {
    row: RowView,
    triage: TriageView,
    /// The record is on an earlier run than the head (an acked change this comparison spans).
    earlier: bool,
}

#[derive(Debug, Serialize)]
struct FailedView {
    bench: String,
    reason: String,
}

#[derive(Debug, Serialize)]
struct CommentView {
    headline: String,
    icon: &'static str,
    overall: String,
    summary: String,
    head_id: String,
    head_commit: String,
    base_id: Option<String>,
    base_commit: Option<String>,
    baseline_why: Option<String>,
    significant: Vec<RowView>,
    /// Significant changes under [`crate::view::MINOR_BELOW`] times their threshold, folded away.
    minor: Vec<RowView>,
    /// Regressions a maintainer acknowledged (`runner triage ack`), with who and why.
    acknowledged: Vec<TriagedView>,
    /// Regressions a maintainer dismissed as false alarms (`runner triage dismiss`).
    dismissed: Vec<TriagedView>,
    /// How many speed rows were quiet and the least sensitive one's detectable change
    /// ([`saeperf_compare::quiet_speed_summary`]).
    quiet_speed: Option<String>,
    failed: Vec<FailedView>,
    all_rows: Vec<RowView>,
    /// Rows of "every comparison" left out to fit GitHub's size limit.
    omitted_all_rows: usize,
    /// Significant rows left out to fit GitHub's size limit (the least important ones).
    omitted_significant: usize,
    quality_metrics: Vec<&'static str>,
    feature_diff: Vec<FeatureDiffView>,
    feature_diff_missing: Vec<String>,
    quality: Vec<QualityView>,
    train_speed: Vec<TrainSpeedView>,
    op_speed: Vec<OpSpeedView>,
    peak_note: String,
    /// The Kernels section, when the head has an emulated, roofline or ptxas-resources result.
    kernels: Option<KernelsView>,
    env: Vec<EnvRow>,
    notes: Vec<String>,
    links: Option<Links>,
    marker: String,
}

/// The pruning experiment's answer, one line per pruning benchmark that has one (`extra.experiment.answer`).
fn experiment_notes(run: &Run) -> Vec<String> {
    run.results
        .iter()
        .filter(|r| r.kind == BenchKind::Prune && r.status.is_ok())
        .filter_map(|r| {
            let e = r.extra.get("experiment")?;
            let answer = e.get("answer")?.as_str()?;
            let spike = match r.extra.get("spike") {
                Some(s) if !s.is_null() => format!(
                    "; before pruning a high-frequency spike of {} features (density ≥ {:.3}) carried {:.1}% of L0",
                    s["features"],
                    s["min_density"].as_f64().unwrap_or(f64::NAN),
                    s["l0_share"].as_f64().unwrap_or(f64::NAN) * 100.0
                ),
                _ => "; no high-frequency spike before pruning".to_string(),
            };
            Some(format!(
                "{}: {} features removed; {answer}{spike}",
                r.name,
                r.metrics
                    .get("pruned_features")
                    .map_or("?".into(), |v| format!("{v:.0}"))
            ))
        })
        .collect()
}

fn tokens_per_sec(r: &BenchResult) -> Option<f64> {
    r.extra
        .get("tokens_per_sec")
        .and_then(|v| v.as_f64())
        .or_else(|| r.metrics.get("tokens_per_sec").copied())
}

fn status_reason(r: &BenchResult) -> Option<String> {
    match &r.status {
        BenchStatus::Ok => None,
        BenchStatus::Failed(m) => Some(format!("failed: {m}")),
        BenchStatus::Diverged(m) => Some(format!("diverged: {m}")),
    }
}

/// Median of samples ÷ yardstick, when the result has paired yardstick samples.
pub fn yardstick_ratio(r: &BenchResult) -> Option<f64> {
    r.normalized()
        .and_then(|n| saeperf_compare::stats::median(&n))
}

/// Achieved GFLOP/s of an op result (dense FLOPs recorded in `extra.dense_flops` ÷ median time).
pub fn gflops(r: &BenchResult) -> Option<f64> {
    let f = r.extra.get("dense_flops")?.as_f64()?;
    let t = r.median_time()?;
    (t > 0.0).then(|| f / t / 1e9)
}

/// What the kernel counts cannot see, in one line (the comment's Kernels section, the run page).
pub const KERNEL_LIMITS: &str = "The emulated counts and the static SASS mix know nothing of caches, occupancy, clock \
speeds or the order warps run in, and the roofline counts every sector as DRAM traffic: they say what a kernel asks \
of the GPU, not how fast it runs; only cuda/ops on a GPU measures time (docs/kernel-metrics.md).";

/// The kernel a `kernel.` metric is about, and which of its metrics: `kernel.emu.<kernel>.<metric>` →
/// (kernel, metric); `kernel.emu.failed_checks` → ("every kernel", "failed_checks"); the ptxas report's
/// `kernel.<arch>.<kernel>.<what>` (`registers`, `sass.ffma`, …) → ("<kernel> (<arch>)", what). None otherwise.
pub(crate) fn kernel_metric(metric: &str) -> Option<(String, String)> {
    let rest = metric.strip_prefix("kernel.")?;
    if let Some(e) = rest.strip_prefix("emu.") {
        return Some(match e.rsplit_once('.') {
            Some((k, m)) => (k.to_string(), m.to_string()),
            None => ("every kernel".to_string(), e.to_string()),
        });
    }
    let (arch, rest) = rest.split_once('.')?;
    let (kernel, what) = rest.split_once('.')?;
    Some((format!("{kernel} ({arch})"), what.to_string()))
}

/// A kernel metric's value for people: the ratios (`coalescing`, `fma_share`) as percentages, whole counts with
/// thousands separators, anything else with two decimals.
pub(crate) fn kernel_value(metric: &str, v: Option<f64>) -> String {
    let Some(v) = v else { return "–".into() };
    if !v.is_finite() {
        return format!("{v}");
    }
    if metric.ends_with("coalescing") || metric.ends_with("fma_share") {
        return format!("{:.1}%", v * 100.0);
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let digits = format!("{:.0}", v.abs());
        let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
        if v < 0.0 {
            out.push('-');
        }
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        return out;
    }
    format!("{v:.2}")
}

/// The change of a kernel metric: relative, or the difference where the base is 0 ("+1,024 from 0").
pub(crate) fn kernel_change(metric: &str, base: Option<f64>, head: Option<f64>) -> String {
    match (base, head) {
        (Some(b), Some(h)) if b != 0.0 => fmt_change(Some((h - b) / b.abs())),
        (Some(b), Some(h)) if h != b => {
            let d = kernel_value(metric, Some(h - b));
            format!("{}{d} from 0", if h > b { "+" } else { "" })
        }
        (Some(_), Some(_)) => fmt_change(Some(0.0)),
        _ => "–".into(),
    }
}

/// The peak a run's measured CUDA times are set against in the roofline: the run's GPU's if it is an H200, else the
/// H100's; as (key of `us` / the metric suffix, label).
pub(crate) fn roofline_peak(meta: &RunMeta) -> (&'static str, &'static str) {
    if meta
        .fingerprint
        .gpus
        .first()
        .is_some_and(|g| g.name.contains("H200"))
    {
        ("h200", "H200")
    } else {
        ("h100", "H100")
    }
}

/// The roofline result's shape in words ("4096 × 576 × 16384 (batch × d_in × d_sae), TopK k = 64").
pub(crate) fn roofline_shape(extra: &serde_json::Value) -> String {
    let s = &extra["shape"];
    let dim = |k: &str| s.get(k).and_then(|v| v.as_u64());
    let mut t = match (dim("batch"), dim("d_in"), dim("d_sae")) {
        (Some(b), Some(i), Some(d)) => format!("{b} × {i} × {d} (batch × d_in × d_sae)"),
        _ => "an unrecorded shape".to_string(),
    };
    if let Some(k) = extra.get("topk").and_then(|v| v.as_u64()) {
        t.push_str(&format!(", TopK k = {k}"));
    }
    t
}

/// The run's CUDA op timings (`cuda/ops`, kind `cuda_ops`), when it has them: only runs with a GPU do.
pub(crate) fn cuda_ops(run: &Run) -> Option<&BenchResult> {
    run.results
        .iter()
        .find(|r| r.kind == BenchKind::CudaOps && r.status.is_ok())
}

/// The measured time in ms of a roofline op (`extra.measured_metric[op]` in the run's cuda/ops result).
pub(crate) fn measured_ms(roofline: &BenchResult, cuda: &BenchResult, op: &str) -> Option<f64> {
    let m = roofline.extra.get("measured_metric")?.get(op)?.as_str()?;
    cuda.metrics.get(m).copied()
}

/// The ops of a roofline result with an estimate at `peak` ("h100"): `roofline.<op>.<peak>_us`, op "family.variant".
pub(crate) fn roofline_ops(r: &BenchResult, peak: &str) -> Vec<(String, f64)> {
    let suffix = format!(".{peak}_us");
    r.metrics
        .iter()
        .filter_map(|(m, v)| {
            let op = m.strip_prefix("roofline.")?.strip_suffix(suffix.as_str())?;
            (op.matches('.').count() == 1).then(|| (op.to_string(), *v))
        })
        .collect()
}

/// One kernel metric that differs between base and head (the counts are exact: any difference).
#[derive(Debug, Serialize)]
struct KernelChangeView {
    kernel: String,
    metric: String,
    base: String,
    head: String,
    change: String,
    icon: &'static str,
    verdict: String,
}

/// One op of the roofline: its H100 estimate in head and base, and the measured CUDA time of the head run.
#[derive(Debug, Serialize)]
struct RooflineOpLine {
    op: String,
    base: String,
    head: String,
    change: String,
    measured: String,
}

/// The comment's Kernels section.
#[derive(Debug, Serialize)]
struct KernelsView {
    /// The head has counted kernel metrics (an emulated result, or the ptxas report).
    counted: bool,
    /// There is a base to compare the counts with.
    compared: bool,
    changes: Vec<KernelChangeView>,
    /// Changed metrics left out of `changes`.
    more: usize,
    /// Kernel metrics only in the head, only in the base.
    added: usize,
    removed: usize,
    /// The emulator's failed comparisons with the references, in words, when there are any.
    failed_checks: Option<String>,
    roofline: Vec<RooflineOpLine>,
    roofline_shape: String,
    /// The label of the peak the roofline's estimates are at ("H100").
    peak: &'static str,
    /// The head run has CUDA timings (cuda/ops).
    measured: bool,
    limits: &'static str,
}

/// At most this many changed kernel metrics in the comment; the rest are counted.
const KERNEL_ROWS: usize = 15;

/// The Kernels section: the changed kernel metrics (emulated counts, SASS mix, ptxas resources), most important
/// first, the roofline per op and the measured CUDA time; None when the head has no kernel result.
fn kernels_view(
    head: &Run,
    base: Option<&Run>,
    row_of: &BTreeMap<(&str, &str), &Row>,
) -> Option<KernelsView> {
    let kernel_kinds = [BenchKind::Emulated, BenchKind::Resources];
    let results: Vec<&BenchResult> = head
        .results
        .iter()
        .filter(|r| kernel_kinds.contains(&r.kind) || r.kind == BenchKind::Roofline)
        .collect();
    if results.is_empty() {
        return None;
    }
    let counted: Vec<&BenchResult> = results
        .iter()
        .copied()
        .filter(|r| kernel_kinds.contains(&r.kind) && r.status.is_ok())
        .collect();
    let (mut added, mut removed, mut compared) = (0, 0, false);
    let mut changes: Vec<(Verdict, f64, KernelChangeView)> = Vec::new();
    for h in &counted {
        let Some(b) = base
            .and_then(|b| b.result(&h.name))
            .filter(|b| b.status.is_ok())
        else {
            continue;
        };
        compared = true;
        for (m, hv) in &h.metrics {
            let Some((kernel, what)) = kernel_metric(m) else {
                continue;
            };
            let Some(bv) = b.metrics.get(m).copied() else {
                added += 1;
                continue;
            };
            if bv == *hv {
                continue;
            }
            let row = row_of.get(&(h.name.as_str(), m.as_str()));
            let verdict = row.map_or(Verdict::Noise, |r| r.verdict);
            let rel = if bv != 0.0 {
                ((hv - bv) / bv).abs()
            } else {
                f64::INFINITY
            };
            changes.push((
                verdict,
                rel,
                KernelChangeView {
                    kernel,
                    metric: what,
                    base: kernel_value(m, Some(bv)),
                    head: kernel_value(m, Some(*hv)),
                    change: kernel_change(m, Some(bv), Some(*hv)),
                    icon: row.map_or("", |r| icon(r.verdict)),
                    verdict: row.map_or("not compared".into(), |r| r.verdict.as_str().into()),
                },
            ));
        }
        removed += b
            .metrics
            .keys()
            .filter(|m| kernel_metric(m).is_some() && !h.metrics.contains_key(*m))
            .count();
    }
    // Regressions first, then improvements, then the rest; larger changes first.
    changes.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.total_cmp(&a.1)));
    let more = changes.len().saturating_sub(KERNEL_ROWS);
    let changes = changes.into_iter().take(KERNEL_ROWS).map(|c| c.2).collect();
    let failed_checks = counted
        .iter()
        .filter(|r| r.kind == BenchKind::Emulated)
        .find_map(|r| {
            let failed = r.extra.get("failed")?.as_u64().filter(|f| *f > 0)?;
            let failures: Vec<&str> = r.extra["failures"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str())
                .collect();
            Some(format!(
                "{failed} of {} emulated kernel results differ from their C++ references{}",
                r.extra
                    .get("comparisons")
                    .and_then(|c| c.as_u64())
                    .map_or("?".into(), |c| c.to_string()),
                if failures.is_empty() {
                    String::new()
                } else {
                    format!(": {}", failures.join("; "))
                }
            ))
        });
    let (key, peak) = roofline_peak(&head.meta);
    let cuda = cuda_ops(head);
    let mut roofline = Vec::new();
    let mut shape = String::new();
    if let Some(r) = results
        .iter()
        .find(|r| r.kind == BenchKind::Roofline && r.status.is_ok())
    {
        shape = roofline_shape(&r.extra);
        let b = base
            .and_then(|b| b.result(&r.name))
            .filter(|b| b.status.is_ok());
        for (op, hv) in roofline_ops(r, key) {
            let bv = b.and_then(|b| b.metrics.get(&format!("roofline.{op}.{key}_us")).copied());
            let us = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
            let measured = match cuda {
                None => "–".to_string(),
                Some(c) => match measured_ms(r, c, &op) {
                    Some(ms) if hv > 0.0 => {
                        format!("{ms:.3} ms ({:.2}× the estimate)", ms * 1e3 / hv)
                    }
                    Some(ms) => format!("{ms:.3} ms"),
                    // cuda/ops times no such sequence, or did not this time.
                    None if r.extra["measured_metric"].get(&op).is_none() => "–".into(),
                    None => "not measured".into(),
                },
            };
            roofline.push(RooflineOpLine {
                change: match bv {
                    Some(bv) if bv > 0.0 => fmt_change(Some((hv - bv) / bv)),
                    _ => "–".into(),
                },
                base: us(bv),
                head: us(Some(hv)),
                measured,
                op,
            });
        }
    }
    Some(KernelsView {
        counted: !counted.is_empty(),
        compared,
        changes,
        more,
        added,
        removed,
        failed_checks,
        roofline,
        roofline_shape: shape,
        peak,
        measured: cuda.is_some(),
        limits: KERNEL_LIMITS,
    })
}

/// Peak GFLOP/s for a run: the option, else the built-in GPU table when the run used a GPU backend.
pub fn peak_for(meta: &RunMeta, opt: Option<f64>) -> Option<(f64, String)> {
    if let Some(p) = opt {
        return Some((p, "given with --peak-gflops".into()));
    }
    if meta.backend == RunBackend::Cuda {
        let g = meta.fingerprint.gpus.first()?;
        return crate::gpu_peak_gflops(&g.name).map(|p| (p, format!("FP32 peak of {}", g.name)));
    }
    None
}

fn env_rows(base: Option<&RunMeta>, head: &RunMeta) -> Vec<EnvRow> {
    type F = fn(&RunMeta) -> String;
    let fields: Vec<(&'static str, F)> = vec![
        ("run", |m| m.id.clone()),
        ("commit", |m| {
            format!(
                "{}{}",
                m.commit.as_deref().unwrap_or("none"),
                if m.dirty { " (dirty tree)" } else { "" }
            )
        }),
        ("branch", |m| m.branch.clone().unwrap_or_else(|| "–".into())),
        ("pull request", |m| {
            m.pr.map(|p| format!("#{p}")).unwrap_or_else(|| "–".into())
        }),
        ("started", |m| {
            m.started_at.format("%Y-%m-%d %H:%M UTC").to_string()
        }),
        ("machine", |m| m.fingerprint.summary()),
        ("fingerprint", |m| m.fingerprint_id.clone()),
        ("GPU clocks", |m| {
            let c: Vec<String> = m
                .fingerprint
                .gpus
                .iter()
                .map(|g| match (g.sm_clock_mhz, g.sm_clock_max_mhz) {
                    (Some(a), Some(b)) => format!("{a}/{b} MHz"),
                    (Some(a), None) => format!("{a} MHz"),
                    _ => "?".into(),
                })
                .collect();
            if c.is_empty() {
                "–".into()
            } else {
                c.join(", ")
            }
        }),
        ("kernel", |m| {
            m.fingerprint.kernel.clone().unwrap_or_else(|| "–".into())
        }),
        ("rustc", |m| m.fingerprint.rustc.clone()),
        ("backend", |m| m.backend.to_string()),
        ("profile", |m| format!("{} ({})", m.profile, m.suite)),
        ("suite hash", |m| {
            m.suite_hash[..m.suite_hash.len().min(16)].to_string()
        }),
        ("activation sets", |m| {
            if m.activation_sets.is_empty() {
                "–".into()
            } else {
                m.activation_sets
                    .iter()
                    .map(|(k, v)| format!("{k} {}", &v[..v.len().min(12)]))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        }),
        ("runner", |m| m.runner_version.clone()),
    ];
    fields
        .into_iter()
        .map(|(field, f)| {
            let h = f(head);
            let b = base.map(f).unwrap_or_else(|| "–".into());
            EnvRow {
                field,
                differs: base.is_some()
                    && b != h
                    && !matches!(field, "run" | "started" | "GPU clocks"),
                base: b,
                head: h,
            }
        })
        .collect()
}

/// A rendered comment and what it says, for the commit status and the post document.
#[derive(Debug, Clone)]
pub struct Comment {
    /// The Markdown body, ending with the hidden marker.
    pub body: String,
    /// The overall verdict the comment reports.
    pub verdict: Verdict,
    /// One line for the commit status: the headline, the commits and the counts (plain text, not Markdown).
    pub status_line: String,
    /// "BENCH METRIC" of each regression the comment reports.
    pub regressions: Vec<String>,
}

/// Render the comment for `head` compared with `base` (None: no baseline was found; `why` says why).
pub fn render(
    head: &Run,
    base: Option<&Run>,
    cmp: Option<&Comparison>,
    why: Option<&str>,
    opt: &CommentOptions,
) -> Result<Comment> {
    let overall = cmp.map(|c| c.overall).unwrap_or_else(|| {
        if head.results.iter().any(|r| !r.status.is_ok()) {
            Verdict::Failed
        } else {
            Verdict::New
        }
    });
    let rows: &[Row] = cmp.map(|c| c.rows.as_slice()).unwrap_or(&[]);
    let mut counts: BTreeMap<Verdict, usize> = BTreeMap::new();
    for r in rows {
        *counts.entry(r.verdict).or_default() += 1;
    }
    let n = |v| counts.get(&v).copied().unwrap_or(0);
    let regr = |f: &dyn Fn(&str) -> bool| {
        rows.iter()
            .filter(|r| r.verdict == Verdict::Regression && f(&r.metric))
            .count()
    };
    let speed_regr = regr(&|m| m == "time" || m.starts_with("cuda."));
    let res_regr = regr(&|m| m.starts_with("kernel."));
    let qual_regr = n(Verdict::Regression) - speed_regr - res_regr;
    let failed: Vec<FailedView> = head
        .results
        .iter()
        .filter_map(|r| {
            status_reason(r).map(|reason| FailedView {
                bench: r.name.clone(),
                reason,
            })
        })
        .collect();
    let triaged = |f: &dyn Fn(&Row) -> bool| -> Vec<TriagedView> {
        rows.iter()
            .filter(|r| f(r))
            .filter_map(|r| {
                let t = r.triage.as_ref()?;
                Some(TriagedView {
                    row: RowView::of(r),
                    triage: TriageView::of(t),
                    earlier: t.run != head.meta.id,
                })
            })
            .collect()
    };
    let acknowledged = triaged(&|r| r.verdict == Verdict::Acknowledged);
    let dismissed = triaged(&|r| {
        r.verdict != Verdict::Acknowledged
            && r.triage
                .as_ref()
                .is_some_and(|t| t.action == saeperf_store::TriageAction::Dismiss)
    });
    let plural = |k: usize, one: &str, many: &str| {
        if k == 1 {
            format!("{k} {one}")
        } else {
            format!("{k} {many}")
        }
    };
    let by_whom = |v: &[TriagedView]| {
        let mut people: Vec<(&str, &str)> = v
            .iter()
            .map(|a| (a.triage.by.as_str(), a.triage.reason.as_str()))
            .collect();
        people.sort();
        people.dedup();
        match people.as_slice() {
            [] => String::new(),
            [(by, reason)] => format!(" by {by}: {reason}"),
            many => {
                let mut names: Vec<&str> = many.iter().map(|p| p.0).collect();
                names.sort();
                names.dedup();
                format!(" by {}", names.join(", "))
            }
        }
    };
    let dismissed_note = if dismissed.is_empty() {
        String::new()
    } else {
        format!(
            " ({} dismissed{})",
            plural(dismissed.len(), "false alarm", "false alarms"),
            by_whom(&dismissed)
        )
    };
    let headline = match overall {
        Verdict::Failed => format!(
            "saeperf: {} benchmark{} failed",
            failed.len().max(1),
            if failed.len() == 1 { "" } else { "s" }
        ),
        Verdict::Regression => format!(
            "saeperf: regression — {} slower, {} worse in quality{}{}",
            speed_regr,
            qual_regr,
            if res_regr > 0 {
                format!(", {res_regr} kernel metrics worse")
            } else {
                String::new()
            },
            if acknowledged.is_empty() {
                String::new()
            } else {
                format!("; {} acknowledged", acknowledged.len())
            }
        ),
        Verdict::Acknowledged => format!(
            "saeperf: {} acknowledged{}{}",
            plural(acknowledged.len().max(1), "regression", "regressions"),
            by_whom(&acknowledged),
            if n(Verdict::Improvement) > 0 {
                format!("; {} better", n(Verdict::Improvement))
            } else {
                String::new()
            }
        ),
        Verdict::Improvement => format!(
            "saeperf: improvement — {} better, nothing worse{dismissed_note}",
            n(Verdict::Improvement)
        ),
        Verdict::Noise => format!("saeperf: no significant change{dismissed_note}"),
        Verdict::New | Verdict::Missing => "saeperf: no baseline to compare with".to_string(),
    };
    let summary = if cmp.is_some() {
        let parts: Vec<String> = [
            Verdict::Regression,
            Verdict::Failed,
            Verdict::Acknowledged,
            Verdict::Improvement,
            Verdict::Noise,
            Verdict::New,
            Verdict::Missing,
        ]
        .iter()
        .filter(|v| n(**v) > 0)
        .map(|v| {
            let k = n(*v);
            match v {
                Verdict::Regression | Verdict::Improvement if k != 1 => {
                    format!("{k} {}s", v.as_str())
                }
                Verdict::Noise => format!("{k} within noise"),
                _ => format!("{k} {}", v.as_str()),
            }
        })
        .collect();
        parts.join(", ")
    } else {
        format!("{} benchmarks ran", head.results.len())
    };

    let mut significant: Vec<&Row> = rows
        .iter()
        .filter(|r| r.verdict.needs_attention())
        .collect();
    // Regressions and failures first, then improvements; larger changes first.
    significant.sort_by(|a, b| {
        b.verdict.cmp(&a.verdict).then_with(|| {
            let ca = a.change.map(f64::abs).unwrap_or(0.0);
            let cb = b.change.map(f64::abs).unwrap_or(0.0);
            cb.total_cmp(&ca)
        })
    });

    // rustc-perf's magnitude in the headline: the largest change of the verdict's kind, in times its threshold.
    let largest = rows
        .iter()
        .filter(|r| {
            r.verdict == overall && matches!(overall, Verdict::Regression | Verdict::Improvement)
        })
        .filter_map(|r| crate::view::magnitude(r).map(|m| (m, r)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let headline = match largest {
        Some((m, r)) => format!(
            "{headline} · largest: {} {} {} ({m:.1}× its threshold, {})",
            r.bench,
            r.metric,
            crate::view::RowView::of(r).change,
            crate::view::severity(m)
        ),
        None => headline,
    };
    // Minor changes (just past their threshold) are folded; failures and rows without a magnitude never are.
    let (significant, minor): (Vec<&Row>, Vec<&Row>) = significant.into_iter().partition(|r| {
        r.verdict == Verdict::Failed
            || crate::view::magnitude(r).is_none_or(|m| m >= crate::view::MINOR_BELOW)
    });
    let verdict_of: BTreeMap<(&str, &str), Verdict> = rows
        .iter()
        .map(|r| ((r.bench.as_str(), r.metric.as_str()), r.verdict))
        .collect();
    let row_of: BTreeMap<(&str, &str), &Row> = rows
        .iter()
        .map(|r| ((r.bench.as_str(), r.metric.as_str()), r))
        .collect();
    let (feature_diff, feature_diff_missing) = feature_diffs(head);
    let quality = head
        .results
        .iter()
        .filter(|r| matches!(r.kind, BenchKind::Train | BenchKind::Prune))
        .map(|h| {
            let b = base.and_then(|b| b.result(&h.name));
            let cells = QUALITY_METRICS
                .iter()
                .map(|m| {
                    let hv = h.metrics.get(*m).copied();
                    let bv = b.and_then(|b| b.metrics.get(*m).copied());
                    if hv.is_none() {
                        return "–".to_string();
                    }
                    let mut s = fmt_value(m, hv);
                    if let (Some(bv), Some(hv)) = (bv, hv) {
                        if bv != 0.0 && bv != hv {
                            s.push_str(&format!(" ({})", fmt_change(Some((hv - bv) / bv.abs()))));
                        }
                    }
                    match verdict_of.get(&(h.name.as_str(), *m)) {
                        Some(Verdict::Regression) => s.push_str(" 🔴"),
                        Some(Verdict::Improvement) => s.push_str(" 🟢"),
                        Some(Verdict::Acknowledged) => s.push_str(" ☑️"),
                        _ => {}
                    }
                    s
                })
                .collect();
            QualityView {
                bench: h.name.clone(),
                kind: if h.kind == BenchKind::Prune {
                    "pruned".into()
                } else {
                    "trained".into()
                },
                cells,
            }
        })
        .collect();
    let train_speed = head
        .results
        .iter()
        .filter(|r| matches!(r.kind, BenchKind::Train | BenchKind::Prune) && r.status.is_ok())
        .map(|h| {
            let b = base.and_then(|b| b.result(&h.name));
            let (tb, th) = (b.and_then(tokens_per_sec), tokens_per_sec(h));
            TrainSpeedView {
                bench: h.name.clone(),
                base: fmt_value("tokens_per_sec", tb),
                head: fmt_value("tokens_per_sec", th),
                change: match (tb, th) {
                    (Some(b), Some(h)) if b > 0.0 => fmt_change(Some((h - b) / b)),
                    _ => "–".into(),
                },
                wall: fmt_value("time", h.median_time()),
                phase: phase_note(b, h),
            }
        })
        .collect();
    let peak = peak_for(&head.meta, opt.peak_gflops);
    let op_speed = head
        .results
        .iter()
        .filter(|r| r.kind == BenchKind::Op)
        .map(|h| {
            let b = base.and_then(|b| b.result(&h.name));
            let g = gflops(h);
            OpSpeedView {
                bench: h.name.clone(),
                base: fmt_value("time", b.and_then(|b| b.median_time())),
                head: fmt_value("time", h.median_time()),
                change: match (b.and_then(|b| b.median_time()), h.median_time()) {
                    (Some(b), Some(h)) if b > 0.0 => fmt_change(Some((h - b) / b)),
                    _ => "–".into(),
                },
                gflops: g.map(|g| format!("{g:.1}")).unwrap_or_else(|| "–".into()),
                peak_share: match (g, &peak) {
                    (Some(g), Some((p, _))) => format!("{:.1}%", g / p * 100.0),
                    _ => "–".into(),
                },
                yardstick: yardstick_ratio(h)
                    .map(|r| format!("{r:.3}×"))
                    .unwrap_or_else(|| "–".into()),
                verdict: row_of
                    .get(&(h.name.as_str(), "time"))
                    .map(|r| match r.detectable_text() {
                        Some(d) => format!("{} {} · {d}", icon(r.verdict), r.verdict.as_str()),
                        None => format!("{} {}", icon(r.verdict), r.verdict.as_str()),
                    })
                    .unwrap_or_else(|| status_reason(h).unwrap_or_else(|| "–".into())),
            }
        })
        .collect();
    let peak_note = match &peak {
        Some((p, src)) => format!("share of peak: achieved dense GFLOP/s ÷ {p:.0} GFLOP/s ({src})"),
        None => "share of peak: no known peak for this machine (pass --peak-gflops)".into(),
    };
    let links = opt.dashboard_url.as_ref().map(|u| {
        let u = u.trim_end_matches('/');
        Links {
            head_run: format!("{u}/runs/{}.html", slug(&head.meta.id)),
            base_run: base.map(|b| format!("{u}/runs/{}.html", slug(&b.meta.id))),
            compare: base.map(|b| {
                format!(
                    "{u}/compare.html#base={}&head={}",
                    slug(&b.meta.id),
                    slug(&head.meta.id)
                )
            }),
            index: format!("{u}/index.html"),
            regressions: format!("{u}/regressions.html"),
        }
    });
    let view = CommentView {
        headline,
        icon: icon(overall),
        overall: overall.as_str().to_string(),
        summary,
        head_id: head.meta.id.clone(),
        head_commit: short_sha(head.meta.commit.as_deref()),
        base_id: base.map(|b| b.meta.id.clone()),
        base_commit: base.map(|b| short_sha(b.meta.commit.as_deref())),
        baseline_why: why.map(str::to_string),
        significant: significant.into_iter().map(RowView::of).collect(),
        minor: minor.into_iter().map(RowView::of).collect(),
        acknowledged,
        dismissed,
        quiet_speed: saeperf_compare::quiet_speed_summary(rows),
        failed,
        all_rows: rows.iter().map(RowView::of).collect(),
        omitted_all_rows: 0,
        omitted_significant: 0,
        quality_metrics: QUALITY_METRICS.to_vec(),
        feature_diff,
        feature_diff_missing,
        quality,
        train_speed,
        op_speed,
        peak_note,
        kernels: kernels_view(head, base, &row_of),
        env: env_rows(base.map(|b| &b.meta), &head.meta),
        notes: cmp
            .map(|c| c.notes.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(
                head.meta
                    .skipped
                    .iter()
                    .map(|(b, why)| format!("{b} did not run: {why}")),
            )
            .chain(experiment_notes(head))
            .collect(),
        links,
        marker: crate::marker(&opt.key),
    };
    let mut view = view;
    let status_line = format!(
        "{} · head {}{} · {}",
        view.headline,
        view.head_commit,
        view.base_commit
            .as_deref()
            .map(|b| format!(" vs base {b}"))
            .unwrap_or_default(),
        view.summary
    );
    let mut text = render_view(&view)?;
    // GitHub refuses longer bodies: drop the table of every comparison first, then the least important significant
    // rows (they are sorted, regressions and large changes first), saying what was left out and where to see it.
    if text.chars().count() > MAX_COMMENT_CHARS && !view.all_rows.is_empty() {
        view.omitted_all_rows = view.all_rows.len();
        view.all_rows.clear();
        text = render_view(&view)?;
    }
    if text.chars().count() > MAX_COMMENT_CHARS && !view.minor.is_empty() {
        view.omitted_significant += view.minor.len();
        view.minor.clear();
        text = render_view(&view)?;
    }
    while text.chars().count() > MAX_COMMENT_CHARS && !view.significant.is_empty() {
        let keep = view.significant.len() / 2;
        view.omitted_significant += view.significant.len() - keep;
        view.significant.truncate(keep);
        text = render_view(&view)?;
    }
    if text.chars().count() > MAX_COMMENT_CHARS {
        let cut: String = text.chars().take(MAX_COMMENT_CHARS - 200).collect();
        text = format!(
            "{cut}\n\n… (cut at GitHub's comment size limit; see the dashboard)\n{}\n",
            view.marker
        );
    }
    let regressions = cmp
        .map(|c| {
            c.rows
                .iter()
                .filter(|r| r.verdict == Verdict::Regression)
                .map(|r| format!("{} {}", r.bench, r.metric))
                .collect()
        })
        .unwrap_or_default();
    Ok(Comment {
        body: text,
        verdict: overall,
        status_line,
        regressions,
    })
}

/// The comment on a stored run: which run, compared with what.
#[derive(Debug, Clone)]
pub struct CommentRequest {
    /// The head run: a run id (or prefix), a commit SHA prefix, or `latest`.
    pub head: String,
    /// [`Baseline::MergeBase`]: the baseline `runner bench` would pick, else the newest earlier run of the base
    /// branch in the same series; [`Baseline::None`]: no comparison; [`Baseline::Run`]: that run.
    pub base: Baseline,
    /// The branch pull requests merge into.
    pub base_branch: String,
    pub options: CommentOptions,
}

/// Read the head run, choose its baseline, compare and render the comment. Only reads the store.
pub fn for_stored_run(
    store: &Store,
    repo: &Repo,
    rules: &Rules,
    req: &CommentRequest,
) -> Result<(Comment, RunMeta)> {
    let head_meta = store.resolve(&req.head, &|_| true)?;
    if head_meta.state != RunState::Complete {
        bail!(
            "run {} is incomplete (cut off before it finished); there is nothing to report",
            head_meta.id
        );
    }
    let (base_meta, why) = match &req.base {
        Baseline::None => (None, Some("--base none".to_string())),
        Baseline::Run(spec) => (Some(baseline::resolve_base(store, spec, &head_meta)?), None),
        Baseline::Auto => {
            bail!("--base auto is for `runner bench`; a comment compares stored runs")
        }
        Baseline::MergeBase => {
            let choice = baseline::find_report_baseline(store, repo, &head_meta, &req.base_branch)?;
            let meta = match &choice.run {
                Some(id) => store.run_meta(id)?,
                None => None,
            };
            (meta, Some(choice.why))
        }
    };
    let head = store.load_run(&head_meta.id)?;
    let (base, cmp) = match &base_meta {
        Some(b) => (
            Some(store.load_run(&b.id)?),
            Some(saeperf_compare::compare_stored(
                store,
                b,
                &head_meta,
                rules,
                true,
                &store.triage()?,
            )?),
        ),
        None => (None, None),
    };
    let comment = render(
        &head,
        base.as_ref(),
        cmp.as_ref(),
        why.as_deref(),
        &req.options,
    )?;
    Ok((comment, head_meta))
}

/// GitHub rejects comment bodies over 65,536 characters; stay below with room to spare.
pub const MAX_COMMENT_CHARS: usize = 65_000;

fn render_view(view: &CommentView) -> Result<String> {
    let env = crate::environment();
    let out = env
        .get_template("comment.md")
        .and_then(|t| t.render(minijinja::Value::from_serialize(view)))
        .context("rendering the pull-request comment")?;
    // Collapse the blank lines the template's control blocks leave behind.
    let mut text = String::with_capacity(out.len());
    let mut blank = 0;
    for line in out.lines() {
        let l = line.trim_end();
        if l.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        text.push_str(l);
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use saeperf_store::{Triage, TriageAction};

    fn meta(id: &str) -> RunMeta {
        RunMeta {
            id: id.into(),
            state: RunState::Complete,
            commit: Some("c".repeat(40)),
            branch: Some("main".into()),
            pr: Some(7),
            dirty: false,
            started_at: chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .unwrap()
                .with_timezone(&chrono::Utc),
            finished_at: None,
            fingerprint: Default::default(),
            fingerprint_id: "fp".into(),
            backend: RunBackend::Cpu,
            suite: "s".into(),
            profile: "quick".into(),
            suite_hash: "h".repeat(16),
            activation_sets: BTreeMap::new(),
            benchmarks: vec![],
            runner_version: "0".into(),
            skipped: Default::default(),
        }
    }

    fn row(bench: &str, verdict: Verdict, triage: Option<Triage>) -> Row {
        Row {
            bench: bench.into(),
            metric: "time".into(),
            base: Some(1e-3),
            head: Some(1.3e-3),
            change: Some(0.3),
            threshold: Some(0.05),
            p: Some(1e-6),
            detectable: Some(0.05),
            verdict,
            detail: String::new(),
            triage,
        }
    }

    fn record(action: TriageAction, by: &str, reason: &str) -> Triage {
        Triage {
            run: "head".into(),
            bench: "op/encode".into(),
            metric: "time".into(),
            action,
            by: by.into(),
            reason: reason.into(),
            at: chrono::Utc::now(),
            source: "cli".into(),
        }
    }

    fn comment(rows: Vec<Row>) -> Comment {
        let head = Run {
            meta: meta("head"),
            results: vec![],
        };
        let base = Run {
            meta: meta("base"),
            results: vec![],
        };
        let overall = saeperf_compare::overall(&rows);
        let cmp = Comparison {
            base: base.meta.clone(),
            head: head.meta.clone(),
            rows,
            overall,
            notes: vec![],
        };
        render(
            &head,
            Some(&base),
            Some(&cmp),
            None,
            &CommentOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn acknowledged_and_dismissed_rows_in_headline_status_and_tables() {
        let ack = record(TriageAction::Ack, "alice", "new steps");
        let c = comment(vec![
            row("op/encode", Verdict::Acknowledged, Some(ack.clone())),
            row("op/decode", Verdict::Noise, None),
        ]);
        assert_eq!(c.verdict, Verdict::Acknowledged);
        assert!(
            c.status_line
                .starts_with("saeperf: 1 regression acknowledged by @alice: new steps · head"),
            "{}",
            c.status_line
        );
        assert!(
            c.body.contains("### Acknowledged regressions"),
            "{}",
            c.body
        );
        assert!(c.body.contains("| &#64;alice | new steps |"), "{}", c.body);
        assert!(!c.body.contains("No significant change"), "{}", c.body);
        // Two people: both named; with an open regression the headline stays a regression and counts the acks.
        let mut bob = record(TriageAction::Ack, "bob", "expected");
        bob.bench = "op/adam".into();
        let c = comment(vec![
            row("op/encode", Verdict::Acknowledged, Some(ack.clone())),
            row("op/adam", Verdict::Acknowledged, Some(bob)),
        ]);
        assert!(
            c.status_line
                .starts_with("saeperf: 2 regressions acknowledged by @alice, @bob ·"),
            "{}",
            c.status_line
        );
        let c = comment(vec![
            row("op/encode", Verdict::Acknowledged, Some(ack)),
            row("op/adam", Verdict::Regression, None),
        ]);
        assert_eq!(c.verdict, Verdict::Regression);
        assert!(
            c.status_line.contains("; 1 acknowledged"),
            "{}",
            c.status_line
        );
        // A dismissed false alarm: noise, said in the headline and listed.
        let c = comment(vec![row(
            "op/encode",
            Verdict::Noise,
            Some(record(TriageAction::Dismiss, "bob", "busy machine")),
        )]);
        assert_eq!(c.verdict, Verdict::Noise);
        assert!(
            c.status_line.starts_with(
                "saeperf: no significant change (1 false alarm dismissed by @bob: busy machine)"
            ),
            "{}",
            c.status_line
        );
        assert!(c.body.contains("### Dismissed false alarms"), "{}", c.body);
    }

    /// The headline names the largest change in times its threshold; a change just past its threshold is folded.
    #[test]
    fn magnitude_in_the_headline_and_minor_changes_folded() {
        let big = row("op/encode", Verdict::Regression, None);
        let mut small = row("op/decode", Verdict::Regression, None);
        small.change = Some(0.06);
        let c = comment(vec![big, small]);
        let headline = c.body.lines().next().unwrap();
        assert!(
            headline.contains("largest: op/encode time +30.00% (6.0× its threshold, large)"),
            "{headline}"
        );
        assert!(
            c.body.contains("1 minor change (under 2× their threshold)"),
            "{}",
            c.body
        );
        let (main, folded) = c.body.split_once("minor change").unwrap();
        assert!(
            main.contains("| op/encode |") && !main.contains("| op/decode |"),
            "{}",
            c.body
        );
        assert!(
            folded.contains("| op/decode | time |") && folded.contains("1.2× minor"),
            "{}",
            c.body
        );
        assert_eq!(c.regressions, ["op/encode time", "op/decode time"]);

        // A head whose emulated transpose now has bank conflicts (0 → 1024): a kernel metric worse in the headline,
        // named in the Kernels section; the roofline estimate alone, since the run has no cuda/ops result.
        let kernel_result = |kind: BenchKind, name: &str, metrics: &[(&str, f64)]| BenchResult {
            name: name.into(),
            kind,
            status: BenchStatus::Ok,
            samples: vec![],
            yardstick: vec![],
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            metric_seeds: BTreeMap::new(),
            deterministic: true,
            curve: vec![],
            extra: serde_json::json!({ "failed": 0, "comparisons": 412, "shape": { "batch": 4096, "d_in": 576, "d_sae": 16384 }, "topk": 64,
                "measured_metric": { "backward.dense": "cuda.backward.dense.ms" } }),
        };
        let emulated = |conflicts: f64| {
            kernel_result(
                BenchKind::Emulated,
                "kernels/emulated",
                &[
                    ("kernel.emu.failed_checks", 0.0),
                    ("kernel.emu.transpose.bank_conflicts", conflicts),
                    ("kernel.emu.transpose.global_load_sectors", 640.0),
                    ("kernel.emu.adam_step.bank_conflicts", 0.0),
                ],
            )
        };
        let roofline = kernel_result(
            BenchKind::Roofline,
            "kernels/roofline",
            &[
                ("roofline.backward.dense.h100_us", 123.4),
                ("roofline.backward.dense.sgemm_nt.h100_us", 100.0),
            ],
        );
        let head = Run {
            meta: meta("head"),
            results: vec![emulated(1024.0), roofline],
        };
        let base = Run {
            meta: meta("base"),
            results: vec![emulated(0.0)],
        };
        let rows = vec![Row {
            bench: "kernels/emulated".into(),
            metric: "kernel.emu.transpose.bank_conflicts".into(),
            base: Some(0.0),
            head: Some(1024.0),
            change: None,
            threshold: Some(0.0),
            p: None,
            detectable: None,
            verdict: Verdict::Regression,
            detail: String::new(),
            triage: None,
        }];
        let cmp = Comparison {
            base: base.meta.clone(),
            head: head.meta.clone(),
            overall: saeperf_compare::overall(&rows),
            rows,
            notes: vec![],
        };
        let c = render(
            &head,
            Some(&base),
            Some(&cmp),
            None,
            &CommentOptions::default(),
        )
        .unwrap();
        let headline = c.body.lines().next().unwrap();
        assert!(
            headline.contains("0 worse in quality, 1 kernel metrics worse"),
            "{headline}"
        );
        let kernels = c
            .body
            .split_once("<details><summary>Kernels</summary>")
            .and_then(|(_, k)| k.split_once("</details>"))
            .map(|(k, _)| k)
            .unwrap_or_else(|| panic!("no Kernels section: {}", c.body));
        assert!(
            kernels.contains(
                "| transpose | bank\\_conflicts | 0 | 1,024 | +1,024 from 0 | 🔴 regression |"
            ),
            "{kernels}"
        );
        // Only what changed: the unchanged counts are not listed.
        assert!(
            !kernels.contains("global\\_load\\_sectors") && !kernels.contains("adam\\_step"),
            "{kernels}"
        );
        assert!(
            kernels.contains("| backward.dense | – | 123.4 | – |")
                && kernels.contains("No GPU run")
                && kernels.contains("4096 × 576 × 16384"),
            "{kernels}"
        );
        assert!(kernels.contains("caches, occupancy"), "{kernels}");
        insta::assert_snapshot!("comment_kernels_section", kernels);
        // With the base's counts unchanged: no counted change.
        let same = Run {
            meta: meta("head"),
            results: vec![emulated(0.0)],
        };
        let c = render(&same, Some(&base), None, None, &CommentOptions::default()).unwrap();
        assert!(c.body.contains("No counted change"), "{}", c.body);
    }
}
