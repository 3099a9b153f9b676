//! Chart geometry for the dashboard: pure functions that turn series of numbers into SVG coordinates (polyline
//! points, band polygons, bars, axis ticks). The SVG elements themselves are drawn by the `charts.html` macros in
//! dashboards/, so every label goes through the template engine's escaping and the look lives in one place.
//!
//! Hand-made rather than a charting crate: the charts are small (sparklines, one history chart, curves, a
//! histogram), must be styleable by the site's CSS, must not embed fonts or scripts, and must render identically
//! from run to run so pages can be diffed and snapshot-tested.

use serde::Serialize;

/// A linear map from data to pixels.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    d0: f64,
    d1: f64,
    p0: f64,
    p1: f64,
}

impl Scale {
    /// Domain [d0, d1] onto pixels [p0, p1]; a degenerate domain is widened so that values land mid-range.
    pub fn new(d0: f64, d1: f64, p0: f64, p1: f64) -> Scale {
        let (d0, d1) = if (d1 - d0).abs() < f64::EPSILON * d0.abs().max(1e-300) || d1 == d0 {
            let pad = if d0 == 0.0 { 1.0 } else { d0.abs() * 0.05 };
            (d0 - pad, d1 + pad)
        } else {
            (d0, d1)
        };
        Scale { d0, d1, p0, p1 }
    }

    pub fn at(&self, v: f64) -> f64 {
        self.p0 + (v - self.d0) / (self.d1 - self.d0) * (self.p1 - self.p0)
    }
}

/// An axis tick: its pixel position and label.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Tick {
    pub pos: f64,
    pub label: String,
    /// The data value at the tick (NaN for categorical labels).
    pub value: f64,
}

/// "Nice" tick values covering [lo, hi] (about `n` of them).
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return if lo.is_finite() { vec![lo] } else { vec![] };
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    let mut out = Vec::new();
    let mut v = first;
    while v <= hi + step * 1e-9 && out.len() < 20 {
        out.push(if v.abs() < step * 1e-9 {
            0.0
        } else {
            round12(v)
        });
        v += step;
    }
    out
}

/// Like [`nice_ticks`], but the first tick is at or below `lo` and the last at or above `hi`, so that a chart whose
/// domain is extended to its outer ticks has gridlines at both ends.
pub fn covering_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let inner = nice_ticks(lo, hi, n);
    if inner.len() < 2 {
        return inner;
    }
    let step = inner[1] - inner[0];
    let mut out = inner;
    if out[0] > lo + step * 1e-9 {
        out.insert(0, round12(out[0] - step));
    }
    let last = *out.last().unwrap();
    if last < hi - step * 1e-9 {
        out.push(round12(last + step));
    }
    out
}

fn round12(v: f64) -> f64 {
    if v == 0.0 {
        return 0.0;
    }
    let mag = 10f64.powi(12 - v.abs().log10().ceil() as i32);
    (v * mag).round() / mag
}

/// Short number label: 3 significant digits, SI-ish suffixes for large and small magnitudes.
pub fn short_num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .replace(".M", "M")
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3).replace(".0k", "k")
    } else if a >= 0.01 {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{v:.1e}")
    }
}

/// A sparkline: polyline points and the last point (drawn as a dot).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Spark {
    pub w: f64,
    pub h: f64,
    pub points: String,
    pub last: Option<(f64, f64)>,
}

/// Sparkline over the finite values (gaps skipped), `w`×`h` pixels with 2 px of padding.
pub fn sparkline(values: &[f64], w: f64, h: f64) -> Spark {
    let finite: Vec<(usize, f64)> = values
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .collect();
    let (lo, hi) = min_max(finite.iter().map(|p| p.1));
    let xs = Scale::new(0.0, (values.len().max(2) - 1) as f64, 2.0, w - 2.0);
    let ys = Scale::new(lo, hi, h - 2.0, 2.0);
    let pts: Vec<(f64, f64)> = finite
        .iter()
        .map(|(i, v)| (r1(xs.at(*i as f64)), r1(ys.at(*v))))
        .collect();
    Spark {
        w,
        h,
        points: join_points(&pts),
        last: pts.last().copied(),
    }
}

/// One marker on a line chart.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Marker {
    pub x: f64,
    pub y: f64,
    /// CSS class: "regression", "improvement", "point".
    pub class: String,
    /// Tooltip text (escaped by the template).
    pub title: String,
    /// Relative link (a run page), if any.
    pub href: Option<String>,
}

