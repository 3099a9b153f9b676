//! Where a pull request's code runs (docs/github.md, "Fork safety"). A labelled pull request, perhaps from a fork,
//! is built and benchmarked on this machine, as this user: its build scripts and its bench are code that nobody
//! here wrote. So its commands get:
//!
//! - their own HOME, CARGO_HOME, CARGO_TARGET_DIR, TMPDIR and a throw-away store (`SAEPERF_DB`, `{db}`), all under
//!   [`Config::untrusted_dir`], emptied before and after each attempt; no token variables;
//! - with `commands.sandbox = "namespace"` (the default), a user and mount namespace (`unshare`) in which the shared
//!   store, the scheduler's state directory (its state, logs and trusted worktrees), the dashboard directory and
//!   the shared target directory are empty directories, and the clone (its `.git`: hooks), the scheduler's HOME,
//!   SAEPERF_HOME (the activation sets), RUSTUP_HOME and CARGO_HOME are read-only. Only the untrusted directory is
//!   writable. What the code writes into a hidden directory lands in a private tmpfs that vanishes with it.
//!
//! The bench's document (its stdout, a file the scheduler opened) is the only thing that comes back: the scheduler
//! checks its run (the approved commit, the pull request, this machine) and ingests it into the shared store itself.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::config::{Config, Sandbox};
use super::job::sh_quote;

/// The directories of the untrusted area.
pub struct Area {
    pub root: PathBuf,
}

impl Area {
    pub fn new(cfg: &Config) -> Area {
        Area {
            root: cfg.untrusted_dir.clone(),
        }
    }

    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
    pub fn target(&self) -> PathBuf {
        self.root.join("target")
    }
    pub fn worktrees(&self) -> PathBuf {
        self.root.join("worktrees")
    }
    fn scratch(&self) -> [PathBuf; 5] {
        [
            self.root.join("home"),
            self.root.join("cargo"),
            self.target(),
            self.store(),
            self.root.join("tmp"),
        ]
    }

    /// Empty the scratch directories (HOME, CARGO_HOME, target, store, tmp) and create them again.
    pub fn reset(&self) -> Result<()> {
        for d in self.scratch() {
            if d.exists() {
                std::fs::remove_dir_all(&d).with_context(|| format!("emptying {}", d.display()))?;
            }
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        std::fs::create_dir_all(self.worktrees())
            .with_context(|| format!("creating {}", self.worktrees().display()))?;
        Ok(())
    }

    /// Remove the scratch directories (after the attempt).
    pub fn clear(&self) {
        for d in self.scratch() {
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    /// The variables the pull request's commands run with.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        let mut v: Vec<(&'static str, OsString)> = vec![
            ("HOME", self.root.join("home").into()),
            ("CARGO_HOME", self.root.join("cargo").into()),
            ("CARGO_TARGET_DIR", self.target().into()),
            ("TMPDIR", self.root.join("tmp").into()),
            ("SAEPERF_DB", self.store().into()),
            ("SAEPERF_SANDBOX", "1".into()),
        ];
        // The toolchain and the activation sets stay where they are (read-only in the namespace); with HOME moved
        // they have to be named.
        if let Some(r) = rustup_home() {
            v.push(("RUSTUP_HOME", r.into()));
        }
        v.push(("SAEPERF_HOME", saeperf_sae::home::saeperf_home().into()));
        v
    }
}

fn rustup_home() -> Option<PathBuf> {
    std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".rustup")))
        .filter(|p| p.is_dir())
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".cargo")))
        .filter(|p| p.is_dir())
}

/// The directories hidden from the pull request's code, and those it may only read (existing ones only: a mount
/// needs its mount point).
pub fn mounts(cfg: &Config) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut hidden: Vec<PathBuf> = vec![
        cfg.store.clone(),
        cfg.state_dir.clone(),
        cfg.target_dir.clone(),
    ];
    hidden.extend(cfg.dashboard_dir.clone());
    let mut read_only: Vec<PathBuf> = vec![cfg.repo.clone()];
    read_only.extend(dirs::home_dir());
    read_only.push(saeperf_sae::home::saeperf_home());
    read_only.extend(rustup_home());
    read_only.extend(cargo_home());
    let keep = |v: &mut Vec<PathBuf>| {
        v.retain(|p| p.is_dir());
        v.sort();
        v.dedup();
    };
    keep(&mut hidden);
    keep(&mut read_only);
    // A read-only directory that holds the untrusted area (HOME, say) is still read-only; the area itself is bound
    // writable again last.
    (hidden, read_only)
}

/// `cmd` as it runs for a pull request: inside the namespace when the sandbox is on, else as it is.
pub fn wrap(cfg: &Config, cmd: &str) -> String {
    if cfg.commands.sandbox == Sandbox::None {
        return cmd.to_string();
    }
    let (hidden, read_only) = mounts(cfg);
    let q = |p: &Path| sh_quote(&p.display().to_string());
    let mut script = vec!["set -e".to_string()];
    for p in &read_only {
        script.push(format!(
            "mount --rbind {0} {0}; mount -o remount,bind,ro {0}",
            q(p)
        ));
    }
    for p in &hidden {
        script.push(format!(
            "mount -t tmpfs -o size=16m,mode=0700 saeperf-hidden {}",
            q(p)
        ));
    }
    script.push(format!("mount --rbind {0} {0}", q(&cfg.untrusted_dir)));
    script.push("cd \"$PWD\"".into());
    script.push(format!("exec sh -c {}", sh_quote(cmd)));
    format!(
        "unshare --user --map-current-user --mount --propagation private -- sh -c {}",
        sh_quote(&script.join("\n"))
    )
}

/// Whether the namespace can be made here; the reason when not.
pub fn probe() -> Result<(), String> {
    let out = Command::new("unshare")
        .args([
            "--user",
            "--map-current-user",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "mount -t tmpfs saeperf-probe /tmp",
        ])
        .output()
        .map_err(|e| format!("cannot run unshare (util-linux): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("unshare failed")
            .to_string())
    }
}
