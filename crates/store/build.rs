//! Captures the rustc version that builds the runner, for the machine fingerprint recorded with each run.
fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let v = std::process::Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SAEPERF_RUSTC_VERSION={v}");
    println!("cargo:rerun-if-env-changed=RUSTC");
}
