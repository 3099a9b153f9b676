//! Numbers for people, shared by the command-line tables here and the pages and comment of the report crate.

/// Seconds with a unit (s, ms, µs).
pub fn seconds(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.3} s")
    } else if v >= 1e-3 {
        format!("{:.3} ms", v * 1e3)
    } else {
        format!("{:.2} µs", v * 1e6)
    }
}
