//! The one view of a comparison row: what the comment, the compare pages, the regressions page and the feed show of
//! a [`Row`], formatted once (values with units, the change as a signed percentage, the threshold the change had to
//! reach, the verdict with its icon, the smallest change the row could have detected, the maintainer's triage).

use saeperf_compare::triage::who;
use saeperf_compare::{Row, Verdict};
use saeperf_store::{Triage, TriageAction};
use serde::Serialize;

use crate::{fmt_change, fmt_value};

/// A comparison row as text, ready for a template.
#[derive(Debug, Clone, Serialize)]
pub struct RowView {
    pub bench: String,
    pub metric: String,
    pub base: String,
    pub head: String,
    pub change: String,
    /// `±x%` for speed, `±value` for a quality tolerance, `–` when none applied.
    pub threshold: String,
    /// The rank test's p-value, `–` when there was none.
    pub p: String,
    pub verdict: String,
    pub icon: &'static str,
    /// What the row could see ([`Row::detectable_text`]): "no change ≥ 1.8% (could detect ±1.8%)",
    /// "+6.2% (could detect ±1.8%)", "not judged", a quality row's "±0.10%"; `–` when there is nothing to say.
    pub detectable: String,
    pub detail: String,
    /// The maintainer's ack or dismissal that decided the row, if any.
    pub triage: Option<TriageView>,
    /// How many times its threshold the change is, with its severity ("6.3× large"); `–` without a threshold.
    pub magnitude: String,
}

/// A triage record as text: who ("@alice"), when, why, and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct TriageView {
    /// "ack" or "dismiss".
    pub action: &'static str,
    /// "acknowledged" or "dismissed".
    pub done: &'static str,
    /// The run the record is on (the run in which the change was flagged).
    pub run: String,
    pub bench: String,
    pub metric: String,
    pub by: String,
    pub reason: String,
    /// `YYYY-MM-DD HH:MM UTC`.
    pub at: String,
    pub source: String,
}

impl TriageView {
    pub fn of(t: &Triage) -> TriageView {
        TriageView {
            action: t.action.as_str(),
            done: match t.action {
                TriageAction::Ack => "acknowledged",
                TriageAction::Dismiss => "dismissed",
            },
            run: t.run.clone(),
            bench: t.bench.clone(),
            metric: t.metric.clone(),
            by: who(&t.by),
            reason: t.reason.clone(),
            at: t.at.format("%Y-%m-%d %H:%M UTC").to_string(),
            source: t.source.clone(),
        }
    }
}

/// The verdict's icon in the comment and on the pages.
pub fn icon(v: Verdict) -> &'static str {
    match v {
        Verdict::Regression => "🔴",
        Verdict::Failed => "❌",
        Verdict::Improvement => "🟢",
        Verdict::Acknowledged => "☑️",
        Verdict::Noise => "⚪",
        Verdict::New => "🆕",
        Verdict::Missing => "➖",
    }
}

/// The threshold a change of `metric` had to reach: relative for speed, absolute for a quality metric.
pub fn threshold_text(metric: &str, t: Option<f64>) -> String {
    match (metric, t) {
        (_, None) => "–".into(),
        ("time", Some(t)) => format!("±{:.1}%", t * 100.0),
        (m, Some(t)) => format!("±{}", fmt_value(m, Some(t))),
    }
}

/// A change smaller than this many times its threshold is minor: reported, but folded away in the comment.
pub const MINOR_BELOW: f64 = 2.0;

/// How many times its threshold a row's change is (rustc-perf's magnitude): the relative change over the relative
/// threshold for time, the absolute difference over the tolerance for a quality metric; None without a threshold.
pub fn magnitude(r: &Row) -> Option<f64> {
    let t = r.threshold.filter(|t| *t > 0.0 && t.is_finite())?;
    let m = if r.metric == "time" {
        r.change?.abs() / t
    } else {
        (r.head? - r.base?).abs() / t
    };
    m.is_finite().then_some(m)
}

/// The severity of a magnitude: minor (under [`MINOR_BELOW`]), moderate, large (5× or more), very large (20×).
pub fn severity(m: f64) -> &'static str {
    if m >= 20.0 {
        "very large"
    } else if m >= 5.0 {
        "large"
    } else if m >= MINOR_BELOW {
        "moderate"
    } else {
        "minor"
    }
}

impl RowView {
    pub fn of(r: &Row) -> RowView {
        RowView {
            bench: r.bench.clone(),
            metric: r.metric.clone(),
            base: fmt_value(&r.metric, r.base),
            head: fmt_value(&r.metric, r.head),
            change: fmt_change(r.change),
            threshold: threshold_text(&r.metric, r.threshold),
            p: r.p
                .map(|p| format!("{p:.1e}"))
                .unwrap_or_else(|| "–".into()),
            verdict: r.verdict.as_str().to_string(),
            icon: icon(r.verdict),
            detectable: r.detectable_text().unwrap_or_else(|| "–".into()),
            detail: r.detail.clone(),
            triage: r.triage.as_ref().map(TriageView::of),
            magnitude: magnitude(r)
                .map(|m| format!("{m:.1}× {}", severity(m)))
                .unwrap_or_else(|| "–".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(metric: &str, base: f64, head: f64, change: f64, threshold: f64) -> Row {
        Row {
            bench: "b".into(),
            metric: metric.into(),
            base: Some(base),
            head: Some(head),
            change: Some(change),
            threshold: Some(threshold),
            p: None,
            verdict: Verdict::Regression,
            detail: String::new(),
            detectable: None,
            triage: None,
        }
    }

    #[test]
    fn magnitude_is_times_the_threshold_with_a_severity() {
        // Time: a 12% change over a 2% threshold.
        let m = magnitude(&row("time", 1.0, 1.12, 0.12, 0.02)).unwrap();
        assert!((m - 6.0).abs() < 1e-9);
        assert_eq!(severity(m), "large");
        // Quality: the absolute difference over the tolerance.
        let m = magnitude(&row("mse", 0.020, 0.023, 0.15, 0.002)).unwrap();
        assert!((m - 1.5).abs() < 1e-9);
        assert_eq!(severity(m), "minor");
        assert_eq!(severity(2.5), "moderate");
        assert_eq!(severity(25.0), "very large");
        let mut r = row("time", 1.0, 1.1, 0.1, 0.02);
        r.threshold = None;
        assert_eq!(magnitude(&r), None);
        assert_eq!(
            RowView::of(&row("time", 1.0, 1.12, 0.12, 0.02)).magnitude,
            "6.0× large"
        );
    }
}
