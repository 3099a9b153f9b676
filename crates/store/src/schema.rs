//! The store's data model: what one benchmark run records, as serialized into sled and into JSON bundles.
//!
//! A [`Run`] is the unit of storage and comparison: the run's metadata ([`RunMeta`]: commit, branch, PR, dirty flag,
//! times, machine fingerprint, backend, suite and profile hash, activation-set digests, completion state) plus one
//! [`BenchResult`] per benchmark (raw timing samples, metric values, training curve, status). Every type here is
//! plain serde data so the same shape is used on disk and in `runner db export` bundles; bump
//! [`SCHEMA_VERSION`] whenever a field changes meaning.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::fingerprint::Fingerprint;

/// Version of the on-disk and bundle schema. Stores and bundles with another version are refused with a clear error.
pub const SCHEMA_VERSION: u32 = 1;

/// The profile `runner calibrate` stores its runs under (the detector measured on a machine, one result per method
/// and injected slowdown, kind [`BenchKind::Calibration`]). Such a run is never a benchmark series, a baseline or a
/// point of history: only the dashboard's calibration page shows it.
pub const CALIBRATION_PROFILE: &str = "calibrate";

/// Whether a run finished. Only `Complete` runs are compared or used as baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Started, never finished (still running, crashed, or killed). Never a baseline.
    Incomplete,
    /// Every benchmark ran (some may have failed) and the run was committed atomically.
    Complete,
}

/// Everything known about a run apart from its per-benchmark results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Sortable unique id: `YYYYMMDDTHHMMSS-xxxxxx` (UTC start time + 6 random hex digits).
    pub id: String,
    pub state: RunState,
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub pr: Option<u64>,
    /// The working tree had uncommitted changes to tracked files.
    pub dirty: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub fingerprint: Fingerprint,
    /// `fingerprint.id()`, stored so that filters need not recompute it.
    pub fingerprint_id: String,
    /// The backend the run's ops ran and its reference dictionaries trained on.
    pub backend: RunBackend,
    pub suite: String,
    pub profile: String,
    /// SHA-256 of the suite as resolved for the profile (what was actually run).
    pub suite_hash: String,
    /// Activation-set name -> SHA-256 of its contents.
    pub activation_sets: BTreeMap<String, String>,
    /// Names of the benchmarks the run committed (filled at completion; `db check` verifies each one exists).
    pub benchmarks: Vec<String>,
    pub runner_version: String,
    /// Benchmarks of the suite this run did not run, with the reason (e.g. the language-model set was not
    /// prepared): what the run could not see, shown wherever the run is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped: BTreeMap<String, String>,
}

impl RunMeta {
    /// A `runner calibrate` run ([`CALIBRATION_PROFILE`]), not a benchmark run.
    pub fn is_calibration(&self) -> bool {
        self.profile == CALIBRATION_PROFILE
    }
}

/// The backend a run used, as recorded (`"cpu"`, `"reference"`, `"cuda"` in JSON). Chosen once per run by the
/// command line and passed down; nothing below it matches backend names as strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunBackend {
    /// The fast CPU ops.
    Cpu,
    /// The plain CPU reference loops.
    Reference,
    /// The CUDA kernels.
    Cuda,
}

impl RunBackend {
    pub const ALL: [RunBackend; 3] = [RunBackend::Cpu, RunBackend::Reference, RunBackend::Cuda];

    pub fn as_str(self) -> &'static str {
        match self {
            RunBackend::Cpu => "cpu",
            RunBackend::Reference => "reference",
            RunBackend::Cuda => "cuda",
        }
    }

    /// Whether fixed seeds give bit-identical results (the CPU backends); CUDA's atomics and reduction order do not,
    /// so its quality is judged against a band over seeds.
    pub fn is_deterministic(self) -> bool {
        matches!(self, RunBackend::Cpu | RunBackend::Reference)
    }
}

impl std::fmt::Display for RunBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RunBackend::ALL
            .into_iter()
            .find(|b| b.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown backend {s:?} (cpu, reference or cuda)"))
    }
}

/// What a benchmark measures; decides which comparisons apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchKind {
    /// Trains a reference dictionary and evaluates it.
    Train,
    /// Trains with a low penalty, prunes dense features, evaluates.
    Prune,
    /// Times one op at fixed shapes.
    Op,
    /// The CUDA kernels' ptxas resource report (registers, shared memory, spills); no GPU involved.
    Resources,
    /// The CUDA ops timed with CUDA events next to cuBLAS SGEMM (GPU only); one median per metric.
    CudaOps,
    /// The CUDA kernels run in the CPU emulator at fixed small shapes: counted memory traffic, bank conflicts,
    /// barriers and fp32 operations per kernel; no GPU involved.
    Emulated,
    /// The ops' kernels emulated at a real shape (sampled blocks) and each one's time at an H100's and an H200's peak.
    Roofline,
    /// PyTorch's training step at a training benchmark's shape and threads, and our throughput's ratio to it.
    Peer,
    /// `runner calibrate`: the detector measured on this machine (A/A comparisons, injected slowdowns).
    Calibration,
}

