//! Comparison of two runs: per benchmark and metric a verdict (improvement, regression, acknowledged, noise, new,
//! missing, failed), one overall verdict, and the exit code CI acts on. Maintainers' acks and dismissals
//! ([`triage`]) turn regressions into `acknowledged` or `noise` and restart the noise band at an acked run.
//!
//! Speed ("time", the per-iteration samples): significant only when the Mann–Whitney test on the raw samples rejects
//! at `alpha` AND the relative change of the medians reaches the noise threshold — rustc-perf's fence learned from the
//! series' history on the same machine, backend and profile, or `min_threshold` when history is short, never below
//! `floor`. Benchmarks with too few samples for a rank test (training wall time) are shown but not judged until the
//! history gives a fence; then the fence alone decides, at least `single_sample_threshold`. Op samples are divided by
//! their paired yardstick samples when both runs have them and the ratios are less dispersed than the raw times
//! (robust CV, IQR / median), i.e. when the yardstick actually explains the noise. Quality metrics: deterministic runs compare values with per-metric tolerances;
//! runs with several seeds compare the head against a band over the base's seeds. Runs on different machine
//! fingerprints are never compared (the caller refuses them).

pub mod baseline;
pub mod format;
pub mod history;
pub mod paired;
pub mod rules;
pub mod series;
pub mod stats;
pub mod steps;
pub mod triage;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use saeperf_store::{BenchResult, BenchStatus, Run, RunMeta, RunState, Store, Triage};

pub use history::SpeedHistory;
use rules::{Direction, MetricRule, Rules};
pub use triage::TriageSet;

/// Exit code when nothing regressed (noise, improvements, new or missing benchmarks).
pub const EXIT_OK: i32 = 0;
/// Exit code when at least one benchmark or metric regressed.
pub const EXIT_REGRESSION: i32 = 2;
/// Exit code when a benchmark failed or diverged in the head run (takes precedence over regressions).
pub const EXIT_FAILED: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Noise,
    New,
    Missing,
    Improvement,
    /// A regression a maintainer acknowledged (`runner triage ack`, docs/verdicts.md "Triage"): accepted, so it
    /// needs no attention and does not fail; it outranks an improvement in the overall verdict.
    Acknowledged,
    Regression,
    Failed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Noise => "noise",
            Verdict::New => "new",
            Verdict::Missing => "missing",
            Verdict::Improvement => "improvement",
            Verdict::Acknowledged => "acknowledged",
            Verdict::Regression => "regression",
            Verdict::Failed => "failed",
        }
    }

    /// Whether a person should look at this row.
    pub fn needs_attention(self) -> bool {
        matches!(
            self,
            Verdict::Improvement | Verdict::Regression | Verdict::Failed
        )
    }
}

/// One (benchmark, metric) line of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub bench: String,
    /// "time" (seconds, median of samples), a metric name, or "status".
    pub metric: String,
    pub base: Option<f64>,
    pub head: Option<f64>,
    /// (head − base) / |base|.
    pub change: Option<f64>,
    /// Relative threshold the change had to reach (speed) or the absolute tolerance band half-width (quality).
    pub threshold: Option<f64>,
    /// Mann–Whitney p-value (speed rows with enough samples).
    pub p: Option<f64>,
    /// The smallest relative change this comparison could have detected (docs/verdicts.md, "The detectable change"):
    /// speed rows with the rank test, from the samples' own dispersion at `alpha` and 95% power, never below the
    /// threshold; speed rows judged by the fence alone, the threshold; deterministic quality rows with a mainly
    /// relative tolerance, the tolerance relative to the base value. None: not judged, nothing detectable, or no
    /// relative statement (a seed band, an absolute tolerance, a zero base).
    #[serde(default)]
    pub detectable: Option<f64>,
    pub verdict: Verdict,
    pub detail: String,
    /// The maintainer's record that decided this row: an ack (verdict `acknowledged`; of the head run, or of an
    /// earlier run whose acked change this comparison spans) or a dismissal (a regression turned `noise`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triage: Option<Triage>,
}

/// A relative change as a percentage for people: one decimal, two below 1%.
fn pct(x: f64) -> String {
    if x.abs() < 0.01 {
        format!("{:.2}%", x * 100.0)
    } else {
        format!("{:.1}%", x * 100.0)
    }
}

