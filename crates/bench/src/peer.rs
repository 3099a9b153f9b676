//! The PyTorch peer (docs/metrics.md, "The PyTorch peer"): in the same run, at the same shape and thread count as a
//! training benchmark, PyTorch's float32 training step (`scripts/torch_baseline.py`, embedded here) is timed, and
//! the run stores its throughput beside ours as a ratio. A change that makes saeperf slower shows as a lower ratio
//! even when the machine itself got slower or faster between runs, because both sides ran minutes apart.
//!
//! PyTorch is never a dependency of the default job: where the Python that runs the peer cannot import torch, the
//! benchmark is skipped with a one-line reason ([`unavailable`]).

use std::collections::BTreeMap;
use std::process::Command;

use saeperf_store::{BenchKind, BenchResult, BenchStatus};

use crate::suite::ShapeSpec;

/// The peer's script, written to a temporary file for each run.
pub const SCRIPT: &str = include_str!("../../../scripts/torch_baseline.py");

/// The environment variable naming the Python that runs the peer.
pub const PYTHON_ENV: &str = "SAEPERF_TORCH_PYTHON";

/// The Python that runs the peer: `$SAEPERF_TORCH_PYTHON`, else `$SAEPERF_FIELD_PYTHON` (the interop test's venv,
/// which has torch), else `python3`.
pub fn python() -> String {
    [PYTHON_ENV, "SAEPERF_FIELD_PYTHON"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "python3".into())
}

/// Why the peer cannot run here (None: `python -c "import torch"` succeeds).
pub fn unavailable(py: &str) -> Option<String> {
    match Command::new(py)
        .args(["-c", "import torch"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => None,
        Ok(_) => Some(format!(
            "{py} cannot import torch (set {PYTHON_ENV} to a Python that can)"
        )),
        Err(e) => Some(format!("{py} could not be started ({e}); set {PYTHON_ENV}")),
    }
}

/// What the peer measured, as the script reports it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct PeerReport {
    pub device: String,
    pub threads: Option<usize>,
    pub torch: String,
    pub tokens_per_sec: f64,
    pub step_ms_median: f64,
    pub encoder_matmul_gflops: f64,
}

/// How the peer is run: which Python, on which device, at which shape, for how many steps, on how many threads.
#[derive(Debug, Clone)]
pub struct PeerJob {
    pub python: String,
    pub cuda: bool,
    pub shape: ShapeSpec,
    pub steps: usize,
    pub warmup: usize,
    pub threads: usize,
}

/// Our side of the ratio: a training benchmark of this run.
pub struct Ours<'a> {
    pub name: &'a str,
    pub result: Option<&'a BenchResult>,
    /// TopK's k when that benchmark trains a TopK dictionary (the peer then runs TopK too).
    pub topk: Option<usize>,
}

/// Runs the peer once at `shape` and returns its benchmark: `peer.torch.tokens_per_sec`, `peer.torch.step_ms`,
/// `peer.torch.encoder_gflops`, and where our training benchmark ran in this run, `ratio.steady` (our steady-state
/// tokens/s over the peer's) and `ratio.overall` (our whole-run tokens/s over the peer's). Never fails the run: an
/// error is the benchmark's `failed` status.
pub fn run(name: &str, job: &PeerJob, ours: Ours<'_>) -> BenchResult {
    let mut r = BenchResult {
        name: name.to_string(),
        kind: BenchKind::Peer,
        status: BenchStatus::Ok,
        samples: vec![],
        yardstick: vec![],
        metrics: BTreeMap::new(),
        metric_seeds: BTreeMap::new(),
        deterministic: false,
        curve: vec![],
        extra: serde_json::Value::Null,
    };
    let report = match measure(job, ours.topk) {
        Ok(p) => p,
        Err(e) => {
            r.status = BenchStatus::Failed(e);
            return r;
        }
    };
    r.metrics
        .insert("peer.torch.tokens_per_sec".into(), report.tokens_per_sec);
    r.metrics
        .insert("peer.torch.step_ms".into(), report.step_ms_median);
    r.metrics.insert(
        "peer.torch.encoder_gflops".into(),
        report.encoder_matmul_gflops,
    );
    let mut extra = serde_json::json!({
        "peer": report,
        "against": ours.name,
        "shape": job.shape,
        "threads": job.threads,
    });
    let our = ours.result.filter(|o| o.status.is_ok()).map(|o| {
        let get = |k: &str| o.extra.get(k).and_then(|v| v.as_f64());
        (get("steady_tokens_per_sec"), get("tokens_per_sec"))
    });
    match our {
        Some((steady, overall)) => {
            if let Some(v) = steady {
                r.metrics
                    .insert("ratio.steady".into(), v / report.tokens_per_sec);
                r.metrics.insert("ours.steady_tokens_per_sec".into(), v);
            }
            if let Some(v) = overall {
                r.metrics
                    .insert("ratio.overall".into(), v / report.tokens_per_sec);
                r.metrics.insert("ours.tokens_per_sec".into(), v);
            }
        }
        None => {
            extra["note"] = format!(
                "no ratio: {} did not run (or failed) in this run, so only the peer's own speed is recorded",
                ours.name
            )
            .into();
        }
    }
    r.extra = extra;
    r
}

fn measure(job: &PeerJob, topk: Option<usize>) -> Result<PeerReport, String> {
    let (py, shape) = (job.python.as_str(), job.shape);
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let script = dir.path().join("torch_baseline.py");
    let out = dir.path().join("peer.json");
    std::fs::write(&script, SCRIPT).map_err(|e| format!("writing the peer script: {e}"))?;
    let mut cmd = Command::new(py);
    cmd.arg(&script)
        .args(["--device", if job.cuda { "cuda" } else { "cpu" }])
        .args(["--threads", &job.threads.to_string()])
        .args(["--batch", &shape.batch.to_string()])
        .args(["--d-in", &shape.d_in.to_string()])
        .args(["--d-sae", &shape.d_sae.to_string()])
        .args(["--steps", &job.steps.to_string()])
        .args(["--warmup", &job.warmup.to_string()])
        .arg("--json-out")
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    if let Some(k) = topk {
        cmd.args(["--topk", &k.to_string()]);
    }
    let o = cmd
        .output()
        .map_err(|e| format!("{py} could not be started: {e}"))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!(
            "the PyTorch peer exited with {}: {}",
            o.status,
            last.trim()
        ));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("the peer's report: {e}"))?;
    let p: PeerReport =
        serde_json::from_str(&text).map_err(|e| format!("the peer's report is not valid: {e}"))?;
    if !(p.tokens_per_sec.is_finite() && p.tokens_per_sec > 0.0) {
        return Err(format!("the peer reported {} tokens/s", p.tokens_per_sec));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python_that_cannot_start_is_a_one_line_reason() {
        let why = unavailable("/nonexistent/python3").expect("cannot start");
        assert!(
            why.contains("/nonexistent/python3") && why.contains(PYTHON_ENV),
            "{why}"
        );
        assert_eq!(why.lines().count(), 1);
    }

    #[test]
    fn the_embedded_script_times_on_the_cpu_too() {
        assert!(SCRIPT.contains("--device") && SCRIPT.contains("--threads"));
    }
}
