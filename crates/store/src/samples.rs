//! Summaries of a result's raw samples (medians and quantiles), shared by the store's accessors and the statistics
//! of compare, so both read a series the same way.

/// Median (None for an empty slice; NaNs are sorted last and so only matter if they are the majority).
pub fn median(xs: &[f64]) -> Option<f64> {
    quantile(xs, 0.5)
}

/// Quantile with linear interpolation between order statistics (numpy's default, "type 7").
pub fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut s = xs.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let pos = (s.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(s[lo] + (s[hi] - s[lo]) * (pos - lo as f64))
}
