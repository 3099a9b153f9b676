//! The machine fingerprint recorded with every run: runs with different fingerprints are never compared.
//!
//! Read from /proc/cpuinfo (CPU model, logical cores), `nvidia-smi` when it exists (GPU name, driver, CUDA version,
//! SM clocks), the kernel release and the rustc that built this binary (captured by build.rs). The fingerprint id
//! hashes the fields that change performance for good (CPU model and cores, GPU name, driver, CUDA, rustc); clocks
//! are recorded for the evidence but not hashed, since they move from run to run.

use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    pub name: String,
    pub driver: String,
    pub cuda: Option<String>,
    /// Current and max SM clocks in MHz, where readable.
    pub sm_clock_mhz: Option<u32>,
    pub sm_clock_max_mhz: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub cpu_model: String,
    pub cpu_cores: usize,
    pub os: String,
    pub kernel: Option<String>,
    pub gpus: Vec<Gpu>,
    pub rustc: String,
}

impl Fingerprint {
    /// Detect this machine. Never fails: unknown fields stay empty.
    pub fn detect() -> Fingerprint {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let (cpu_model, cpu_cores) = parse_cpuinfo(&cpuinfo);
        let cpu_cores = if cpu_cores == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            cpu_cores
        };
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_string());
        Fingerprint {
            cpu_model,
            cpu_cores,
            os: std::env::consts::OS.to_string(),
            kernel,
            gpus: detect_gpus(),
            rustc: env!("SAEPERF_RUSTC_VERSION").to_string(),
        }
    }

    /// Short stable id (16 hex digits) over the fields that define a series.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.cpu_model.as_bytes());
        h.update(b"\0");
        h.update(self.cpu_cores.to_string().as_bytes());
        for g in &self.gpus {
            h.update(b"\0gpu\0");
            h.update(g.name.as_bytes());
            h.update(b"\0");
            h.update(g.driver.as_bytes());
            h.update(b"\0");
            h.update(g.cuda.as_deref().unwrap_or("").as_bytes());
        }
        h.update(b"\0rustc\0");
        h.update(self.rustc.as_bytes());
        hex::encode(&h.finalize()[..8])
    }

    /// One line for tables: "AMD EPYC ... x2, NVIDIA H100 (driver 550, CUDA 12.4)".
    pub fn summary(&self) -> String {
        let mut s = format!("{} x{}", self.cpu_model, self.cpu_cores);
        for g in &self.gpus {
            s.push_str(&format!(
                ", {} (driver {}, CUDA {})",
                g.name,
                g.driver,
                g.cuda.as_deref().unwrap_or("?")
            ));
        }
        s
    }
}

/// (model name, number of logical processors).
fn parse_cpuinfo(text: &str) -> (String, usize) {
    let mut model = String::new();
    let mut cores = 0;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "processor" => cores += 1,
            "model name" | "Model" | "cpu model" if model.is_empty() => {
                model = v.trim().to_string()
            }
            _ => {}
        }
    }
    if model.is_empty() {
        model = std::env::consts::ARCH.to_string();
    }
    (model, cores)
}

fn detect_gpus() -> Vec<Gpu> {
    let Ok(out) = Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm",
            "--format=csv,noheader,nounits",
        ])
        .output()
    else {
        return vec![];
    };
    if !out.status.success() {
        return vec![];
    }
    // The CUDA version the driver supports is only in the banner of plain `nvidia-smi`.
    let cuda = Command::new("nvidia-smi")
        .output()
        .ok()
        .and_then(|o| parse_cuda_banner(&String::from_utf8_lossy(&o.stdout)));
    parse_gpu_csv(&String::from_utf8_lossy(&out.stdout), cuda)
}

fn parse_cuda_banner(text: &str) -> Option<String> {
    let i = text.find("CUDA Version:")?;
    text[i + "CUDA Version:".len()..]
        .split_whitespace()
        .next()
        .map(|s| s.trim_end_matches('|').to_string())
}

fn parse_gpu_csv(text: &str, cuda: Option<String>) -> Vec<Gpu> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(|s| s.trim()).collect();
            Gpu {
                name: f.first().unwrap_or(&"").to_string(),
                driver: f.get(1).unwrap_or(&"").to_string(),
                cuda: cuda.clone(),
                sm_clock_mhz: f.get(2).and_then(|s| s.parse().ok()),
                sm_clock_max_mhz: f.get(3).and_then(|s| s.parse().ok()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpuinfo_and_nvidia_smi() {
        let ci = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(parse_cpuinfo(ci), ("AMD EPYC 7B13".to_string(), 2));
        let banner =
            "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4     |";
        assert_eq!(parse_cuda_banner(banner).as_deref(), Some("12.4"));
        let g = parse_gpu_csv(
            "NVIDIA H100 80GB HBM3, 550.54.15, 1980, 1980\n",
            Some("12.4".into()),
        );
        assert_eq!(g[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(g[0].sm_clock_max_mhz, Some(1980));
        let mut a = Fingerprint {
            cpu_model: "x".into(),
            cpu_cores: 2,
            ..Default::default()
        };
        let id = a.id();
        a.kernel = Some("6.1".into());
        assert_eq!(a.id(), id, "kernel is recorded, not hashed");
        a.cpu_cores = 4;
        assert_ne!(a.id(), id);
    }
}
