//! The one view of a comparison row: what the comment, the compare pages, the regressions page and the feed show of
//! a [`Row`], formatted once (values with units, the change as a signed percentage, the threshold the change had to
//! reach, the verdict with its icon, the smallest change the row could have detected).

use saeperf_compare::{Row, Verdict};
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
}

/// The verdict's icon in the comment and on the pages.
pub fn icon(v: Verdict) -> &'static str {
    match v {
        Verdict::Regression => "🔴",
        Verdict::Failed => "❌",
        Verdict::Improvement => "🟢",
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
        }
    }
}
