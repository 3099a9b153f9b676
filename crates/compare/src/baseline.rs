//! Choosing the baseline: the run a change is compared with (docs/verdicts.md, "Baselines"). `runner bench`, `runner
//! report` and the scheduler all choose through here, so a pull request gets the same baseline wherever it is judged.

use std::str::FromStr;

use saeperf_git::{short, Repo};
use saeperf_store::{RunMeta, RunState, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::same_series;

/// How the baseline is chosen (`--baseline`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Baseline {
    /// The newest stored complete run of the merge base with the base branch on the same machine, backend and
    /// profile (the default).
    MergeBase,
    /// No comparison.
    None,
    /// [`Baseline::MergeBase`] when such a run is stored, else the merge base is built here and timed interleaved
    /// with the head (the bench crate's `auto` module).
    Auto,
    /// A run reference: a run id or unique prefix, a commit SHA prefix, or `latest`.
    Run(String),
}

impl FromStr for Baseline {
    type Err = String;
    fn from_str(s: &str) -> Result<Baseline, String> {
        Ok(match s {
            "merge-base" => Baseline::MergeBase,
            "none" => Baseline::None,
            "auto" => Baseline::Auto,
            "" => {
                return Err(
                    "an empty --baseline (merge-base, auto, none or a run reference)".into(),
                )
            }
            run => Baseline::Run(run.to_string()),
        })
    }
}

/// The baseline that was chosen, and why (for the table, the JSON document and the comment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineChoice {
    /// The baseline run's id; None when there is none.
    pub run: Option<String>,
    pub why: String,
}

impl BaselineChoice {
    pub fn none(why: impl Into<String>) -> BaselineChoice {
        BaselineChoice {
            run: None,
            why: why.into(),
        }
    }
}

/// A user's run reference for the base of `head`: a commit or `latest` means a run of head's series (machine,
/// backend, profile), never head itself.
pub fn resolve_base(store: &Store, spec: &str, head: &RunMeta) -> Result<RunMeta, StoreError> {
    store.resolve(spec, &|m: &RunMeta| {
        same_series(m, head) && m.id != head.id && !m.is_calibration()
    })
}

/// Pick the stored baseline of `head` (`repo` answers the git questions):
/// - only complete runs on the same machine fingerprint, backend and profile, never `head` itself and never a
///   `runner calibrate` run (its profile, `calibrate`, already keeps it out of every bench series; the explicit check
///   also covers a suite that names a profile `calibrate`);
/// - a pull request (head's commit is not on the base branch): the newest run of the exact merge base. Earlier runs
///   of the PR's own branch are NOT used: they already contain the PR's changes and would hide its regressions;
/// - on the base branch itself (merge base = head's commit): the newest run of the nearest first-parent ancestor
///   that has one, head's own commit first (so a dirty tree is compared with its clean commit);
/// - outside git (no commit): the newest run of the same series.
pub fn find_baseline(
    store: &Store,
    repo: &Repo,
    head: &RunMeta,
    base_branch: &str,
) -> Result<BaselineChoice, StoreError> {
    let runs = store.list_runs()?;
    let cands: Vec<&RunMeta> = runs
        .iter()
        .filter(|m| {
            m.state == RunState::Complete
                && m.id != head.id
                && same_series(m, head)
                && !m.is_calibration()
        })
        .collect();
    let newest_of = |c: &str| {
        cands
            .iter()
            .rev()
            .find(|m| m.commit.as_deref() == Some(c))
            .map(|m| m.id.clone())
    };
    let Some(commit) = head.commit.as_deref() else {
        return Ok(match cands.last() {
            Some(m) => BaselineChoice {
                run: Some(m.id.clone()),
                why: "no git commit: newest run of this series".into(),
            },
            None => BaselineChoice::none("no earlier run on this machine, backend and profile"),
        });
    };
    let Some(mb) = repo.merge_base(commit, base_branch) else {
        return Ok(BaselineChoice::none(format!(
            "no merge base of {} with {base_branch} (is the branch fetched?)",
            short(commit)
        )));
    };
    if mb != commit {
        return Ok(match newest_of(&mb) {
            Some(id) => BaselineChoice {
                run: Some(id),
                why: format!("merge base {} with {base_branch}", short(&mb)),
            },
            None => BaselineChoice::none(format!(
                "no stored run of merge base {} on this machine, backend and profile (run `runner bench` there, \
                 or use --baseline auto)",
                short(&mb)
            )),
        });
    }
    for c in repo.first_parent_ancestors(commit, 200) {
        if let Some(id) = newest_of(&c) {
            let why = if c == commit {
                "an earlier run of the same commit".to_string()
            } else {
                format!(
                    "nearest benchmarked ancestor {} on {base_branch}",
                    short(&c)
                )
            };
            return Ok(BaselineChoice { run: Some(id), why });
        }
    }
    Ok(BaselineChoice::none(format!(
        "no stored run of {} or its ancestors on this series",
        short(commit)
    )))
}

/// The baseline of a report on `head`: [`find_baseline`], else (outside the repository, e.g. a workflow that only
/// has the result bundle) the newest earlier run of the base branch in the same series.
pub fn find_report_baseline(
    store: &Store,
    repo: &Repo,
    head: &RunMeta,
    base_branch: &str,
) -> Result<BaselineChoice, StoreError> {
    let choice = find_baseline(store, repo, head, base_branch)?;
    if choice.run.is_some() {
        return Ok(choice);
    }
    let fallback = store.newest(|m| {
        m.state == RunState::Complete
            && m.id != head.id
            && same_series(m, head)
            && !m.is_calibration()
            && m.branch.as_deref() == Some(base_branch)
            && (m.started_at, &m.id) < (head.started_at, &head.id)
    })?;
    Ok(match fallback {
        Some(m) => BaselineChoice {
            run: Some(m.id),
            why: format!(
                "newest earlier run of {base_branch} on this machine, backend and profile"
            ),
        },
        None => choice,
    })
}