impl Row {
    /// What the row could see, in words: a quiet speed row "no change ≥ 1.8% (could detect ±1.8%)", a significant
    /// one "+6.2% (could detect ±1.8%)", an unjudged one "not judged"; a quality row its relative tolerance
    /// "±0.10%". None where there is nothing to say (new, missing, failed rows; quality rows without a relative
    /// tolerance).
    pub fn detectable_text(&self) -> Option<String> {
        if self.metric != "time" {
            return self.detectable.map(|d| format!("±{}", pct(d)));
        }
        match (self.verdict, self.detectable) {
            (Verdict::Noise, Some(d)) => {
                Some(format!("no change ≥ {} (could detect ±{})", pct(d), pct(d)))
            }
            (Verdict::Noise, None) => Some("not judged".into()),
            (Verdict::Regression | Verdict::Improvement | Verdict::Acknowledged, Some(d)) => {
                Some(format!(
                    "{}{} (could detect ±{})",
                    if self.change.unwrap_or(0.0) >= 0.0 {
                        "+"
                    } else {
                        "-"
                    },
                    pct(self.change.unwrap_or(0.0).abs()),
                    pct(d)
                ))
            }
            _ => None,
        }
    }
}

/// One line on the quiet speed rows (metric `time`, verdict noise): how many, and the largest change one of them
/// could have missed, e.g. "6 quiet speed rows; the least sensitive could detect ±4.1%". None without quiet rows.
pub fn quiet_speed_summary(rows: &[Row]) -> Option<String> {
    let quiet: Vec<&Row> = rows
        .iter()
        .filter(|r| r.metric == "time" && r.verdict == Verdict::Noise)
        .collect();
    if quiet.is_empty() {
        return None;
    }
    let judged: Vec<f64> = quiet.iter().filter_map(|r| r.detectable).collect();
    let unjudged = quiet.len() - judged.len();
    let mut s = match judged.iter().copied().reduce(f64::max) {
        Some(d) if judged.len() == 1 => format!("1 quiet speed row; it could detect ±{}", pct(d)),
        Some(d) => format!(
            "{} quiet speed rows; the least sensitive could detect ±{}",
            judged.len(),
            pct(d)
        ),
        None => String::new(),
    };
    if unjudged > 0 {
        if !s.is_empty() {
            s.push_str("; ");
        }
        s.push_str(&format!(
            "{unjudged} speed row{} not judged (too few samples, or no history fence)",
            if unjudged == 1 { "" } else { "s" }
        ));
    }
    Some(s)
}

/// A whole comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub base: RunMeta,
    pub head: RunMeta,
    pub rows: Vec<Row>,
    pub overall: Verdict,
    pub notes: Vec<String>,
}

impl Comparison {
    pub fn exit_code(&self) -> i32 {
        exit_code(self.overall)
    }
}

pub fn exit_code(v: Verdict) -> i32 {
    match v {
        Verdict::Failed => EXIT_FAILED,
        Verdict::Regression => EXIT_REGRESSION,
        _ => EXIT_OK,
    }
}

/// Overall verdict: failed > regression > acknowledged > improvement > noise; `new` when nothing could be compared.
pub fn overall(rows: &[Row]) -> Verdict {
    let worst = rows.iter().map(|r| r.verdict).max();
    match worst {
        None => Verdict::New,
        Some(
            Verdict::Failed | Verdict::Regression | Verdict::Acknowledged | Verdict::Improvement,
        ) => worst.unwrap(),
        Some(_) if rows.iter().all(|r| r.verdict == Verdict::New) => Verdict::New,
        Some(_) => Verdict::Noise,
    }
}

fn rel_change(base: f64, head: f64) -> Option<f64> {
    (base != 0.0 && base.is_finite() && head.is_finite()).then(|| (head - base) / base.abs())
}