/// A line chart with an optional band, markers and axes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LineChart {
    pub w: f64,
    pub h: f64,
    /// Plot area: left, top, right, bottom.
    pub left: f64,
    pub top: f64,
    pub right: f64,
    pub bottom: f64,
    pub line: String,
    /// Polygon points of the band (empty when there is none).
    pub band: String,
    pub markers: Vec<Marker>,
    /// Steps in the series' history, drawn as labelled vertical lines ([`add_step`]).
    pub steps: Vec<StepLine>,
    pub yticks: Vec<Tick>,
    pub xticks: Vec<Tick>,
    pub ylabel: String,
    pub xlabel: String,
}

/// A point of a line chart.
#[derive(Debug, Clone)]
pub struct LinePoint {
    pub x: f64,
    pub y: f64,
    /// The noise band around the expected value at this point.
    pub band: Option<(f64, f64)>,
    pub class: String,
    pub title: String,
    pub href: Option<String>,
}

/// Line chart of `pts` (x increasing). `xlabels` labels x positions (index, label) when the x axis is categorical;
/// otherwise numeric ticks are made.
pub fn line_chart(
    pts: &[LinePoint],
    w: f64,
    h: f64,
    ylabel: &str,
    xlabel: &str,
    xlabels: Option<&[(f64, String)]>,
    markers: bool,
) -> LineChart {
    let (left, top, right, bottom) = (58.0, 10.0, w - 12.0, h - 30.0);
    let ys_all = pts
        .iter()
        .flat_map(|p| {
            let mut v = vec![p.y];
            if let Some((a, b)) = p.band {
                v.push(a);
                v.push(b);
            }
            v
        })
        .filter(|v| v.is_finite());
    let (lo, hi) = min_max(ys_all);
    let (x0, x1) = min_max(pts.iter().map(|p| p.x));
    let ticks = covering_ticks(lo, hi, 4);
    // Extend the domain to the outer ticks so the lines never touch the frame.
    let (ylo, yhi) = (
        ticks.first().copied().unwrap_or(lo).min(lo),
        ticks.last().copied().unwrap_or(hi).max(hi),
    );
    let ys = Scale::new(ylo, yhi, bottom, top);
    let xs = x_scale(pts, left, right);
    let line_pts: Vec<(f64, f64)> = pts
        .iter()
        .filter(|p| p.y.is_finite())
        .map(|p| (r1(xs.at(p.x)), r1(ys.at(p.y))))
        .collect();
    let banded: Vec<&LinePoint> = pts.iter().filter(|p| p.band.is_some()).collect();
    let band = if banded.len() >= 2 {
        let mut poly: Vec<(f64, f64)> = banded
            .iter()
            .map(|p| (r1(xs.at(p.x)), r1(ys.at(p.band.unwrap().1))))
            .collect();
        poly.extend(
            banded
                .iter()
                .rev()
                .map(|p| (r1(xs.at(p.x)), r1(ys.at(p.band.unwrap().0)))),
        );
        join_points(&poly)
    } else {
        String::new()
    };
    let mk = if markers {
        pts.iter()
            .filter(|p| p.y.is_finite())
            .map(|p| Marker {
                x: r1(xs.at(p.x)),
                y: r1(ys.at(p.y)),
                class: p.class.clone(),
                title: p.title.clone(),
                href: p.href.clone(),
            })
            .collect()
    } else {
        pts.iter()
            .filter(|p| p.y.is_finite() && p.class != "point")
            .map(|p| Marker {
                x: r1(xs.at(p.x)),
                y: r1(ys.at(p.y)),
                class: p.class.clone(),
                title: p.title.clone(),
                href: p.href.clone(),
            })
            .collect()
    };
    let yticks = ticks
        .iter()
        .map(|v| Tick {
            pos: r1(ys.at(*v)),
            label: short_num(*v),
            value: *v,
        })
        .collect();
    let xticks = match xlabels {
        Some(l) => {
            // At most ~6 labels, evenly picked.
            let stride = l.len().div_ceil(6).max(1);
            l.iter()
                .step_by(stride)
                .map(|(x, s)| Tick {
                    pos: r1(xs.at(*x)),
                    label: s.clone(),
                    value: f64::NAN,
                })
                .collect()
        }
        None => nice_ticks(x0, x1, 5)
            .into_iter()
            .map(|v| Tick {
                pos: r1(xs.at(v)),
                label: short_num(v),
                value: v,
            })
            .collect(),
    };
    LineChart {
        w,
        h,
        left,
        top,
        right,
        bottom,
        line: join_points(&line_pts),
        band,
        markers: mk,
        steps: vec![],
        yticks,
        xticks,
        ylabel: ylabel.to_string(),
        xlabel: xlabel.to_string(),
    }
}