/// Outcome of one benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum BenchStatus {
    Ok,
    Failed(String),
    Diverged(String),
}

impl BenchStatus {
    pub fn is_ok(&self) -> bool {
        matches!(self, BenchStatus::Ok)
    }
}

/// One point of a training curve (the training loop's own type, stored as it is).
pub use saeperf_kernels::CurvePoint;

/// The result of one benchmark in one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    pub name: String,
    pub kind: BenchKind,
    #[serde(flatten)]
    pub status: BenchStatus,
    /// Raw timing samples in seconds (one per timed iteration for ops, one per training run otherwise).
    pub samples: Vec<f64>,
    /// Yardstick times (seconds) measured in the same rounds as `samples`, paired index by index: a fixed workload
    /// independent of saeperf's code, so `samples[i] / yardstick[i]` cancels load from other processes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub yardstick: Vec<f64>,
    /// Scalar metric values (metrics.json keys; nulls omitted).
    pub metrics: BTreeMap<String, f64>,
    /// Per-seed values when the benchmark ran several seeds (non-deterministic backends); empty otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metric_seeds: BTreeMap<String, Vec<f64>>,
    /// Whether repeated runs give bit-identical metrics (fixed seeds on the CPU).
    pub deterministic: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curve: Vec<CurvePoint>,
    /// Free-form extras (shapes, pruned feature count, ...).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub extra: serde_json::Value,
}

impl BenchResult {
    /// Median of the timing samples, if any.
    pub fn median_time(&self) -> Option<f64> {
        crate::samples::median(&self.samples)
    }

    /// Samples divided by their paired yardstick times, when every sample has one.
    pub fn normalized(&self) -> Option<Vec<f64>> {
        (!self.samples.is_empty()
            && self.yardstick.len() == self.samples.len()
            && self.yardstick.iter().all(|y| *y > 0.0))
        .then(|| {
            self.samples
                .iter()
                .zip(&self.yardstick)
                .map(|(s, y)| s / y)
                .collect()
        })
    }

    /// The value of a series for `runner history`: "time" is the sample median, anything else a metric.
    pub fn series_value(&self, metric: &str) -> Option<f64> {
        if metric == "time" {
            self.median_time()
        } else {
            self.metrics.get(metric).copied()
        }
    }
}

/// A run with its results: the unit stored, exported and compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub meta: RunMeta,
    pub results: Vec<BenchResult>,
}

impl Run {
    pub fn result(&self, name: &str) -> Option<&BenchResult> {
        self.results.iter().find(|r| r.name == name)
    }
}

/// Make a new run id from a start time.
pub fn new_run_id(started_at: DateTime<Utc>) -> String {
    let r: u32 = rand::random::<u32>() & 0xff_ffff;
    format!("{}-{:06x}", started_at.format("%Y%m%dT%H%M%S"), r)
}

/// What a maintainer decided about a change flagged in a run (tree `triage`, [`Triage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriageAction {
    /// The regression is real and accepted (a new feature costs time, a deliberate trade-off): the comparison's row
    /// reads `acknowledged`, and the series' noise band restarts at the run (docs/verdicts.md, "Triage").
    Ack,
    /// The flagged change is a false alarm (noise, a disturbed machine): the row reads `noise`; the band is kept.
    Dismiss,
}

impl TriageAction {
    pub const ALL: [TriageAction; 2] = [TriageAction::Ack, TriageAction::Dismiss];

    pub fn as_str(self) -> &'static str {
        match self {
            TriageAction::Ack => "ack",
            TriageAction::Dismiss => "dismiss",
        }
    }
}

impl std::fmt::Display for TriageAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A maintainer's decision on one (benchmark, metric) flagged in one run. Stored in tree `triage` under
/// `run \0 bench \0 metric \0 action`: recording the same four again replaces the record. When a (run, bench, metric)
/// has both an ack and a dismiss, the newer (`at`) is the one that applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Triage {
    /// The id of the run in which the change was flagged (the head of the comparison that flagged it).
    pub run: String,
    pub bench: String,
    /// `time` or a metric name, as in the comparison's row.
    pub metric: String,
    pub action: TriageAction,
    /// Who decided (a login or a name).
    pub by: String,
    pub reason: String,
    pub at: DateTime<Utc>,
    /// Where the decision came from: `cli`, or e.g. `comment https://github.com/o/r/pull/7#issuecomment-1`.
    pub source: String,
}
