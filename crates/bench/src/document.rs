//! The versioned documents `runner bench --json` and `runner bench-ops` write, read back through the same types by
//! whoever consumes them (the scheduler, `--baseline auto`, the workflows through `runner bundle`). Between processes
//! only these documents pass, never scraped text (docs/documents.md).
//!
//! Each document carries `"document": KIND` and `"version": N`. A reader accepts its own kind at versions up to the
//! current one; version 0 is the unversioned shape that runners before the documents wrote (the same fields without
//! the header), so a merge base built by `--baseline auto` from an older commit is still read.

use saeperf_compare::baseline::BaselineChoice;
use saeperf_compare::{Comparison, Row, Verdict, EXIT_FAILED, EXIT_OK};
use saeperf_store::document::{one_line, parse, Document, DocumentError, Header};
use saeperf_store::{BenchResult, Run};
use serde::{Deserialize, Serialize};

/// What `runner bench --json` prints: the run as stored, how its baseline was chosen, and the comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchDocument {
    #[serde(flatten)]
    pub header: Header,
    pub run: Run,
    pub baseline: BaselineChoice,
    pub comparison: Option<Comparison>,
}

impl Document for BenchDocument {
    const KIND: &'static str = "bench";
    const VERSION: u32 = 1;
}

impl BenchDocument {
    pub fn new(run: Run, baseline: BaselineChoice, comparison: Option<Comparison>) -> Self {
        BenchDocument {
            header: Header::of::<Self>(),
            run,
            baseline,
            comparison,
        }
    }

    pub fn parse(text: &str) -> Result<Self, DocumentError> {
        parse(text)
    }

    /// Whether a benchmark of the run failed or diverged.
    pub fn failed(&self) -> bool {
        self.run.results.iter().any(|r| !r.status.is_ok())
    }

    /// The overall verdict: the comparison's, else `failed` when a benchmark failed, else `new`.
    pub fn verdict(&self) -> Verdict {
        match &self.comparison {
            Some(c) => c.overall,
            None if self.failed() => Verdict::Failed,
            None => Verdict::New,
        }
    }

    /// The exit code of `runner bench` (docs/verdicts.md): 0, 2 on a regression, 3 on a failed benchmark.
    pub fn exit_code(&self) -> i32 {
        match &self.comparison {
            Some(c) => c.exit_code(),
            None if self.failed() => EXIT_FAILED,
            None => EXIT_OK,
        }
    }

    /// The comparison rows judged regressions.
    pub fn regressions(&self) -> impl Iterator<Item = &Row> {
        self.comparison
            .iter()
            .flat_map(|c| &c.rows)
            .filter(|r| r.verdict == Verdict::Regression)
    }

    /// Names of the benchmarks that failed or diverged.
    pub fn failed_benches(&self) -> Vec<&str> {
        self.run
            .results
            .iter()
            .filter(|r| !r.status.is_ok())
            .map(|r| r.name.as_str())
            .collect()
    }
}

/// What the hidden `runner bench-ops` (the A/B worker of `--baseline auto`) prints: one timing result per op.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpsDocument {
    #[serde(flatten)]
    pub header: Header,
    pub results: Vec<BenchResult>,
}

impl Document for OpsDocument {
    const KIND: &'static str = "bench-ops";
    const VERSION: u32 = 1;
}

impl OpsDocument {
    pub fn new(results: Vec<BenchResult>) -> Self {
        OpsDocument {
            header: Header::of::<Self>(),
            results,
        }
    }

    /// Also reads version 0: the bare array of results that runners before the documents printed.
    pub fn parse(text: &str) -> Result<Self, DocumentError> {
        if text.trim_start().starts_with('[') {
            return serde_json::from_str(text.trim())
                .map(|results| OpsDocument {
                    header: Header::default(),
                    results,
                })
                .map_err(|e| DocumentError::Malformed {
                    kind: Self::KIND,
                    why: one_line(e),
                });
        }
        parse(text)
    }
}

/// What `runner bundle` writes beside a result bundle (`meta.json`) and `runner report post --bundle` reads: the
/// pull request and commit a bundle's runs belong to, and which run is the head and which its baseline. Checked on
/// both ends: a positive pull-request number, a commit SHA, run ids of the store's form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMeta {
    #[serde(flatten)]
    pub header: Header,
    pub pr: u64,
    pub head_sha: String,
    pub head_run: String,
    pub base_run: Option<String>,
}

impl Document for ResultMeta {
    const KIND: &'static str = "result-meta";
    const VERSION: u32 = 1;
}