/// Judge speed: `history` is the series of median times (oldest first, ending with the base) on the same machine,
/// backend and profile; it sets the noise fence.
pub fn judge_speed(bench: &str, base: &[f64], head: &[f64], history: &[f64], rules: &Rules) -> Row {
    let s = &rules.speed;
    let (mb, mh) = (stats::median(base), stats::median(head));
    let mut row = Row {
        bench: bench.to_string(),
        metric: "time".into(),
        base: mb,
        head: mh,
        change: None,
        threshold: None,
        p: None,
        detectable: None,
        verdict: Verdict::Noise,
        detail: String::new(),
        triage: None,
    };
    let (Some(mb), Some(mh)) = (mb, mh) else {
        row.verdict = if mb.is_none() {
            Verdict::New
        } else {
            Verdict::Missing
        };
        row.detail = "no timing samples on one side".into();
        return row;
    };
    let Some(r) = rel_change(mb, mh) else {
        row.detail = "median time is zero or not finite".into();
        return row;
    };
    row.change = Some(r);
    let fence = stats::fence(history, s.history, s.min_history);
    let rank_test = base.len() >= s.min_samples && head.len() >= s.min_samples;
    let mut t = fence.unwrap_or(s.min_threshold).max(s.floor);
    if !rank_test {
        t = t.max(s.single_sample_threshold);
    }
    row.threshold = Some(t);
    let source = if fence.is_some() {
        "history fence"
    } else {
        "minimum (short history)"
    };
    let significant = if rank_test {
        let mw = stats::mann_whitney(base, head).expect("both sides non-empty");
        row.p = Some(mw.p);
        row.detail = format!(
            "Mann-Whitney p={:.2e} ({}; alpha {}), threshold {:.1}% ({source}), n={}/{}",
            mw.p,
            if mw.exact { "exact" } else { "normal approx." },
            s.alpha,
            t * 100.0,
            base.len(),
            head.len()
        );
        // The smallest change the test detects with 95% power, from the samples' own dispersion; none when even
        // completely separated samples cannot reach alpha.
        if stats::min_rank_p(base.len(), head.len()) < s.alpha {
            row.detectable =
                stats::log_se(base, head).map(|se| stats::detectable_change(se, s.alpha, t));
        } else {
            row.detail.push_str(&format!(
                "; with n={}/{} the rank test cannot reach alpha {}: no change is detectable",
                base.len(),
                head.len(),
                s.alpha
            ));
        }
        mw.p < s.alpha && r.abs() >= t
    } else if fence.is_none() {
        // One timing a side on a shared machine is mostly noise: without a learned fence it is shown, not judged.
        row.detail = format!(
            "too few samples for a rank test (n={}/{}) and too little history for a fence: not judged",
            base.len(),
            head.len()
        );
        false
    } else {
        row.detectable = Some(t);
        row.detail = format!(
            "too few samples for a rank test (n={}/{}): history fence alone, threshold {:.1}%",
            base.len(),
            head.len(),
            t * 100.0
        );
        r.abs() >= t
    };
    if significant {
        row.verdict = if r > 0.0 {
            Verdict::Regression
        } else {
            Verdict::Improvement
        };
        row.detail = format!("{:.1}x the threshold; {}", r.abs() / t, row.detail);
    }
    row
}

