//! saeperf-git: the one place saeperf runs git. Every other crate asks a [`Repo`] for what it needs: the state of a
//! working tree (commit, branch, dirty flag), merge bases and first-parent ancestry (baseline selection), files at a
//! commit (the suite a commit would run), worktrees (building a merge base or a scheduled commit), and pull-request
//! heads fetched as `refs/pull/N/head` (the scheduler's pull-request jobs).
//!
//! git is run as a child process (`git -C DIR ...`) with stdin closed; a failure is a [`GitError`] carrying git's own
//! message on one line. Queries whose absence is an answer (no merge base, not a repository) return `Option`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;

/// A git failure, with git's stderr folded onto one line.
#[derive(Debug, Error)]
pub enum GitError {
    #[error("cannot run git {args}: {source}")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("git {args} failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("{0}")]
    Other(String),
}

/// What git says about a working tree (all empty outside a repository).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitState {
    pub commit: Option<String>,
    pub branch: Option<String>,
    /// Tracked files have uncommitted changes.
    pub dirty: bool,
}

/// A repository (or any directory inside one) that git commands run in.
#[derive(Debug, Clone)]
pub struct Repo {
    dir: PathBuf,
}

impl Repo {
    /// The repository at (or above) `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Repo {
        Repo { dir: dir.into() }
    }

    /// The repository of the current directory.
    pub fn current() -> Repo {
        Repo::at(".")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Run git here; Ok(trimmed stdout) or the error with git's stderr.
    pub fn run(&self, args: &[&str]) -> Result<String, GitError> {
        let shown = args.join(" ");
        let o = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| GitError::Spawn {
                args: shown.clone(),
                source,
            })?;
        if !o.status.success() {
            return Err(GitError::Failed {
                args: shown,
                stderr: String::from_utf8_lossy(&o.stderr).trim().replace('\n', " "),
            });
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// Like [`Repo::run`], but an answer of "no" (git failed) is `None`.
    fn ask(&self, args: &[&str]) -> Option<String> {
        self.run(args).ok()
    }

    /// Whether this directory is inside a git repository.
    pub fn is_repository(&self) -> bool {
        self.ask(&["rev-parse", "--git-dir"]).is_some()
    }

    /// Commit, branch (None when detached) and dirty flag of the working tree.
    pub fn state(&self) -> GitState {
        let commit = self.ask(&["rev-parse", "HEAD"]);
        let branch = self
            .ask(&["rev-parse", "--abbrev-ref", "HEAD"])
            .filter(|b| b != "HEAD");
        let dirty = commit.is_some()
            && self
                .ask(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
        GitState {
            commit,
            branch,
            dirty,
        }
    }

    /// The full SHA of a revision, if it names a commit.
    pub fn rev_parse(&self, rev: &str) -> Option<String> {
        self.ask(&[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ])
    }

    /// The merge base of `rev` with the base branch: tries `branch`, then `origin/branch`.
    pub fn merge_base(&self, rev: &str, branch: &str) -> Option<String> {
        self.ask(&["merge-base", rev, branch])
            .or_else(|| self.ask(&["merge-base", rev, &format!("origin/{branch}")]))
    }

    /// `commit` and its first-parent ancestors, newest first, at most `max` of them.
    pub fn first_parent_ancestors(&self, commit: &str, max: usize) -> Vec<String> {
        self.ask(&[
            "rev-list",
            "--first-parent",
            &format!("--max-count={max}"),
            commit,
        ])
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
    }

    /// The contents of `path` at `commit`, if the commit has that file.
    pub fn show_file(&self, commit: &str, path: &str) -> Option<String> {
        self.ask(&["show", &format!("{commit}:{path}")])
    }

    /// Whether the clone has `sha` as a commit.
    pub fn has_commit(&self, sha: &str) -> bool {
        self.ask(&["cat-file", "-e", &format!("{sha}^{{commit}}")])
            .is_some()
    }

    /// The remote to fetch: the configured one, else `origin` when the clone has it, else none.
    pub fn remote(&self, configured: Option<&str>) -> Option<String> {
        match configured {
            Some(r) => Some(r.to_string()),
            None => self
                .ask(&["remote", "get-url", "origin"])
                .map(|_| "origin".to_string()),
        }
    }

    /// `git fetch --prune --quiet REMOTE`.
    pub fn fetch(&self, remote: &str) -> Result<(), GitError> {
        self.run(&["fetch", "--prune", "--quiet", remote]).map(drop)
    }

    /// The commit a branch points at: the remote's branch when a remote is given (after a fetch), else the local one.
    pub fn resolve_branch(&self, remote: Option<&str>, branch: &str) -> Result<String, GitError> {
        let rev = match remote {
            Some(r) => format!("refs/remotes/{r}/{branch}"),
            None => format!("refs/heads/{branch}"),
        };
        self.run(&["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
            .map_err(|e| {
                GitError::Other(format!(
                    "branch {branch} not found in {}: {e}",
                    self.dir.display()
                ))
            })
    }

    /// Make a pull request's head commit available: fetch `refs/pull/N/head` from the remote into
    /// `refs/saeperf/pull/N` (GitHub serves that ref for every pull request, forks included; a plain git remote can
    /// hold it too). Nothing is fetched when the commit is already here.
    pub fn fetch_pull(&self, remote: Option<&str>, number: u64, sha: &str) -> Result<(), GitError> {
        if self.has_commit(sha) {
            return Ok(());
        }
        let Some(r) = remote else {
            return Err(GitError::Other(format!(
                "head {sha} is not in {} and the clone has no remote to fetch it from",
                self.dir.display()
            )));
        };
        self.run(&[
            "fetch",
            "--quiet",
            "--no-tags",
            r,
            &format!("+refs/pull/{number}/head:refs/saeperf/pull/{number}"),
        ])?;
        if !self.has_commit(sha) {
            return Err(GitError::Other(format!(
                "fetched refs/pull/{number}/head from {r}, but head {sha} is not there (pushed again since the listing?)"
            )));
        }
        Ok(())
    }

    /// Delete the `refs/saeperf/pull/N` refs [`Repo::fetch_pull`] made for pull requests no longer in `open` (closed,
    /// merged or unlabelled), so their commits can be garbage-collected. Returns how many were deleted.
    pub fn prune_pull_refs(&self, open: &[u64]) -> Result<usize, GitError> {
        let refs = self.run(&["for-each-ref", "--format=%(refname)", "refs/saeperf/pull/"])?;
        let mut deleted = 0;
        for r in refs.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let n = r
                .strip_prefix("refs/saeperf/pull/")
                .and_then(|n| n.parse::<u64>().ok());
            if n.is_some_and(|n| !open.contains(&n)) {
                self.run(&["update-ref", "-d", r])?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Check `commit` out, detached, into a new worktree at `wt` (`force`: even where git still records one).
    pub fn add_worktree(&self, wt: &Path, commit: &str, force: bool) -> Result<(), GitError> {
        let wt = wt.display().to_string();
        let mut args = vec!["worktree", "add", "--detach"];
        if force {
            args.push("--force");
        }
        args.extend([wt.as_str(), commit]);
        self.run(&args).map(drop)
    }

    /// Remove a worktree (and whatever is left of its directory), then prune git's records. Never fails: a worktree
    /// that is already gone is what was wanted.
    pub fn remove_worktree(&self, wt: &Path) {
        if wt.exists() {
            let _ = self.run(&["worktree", "remove", "--force", &wt.display().to_string()]);
            let _ = std::fs::remove_dir_all(wt);
        }
        let _ = self.run(&["worktree", "prune"]);
    }
}

/// A commit SHA shortened for messages (the first 10 characters).
pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_with_commits(n: usize) -> (tempfile::TempDir, Repo, Vec<String>) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repo::at(tmp.path());
        repo.run(&["init", "-q", "-b", "main"]).unwrap();
        let mut shas = vec![];
        for i in 0..n {
            repo.run(&[
                "-c",
                "user.email=t@example.invalid",
                "-c",
                "user.name=t",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                &format!("c{i}"),
            ])
            .unwrap();
            shas.push(repo.rev_parse("HEAD").unwrap());
        }
        (tmp, repo, shas)
    }

    #[test]
    fn pull_refs_of_closed_pull_requests_are_pruned() {
        let (_tmp, repo, _) = repo_with_commits(1);
        for n in [3, 5, 12] {
            repo.run(&["update-ref", &format!("refs/saeperf/pull/{n}"), "HEAD"])
                .unwrap();
        }
        assert_eq!(repo.prune_pull_refs(&[5]).unwrap(), 2);
        let left = repo
            .run(&["for-each-ref", "--format=%(refname)", "refs/saeperf/"])
            .unwrap();
        assert_eq!(left, "refs/saeperf/pull/5");
        assert_eq!(repo.prune_pull_refs(&[5]).unwrap(), 0);
    }

    #[test]
    fn state_ancestry_merge_base_and_worktrees() {
        let (tmp, repo, shas) = repo_with_commits(3);
        let st = repo.state();
        assert_eq!(st.commit.as_deref(), Some(shas[2].as_str()));
        assert_eq!(st.branch.as_deref(), Some("main"));
        assert!(!st.dirty);
        assert_eq!(
            repo.first_parent_ancestors(&shas[2], 2),
            vec![shas[2].clone(), shas[1].clone()]
        );
        assert_eq!(
            repo.merge_base(&shas[1], "main").as_deref(),
            Some(shas[1].as_str())
        );
        assert_eq!(repo.merge_base(&shas[1], "no-such-branch"), None);
        assert!(repo.has_commit(&shas[0]));
        assert!(!repo.has_commit("0123456789012345678901234567890123456789"));
        let wt = tmp.path().join("wt");
        repo.add_worktree(&wt, &shas[0], false).unwrap();
        assert_eq!(
            Repo::at(&wt).state().commit.as_deref(),
            Some(shas[0].as_str())
        );
        repo.remove_worktree(&wt);
        assert!(!wt.exists());
        let e = repo.run(&["rev-parse", "--verify", "nope"]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("git rev-parse --verify nope failed: "),
            "{e}"
        );
        assert!(!Repo::at(tmp.path().join("missing")).is_repository());
    }
}
