//! The pieces of one job attempt that do not need the scheduler's loop: git (fetch, resolve, worktrees), the
//! command templates and their placeholders, child processes in their own process group (so a stop kills the
//! whole build or bench tree), reading the bench's JSON result, and asking the store whether a commit was already
//! benchmarked with the same suite on this machine.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::notify::Regression;
use crate::store::{RunState, Store};
use crate::suite::{Suite, DEFAULT_SUITE_PATH};

/// Run git in `repo`; Ok(stdout) or an error with git's stderr.
pub fn git(repo: &Path, args: &[&str]) -> Result<String> {
    let o = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running git {}", args.join(" ")))?;
    if !o.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim().replace('\n', " ")
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The remote to fetch: the configured one, else `origin` when the clone has it, else none.
pub fn remote(repo: &Path, configured: Option<&str>) -> Option<String> {
    match configured {
        Some(r) => Some(r.to_string()),
        None => git(repo, &["remote", "get-url", "origin"])
            .ok()
            .map(|_| "origin".to_string()),
    }
}

/// The commit a branch target points at (after a fetch: the remote's branch).
pub fn resolve_branch(repo: &Path, remote: Option<&str>, branch: &str) -> Result<String> {
    let rev = match remote {
        Some(r) => format!("refs/remotes/{r}/{branch}"),
        None => format!("refs/heads/{branch}"),
    };
    git(
        repo,
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )
    .with_context(|| format!("branch {branch} not found in {}", repo.display()))
}

/// Whether the clone has `sha` as a commit.
pub fn has_commit(repo: &Path, sha: &str) -> bool {
    git(repo, &["cat-file", "-e", &format!("{sha}^{{commit}}")]).is_ok()
}

/// Make a pull request's head commit available in the clone: fetch `refs/pull/N/head` from the remote into
/// `refs/saeperf/pull/N` (GitHub serves that ref for every pull request, forks included; a plain git remote can hold
/// it too). Nothing is fetched when the commit is already here.
pub fn fetch_pull(repo: &Path, remote: Option<&str>, number: u64, sha: &str) -> Result<()> {
    if has_commit(repo, sha) {
        return Ok(());
    }
    let Some(r) = remote else {
        bail!(
            "head {sha} is not in {} and the clone has no remote to fetch it from",
            repo.display()
        );
    };
    git(
        repo,
        &[
            "fetch",
            "--quiet",
            "--no-tags",
            r,
            &format!("+refs/pull/{number}/head:refs/saeperf/pull/{number}"),
        ],
    )?;
    if !has_commit(repo, sha) {
        bail!("fetched refs/pull/{number}/head from {r}, but head {sha} is not there (pushed again since the listing?)");
    }
    Ok(())
}

/// Delete the `refs/saeperf/pull/N` refs [`fetch_pull`] made for pull requests no longer in `open` (closed, merged
/// or unlabelled), so their commits can be garbage-collected. Returns how many were deleted.
pub fn prune_pull_refs(repo: &Path, open: &[u64]) -> Result<usize> {
    let refs = git(
        repo,
        &["for-each-ref", "--format=%(refname)", "refs/saeperf/pull/"],
    )?;
    let mut deleted = 0;
    for r in refs.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let n = r
            .strip_prefix("refs/saeperf/pull/")
            .and_then(|n| n.parse::<u64>().ok());
        if n.is_some_and(|n| !open.contains(&n)) {
            git(repo, &["update-ref", "-d", r])?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Check `commit` out, detached, into a new worktree at `wt`.
pub fn add_worktree(repo: &Path, wt: &Path, commit: &str) -> Result<()> {
    git(
        repo,
        &[
            "worktree",
            "add",
            "--detach",
            &wt.display().to_string(),
            commit,
        ],
    )
    .map(|_| ())
}

/// Remove a worktree (and whatever is left of its directory), then prune git's records.
pub fn remove_worktree(repo: &Path, wt: &Path) {
    if wt.exists() {
        let _ = git(
            repo,
            &["worktree", "remove", "--force", &wt.display().to_string()],
        );
        let _ = std::fs::remove_dir_all(wt);
    }
    let _ = git(repo, &["worktree", "prune"]);
}

/// Quote for `sh`.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Replace `{name}` placeholders with shell-quoted values (`suite_args` and other `*_args` are inserted as given).
pub fn expand(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        let val = if k.ends_with("_args") {
            v.clone()
        } else {
            sh_quote(v)
        };
        out = out.replace(&format!("{{{k}}}"), &val);
    }
    out
}

/// Start `sh -c cmd` in `dir`, in a new process group, stdout and stderr to the given files, without the variables
/// in `unset` (secrets the commit's own code must not see) and with those in `env`.
pub fn spawn(
    cmd: &str,
    dir: &Path,
    unset: &[&str],
    env: &[(&str, std::ffi::OsString)],
    stdout: &Path,
    log: &Path,
) -> Result<Child> {
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("opening {}", p.display()))
    };
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(open(stdout)?)
        .stderr(open(log)?)
        .process_group(0);
    for k in unset {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().with_context(|| format!("starting {cmd}"))
}

/// Signal a child's whole process group.
pub fn signal_group(child: &Child, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is touched.
    unsafe {
        libc::kill(-(child.id() as i32), sig);
    }
}

/// The store run id a bench printed on stderr (`run ID — suite ...`), if it got that far.
pub fn run_id_from_log(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("run "))
        .filter_map(|r| r.split_whitespace().next())
        .find(|id| id.len() > 15 && id.as_bytes()[8] == b'T')
        .map(str::to_string)
}

