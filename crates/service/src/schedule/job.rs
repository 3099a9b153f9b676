//! The pieces of one job attempt that do not need the scheduler's loop: the command templates and their
//! placeholders, child processes in their own process group (so a stop kills the whole build or bench tree), and
//! asking the store whether a commit was already benchmarked with the same suite on this machine (git itself is
//! saeperf-git's).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use saeperf_bench::suite::{Suite, DEFAULT_SUITE_PATH};
use saeperf_git::Repo;
use saeperf_store::{RunState, Store};

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
    let open = |p: &Path| open_append(p).with_context(|| format!("opening {}", p.display()));
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

/// The suite hash the bench will record for `commit` (its suite file resolved for the profile), if computable.
pub fn suite_hash_at(
    repo: &Repo,
    commit: &str,
    suite: Option<&str>,
    profile: &str,
) -> Option<String> {
    let path = suite.unwrap_or(DEFAULT_SUITE_PATH);
    let text = repo.show_file(commit, path)?;
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
    let run = store.newest(|m| {
        m.state == RunState::Complete
            && !m.dirty
            && m.commit.as_deref() == Some(commit)
            && m.fingerprint_id == fingerprint_id
            && m.profile == profile
            && suite_hash.is_none_or(|h| m.suite_hash == h)
    })?;
    Ok(run.map(|m| m.id))
}

/// The newest run of `commit` on this machine begun at or after `since`, whatever its state: the run a bench
/// child began (found in the store when the child left no document: it crashed, timed out or was stopped). A
/// `runner calibrate` run of the same checkout started meanwhile is not it.
pub fn run_begun_since(
    store: &Store,
    commit: &str,
    fingerprint_id: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Option<String>> {
    let run = store.newest(|m| {
        m.commit.as_deref() == Some(commit)
            && m.fingerprint_id == fingerprint_id
            && !m.is_calibration()
            && m.started_at >= since - chrono::Duration::seconds(1)
    })?;
    Ok(run.map(|m| m.id))
}

fn open_append(p: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
}

/// Append a line to a log (best effort: a log that cannot be written must not stop the scheduler).
pub fn append_line(log: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = open_append(log) {
        let _ = writeln!(f, "{line}");
    }
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
}