/// Whether `id` has the form of a store run id (`YYYYMMDDTHHMMSS-xxxxxx`).
pub fn is_run_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 22
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-'
        && b[16..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

impl ResultMeta {
    /// The meta of a bench document's run, which must be of `head_sha`.
    pub fn new(pr: u64, head_sha: &str, doc: &BenchDocument) -> Result<Self, DocumentError> {
        let meta = ResultMeta {
            header: Header::of::<Self>(),
            pr,
            head_sha: head_sha.to_string(),
            head_run: doc.run.meta.id.clone(),
            base_run: doc.baseline.run.clone(),
        };
        meta.check()?;
        if doc.run.meta.commit.as_deref() != Some(head_sha) {
            return Err(DocumentError::Malformed {
                kind: Self::KIND,
                why: format!(
                    "the bench document's run is of commit {}, not {head_sha}",
                    doc.run.meta.commit.as_deref().unwrap_or("none")
                ),
            });
        }
        Ok(meta)
    }

    /// Read and check a meta.json (an empty `base_run`, as the first workflows wrote it, means none).
    pub fn parse(text: &str) -> Result<Self, DocumentError> {
        let mut m: ResultMeta = parse(text)?;
        if m.base_run.as_deref() == Some("") {
            m.base_run = None;
        }
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), DocumentError> {
        let bad = |why: String| {
            Err(DocumentError::Malformed {
                kind: Self::KIND,
                why,
            })
        };
        if self.pr == 0 {
            return bad("pr must be a positive pull-request number".into());
        }
        if !(7..=40).contains(&self.head_sha.len())
            || !self.head_sha.chars().all(|c| c.is_ascii_hexdigit())
        {
            return bad(format!("head_sha {:?} is not a commit SHA", self.head_sha));
        }
        for id in std::iter::once(&self.head_run).chain(&self.base_run) {
            if !is_run_id(id) {
                return bad(format!("{id:?} is not a run id"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_and_foreign_documents_are_one_line_errors() {
        for (text, want) in [
            ("", "not a saeperf bench document"),
            ("{\"run\": 1", "not a saeperf bench document"),
            (
                "{\"document\": \"post\", \"version\": 1}",
                "a \"post\" document",
            ),
            (
                "{\"document\": \"bench\", \"version\": 99}",
                "version 99 is newer",
            ),
            (
                "{\"document\": \"bench\", \"version\": 1, \"run\": {}}",
                "missing field",
            ),
            ("[1, 2]", "not a saeperf bench document"),
        ] {
            let e = BenchDocument::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        for text in [
            r#"{"document": "result-meta", "version": 1, "pr": 0, "head_sha": "abcdef0", "head_run": "20260101T000000-abcdef", "base_run": null}"#,
            r#"{"document": "result-meta", "version": 1, "pr": 3, "head_sha": "main; rm -rf /", "head_run": "20260101T000000-abcdef", "base_run": null}"#,
            r#"{"document": "result-meta", "version": 1, "pr": 3, "head_sha": "abcdef0", "head_run": "../../x", "base_run": null}"#,
        ] {
            let e = ResultMeta::parse(text).unwrap_err().to_string();
            assert!(e.starts_with("not a saeperf result-meta document: "), "{e}");
        }
        let ok = ResultMeta::parse(
            r#"{"pr": 3, "head_sha": "abcdef0", "head_run": "20260101T000000-abcdef", "base_run": ""}"#,
        )
        .unwrap();
        assert_eq!((ok.pr, ok.base_run), (3, None));
        let e = OpsDocument::parse("[{\"name\": 3}]")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("not a saeperf bench-ops document"), "{e}");
        assert!(OpsDocument::parse("[]").unwrap().results.is_empty());
    }

    fn meta(id: &str) -> saeperf_store::RunMeta {
        saeperf_store::RunMeta {
            id: id.into(),
            state: saeperf_store::RunState::Complete,
            commit: Some("c".repeat(40)),
            branch: Some("main".into()),
            pr: None,
            dirty: false,
            started_at: chrono::Utc::now(),
            finished_at: None,
            fingerprint: Default::default(),
            fingerprint_id: "f".into(),
            backend: saeperf_store::RunBackend::Cpu,
            suite: "s".into(),
            profile: "quick".into(),
            suite_hash: "h".into(),
            activation_sets: Default::default(),
            benchmarks: vec!["a".into(), "b".into()],
            runner_version: "0".into(),
            skipped: Default::default(),
        }
    }

    fn result(name: &str, status: saeperf_store::BenchStatus) -> BenchResult {
        BenchResult {
            name: name.into(),
            kind: saeperf_store::BenchKind::Train,
            status,
            samples: vec![1.0],
            yardstick: vec![],
            metrics: Default::default(),
            metric_seeds: Default::default(),
            deterministic: true,
            curve: vec![],
            extra: serde_json::Value::Null,
        }
    }

    fn row(metric: &str, verdict: Verdict) -> Row {
        Row {
            bench: "a".into(),
            metric: metric.into(),
            base: Some(1.0),
            head: Some(1.5),
            change: Some(0.5),
            threshold: None,
            p: None,
            detectable: None,
            verdict,
            detail: "d".into(),
            triage: None,
        }
    }

    #[test]
    fn bench_json_regressions() {
        use saeperf_store::BenchStatus;
        let doc = BenchDocument::new(
            Run {
                meta: meta("20250101T000000-abcdef"),
                results: vec![
                    result("a", BenchStatus::Ok),
                    result("b", BenchStatus::Failed("x".into())),
                ],
            },
            BaselineChoice {
                run: Some("B".into()),
                why: "merge base".into(),
            },
            Some(Comparison {
                base: meta("B"),
                head: meta("20250101T000000-abcdef"),
                rows: vec![row("mse", Verdict::Regression), row("time", Verdict::Noise)],
                overall: Verdict::Regression,
                notes: vec![],
            }),
        );
        let r = BenchDocument::parse(&serde_json::to_string(&doc).unwrap()).unwrap();
        assert_eq!(r.run.meta.id, "20250101T000000-abcdef");
        assert_eq!(r.regressions().count(), 1);
        assert_eq!(r.failed_benches(), vec!["b"]);
        assert_eq!(r.comparison.as_ref().unwrap().base.id, "B");
        assert_eq!(r.exit_code(), 2, "the comparison's verdict decides");
    }
}