/// The x scale of a line chart of `pts` with plot area [`left`, `right`].
fn x_scale(pts: &[LinePoint], left: f64, right: f64) -> Scale {
    let (x0, x1) = min_max(pts.iter().map(|p| p.x));
    Scale::new(x0, x1, left + 6.0, right - 6.0)
}

/// A step in a series' history on its chart: a vertical line at the first point after the step, with a label.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepLine {
    pub x: f64,
    /// Where the label goes and how it is anchored (left of the line near the right edge).
    pub label_x: f64,
    pub anchor: String,
    pub label: String,
    /// CSS class: "regression" or "improvement".
    pub class: String,
    /// Tooltip text (escaped by the template).
    pub title: String,
    /// Relative link (the run after the step), if any.
    pub href: Option<String>,
}

/// Draw a step on `chart`, the line chart of `pts`, at data x `x` (the first point after the step).
pub fn add_step(
    chart: &mut LineChart,
    pts: &[LinePoint],
    x: f64,
    label: &str,
    class: &str,
    title: &str,
    href: Option<String>,
) {
    let px = r1(x_scale(pts, chart.left, chart.right).at(x));
    let right_half = px > (chart.left + chart.right) / 2.0;
    chart.steps.push(StepLine {
        x: px,
        label_x: if right_half { px - 3.0 } else { px + 3.0 },
        anchor: if right_half { "end" } else { "start" }.into(),
        label: label.to_string(),
        class: class.to_string(),
        title: title.to_string(),
        href,
    });
}

/// One bar of a histogram.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bar {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub class: String,
    pub title: String,
}

/// The feature-density histogram: bars over log10(density) and a separate bar for dead features.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Histogram {
    pub w: f64,
    pub h: f64,
    pub left: f64,
    pub top: f64,
    pub right: f64,
    pub bottom: f64,
    pub bars: Vec<Bar>,
    pub xticks: Vec<Tick>,
    pub yticks: Vec<Tick>,
    /// x of the dense threshold (log10 0.01 = −2), drawn as a dashed line.
    pub dense_x: Option<f64>,
    pub dead: u64,
    pub total: u64,
}

/// Marks the bars of a high-frequency cluster (every bin whose upper edge lies above `min_density`) with the class
/// `spike`, for a histogram made by [`density_histogram`] with the same `lo` and `width`.
pub fn mark_spike(h: &mut Histogram, lo: f64, width: f64, min_density: f64) {
    if min_density.is_nan() || min_density <= 0.0 {
        return;
    }
    let edge = min_density.log10();
    for (i, b) in h.bars.iter_mut().skip(1).enumerate() {
        if lo + width * (i as f64 + 1.0) > edge {
            b.class = "spike".into();
            b.title.push_str(" (high-frequency cluster)");
        }
    }
}

/// Histogram of `counts` in bins of `width` from `lo` (log10 density), plus `dead` drawn left of the axis.
pub fn density_histogram(
    lo: f64,
    width: f64,
    counts: &[u64],
    dead: u64,
    w: f64,
    h: f64,
) -> Histogram {
    let (left, top, right, bottom) = (48.0, 10.0, w - 12.0, h - 30.0);
    let n = counts.len().max(1);
    let hi = lo + width * n as f64;
    let max = counts
        .iter()
        .copied()
        .chain([dead])
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let yt = covering_ticks(0.0, max, 4);
    let ymax = yt.last().copied().unwrap_or(max).max(max);
    let ys = Scale::new(0.0, ymax, bottom, top);
    // The dead bar sits in its own slot left of the log axis, separated by a gap.
    let slot = (right - left) / (n as f64 + 2.0);
    let xs = Scale::new(lo, hi, left + 2.0 * slot, right);
    let mut bars = vec![Bar {
        x: r1(left),
        y: r1(ys.at(dead as f64)),
        w: r1(slot * 0.9),
        h: r1(bottom - ys.at(dead as f64)),
        class: "dead".into(),
        title: format!("dead (never fired): {dead}"),
    }];
    for (i, c) in counts.iter().enumerate() {
        let a = lo + width * i as f64;
        let y = ys.at(*c as f64);
        bars.push(Bar {
            x: r1(xs.at(a)),
            y: r1(y),
            w: r1((xs.at(a + width) - xs.at(a)) * 0.92),
            h: r1(bottom - y),
            class: if a >= -2.0 {
                "dense".into()
            } else {
                "bin".into()
            },
            title: format!(
                "log10 density in [{:.2}, {:.2}): {c} features",
                a,
                a + width
            ),
        });
    }
    let mut xticks: Vec<Tick> = nice_ticks(lo, hi, 7)
        .into_iter()
        .filter(|v| v.fract() == 0.0)
        .map(|v| Tick {
            pos: r1(xs.at(v)),
            label: format!("{v:.0}"),
            value: v,
        })
        .collect();
    xticks.insert(
        0,
        Tick {
            pos: r1(left + slot * 0.45),
            label: "dead".into(),
            value: f64::NAN,
        },
    );
    Histogram {
        w,
        h,
        left,
        top,
        right,
        bottom,
        bars,
        xticks,
        yticks: yt
            .iter()
            .map(|v| Tick {
                pos: r1(ys.at(*v)),
                label: short_num(*v),
                value: *v,
            })
            .collect(),
        dense_x: (lo..=hi).contains(&-2.0).then(|| r1(xs.at(-2.0))),
        dead,
        total: counts.iter().sum::<u64>() + dead,
    }
}

