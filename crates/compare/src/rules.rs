//! The regression rules: how each metric is judged (direction, tolerances, seed bands) and the settings of the speed
//! detector. Built-in defaults here; a suite file overrides them (`[speed]`, `[metrics.NAME]`). A rule's name is a
//! metric name or a pattern with `*` (`kernel.*.spill_bytes`); an exact name beats a pattern, a longer pattern a
//! shorter one. docs/verdicts.md explains how the rules decide a verdict.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which way a metric gets worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Up is worse (mse, fvu, l0, time...).
    LowerIsBetter,
    /// Down is worse (fve, loss_recovered, mmcs...).
    HigherIsBetter,
    /// Recorded, never judged.
    None,
}

/// How a quality metric is judged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricRule {
    pub direction: Direction,
    /// Relative tolerance: changes within abs_tol + rel_tol·|base| are noise (float summation order, ...).
    #[serde(default = "default_rel_tol")]
    pub rel_tol: f64,
    #[serde(default = "default_abs_tol")]
    pub abs_tol: f64,
    /// For non-deterministic runs with several seeds: the band is mean ± (seed_sigmas·sd + tolerance).
    #[serde(default = "default_sigmas")]
    pub seed_sigmas: f64,
}

fn default_rel_tol() -> f64 {
    1e-3
}
fn default_abs_tol() -> f64 {
    1e-6
}
fn default_sigmas() -> f64 {
    3.0
}

/// Speed detector settings (docs/verdicts.md, "Speed").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeedRule {
    /// Mann–Whitney significance level.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// History points (relative neighbour changes) the fence is learned from.
    #[serde(default = "default_history")]
    pub history: usize,
    /// Fewer changes than this in history: use `min_threshold` instead of the fence.
    #[serde(default = "default_min_history")]
    pub min_history: usize,
    /// Relative change threshold when history is short.
    #[serde(default = "default_min_threshold")]
    pub min_threshold: f64,
    /// The threshold never goes below this, even when history is very quiet.
    #[serde(default = "default_floor")]
    pub floor: f64,
    /// Benchmarks with fewer samples than this a side (training wall time) cannot use the rank test: they are not
    /// judged until history gives a fence, then judged on the fence alone, at least `single_sample_threshold`.
    #[serde(default = "default_min_samples")]
    pub min_samples: usize,
    #[serde(default = "default_single")]
    pub single_sample_threshold: f64,
    /// Paired timing (base and head side by side in one job): the change must reach this, and the Wilcoxon
    /// signed-rank test reject at `alpha` (docs/verdicts.md, "Paired timing").
    #[serde(default = "default_paired_threshold")]
    pub paired_threshold: f64,
}

fn default_paired_threshold() -> f64 {
    0.02
}

fn default_alpha() -> f64 {
    0.002
}
fn default_history() -> usize {
    30
}
fn default_min_history() -> usize {
    10
}
fn default_min_threshold() -> f64 {
    0.05
}
fn default_floor() -> f64 {
    0.01
}
fn default_min_samples() -> usize {
    5
}
fn default_single() -> f64 {
    0.25
}

impl Default for SpeedRule {
    fn default() -> Self {
        SpeedRule {
            alpha: default_alpha(),
            history: default_history(),
            min_history: default_min_history(),
            min_threshold: default_min_threshold(),
            floor: default_floor(),
            min_samples: default_min_samples(),
            single_sample_threshold: default_single(),
            paired_threshold: default_paired_threshold(),
        }
    }
}

/// The regression rules: speed settings and per-metric rules (built-in defaults, overridden by the suite).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    pub speed: SpeedRule,
    pub metrics: BTreeMap<String, MetricRule>,
}

