//! Shared helpers: running the real `runner` binary with an isolated $SAEPERF_HOME, throw-away git repositories,
//! reading safetensors files.

use std::path::Path;
use std::process::{Command, Output};

/// A `runner` command with its own cache directory (and no store or log level inherited from the environment).
pub fn runner(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
    c.env("SAEPERF_HOME", home)
        .env_remove("RUST_LOG")
        .env_remove("SAEPERF_DB");
    c
}

/// Run git in `repo`, assert success, return its trimmed stdout.
pub fn git(repo: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .current_dir(repo)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A new git repository at `path` (created) on branch main, with a committer identity.
pub fn init_repo(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    git(path, &["init", "-q", "-b", "main"]);
    git(path, &["config", "user.email", "t@example.invalid"]);
    git(path, &["config", "user.name", "t"]);
}

/// Runs and returns the output, printing stderr when it failed (for the test log).
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("runner starts");
    if !out.status.success() {
        eprintln!(
            "runner failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs, asserts success, returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "runner exited {}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

/// Reads a tensor as f32 (from f32 or f16 storage) with its shape.
pub fn read_tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let blob = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&blob).unwrap();
    let t = st.tensor(name).unwrap();
    let v = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        safetensors::Dtype::F16 => t
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => panic!("unexpected dtype {other:?}"),
    };
    (t.shape().to_vec(), v)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}