fn min_max(it: impl Iterator<Item = f64>) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for v in it {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        (0.0, 1.0)
    } else {
        (lo, hi)
    }
}

fn r1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn join_points(p: &[(f64, f64)]) -> String {
    p.iter()
        .map(|(x, y)| format!("{x},{y}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice_and_cover_the_range() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert_eq!(nice_ticks(0.13, 0.31, 4), vec![0.15, 0.2, 0.25, 0.3]);
        assert_eq!(nice_ticks(1.0, 1.0, 4), vec![1.0]);
        assert_eq!(covering_ticks(0.5, 5.5, 4), vec![0.0, 2.0, 4.0, 6.0]);
        assert_eq!(short_num(1234.0), "1.2k");
        assert_eq!(short_num(0.25), "0.25");
        assert_eq!(short_num(2.0e-4), "2.0e-4");
    }

    #[test]
    fn sparkline_maps_extremes_to_the_frame() {
        let s = sparkline(&[1.0, 3.0, f64::NAN, 2.0], 80.0, 20.0);
        assert_eq!(s.points, "2,18 27.3,2 78,10");
        assert_eq!(s.last, Some((78.0, 10.0)));
        // A flat series sits in the middle.
        let s = sparkline(&[5.0, 5.0], 80.0, 20.0);
        assert_eq!(s.points, "2,10 78,10");
    }

    #[test]
    fn histogram_shows_a_high_frequency_spike_and_dead_features() {
        let mut counts = vec![0u64; 28];
        counts[10] = 50;
        counts[26] = 200; // log10 density around -0.5: the dense spike
        let h = density_histogram(-7.0, 0.25, &counts, 30, 600.0, 200.0);
        assert_eq!(h.bars.len(), 29);
        assert_eq!(h.total, 280);
        let spike = &h.bars[27];
        assert_eq!(spike.class, "dense");
        assert!(spike.h > h.bars[11].h * 3.0, "{spike:?}");
        assert!(h.bars[0].h > 0.0 && h.bars[0].class == "dead");
        assert!(h.dense_x.is_some());
    }

    #[test]
    fn line_chart_band_and_markers() {
        let pts: Vec<LinePoint> = (0..5)
            .map(|i| LinePoint {
                x: i as f64,
                y: 1.0 + i as f64,
                band: Some((0.5 + i as f64, 1.5 + i as f64)),
                class: if i == 4 {
                    "regression".into()
                } else {
                    "point".into()
                },
                title: format!("p{i}"),
                href: None,
            })
            .collect();
        let c = line_chart(&pts, 600.0, 240.0, "s", "run", None, false);
        assert_eq!(c.markers.len(), 1);
        assert_eq!(c.markers[0].class, "regression");
        assert_eq!(c.band.split(' ').count(), 10);
        assert!(c.yticks.len() >= 3);
        // A step at the fourth point: its line sits on that point's marker, its label left of it (right half).
        let mut c = line_chart(&pts, 600.0, 240.0, "s", "run", None, true);
        add_step(&mut c, &pts, 3.0, "+33%", "regression", "t", None);
        assert_eq!(c.steps[0].x, c.markers[3].x);
        assert_eq!(c.steps[0].anchor, "end");
        assert!(c.steps[0].label_x < c.steps[0].x);
    }
}
