//! Statistics for the regression detector: medians and quantiles, the Mann–Whitney rank test (exact distribution
//! when the samples are small and untied, normal approximation with tie and continuity correction otherwise, via
//! statrs), rustc-perf's noise fence T = Q3 + 3·IQR over relative changes between neighbouring history points, and
//! the smallest change a finished comparison could have detected (docs/verdicts.md, "The detectable change").

use statrs::distribution::{ContinuousCDF, Normal};

pub use saeperf_store::samples::{median, quantile};

/// Result of a two-sided Mann–Whitney U test.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MannWhitney {
    /// U statistic of the first sample.
    pub u: f64,
    /// Two-sided p-value.
    pub p: f64,
    /// Whether the exact null distribution was used (no ties, small samples).
    pub exact: bool,
}

/// Largest n1 + n2 for which the exact distribution is computed.
const EXACT_MAX_TOTAL: usize = 60;

/// Two-sided Mann–Whitney U test of `a` against `b`. Returns None when either side is empty.
pub fn mann_whitney(a: &[f64], b: &[f64]) -> Option<MannWhitney> {
    let (n1, n2) = (a.len(), b.len());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let n = n1 + n2;
    let mut all: Vec<(f64, usize)> = a
        .iter()
        .map(|&x| (x, 0))
        .chain(b.iter().map(|&x| (x, 1)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (ranks, tie_term) = tied_ranks(&all, |x| x.0);
    let has_ties = tie_term > 0.0;
    let r1: f64 = all
        .iter()
        .zip(&ranks)
        .filter(|(x, _)| x.1 == 0)
        .map(|(_, r)| r)
        .sum();
    let u = r1 - (n1 * (n1 + 1)) as f64 / 2.0;
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    if !has_ties && n <= EXACT_MAX_TOTAL {
        let dist = exact_u_distribution(n1, n2);
        let total: f64 = dist.iter().sum();
        let k = u.round() as usize;
        let lower: f64 = dist[..=k].iter().sum::<f64>() / total;
        let upper: f64 = dist[k..].iter().sum::<f64>() / total;
        let p = (2.0 * lower.min(upper)).min(1.0);
        return Some(MannWhitney { u, p, exact: true });
    }
    let mean = n1f * n2f / 2.0;
    let nf = n as f64;
    let var = n1f * n2f / 12.0 * ((nf + 1.0) - tie_term / (nf * (nf - 1.0)));
    if var <= 0.0 {
        return Some(MannWhitney {
            u,
            p: 1.0,
            exact: false,
        });
    }
    let z = ((u - mean).abs() - 0.5).max(0.0) / var.sqrt();
    let normal = Normal::new(0.0, 1.0).expect("standard normal");
    let p = (2.0 * (1.0 - normal.cdf(z))).min(1.0);
    Some(MannWhitney { u, p, exact: false })
}

/// Ranks (1-based) of `sorted` by `key`, ties given their average rank, and the tie correction Σ(t³ − t) over tie
/// groups (0 without ties). Shared by the Mann–Whitney and the signed-rank tests.
pub fn tied_ranks<T>(sorted: &[T], key: impl Fn(&T) -> f64) -> (Vec<f64>, f64) {
    let n = sorted.len();
    let mut ranks = vec![0.0; n];
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && key(&sorted[j + 1]) == key(&sorted[i]) {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        tie_term += t * t * t - t;
        let r = (i + j) as f64 / 2.0 + 1.0;
        ranks[i..=j].iter_mut().for_each(|x| *x = r);
        i = j + 1;
    }
    (ranks, tie_term)
}

/// Number of arrangements giving each U = 0..=n1·n2 under the null (no ties), as f64 counts.
fn exact_u_distribution(n1: usize, n2: usize) -> Vec<f64> {
    // f[m][n] is the distribution for sizes (m, n); f(m, n, u) = f(m-1, n, u-n) + f(m, n-1, u).
    let mut prev: Vec<Vec<f64>> = (0..=n2).map(|_| vec![1.0]).collect(); // m = 0: U is always 0.
    for m in 1..=n1 {
        let mut cur: Vec<Vec<f64>> = Vec::with_capacity(n2 + 1);
        cur.push(vec![1.0]); // n = 0
        for nn in 1..=n2 {
            let mut d = vec![0.0; m * nn + 1];
            for (u, c) in prev[nn].iter().enumerate() {
                d[u + nn] += c;
            }
            for (u, c) in cur[nn - 1].iter().enumerate() {
                d[u] += c;
            }
            cur.push(d);
        }
        prev = cur;
    }
    prev.swap_remove(n2)
}

/// rustc-perf's significance threshold from a time-ordered series: relative changes between neighbours over the last
/// `window` of them, T = Q3 + 3·IQR. None when there are fewer than `min_points` changes.
pub fn fence(series: &[f64], window: usize, min_points: usize) -> Option<f64> {
    let d: Vec<f64> = series
        .windows(2)
        .filter(|w| w[0].is_finite() && w[1].is_finite() && w[0] != 0.0)
        .map(|w| ((w[0] - w[1]) / w[0]).abs())
        .collect();
    let d = &d[d.len().saturating_sub(window)..];
    if d.len() < min_points.max(1) {
        return None;
    }
    let q1 = quantile(d, 0.25)?;
    let q3 = quantile(d, 0.75)?;
    Some(q3 + 3.0 * (q3 - q1))
}

/// Power at which [`detectable_change`] states the smallest detectable change: a true change of that size is flagged
/// in 95% of comparisons.
pub const POWER: f64 = 0.95;

/// Robust standard deviation: 1.4826 · the median absolute deviation from the median (the sd for normal data).
pub fn robust_sd(xs: &[f64]) -> Option<f64> {
    let m = median(xs)?;
    let dev: Vec<f64> = xs.iter().map(|x| (x - m).abs()).collect();
    Some(1.4826 * median(&dev)?)
}

/// Standard error of the difference of two log-medians: logs of the samples, robust sd s on each side,
/// se = sqrt(s_a²/n_a + s_b²/n_b). None when a side has fewer than two positive finite samples.
pub fn log_se(a: &[f64], b: &[f64]) -> Option<f64> {
    let side = |xs: &[f64]| -> Option<f64> {
        let logs: Vec<f64> = xs
            .iter()
            .filter(|x| x.is_finite() && **x > 0.0)
            .map(|x| x.ln())
            .collect();
        if logs.len() < 2 {
            return None;
        }
        let s = robust_sd(&logs)?;
        Some(s * s / logs.len() as f64)
    };
    Some((side(a)? + side(b)?).sqrt())
}

/// The smallest relative change a comparison could have detected: a two-sided test at false-alarm rate `alpha` on an
/// estimate with standard error `se_log` (log space) flags a true change this large with probability [`POWER`], and
/// the change must also reach the relative `threshold`. With z_a = Φ⁻¹(1 − alpha/2), z_b = Φ⁻¹(POWER) = 1.645:
/// x = max((z_a + z_b)·se, ln(1 + threshold) + z_b·se), returned as the relative change exp(x) − 1.
pub fn detectable_change(se_log: f64, alpha: f64, threshold: f64) -> f64 {
    let normal = Normal::new(0.0, 1.0).expect("standard normal");
    let z_a = normal.inverse_cdf(1.0 - alpha / 2.0);
    let z_b = normal.inverse_cdf(POWER);
    let x = ((z_a + z_b) * se_log).max(threshold.ln_1p() + z_b * se_log);
    x.exp_m1()
}

/// The smallest two-sided p-value the exact Mann–Whitney test can give with `n1` and `n2` samples:
/// 2 / C(n1 + n2, n1) (both samples completely separated).
pub fn min_rank_p(n1: usize, n2: usize) -> f64 {
    let k = n1.min(n2);
    let n = n1 + n2;
    let c = (0..k).fold(1.0_f64, |c, i| c * (n - i) as f64 / (i + 1) as f64);
    (2.0 / c).min(1.0)
}

/// The smallest two-sided p-value the exact Wilcoxon signed-rank test can give with `n` pairs: 2 / 2^n (every
/// pair moved the same way).
pub fn min_signed_rank_p(n: usize) -> f64 {
    (2.0 / 2f64.powi(n.min(1000) as i32)).min(1.0)
}

/// The fewest pairs with which the signed-rank test can reach `alpha` at all (10 for alpha 0.002).
pub fn signed_rank_min_pairs(alpha: f64) -> usize {
    (1..=1000)
        .find(|&n| min_signed_rank_p(n) < alpha)
        .unwrap_or(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.75), Some(4.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn exact_matches_known_values() {
        // Completely separated samples of 7 and 7: p = 2 / C(14, 7) = 2 / 3432.
        let a: Vec<f64> = (0..7).map(|i| i as f64).collect();
        let b: Vec<f64> = (10..17).map(|i| i as f64).collect();
        let t = mann_whitney(&a, &b).unwrap();
        assert!(t.exact);
        assert_eq!(t.u, 0.0);
        assert!((t.p - 2.0 / 3432.0).abs() < 1e-12, "{}", t.p);
        // Separated 5 and 5: p = 2 / C(10, 5) = 2 / 252.
        let t = mann_whitney(&[1., 2., 3., 4., 5.], &[6., 7., 8., 9., 10.]).unwrap();
        assert!((t.p - 0.007936507936507936).abs() < 1e-12);
        // Identical samples: p = 1.
        let t = mann_whitney(&[1., 2., 3.], &[1., 2., 3.]).unwrap();
        assert_eq!(t.p, 1.0);
    }

    #[test]
    fn normal_approximation_with_ties() {
        // Worked by hand: U = 3.5 (pairs a > b, ties half), tie-corrected variance n1 n2/12 ((N+1) - Σ(t³-t)/(N(N-1)))
        // with tie groups 2,4,3,2 -> z = (|3.5 - 24.5| - 0.5)/sd, p = erfc(z/√2) = 0.0076599885867...
        let t = mann_whitney(&[1., 2., 2., 3., 3., 3., 4.], &[3., 4., 4., 5., 5., 6., 7.]).unwrap();
        assert!(!t.exact);
        assert_eq!(t.u, 3.5);
        assert!((t.p - 0.007659988586736329).abs() < 1e-9, "{}", t.p);
        // All values equal: variance 0 -> p = 1, not NaN.
        assert_eq!(mann_whitney(&[1.0; 40], &[1.0; 40]).unwrap().p, 1.0);
    }

    #[test]
    fn fence_follows_rustc_perf() {
        assert_eq!(fence(&[1.0, 1.0], 30, 5), None);
        // Relative changes 0.01, 0.02, ... : the fence is Q3 + 3 IQR of them.
        let series = [1.0, 1.01, 1.0, 1.02, 1.0, 1.01, 1.0];
        let t = fence(&series, 30, 3).unwrap();
        let d: Vec<f64> = series
            .windows(2)
            .map(|w| ((w[0] - w[1]) / w[0]).abs())
            .collect();
        let q1 = quantile(&d, 0.25).unwrap();
        let q3 = quantile(&d, 0.75).unwrap();
        assert!((t - (q3 + 3.0 * (q3 - q1))).abs() < 1e-15);
        // Only the last `window` changes count.
        let mut long = vec![1.0, 2.0, 1.0, 2.0];
        long.extend(std::iter::repeat_n(1.0, 40));
        assert_eq!(fence(&long, 30, 3), Some(0.0));
    }

    #[test]
    fn detectable_change_formula() {
        // Worked by hand: alpha 0.002 -> z_a = 3.090232, z_b = 1.644854; se 0.01.
        // Threshold 1%: max(4.735086·0.01, ln 1.01 + 0.01644854) = 0.04735086 -> e^x - 1 = 0.0484898.
        let d = detectable_change(0.01, 0.002, 0.01);
        assert!((d - 0.048_489_8).abs() < 1e-6, "{d}");
        // Threshold 5%: ln 1.05 + 0.01644854 = 0.06523871 > 0.04735 -> e^x - 1 = 0.0674137.
        let d = detectable_change(0.01, 0.002, 0.05);
        assert!((d - 0.067_413_7).abs() < 1e-6, "{d}");
        // No dispersion: the threshold itself.
        assert!((detectable_change(0.0, 0.002, 0.05) - 0.05).abs() < 1e-12);
        assert_eq!(POWER, 0.95);
    }

    #[test]
    fn detectable_shrinks_with_n_and_grows_with_dispersion() {
        let spread = |n: usize, width: f64| -> Vec<f64> {
            (0..n)
                .map(|i| 1.0 + width * (i as f64 / (n - 1) as f64 - 0.5))
                .collect()
        };
        let d = |n, w| detectable_change(log_se(&spread(n, w), &spread(n, w)).unwrap(), 0.002, 0.0);
        assert!(d(40, 0.1) < d(20, 0.1) && d(20, 0.1) < d(10, 0.1));
        assert!(d(20, 0.2) > d(20, 0.1) && d(20, 0.1) > d(20, 0.05));
        // Robust sd: 1.4826 · MAD. Of 1..=5: median 3, deviations 2,1,0,1,2 -> MAD 1.
        assert!((robust_sd(&[1., 2., 3., 4., 5.]).unwrap() - 1.4826).abs() < 1e-12);
        assert_eq!(log_se(&[1.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn smallest_rank_p() {
        assert!((min_rank_p(5, 5) - 2.0 / 252.0).abs() < 1e-15);
        assert!((min_rank_p(7, 7) - 2.0 / 3432.0).abs() < 1e-15);
        assert!(min_rank_p(6, 6) > 0.002 && min_rank_p(7, 7) < 0.002);
        assert_eq!(min_rank_p(1, 1), 1.0);
        assert!((min_signed_rank_p(10) - 2.0 / 1024.0).abs() < 1e-15);
        assert_eq!(signed_rank_min_pairs(0.002), 10);
        assert_eq!(signed_rank_min_pairs(0.05), 6);
    }
}