/// What the bench's `--json` output says.
#[derive(Debug, Default)]
pub struct BenchReport {
    pub run_id: Option<String>,
    pub base_run_id: Option<String>,
    pub overall: Option<String>,
    pub regressions: Vec<Regression>,
    pub failed_benches: Vec<String>,
}

pub fn parse_bench_json(text: &str) -> Option<BenchReport> {
    let v: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    let run_id = v["run"]["meta"]["id"].as_str()?.to_string();
    let rows = v["comparison"]["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let regressions = rows
        .iter()
        .filter(|r| r["verdict"] == "regression")
        .map(|r| Regression {
            bench: r["bench"].as_str().unwrap_or("?").to_string(),
            metric: r["metric"].as_str().unwrap_or("?").to_string(),
            change: r["change"].as_f64(),
            detail: r["detail"].as_str().unwrap_or("").to_string(),
        })
        .collect();
    let failed_benches = v["run"]["results"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter(|r| r["status"] != "ok")
                .filter_map(|r| r["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Some(BenchReport {
        run_id: Some(run_id),
        base_run_id: v["comparison"]["base"]["id"].as_str().map(str::to_string),
        overall: v["comparison"]["overall"].as_str().map(str::to_string),
        regressions,
        failed_benches,
    })
}

/// The suite hash the bench will record for `commit` (its suite file resolved for the profile), if computable.
pub fn suite_hash_at(
    repo: &Path,
    commit: &str,
    suite: Option<&str>,
    profile: &str,
) -> Option<String> {
    let path = suite.unwrap_or(DEFAULT_SUITE_PATH);
    let text = git(repo, &["show", &format!("{commit}:{path}")]).ok()?;
    let s = Suite::parse(&text, path).ok()?;
    Some(s.resolve(Some(profile), None).ok()?.hash())
}

/// Whether the store holds a complete, clean run of `commit` on this machine with this profile and suite.
pub fn already_benchmarked(
    store: &Store,
    commit: &str,
    fingerprint_id: &str,
    profile: &str,
    suite_hash: Option<&str>,
) -> Result<Option<String>> {
    Ok(store
        .list_runs()?
        .into_iter()
        .rev()
        .find(|m| {
            m.state == RunState::Complete
                && !m.dirty
                && m.commit.as_deref() == Some(commit)
                && m.fingerprint_id == fingerprint_id
                && m.profile == profile
                && suite_hash.is_none_or(|h| m.suite_hash == h)
        })
        .map(|m| m.id))
}

/// A log file name for an attempt.
pub fn log_path(dir: &Path, job: &str, commit: &str) -> PathBuf {
    dir.join(format!(
        "{}-{job}-{}.log",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        &commit[..commit.len().min(10)]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_quoted() {
        let s = expand(
            "{bin} --db {db} {suite_args}",
            &[
                ("bin", "/a b/runner".into()),
                ("db", "/x".into()),
                ("suite_args", "--suite 's.toml'".into()),
            ],
        );
        assert_eq!(s, "'/a b/runner' --db /x --suite 's.toml'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn pull_refs_of_closed_pull_requests_are_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        let run = |args: &[&str]| git(repo, args).unwrap();
        run(&["init", "-q", "-b", "main"]);
        run(&[
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "user.name=t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "c",
        ]);
        for n in [3, 5, 12] {
            run(&["update-ref", &format!("refs/saeperf/pull/{n}"), "HEAD"]);
        }
        assert_eq!(prune_pull_refs(repo, &[5]).unwrap(), 2);
        let left = run(&["for-each-ref", "--format=%(refname)", "refs/saeperf/"]);
        assert_eq!(left, "refs/saeperf/pull/5");
        assert_eq!(prune_pull_refs(repo, &[5]).unwrap(), 0);
    }

    #[test]
    fn bench_json_regressions() {
        let j = r#"{"run":{"meta":{"id":"20250101T000000-abcdef"},"results":[{"name":"a","status":"ok"},
            {"name":"b","status":"failed"}]},
            "comparison":{"base":{"id":"B"},"overall":"regression","rows":[
            {"bench":"a","metric":"mse","change":0.5,"verdict":"regression","detail":"d"},
            {"bench":"a","metric":"time","change":0.0,"verdict":"noise","detail":""}]}}"#;
        let r = parse_bench_json(j).unwrap();
        assert_eq!(r.run_id.as_deref(), Some("20250101T000000-abcdef"));
        assert_eq!(r.regressions.len(), 1);
        assert_eq!(r.failed_benches, vec!["b"]);
        assert_eq!(r.base_run_id.as_deref(), Some("B"));
    }
}
