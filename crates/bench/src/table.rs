//! The run as a table for people: one line per benchmark with its status, median time and headline metrics, and a
//! summary line per kernel benchmark (whose metrics do not fit the columns).

use saeperf_git::short;
use saeperf_store::{BenchKind, BenchResult, BenchStatus, Run};

/// One line for a kernel benchmark, whose metrics do not fit the table's columns.
fn kernel_summary(r: &BenchResult) -> Option<String> {
    match r.kind {
        BenchKind::Resources => {
            let by = |what: &'static str| {
                r.metrics
                    .iter()
                    .filter(move |(k, _)| k.ends_with(what))
                    .map(move |(k, v)| (k.trim_end_matches(what).trim_start_matches("kernel."), *v))
            };
            let n = by(".registers").count();
            let (worst, regs) = by(".registers").max_by(|a, b| a.1.total_cmp(&b.1))?;
            let spilling: Vec<&str> = by(".spill_bytes")
                .filter(|(_, v)| *v > 0.0)
                .map(|(k, _)| k)
                .collect();
            Some(format!(
                "{}: {n} kernel builds, most registers {regs:.0} ({worst}), {}",
                r.name,
                if spilling.is_empty() {
                    "no spills".to_string()
                } else {
                    format!("SPILLING: {}", spilling.join(", "))
                }
            ))
        }
        BenchKind::CudaOps => {
            let parts: Vec<String> = r
                .metrics
                .iter()
                .filter_map(|(k, v)| {
                    let op = k.strip_prefix("cuda.")?.strip_suffix(".ms")?;
                    let vs = r
                        .metrics
                        .get(&format!("cuda.{op}.vs_cublas"))
                        .map(|x| format!(", {x:.2}× cuBLAS"))
                        .unwrap_or_default();
                    Some(format!("{op} {v:.3} ms{vs}"))
                })
                .collect();
            Some(format!("{}: {}", r.name, parts.join("; ")))
        }
        BenchKind::Emulated => {
            let by = |what: &'static str| {
                r.metrics
                    .iter()
                    .filter(move |(k, _)| k.ends_with(what))
                    .map(move |(k, v)| {
                        (
                            k.trim_end_matches(what).trim_start_matches("kernel.emu."),
                            *v,
                        )
                    })
            };
            let n = by(".coalescing").count();
            let (worst, eff) = by(".coalescing").min_by(|a, b| a.1.total_cmp(&b.1))?;
            let conflicted: Vec<String> = by(".bank_conflicts")
                .filter(|(_, v)| *v > 0.0)
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect();
            let failed = r
                .metrics
                .get("kernel.emu.failed_checks")
                .copied()
                .unwrap_or(0.0);
            Some(format!(
                "{}: {n} kernels emulated, least coalesced {worst} ({:.0}%), bank conflicts: {}{}",
                r.name,
                eff * 100.0,
                if conflicted.is_empty() {
                    "none".to_string()
                } else {
                    conflicted.join(", ")
                },
                if failed > 0.0 {
                    format!("; {failed:.0} RESULTS DIFFER FROM THE REFERENCES")
                } else {
                    String::new()
                }
            ))
        }
        BenchKind::Roofline => {
            let ops: Vec<String> = r
                .metrics
                .iter()
                .filter_map(|(k, v)| {
                    // roofline.<family.variant>.h100_us is an op's sum; one more segment names a kernel.
                    let op = k.strip_prefix("roofline.")?.strip_suffix(".h100_us")?;
                    (op.matches('.').count() == 1).then(|| format!("{op} {v:.0} µs"))
                })
                .collect();
            Some(format!("{}: at an H100's peak: {}", r.name, ops.join("; ")))
        }
        _ => None,
    }
}

/// The run as a table: one line per benchmark with its status, median time and headline metrics.
pub fn render_run(run: &Run) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "benchmark",
        "status",
        "median time",
        "n",
        "mse",
        "l0",
        "fve",
        "loss rec",
        "Δ CE",
        "mmcs",
        "dead",
        "dense",
    ]);
    let m = |r: &BenchResult, k: &str| {
        r.metrics
            .get(k)
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "-".into())
    };
    for r in &run.results {
        let status = match &r.status {
            BenchStatus::Ok => "ok".to_string(),
            BenchStatus::Failed(_) => "failed".into(),
            BenchStatus::Diverged(_) => "diverged".into(),
        };
        t.add_row([
            r.name.clone(),
            status,
            r.median_time()
                .map(|s| format!("{:.3} ms", s * 1e3))
                .unwrap_or_else(|| "-".into()),
            r.samples.len().to_string(),
            m(r, "mse"),
            m(r, "l0"),
            m(r, "fve"),
            m(r, "loss_recovered"),
            m(r, "delta_ce"),
            m(r, "mmcs"),
            m(r, "dead_fraction"),
            m(r, "dense_fraction"),
        ]);
    }
    let notes: String = run
        .results
        .iter()
        .filter(|r| r.status.is_ok())
        .filter_map(kernel_summary)
        .map(|l| l + "\n")
        .chain(
            run.meta
                .skipped
                .iter()
                .map(|(b, why)| format!("not run: {b}: {why}\n")),
        )
        .collect();
    format!(
        "run {} ({}{}, {}, {}, {})\n{t}\n{notes}",
        run.meta.id,
        run.meta.commit.as_deref().map(short).unwrap_or("no commit"),
        if run.meta.dirty { ", dirty" } else { "" },
        run.meta.fingerprint.summary(),
        run.meta.backend,
        run.meta.profile
    )
}