/// Robust coefficient of variation: IQR / median (infinite when undefined).
fn rcv(xs: &[f64]) -> f64 {
    match (
        stats::quantile(xs, 0.25),
        stats::quantile(xs, 0.75),
        stats::median(xs),
    ) {
        (Some(q1), Some(q3), Some(m)) if m > 0.0 => (q3 - q1) / m,
        _ => f64::INFINITY,
    }
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// Judge one quality metric.
pub fn judge_metric(
    bench: &str,
    metric: &str,
    base: &BenchResult,
    head: &BenchResult,
    rule: &MetricRule,
) -> Row {
    let b = base.metrics.get(metric).copied();
    let h = head.metrics.get(metric).copied();
    let mut row = Row {
        bench: bench.to_string(),
        metric: metric.to_string(),
        base: b,
        head: h,
        change: None,
        threshold: None,
        p: None,
        detectable: None,
        verdict: Verdict::Noise,
        detail: String::new(),
        triage: None,
    };
    let (b, h) = match (b, h) {
        (None, _) => {
            row.verdict = Verdict::New;
            return row;
        }
        (Some(_), None) => {
            row.verdict = Verdict::Missing;
            return row;
        }
        (Some(b), Some(h)) => (b, h),
    };
    row.change = rel_change(b, h);
    if !h.is_finite() {
        row.verdict = if b.is_finite() {
            Verdict::Regression
        } else {
            Verdict::Noise
        };
        row.detail = "head value is not finite".into();
        return row;
    }
    let seeds_b = base.metric_seeds.get(metric).filter(|v| v.len() >= 2);
    let band = seeds_b.is_some() && !(base.deterministic && head.deterministic);
    let (center, half, how) = match seeds_b {
        Some(v) if !(base.deterministic && head.deterministic) => {
            let (m, sd) = mean_sd(v);
            let tol = rule.abs_tol + rule.rel_tol * m.abs();
            (
                m,
                rule.seed_sigmas * sd + tol,
                format!(
                    "band over {} seeds: mean ± ({}·sd + tol)",
                    v.len(),
                    rule.seed_sigmas
                ),
            )
        }
        _ => (
            b,
            rule.abs_tol + rule.rel_tol * b.abs(),
            "tolerance abs + rel·|base|".to_string(),
        ),
    };
    let h_val = match head.metric_seeds.get(metric).filter(|v| v.len() >= 2) {
        Some(v) if !(base.deterministic && head.deterministic) => mean_sd(v).0,
        _ => h,
    };
    row.threshold = Some(half);
    // A deterministic value moving beyond the tolerance is always flagged: where the tolerance is mainly relative
    // (rel_tol·|base| ≥ abs_tol), that relative tolerance is what the row could detect. An absolute tolerance (the
    // dead fraction's 0.001) has no relative meaning, and a seed band makes no such promise (a shift of its
    // half-width is caught about half the time).
    row.detectable = (!band
        && center.is_finite()
        && rule.rel_tol * center.abs() >= rule.abs_tol
        && center != 0.0)
        .then(|| half / center.abs());
    let diff = h_val - center;
    row.detail = format!("{how} = ±{half:.3e}");
    if diff.abs() <= half || rule.direction == Direction::None {
        return row;
    }
    let worse = match rule.direction {
        Direction::LowerIsBetter => diff > 0.0,
        Direction::HigherIsBetter => diff < 0.0,
        Direction::None => unreachable!(),
    };
    row.verdict = if worse {
        Verdict::Regression
    } else {
        Verdict::Improvement
    };
    row
}

/// Compare two runs, with the speed history of the base's series.
pub fn compare(base: &Run, head: &Run, history: &SpeedHistory, rules: &Rules) -> Comparison {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if base.meta.fingerprint_id != head.meta.fingerprint_id {
        notes.push(format!(
            "different machines ({} vs {}): timings are not comparable",
            base.meta.fingerprint_id, head.meta.fingerprint_id
        ));
    }
    if base.meta.suite_hash != head.meta.suite_hash {
        notes.push("the suite differs between base and head (suite hash changed)".into());
    }
    if base.meta.profile != head.meta.profile {
        notes.push(format!(
            "profiles differ: {} vs {}",
            base.meta.profile, head.meta.profile
        ));
    }
    if base.meta.activation_sets != head.meta.activation_sets {
        notes.push("activation sets differ between base and head".into());
    }
    let empty = Vec::new();
    for h in &head.results {
        let Some(b) = base.result(&h.name) else {
            rows.push(Row {
                bench: h.name.clone(),
                metric: "status".into(),
                base: None,
                head: None,
                change: None,
                threshold: None,
                p: None,
                detectable: None,
                verdict: if h.status.is_ok() {
                    Verdict::New
                } else {
                    Verdict::Failed
                },
                detail: status_text(h),
                triage: None,
            });
            continue;
        };
        if !h.status.is_ok() {
            rows.push(Row {
                bench: h.name.clone(),
                metric: "status".into(),
                base: None,
                head: None,
                change: None,
                threshold: None,
                p: None,
                detectable: None,
                verdict: Verdict::Failed,
                detail: status_text(h),
                triage: None,
            });
            continue;
        }
        if !b.status.is_ok() {
            notes.push(format!(
                "{}: failed in the base ({}), compared as new",
                b.name,
                status_text(b)
            ));
        }
        let same_fp = base.meta.fingerprint_id == head.meta.fingerprint_id;
        if same_fp && paired::token(b).is_some() && paired::token(b) == paired::token(h) {
            let mut row = paired::judge_paired(&h.name, &b.samples, &h.samples, rules);
            if let Some(c) = paired::confirmation(h) {
                row.detail = format!("{}; {c}", row.detail);
            }
            rows.push(row);
        } else if same_fp
            && !h.samples.is_empty()
            && paired::token(b).is_some() != paired::token(h).is_some()
        {
            // Paired samples are block means from a long-lived worker, unpaired ones single iterations in rounds:
            // the two methods differ by more than the changes sought, so they are shown, never judged.
            let mut row = judge_speed(&h.name, &b.samples, &h.samples, &[], rules);
            row.verdict = Verdict::Noise;
            row.p = None;
            row.detectable = None;
            row.detail =
                "timed by different methods (one side paired, the other in rounds): not judged"
                    .into();
            rows.push(row);
        } else if same_fp && !h.samples.is_empty() {
            let norm = match (b.normalized(), h.normalized()) {
                // Use the yardstick only where it explains noise: the normalized samples must be less dispersed.
                (Some(nb), Some(nh)) if rcv(&nb) + rcv(&nh) < rcv(&b.samples) + rcv(&h.samples) => {
                    Some((nb, nh))
                }
                _ => None,
            };
            let row = match norm {
                Some((nb, nh)) => {
                    let hist = history.normalized.get(&h.name).unwrap_or(&empty);
                    let mut row = judge_speed(&h.name, &nb, &nh, hist, rules);
                    let raw = rel_change(
                        b.median_time().unwrap_or(0.0),
                        h.median_time().unwrap_or(0.0),
                    );
                    row.base = b.median_time();
                    row.head = h.median_time();
                    row.detail = format!(
                        "{}; normalized by the yardstick (raw change {})",
                        row.detail,
                        raw.map(|r| format!("{:+.1}%", r * 100.0))
                            .unwrap_or_else(|| "-".into())
                    );
                    row
                }
                None => judge_speed(
                    &h.name,
                    &b.samples,
                    &h.samples,
                    history.raw.get(&h.name).unwrap_or(&empty),
                    rules,
                ),
            };
            rows.push(row);
        }
        let names: std::collections::BTreeSet<&String> =
            b.metrics.keys().chain(h.metrics.keys()).collect();
        for m in names {
            if let Some(rule) = rules.rule(m.as_str()) {
                if rule.direction != Direction::None {
                    rows.push(judge_metric(&h.name, m, b, h, rule));
                }
            }
        }
    }
    for b in &base.results {
        if head.result(&b.name).is_none() {
            rows.push(Row {
                bench: b.name.clone(),
                metric: "status".into(),
                base: None,
                head: None,
                change: None,
                threshold: None,
                p: None,
                detectable: None,
                verdict: Verdict::Missing,
                detail: "in the base run, not in the head run".into(),
                triage: None,
            });
        }
    }
    let overall = overall(&rows);
    Comparison {
        base: base.meta.clone(),
        head: head.meta.clone(),
        rows,
        overall,
        notes,
    }
}

fn status_text(r: &BenchResult) -> String {
    match &r.status {
        BenchStatus::Ok => "ok".into(),
        BenchStatus::Failed(m) => format!("failed: {m}"),
        BenchStatus::Diverged(m) => format!("diverged: {m}"),
    }
}

/// Whether two runs belong to the same series (machine, backend, profile).
pub fn same_series(a: &RunMeta, b: &RunMeta) -> bool {
    a.fingerprint_id == b.fingerprint_id && a.backend == b.backend && a.profile == b.profile
}

/// Compare two stored runs (refusing different machines), with history from the store, and apply the maintainers'
/// `triage` records (the store's, read by the caller; [`triage`]): the one comparison of stored runs behind
/// `runner compare`, `runner bench`, the pull-request comment and `report post`.
/// With `use_yardstick` false, op samples are compared raw (for measuring the detector both ways).
pub fn compare_stored(
    store: &Store,
    base: &RunMeta,
    head: &RunMeta,
    rules: &Rules,
    use_yardstick: bool,
    triage: &[Triage],
) -> anyhow::Result<Comparison> {
    if base.fingerprint_id != head.fingerprint_id {
        anyhow::bail!(
            "runs {} and {} were made on different machines (fingerprints {} and {}): they are never compared",
            base.id,
            head.id,
            base.fingerprint_id,
            head.fingerprint_id
        );
    }
    if base.backend != head.backend {
        anyhow::bail!(
            "runs {} and {} used different backends ({} vs {})",
            base.id,
            head.id,
            base.backend,
            head.backend
        );
    }
    let load = |id: &str| -> anyhow::Result<Run> {
        let mut r = store.load_run(id)?;
        if !use_yardstick {
            r.results.iter_mut().for_each(|r| r.yardstick.clear());
        }
        Ok(r)
    };
    let b = load(&base.id)?;
    let h = load(&head.id)?;
    for r in [&b, &h] {
        if r.meta.state != RunState::Complete {
            anyhow::bail!(
                "run {} is incomplete (cut off before it finished); it cannot be compared",
                r.meta.id
            );
        }
    }
    let metas = store.list_runs()?;
    let set = TriageSet::new(triage, &metas);
    let hist = history::stored(store, base, rules.speed.history, &set)?;
    let mut c = compare(&b, &h, &hist, rules);
    triage::apply(&mut c, &set, &mut |acked, row| {
        let a = load(&acked.id)?;
        // The history of the runs from the ack on: the head's series before the head (restarted at the ack).
        let mut since = SpeedHistory::default();
        for m in history::before(&metas, |m| m, &h.meta, rules.speed.history) {
            let results = m
                .benchmarks
                .iter()
                .filter(|n| **n == row.bench)
                .map(|n| store.result(&m.id, n))
                .collect::<Result<Vec<_>, _>>()?;
            since.push_run(&m.id, results.iter().flatten(), &set);
        }
        Ok(judge_against(
            &a,
            &h,
            &row.bench,
            &row.metric,
            &since,
            rules,
        ))
    })?;
    Ok(c)
}

/// The row of (bench, metric) comparing `head` with `acked` (a run whose change of it a maintainer acknowledged),
/// with `history` for the fence; None when either run lacks the benchmark or the row. [`triage::apply`] uses it to
/// decide whether a later head is still at the acked level.
pub fn judge_against(
    acked: &Run,
    head: &Run,
    bench: &str,
    metric: &str,
    history: &SpeedHistory,
    rules: &Rules,
) -> Option<Row> {
    let one = |r: &Run| -> Option<Run> {
        Some(Run {
            meta: r.meta.clone(),
            results: vec![r.result(bench)?.clone()],
        })
    };
    compare(&one(acked)?, &one(head)?, history, rules)
        .rows
        .into_iter()
        .find(|r| r.metric == metric)
}

fn fmt_val(metric: &str, v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if metric == "time" => format::seconds(v),
        Some(v) => format!("{v:.5}"),
    }
}

