//! The one-way structure, enforced: the workspace's manifests, read as files, against the layers of ARCHITECTURE.md
//! ("Crates and the one-way flow"). A crate may depend only on crates of lower layers; the store never on compare,
//! bench, report or the service; compare never on report or the service; report never on the scheduler. The crates
//! that may use cudarc, candle, tokenizers, octocrab and reqwest are named too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn manifest(dir: &Path) -> toml::Table {
    let p = dir.join("Cargo.toml");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every workspace crate: package name → (directory, manifest).
fn workspace() -> BTreeMap<String, (String, toml::Table)> {
    let top = manifest(&root());
    let members = top["workspace"]["members"].as_array().unwrap();
    members
        .iter()
        .map(|m| {
            let dir = m.as_str().unwrap().to_string();
            let t = manifest(&root().join(&dir));
            let name = t["package"]["name"].as_str().unwrap().to_string();
            (name, (dir, t))
        })
        .collect()
}

/// Names in a manifest's dependency table (`dependencies` or `dev-dependencies`).
fn deps(t: &toml::Table, table: &str) -> Vec<String> {
    t.get(table)
        .and_then(|d| d.as_table())
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

/// The layers of ARCHITECTURE.md's crate table: `| crate | layer | job |` rows whose first cell is a package name.
fn layers_from_architecture() -> BTreeMap<String, u32> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 {
            continue;
        }
        let name = cells[1].trim_matches('`');
        if let (true, Ok(layer)) = (name.starts_with("saeperf-"), cells[2].parse::<u32>()) {
            out.insert(name.to_string(), layer);
        }
    }
    out
}

#[test]
fn crates_depend_only_on_lower_layers() {
    let ws = workspace();
    let layers = layers_from_architecture();
    let names: Vec<&String> = ws.keys().collect();
    for n in &names {
        assert!(
            layers.contains_key(*n),
            "ARCHITECTURE.md's crate table does not give a layer for {n}"
        );
    }
    for n in layers.keys() {
        assert!(
            ws.contains_key(n),
            "ARCHITECTURE.md names {n}, which is not a workspace crate"
        );
    }
    // The rules of the issue that split the crates, whatever the table says.
    let never: &[(&str, &[&str])] = &[
        ("saeperf-kernels", &["saeperf-"]),
        (
            "saeperf-store",
            &[
                "saeperf-compare",
                "saeperf-bench",
                "saeperf-report",
                "saeperf-service",
                "saeperf-runner",
            ],
        ),
        (
            "saeperf-compare",
            &[
                "saeperf-bench",
                "saeperf-report",
                "saeperf-service",
                "saeperf-runner",
            ],
        ),
        ("saeperf-report", &["saeperf-service", "saeperf-runner"]),
    ];
    let mut bad = vec![];
    for (n, (dir, t)) in &ws {
        for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
            for d in deps(t, table).iter().filter(|d| ws.contains_key(*d)) {
                if layers[d] >= layers[n] {
                    bad.push(format!(
                        "{dir}/Cargo.toml: {n} (layer {}) depends on {d} (layer {}) in [{table}]",
                        layers[n], layers[d]
                    ));
                }
                for (who, forbidden) in never {
                    if n == who && forbidden.iter().any(|f| d.starts_with(f)) {
                        bad.push(format!("{dir}/Cargo.toml: {n} must never depend on {d}"));
                    }
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "dependencies against the flow:\n{}",
        bad.join("\n")
    );
}

#[test]
fn heavy_and_device_dependencies_stay_in_their_crates() {
    let ws = workspace();
    let only: &[(&str, &[&str])] = &[
        ("cudarc", &["saeperf-kernels"]),
        ("candle-core", &["saeperf-sae"]),
        ("tokenizers", &["saeperf-sae"]),
        ("octocrab", &["saeperf-service"]),
        ("reqwest", &["saeperf-service"]),
        ("sled", &["saeperf-store"]),
        ("minijinja", &["saeperf-report"]),
        ("clap", &["saeperf-runner"]),
    ];
    let mut bad = vec![];
    for (n, (dir, t)) in &ws {
        for d in deps(t, "dependencies") {
            if let Some((_, allowed)) = only.iter().find(|(dep, _)| *dep == d) {
                if !allowed.contains(&n.as_str()) {
                    bad.push(format!(
                        "{dir}/Cargo.toml: {n} uses {d} (only {} may)",
                        allowed.join(", ")
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_code_map_names_every_crate_directory() {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    for (n, (dir, _)) in workspace() {
        assert!(
            text.contains(&format!("`{dir}/`")),
            "ARCHITECTURE.md's code map has no entry for {dir}/ ({n})"
        );
    }
}
