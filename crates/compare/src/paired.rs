//! The verdict of paired timing (docs/verdicts.md, "Paired timing"): base and head were timed side by side in one job,
//! pair by pair, so each pair's log ratio d = ln(head / base) carries the change while drift and neighbours cancel.
//! The change is the Hodges–Lehmann estimate of the ratios (the median of the pairwise means of d), the test is the
//! Wilcoxon signed-rank test on d (exact without ties up to 50 pairs, else the normal approximation with tie and
//! continuity correction), and a change is significant when p < alpha AND it reaches `paired_threshold`. The history
//! fence of unpaired runs does not apply: run-to-run spread is what pairing removes.

use statrs::distribution::{ContinuousCDF, Normal};

use crate::rules::Rules;
use crate::stats::{self, detectable_change};
use crate::{Row, Verdict};

/// The pairing a result was timed in (`extra.paired.with`): two results with the same token are each other's pair.
pub fn token(r: &saeperf_store::BenchResult) -> Option<&str> {
    r.extra.get("paired")?.get("with")?.as_str()
}

/// "confirmed: …" when the timing was borderline and measured again with more pairs (`extra.paired.confirmed`).
pub fn confirmation(r: &saeperf_store::BenchResult) -> Option<String> {
    let p = r.extra.get("paired")?;
    let c = p.get("confirmed")?;
    let before = c.get("pairs_before")?.as_u64()?;
    let total = p.get("pairs")?.as_u64()?;
    Some(format!(
        "confirmed: borderline after {before} blocks ({}), measured again with {} more",
        c.get("verdict_before")?.as_str().unwrap_or("?"),
        total.saturating_sub(before)
    ))
}

/// Largest number of pairs for which the exact signed-rank distribution is used.
const EXACT_MAX: usize = 50;

fn log_ratios(base: &[f64], head: &[f64]) -> Vec<f64> {
    base.iter()
        .zip(head)
        .filter(|(b, h)| b.is_finite() && h.is_finite() && **b > 0.0 && **h > 0.0)
        .map(|(b, h)| (h / b).ln())
        .collect()
}

/// Standard error of the mean log ratio of pairs, from their robust spread (1.4826 · MAD / √n); infinite with
/// fewer than 3 pairs.
pub fn log_ratio_se(base: &[f64], head: &[f64]) -> f64 {
    let d = log_ratios(base, head);
    if d.len() < 3 {
        return f64::INFINITY;
    }
    stats::robust_sd(&d).unwrap_or(f64::INFINITY) / (d.len() as f64).sqrt()
}

/// The spread of one pair's log ratio (robust sd), the noise a single pair carries.
pub fn pair_spread(base: &[f64], head: &[f64]) -> Option<f64> {
    stats::robust_sd(&log_ratios(base, head))
}

/// Hodges–Lehmann estimate: the median of the Walsh averages (d_i + d_j) / 2, i ≤ j.
pub fn hodges_lehmann(d: &[f64]) -> Option<f64> {
    let mut w = Vec::with_capacity(d.len() * (d.len() + 1) / 2);
    for i in 0..d.len() {
        for j in i..d.len() {
            w.push((d[i] + d[j]) / 2.0);
        }
    }
    stats::median(&w)
}