/// Human table: rows needing attention always; the rest only with `all` (otherwise counted in one line).
pub fn render(c: &Comparison, all: bool) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "benchmark",
        "metric",
        "base",
        "head",
        "change",
        "verdict",
        "detectable",
        "detail",
    ]);
    let mut hidden = BTreeMap::<&str, usize>::new();
    for r in &c.rows {
        // Acknowledged rows need no attention but are few and say who accepted what: shown too.
        if !all && !r.verdict.needs_attention() && r.verdict != Verdict::Acknowledged {
            *hidden.entry(r.verdict.as_str()).or_default() += 1;
            continue;
        }
        t.add_row([
            r.bench.clone(),
            r.metric.clone(),
            fmt_val(&r.metric, r.base),
            fmt_val(&r.metric, r.head),
            r.change
                .map(|c| format!("{:+.2}%", c * 100.0))
                .unwrap_or_else(|| "-".into()),
            r.verdict.as_str().to_string(),
            r.detectable_text().unwrap_or_else(|| "-".into()),
            r.detail.clone(),
        ]);
    }
    let mut s = format!(
        "base {} ({}{}) vs head {} ({}{})\n",
        c.base.id,
        c.base
            .commit
            .as_deref()
            .map(|x| &x[..x.len().min(10)])
            .unwrap_or("no commit"),
        if c.base.dirty { ", dirty" } else { "" },
        c.head.id,
        c.head
            .commit
            .as_deref()
            .map(|x| &x[..x.len().min(10)])
            .unwrap_or("no commit"),
        if c.head.dirty { ", dirty" } else { "" },
    );
    if t.row_count() > 0 {
        s.push_str(&t.to_string());
        s.push('\n');
    }
    if !hidden.is_empty() {
        let parts: Vec<String> = hidden.iter().map(|(k, n)| format!("{n} {k}")).collect();
        s.push_str(&format!("not shown: {} (use --all)\n", parts.join(", ")));
    }
    if let Some(q) = quiet_speed_summary(&c.rows) {
        s.push_str(&format!("{q}\n"));
    }
    for n in &c.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    s.push_str(&format!(
        "overall: {} (exit code {})\n",
        c.overall.as_str(),
        c.exit_code()
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, LogNormal};
    use saeperf_store::BenchKind;

    fn samples(seed: u64, n: usize, center: f64, noise: f64) -> Vec<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let d = LogNormal::new(center.ln(), noise).unwrap();
        (0..n).map(|_| d.sample(&mut rng)).collect()
    }

    #[test]
    fn speed_detector_on_synthetic_samples() {
        let rules = Rules::default();
        // A/A: the same distribution on both sides, 200 trials: at alpha 0.002 and a 5% minimum, no false alarm.
        let mut alarms = 0;
        for i in 0..200 {
            let row = judge_speed(
                "op",
                &samples(i, 20, 1e-3, 0.03),
                &samples(1000 + i, 20, 1e-3, 0.03),
                &[],
                &rules,
            );
            alarms += row.verdict.needs_attention() as usize;
        }
        assert_eq!(alarms, 0);
        // A 20% slowdown with 3% noise: always caught.
        for i in 0..50 {
            let row = judge_speed(
                "op",
                &samples(i, 20, 1e-3, 0.03),
                &samples(500 + i, 20, 1.2e-3, 0.03),
                &[],
                &rules,
            );
            assert_eq!(row.verdict, Verdict::Regression, "{row:?}");
        }
        // A 2% consistent shift is below the 5% minimum: noise, although the rank test rejects.
        let row = judge_speed(
            "op",
            &samples(1, 40, 1e-3, 0.002),
            &samples(2, 40, 1.02e-3, 0.002),
            &[],
            &rules,
        );
        assert!(row.p.unwrap() < 0.002);
        assert_eq!(row.verdict, Verdict::Noise);
        // With a quiet history (fence < 2%) the same 2% shift is flagged... but never below the 1% floor.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let hist: Vec<f64> = (0..31)
            .map(|_| 1e-3 * (1.0 + rng.random_range(-0.001..0.001)))
            .collect();
        let row = judge_speed(
            "op",
            &samples(1, 40, 1e-3, 0.002),
            &samples(2, 40, 1.02e-3, 0.002),
            &hist,
            &rules,
        );
        assert_eq!(row.verdict, Verdict::Regression, "{row:?}");
        assert_eq!(row.threshold, Some(0.01));
        // A noisy history raises the threshold above a 20% change.
        let hist: Vec<f64> = (0..31)
            .map(|i| if i % 2 == 0 { 1e-3 } else { 1.3e-3 })
            .collect();
        let row = judge_speed(
            "op",
            &samples(1, 20, 1e-3, 0.01),
            &samples(2, 20, 1.2e-3, 0.01),
            &hist,
            &rules,
        );
        assert_eq!(row.verdict, Verdict::Noise, "{row:?}");
        // Faster is an improvement.
        let row = judge_speed(
            "op",
            &samples(1, 20, 1e-3, 0.01),
            &samples(2, 20, 0.7e-3, 0.01),
            &[],
            &rules,
        );
        assert_eq!(row.verdict, Verdict::Improvement);
        // Single samples: not judged without history; with a fence, the fence alone, at least 25%.
        let row = judge_speed("train", &[10.0], &[30.0], &[], &rules);
        assert_eq!(row.verdict, Verdict::Noise);
        let quiet: Vec<f64> = (0..31).map(|i| 10.0 + (i % 2) as f64 * 0.1).collect();
        let row = judge_speed("train", &[10.0], &[11.0], &quiet, &rules);
        assert_eq!(row.verdict, Verdict::Noise);
        let row = judge_speed("train", &[10.0], &[14.0], &quiet, &rules);
        assert_eq!(row.verdict, Verdict::Regression);
    }

    #[test]
    fn detectable_change_of_speed_rows() {
        let rules = Rules::default();
        let d = |n: usize, noise: f64| {
            judge_speed(
                "op",
                &samples(1, n, 1e-3, noise),
                &samples(2, n, 1e-3, noise),
                &[],
                &rules,
            )
            .detectable
            .unwrap()
        };
        // Shrinks as n grows, grows with dispersion; never below the 5% minimum threshold.
        assert!(
            d(80, 0.05) < d(20, 0.05) && d(20, 0.05) < d(10, 0.05),
            "{} {} {}",
            d(80, 0.05),
            d(20, 0.05),
            d(10, 0.05)
        );
        assert!(d(20, 0.1) > d(20, 0.05) && d(20, 0.05) > d(20, 0.02));
        assert!(d(20, 0.0001) >= 0.05);
        // Equals the formula on the samples' own logs.
        let (b, h) = (samples(3, 20, 1e-3, 0.04), samples(4, 20, 1e-3, 0.04));
        let row = judge_speed("op", &b, &h, &[], &rules);
        let logs = |xs: &[f64]| xs.iter().map(|x| x.ln()).collect::<Vec<_>>();
        let s = |xs: &[f64]| {
            let l = logs(xs);
            let m = stats::median(&l).unwrap();
            1.4826 * stats::median(&l.iter().map(|x| (x - m).abs()).collect::<Vec<_>>()).unwrap()
        };
        let se = (s(&b).powi(2) / 20.0 + s(&h).powi(2) / 20.0).sqrt();
        let want = stats::detectable_change(se, rules.speed.alpha, 0.05);
        assert!((row.detectable.unwrap() - want).abs() < 1e-12);
        // A quiet row says what it could have seen.
        assert_eq!(row.verdict, Verdict::Noise);
        let text = row.detectable_text().unwrap();
        assert!(
            text.starts_with("no change ≥ ") && text.contains("could detect ±"),
            "{text}"
        );
        // A regression shows its change and the same sensitivity.
        let row = judge_speed("op", &b, &samples(5, 20, 1.3e-3, 0.04), &[], &rules);
        assert_eq!(row.verdict, Verdict::Regression);
        let text = row.detectable_text().unwrap();
        assert!(
            text.starts_with('+') && text.contains("(could detect ±"),
            "{text}"
        );
        // 6 samples a side cannot reach alpha 0.002: nothing is detectable.
        let row = judge_speed(
            "op",
            &samples(1, 6, 1e-3, 0.01),
            &samples(2, 6, 1e-3, 0.01),
            &[],
            &rules,
        );
        assert_eq!(row.detectable, None);
        assert!(
            row.detail.contains("no change is detectable"),
            "{}",
            row.detail
        );
        // Single samples: not judged without a fence; with one, the threshold itself.
        let row = judge_speed("train", &[10.0], &[10.0], &[], &rules);
        assert_eq!(
            (row.detectable, row.detectable_text().as_deref()),
            (None, Some("not judged"))
        );
        let quiet: Vec<f64> = (0..31).map(|i| 10.0 + (i % 2) as f64 * 0.1).collect();
        let row = judge_speed("train", &[10.0], &[11.0], &quiet, &rules);
        assert_eq!(row.detectable, row.threshold);
        assert_eq!(
            row.detectable_text().unwrap(),
            "no change ≥ 25.0% (could detect ±25.0%)"
        );
        // The summary line over quiet rows.
        let rows = [
            judge_speed("op", &b, &h, &[], &rules),
            judge_speed("train", &[10.0], &[10.0], &[], &rules),
        ];
        let line = quiet_speed_summary(&rows).unwrap();
        assert!(
            line.starts_with("1 quiet speed row; it could detect ±")
                && line.ends_with("1 speed row not judged (too few samples, or no history fence)"),
            "{line}"
        );
        // A deterministic quality row: its tolerance relative to the base.
        let b = result(&[("mse", 0.1)]);
        let row = judge_metric("relu", "mse", &b, &b, &rules.metrics["mse"]);
        assert!((row.detectable.unwrap() - (1e-6 + 1e-4) / 0.1).abs() < 1e-12);
        assert_eq!(row.detectable_text().unwrap(), "±0.10%");
        // Older documents without the field still parse.
        let mut v = serde_json::to_value(&row).unwrap();
        v.as_object_mut().unwrap().remove("detectable");
        assert_eq!(serde_json::from_value::<Row>(v).unwrap().detectable, None);
    }

    fn result(metrics: &[(&str, f64)]) -> BenchResult {
        BenchResult {
            name: "relu".into(),
            kind: BenchKind::Train,
            status: BenchStatus::Ok,
            samples: vec![],
            yardstick: vec![],
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            metric_seeds: BTreeMap::new(),
            deterministic: true,
            curve: vec![],
            extra: serde_json::Value::Null,
        }
    }

    #[test]
    fn quality_directions_tolerances_and_bands() {
        let rules = Rules::default();
        let b = result(&[("mse", 0.1), ("fve", 0.9), ("l0", 10.0)]);
        let same = result(&[("mse", 0.10000001), ("fve", 0.9), ("l0", 10.0)]);
        for m in ["mse", "fve", "l0"] {
            assert_eq!(
                judge_metric("relu", m, &b, &same, &rules.metrics[m]).verdict,
                Verdict::Noise
            );
        }
        let worse = result(&[("mse", 0.12), ("fve", 0.85), ("l0", 9.0)]);
        assert_eq!(
            judge_metric("relu", "mse", &b, &worse, &rules.metrics["mse"]).verdict,
            Verdict::Regression
        );
        assert_eq!(
            judge_metric("relu", "fve", &b, &worse, &rules.metrics["fve"]).verdict,
            Verdict::Regression
        );
        assert_eq!(
            judge_metric("relu", "l0", &b, &worse, &rules.metrics["l0"]).verdict,
            Verdict::Improvement
        );
        let nan = result(&[("mse", f64::NAN)]);
        assert_eq!(
            judge_metric("relu", "mse", &b, &nan, &rules.metrics["mse"]).verdict,
            Verdict::Regression
        );
        // Non-deterministic: a band over seeds absorbs seed noise.
        let mut bs = result(&[("mse", 0.1)]);
        bs.deterministic = false;
        bs.metric_seeds
            .insert("mse".into(), vec![0.095, 0.1, 0.105]);
        let mut hs = result(&[("mse", 0.108)]);
        hs.deterministic = false;
        assert_eq!(
            judge_metric("relu", "mse", &bs, &hs, &rules.metrics["mse"]).verdict,
            Verdict::Noise
        );
        hs.metrics.insert("mse".into(), 0.2);
        assert_eq!(
            judge_metric("relu", "mse", &bs, &hs, &rules.metrics["mse"]).verdict,
            Verdict::Regression
        );
    }

    #[test]
    fn overall_and_exit_codes() {
        let row = |v| Row {
            bench: "b".into(),
            metric: "m".into(),
            base: None,
            head: None,
            change: None,
            threshold: None,
            p: None,
            detectable: None,
            verdict: v,
            detail: String::new(),
            triage: None,
        };
        assert_eq!(overall(&[]), Verdict::New);
        assert_eq!(
            overall(&[row(Verdict::New), row(Verdict::New)]),
            Verdict::New
        );
        assert_eq!(
            overall(&[
                row(Verdict::New),
                row(Verdict::Noise),
                row(Verdict::Missing)
            ]),
            Verdict::Noise
        );
        assert_eq!(
            overall(&[row(Verdict::Improvement), row(Verdict::Noise)]),
            Verdict::Improvement
        );
        assert_eq!(
            overall(&[row(Verdict::Improvement), row(Verdict::Regression)]),
            Verdict::Regression
        );
        assert_eq!(
            overall(&[row(Verdict::Failed), row(Verdict::Regression)]),
            Verdict::Failed
        );
        assert_eq!(exit_code(Verdict::Noise), EXIT_OK);
        assert_eq!(exit_code(Verdict::Regression), EXIT_REGRESSION);
        assert_eq!(exit_code(Verdict::Failed), EXIT_FAILED);
    }
}