impl Default for Rules {
    fn default() -> Self {
        use Direction::*;
        let rule = |direction, rel_tol| MetricRule {
            direction,
            rel_tol,
            abs_tol: 1e-6,
            seed_sigmas: 3.0,
        };
        let mut metrics = BTreeMap::new();
        for m in ["mse", "fvu", "l0", "delta_ce", "kl_div"] {
            metrics.insert(m.to_string(), rule(LowerIsBetter, 1e-3));
        }
        for m in ["dead_fraction", "dense_fraction"] {
            metrics.insert(
                m.to_string(),
                MetricRule {
                    abs_tol: 1e-3,
                    ..rule(LowerIsBetter, 0.0)
                },
            );
        }
        for m in [
            "fve",
            "explained_variance",
            "cossim",
            "loss_recovered",
            "kl_score",
            "mmcs",
            "recovered_fraction",
        ] {
            metrics.insert(m.to_string(), rule(HigherIsBetter, 1e-3));
        }
        // ptxas resources are exact integers: any new spill is a regression, registers may move a little (a
        // compiler update), shared memory only by a deliberate tiling change.
        let exact = |direction, rel_tol| MetricRule {
            direction,
            rel_tol,
            abs_tol: 0.0,
            seed_sigmas: 0.0,
        };
        metrics.insert("kernel.*.spill_bytes".into(), exact(LowerIsBetter, 0.0));
        metrics.insert("kernel.*.registers".into(), exact(LowerIsBetter, 0.10));
        metrics.insert("kernel.*.smem_bytes".into(), exact(LowerIsBetter, 0.25));
        // The static SASS mix (nvdisasm): instruction counts move only when the kernel or the compiler does.
        for m in [
            "kernel.*.sass.instructions",
            "kernel.*.sass.main_loop_instructions",
        ] {
            metrics.insert(m.into(), exact(LowerIsBetter, 0.05));
        }
        metrics.insert(
            "kernel.*.sass.fma_share".into(),
            exact(HigherIsBetter, 0.05),
        );
        for m in ["kernel.*.sass.*_loads", "kernel.*.sass.*_stores"] {
            metrics.insert(m.into(), exact(LowerIsBetter, 0.10));
        }
        // The emulated kernels' counts (docs/kernel-metrics.md) repeat exactly: 5% more traffic, requests, barriers or
        // fp32 operations, 5% lower coalescing, and any new bank conflict or failed check count.
        for m in [
            "global_load_sectors",
            "global_store_sectors",
            "global_requests",
            "shared_requests",
            "atomics",
            "barriers_per_block",
            "fp32_ops_per_thread",
            "flops",
        ] {
            metrics.insert(format!("kernel.emu.*.{m}"), exact(LowerIsBetter, 0.05));
        }
        metrics.insert(
            "kernel.emu.*.coalescing".into(),
            exact(HigherIsBetter, 0.05),
        );
        metrics.insert(
            "kernel.emu.*.bank_conflicts".into(),
            exact(LowerIsBetter, 0.0),
        );
        metrics.insert("kernel.emu.failed_checks".into(), exact(LowerIsBetter, 0.0));
        // The roofline is an estimate from those counts: recorded and shown, not judged.
        metrics.insert("roofline.*".into(), exact(None, 0.0));
        // Counted cost (instructions, estimated cycles under Valgrind) is deterministic: 1% either way counts.
        metrics.insert("instructions".into(), exact(LowerIsBetter, 0.01));
        metrics.insert("est_cycles".into(), exact(LowerIsBetter, 0.01));
        // CUDA op timings (medians of CUDA events): judged on time; the derived rates are recorded only.
        metrics.insert("cuda.*.ms".into(), exact(LowerIsBetter, 0.10));
        for m in [
            "cuda.*.gflops",
            "cuda.*.gbps",
            "cuda.*.vs_cublas",
            "cuda.*.tokens_per_sec",
        ] {
            metrics.insert(m.into(), exact(None, 0.0));
        }
        // Time to quality (docs/metrics.md): steps are deterministic on the CPU, seconds carry timing noise, and a
        // target no longer reached is a regression.
        metrics.insert("time_to.*_steps".into(), exact(LowerIsBetter, 0.05));
        // Seconds: 15%, and never less than a second (a tiny benchmark reaches its target in milliseconds).
        metrics.insert(
            "time_to.*_secs".into(),
            MetricRule {
                abs_tol: 1.0,
                ..exact(LowerIsBetter, 0.15)
            },
        );
        metrics.insert("time_to.*_reached".into(), exact(HigherIsBetter, 0.0));
        // The PyTorch peer: our throughput over the peer's, both from the same run; the two speeds themselves are
        // recorded, not judged.
        metrics.insert("ratio.*".into(), exact(HigherIsBetter, 0.10));
        metrics.insert("peer.torch.*".into(), exact(None, 0.0));
        metrics.insert("ours.*".into(), exact(None, 0.0));
        Rules {
            speed: SpeedRule::default(),
            metrics,
        }
    }
}

impl Rules {
    /// The rule for a metric: its exact name first, else the most specific matching pattern (a key with `*`,
    /// matching any run of characters, e.g. `kernel.*.registers`; longest pattern wins).
    pub fn rule(&self, metric: &str) -> Option<&MetricRule> {
        if let Some(r) = self.metrics.get(metric) {
            return Some(r);
        }
        self.metrics
            .iter()
            .filter(|(k, _)| k.contains('*') && glob_match(k, metric))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, r)| r)
    }

    /// Whether a metric is judged at all (has a rule whose direction is not `none`).
    #[cfg(test)]
    pub fn judged(&self, metric: &str) -> bool {
        self.rule(metric)
            .is_some_and(|r| r.direction != Direction::None)
    }
}

/// `*` matches any run of characters (dots included); everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| glob_match(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_rules_match_patterns_most_specific_first() {
        assert!(glob_match(
            "kernel.*.registers",
            "kernel.sm_90.encode_relu.registers"
        ));
        assert!(!glob_match(
            "kernel.*.registers",
            "kernel.sm_90.encode_relu.spill_bytes"
        ));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-c"));
        let mut rules = Rules::default();
        assert_eq!(
            rules
                .rule("kernel.sm_90.encode_relu.spill_bytes")
                .unwrap()
                .rel_tol,
            0.0
        );
        assert!(rules.judged("kernel.sm_80.adam_step.registers"));
        assert!(!rules.judged("cuda.encode.relu.gflops"));
        assert!(!rules.judged("no_such_metric"));
        // An exact rule beats a pattern; a longer pattern beats a shorter one.
        let exact = MetricRule {
            direction: Direction::None,
            rel_tol: 0.0,
            abs_tol: 0.0,
            seed_sigmas: 0.0,
        };
        rules
            .metrics
            .insert("kernel.sm_80.*.registers".into(), exact);
        assert!(!rules.judged("kernel.sm_80.adam_step.registers"));
        assert!(rules.judged("kernel.sm_90.adam_step.registers"));
        rules
            .metrics
            .insert("kernel.sm_90.adam_step.registers".into(), exact);
        assert!(!rules.judged("kernel.sm_90.adam_step.registers"));
    }
}