/// Two-sided p-value of the Wilcoxon signed-rank test that `d` is centred on zero (zeros dropped, as Wilcoxon did).
pub fn wilcoxon(d: &[f64]) -> Option<f64> {
    let mut a: Vec<(f64, bool)> = d
        .iter()
        .filter(|x| **x != 0.0 && x.is_finite())
        .map(|x| (x.abs(), *x > 0.0))
        .collect();
    let n = a.len();
    if n == 0 {
        return None;
    }
    a.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (ranks, tie_term) = stats::tied_ranks(&a, |x| x.0);
    let ties = tie_term > 0.0;
    let w_plus: f64 = a
        .iter()
        .zip(&ranks)
        .filter(|(x, _)| x.1)
        .map(|(_, r)| r)
        .sum();
    let nf = n as f64;
    if !ties && n <= EXACT_MAX {
        // Number of subsets of {1..n} with each rank sum.
        let max = n * (n + 1) / 2;
        let mut c = vec![0.0f64; max + 1];
        c[0] = 1.0;
        for k in 1..=n {
            for s in (k..=max).rev() {
                c[s] += c[s - k];
            }
        }
        let total: f64 = c.iter().sum();
        let w = w_plus.round() as usize;
        let lower: f64 = c[..=w].iter().sum::<f64>() / total;
        let upper: f64 = c[w..].iter().sum::<f64>() / total;
        return Some((2.0 * lower.min(upper)).min(1.0));
    }
    let mean = nf * (nf + 1.0) / 4.0;
    let var = nf * (nf + 1.0) * (2.0 * nf + 1.0) / 24.0 - tie_term / 48.0;
    if var <= 0.0 {
        return Some(1.0);
    }
    let z = ((w_plus - mean).abs() - 0.5).max(0.0) / var.sqrt();
    let normal = Normal::new(0.0, 1.0).expect("standard normal");
    Some((2.0 * (1.0 - normal.cdf(z))).min(1.0))
}

/// Judge paired samples: `base[i]` and `head[i]` were taken side by side.
pub fn judge_paired(bench: &str, base: &[f64], head: &[f64], rules: &Rules) -> Row {
    let s = &rules.speed;
    let d = log_ratios(base, head);
    let t = s.paired_threshold;
    let mut row = Row {
        bench: bench.to_string(),
        metric: "time".into(),
        base: stats::median(base),
        head: stats::median(head),
        change: None,
        threshold: Some(t),
        p: None,
        verdict: Verdict::Noise,
        detail: String::new(),
        detectable: None,
        triage: None,
    };
    if d.len() < 3 {
        row.threshold = None;
        row.verdict = if base.is_empty() {
            Verdict::New
        } else if head.is_empty() {
            Verdict::Missing
        } else {
            Verdict::Noise
        };
        row.detail = format!("{} pairs: too few to judge", d.len());
        return row;
    }
    let hl = hodges_lehmann(&d).expect("non-empty");
    let change = hl.exp_m1();
    let p = wilcoxon(&d).unwrap_or(1.0);
    let se = log_ratio_se(base, head);
    row.change = Some(change);
    row.p = Some(p);
    row.detail = format!(
        "paired: Wilcoxon signed-rank p={p:.2e} (alpha {}), threshold {:.1}%, {} paired blocks, spread {:.1}% per block",
        s.alpha,
        t * 100.0,
        d.len(),
        pair_spread(base, head).unwrap_or(f64::NAN) * 100.0
    );
    // The smallest change detected with 95% power; none when even pairs that all moved one way cannot reach alpha.
    if stats::min_signed_rank_p(d.len()) < s.alpha {
        row.detectable = Some(detectable_change(se, s.alpha, t));
    } else {
        row.detail.push_str(&format!(
            "; with {} blocks the signed-rank test cannot reach alpha {} (it needs {}): no change is detectable",
            d.len(),
            s.alpha,
            stats::signed_rank_min_pairs(s.alpha)
        ));
    }
    if p < s.alpha && change.abs() >= t {
        row.verdict = if change > 0.0 {
            Verdict::Regression
        } else {
            Verdict::Improvement
        };
        row.detail = format!("{:.1}x the threshold; {}", change.abs() / t, row.detail);
    }
    row
}

/// Whether a speed verdict is too close to call without more pairs: p within 10× of alpha either way, or a change
/// within 1.5× of the threshold either way.
pub fn borderline(row: &Row, rules: &Rules) -> bool {
    let a = rules.speed.alpha;
    let near_p = row.p.is_some_and(|p| p < 10.0 * a && p > a / 10.0);
    let near_t = match (row.change, row.threshold) {
        (Some(c), Some(t)) if t > 0.0 => c.abs() >= t / 1.5 && c.abs() <= t * 1.5,
        _ => false,
    };
    near_p || near_t
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, LogNormal};

    #[test]
    fn wilcoxon_matches_hand_worked_values() {
        // All 6 ratios positive: W+ = 21 = max, exact p = 2 / 2^6.
        let d = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
        assert!((wilcoxon(&d).unwrap() - 2.0 / 64.0).abs() < 1e-12);
        // Symmetric around zero: p = 1.
        assert_eq!(wilcoxon(&[-0.1, 0.1, -0.2, 0.2]).unwrap(), 1.0);
        // With ties: the normal approximation, still small for 30 positive ratios.
        let d: Vec<f64> = (0..30).map(|i| 0.01 * (1 + i % 3) as f64).collect();
        assert!(wilcoxon(&d).unwrap() < 1e-5);
        assert_eq!(wilcoxon(&[]), None);
    }

    #[test]
    fn hodges_lehmann_is_the_median_of_walsh_averages() {
        // Walsh averages of [0, 1, 5]: 0, 0.5, 2.5, 1, 3, 5 -> median 1.75.
        assert_eq!(hodges_lehmann(&[0.0, 1.0, 5.0]), Some(1.75));
    }

    fn pairs(seed: u64, n: usize, change: f64, noise: f64) -> (Vec<f64>, Vec<f64>) {
        // A common drift per pair (hits both sides) and independent noise per side.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let drift = LogNormal::new(0.0, 0.2).unwrap();
        let own = LogNormal::new(0.0, noise).unwrap();
        let (mut b, mut h) = (vec![], vec![]);
        for _ in 0..n {
            let g = drift.sample(&mut rng);
            b.push(1e-3 * g * own.sample(&mut rng));
            h.push(1e-3 * (1.0 + change) * g * own.sample(&mut rng));
        }
        (b, h)
    }

    #[test]
    fn pairs_see_through_drift() {
        let rules = Rules::default();
        // A/A with 20% drift between pairs and 2% own noise: no alarm in 200 trials.
        let alarms = (0..200)
            .filter(|&i| {
                let (b, h) = pairs(i, 40, 0.0, 0.02);
                judge_paired("op", &b, &h, &rules).verdict.needs_attention()
            })
            .count();
        assert_eq!(alarms, 0);
        // A 5% slowdown under the same drift: caught every time, with a detectable change below 5%.
        for i in 0..50 {
            let (b, h) = pairs(1000 + i, 40, 0.05, 0.02);
            let row = judge_paired("op", &b, &h, &rules);
            assert_eq!(row.verdict, Verdict::Regression, "{row:?}");
            assert!(row.detectable.unwrap() < 0.05, "{row:?}");
            assert!((row.change.unwrap() - 0.05).abs() < 0.02, "{row:?}");
        }
        // Faster: an improvement. Too few pairs: not judged.
        let (b, h) = pairs(7, 40, -0.1, 0.02);
        assert_eq!(
            judge_paired("op", &b, &h, &rules).verdict,
            Verdict::Improvement
        );
        assert_eq!(
            judge_paired("op", &b[..2], &h[..2], &rules).verdict,
            Verdict::Noise
        );
    }

    #[test]
    fn borderline_results_are_recognised() {
        let rules = Rules::default();
        let t = rules.speed.paired_threshold;
        let mut row = judge_paired("op", &[1.0; 5], &[1.0; 5], &rules);
        row.p = Some(rules.speed.alpha * 3.0);
        row.change = Some(t * 3.0);
        assert!(borderline(&row, &rules));
        row.p = Some(1e-9);
        row.change = Some(t * 1.2);
        assert!(borderline(&row, &rules));
        row.change = Some(t * 4.0);
        assert!(!borderline(&row, &rules));
    }
}
