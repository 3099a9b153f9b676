//! saeperf-report: what people see of saeperf. The pull-request comment ([`comment`]), the static dashboard
//! ([`dashboard`]) with its SVG charts ([`svg`]) and feature cards ([`features`]), the scheduler's status page and
//! document ([`status`]), and the one view of a comparison row that the comment and the pages share ([`view`]).
//!
//! Templates are the minijinja files under dashboards/, compiled into the binary with `include_str!`. Escaping is
//! the template engine's job, never the caller's: `.html` and `.xml` templates auto-escape HTML, `.md` templates
//! (the comment) auto-escape with [`md_escape`], which also neutralises Markdown tables, links and @-mentions.
//! Callers pass plain data (view structs, numbers pre-formatted as text) and never mark external strings safe.
//! Report and dashboard only read the store; they never write it.

pub mod comment;
pub mod dashboard;
pub mod features;
pub mod status;
pub mod svg;
pub mod view;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};

/// The hidden marker that identifies saeperf's sticky comment on a pull request.
pub const MARKER_PREFIX: &str = "<!-- saeperf-report";

/// The marker for a report key (several machines or suites can each keep their own comment on one PR).
pub fn marker(key: &str) -> String {
    format!(
        "{MARKER_PREFIX}:{} -->",
        key.replace("--", "-").replace('>', "")
    )
}

/// Templates and static files compiled into the binary: (name, contents).
pub const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../../dashboards/base.html")),
    (
        "charts.html",
        include_str!("../../../dashboards/charts.html"),
    ),
    ("index.html", include_str!("../../../dashboards/index.html")),
    (
        "series.html",
        include_str!("../../../dashboards/series.html"),
    ),
    ("run.html", include_str!("../../../dashboards/run.html")),
    (
        "compare.html",
        include_str!("../../../dashboards/compare.html"),
    ),
    (
        "compare_any.html",
        include_str!("../../../dashboards/compare_any.html"),
    ),
    (
        "regressions.html",
        include_str!("../../../dashboards/regressions.html"),
    ),
    (
        "calibration.html",
        include_str!("../../../dashboards/calibration.html"),
    ),
    ("feed.xml", include_str!("../../../dashboards/feed.xml")),
    (
        "status.html",
        include_str!("../../../dashboards/status.html"),
    ),
    ("comment.md", include_str!("../../../dashboards/comment.md")),
];

/// The site's stylesheet, copied to `style.css`.
pub const STYLE_CSS: &str = include_str!("../../../dashboards/style.css");
/// The only script of the site (the any-two-runs compare page), copied to `compare.js`.
pub const COMPARE_JS: &str = include_str!("../../../dashboards/compare.js");

/// A file-name- and URL-safe form of an identifier from the store (run ids, benchmark names): ASCII letters,
/// digits, `.`, `-` kept, anything else replaced by `_`; when something was replaced (or the name could climb out of
/// its folder), a short hash keeps distinct names distinct.
pub fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out != s || out.starts_with('.') || out.is_empty() {
        use sha2::Digest;
        let h = sha2::Sha256::digest(s.as_bytes());
        out = format!("{}_{}", out.trim_start_matches('.'), &hex::encode(h)[..8]);
    }
    out
}

/// Escape text for GitHub Markdown: HTML special characters become entities, Markdown punctuation is
/// backslash-escaped, `@` cannot start a mention, and newlines cannot break a table row.
pub fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '@' => out.push_str("&#64;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '~' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The template environment: strict undefined values, HTML auto-escaping for .html/.xml, Markdown escaping for .md.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") || name.ends_with(".xml") {
            AutoEscape::Html
        } else if name.ends_with(".md") {
            AutoEscape::Custom("markdown")
        } else {
            AutoEscape::None
        }
    });
    env.set_formatter(|out, state, value| {
        if state.auto_escape() == AutoEscape::Custom("markdown") {
            if value.is_safe() || value.is_none() {
                if !value.is_none() {
                    write!(out, "{value}")?;
                }
            } else {
                write!(out, "{}", md_escape(&value.to_string()))?;
            }
            Ok(())
        } else {
            minijinja::escape_formatter(out, state, value)
        }
    });
    // Pages show the scheduler's status link only where the dashboard renders a status page (see [`status`]).
    env.add_global("has_status", false);
    for (name, src) in TEMPLATES {
        env.add_template(name, src)
            .unwrap_or_else(|e| panic!("built-in template {name} does not compile: {e:#}"));
    }
    env
}

/// Format a value of `metric` for people: times with units, counts and fractions with sensible digits.
pub fn fmt_value(metric: &str, v: Option<f64>) -> String {
    let Some(v) = v else { return "–".into() };
    if !v.is_finite() {
        return format!("{v}");
    }
    match metric {
        "time" | "wall_secs" => fmt_seconds(v),
        "tokens_per_sec" => format!("{}/s", svg::short_num(v)),
        "l0" | "l1" => format!("{v:.2}"),
        "dead_fraction" | "dense_fraction" => format!("{:.2}%", v * 100.0),
        _ if v.abs() >= 1000.0 => format!("{v:.0}"),
        _ if v.abs() >= 1.0 => format!("{v:.3}"),
        _ if v.abs() >= 1e-3 || v == 0.0 => format!("{v:.4}"),
        _ => format!("{v:.3e}"),
    }
}

/// Seconds with a unit (s, ms, µs).
pub use saeperf_compare::format::seconds as fmt_seconds;

/// A relative change as a signed percentage.
pub fn fmt_change(c: Option<f64>) -> String {
    match c {
        Some(c) if c.is_finite() => format!("{:+.2}%", c * 100.0),
        _ => "–".into(),
    }
}

/// A commit SHA shortened for display.
pub fn short_sha(c: Option<&str>) -> String {
    c.map(|c| saeperf_git::short(c).to_string())
        .unwrap_or_else(|| "no commit".into())
}

/// Known FP32 peaks (GFLOP/s) of GPUs by name fragment: the yardstick for "share of the hardware peak".
pub fn gpu_peak_gflops(name: &str) -> Option<f64> {
    const PEAKS: &[(&str, f64)] = &[
        ("H200", 66_900.0),
        ("H100 PCIe", 51_200.0),
        ("H100", 66_900.0),
        ("A100", 19_500.0),
        ("L40S", 91_600.0),
        ("L4", 30_300.0),
        ("A10", 31_200.0),
        ("T4", 8_100.0),
        ("RTX 4090", 82_600.0),
        ("RTX 3090", 35_600.0),
    ];
    PEAKS
        .iter()
        .find(|(k, _)| name.contains(k))
        .map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_escaping_neutralises_html_tables_and_mentions() {
        let s = md_escape("<script>alert(1)</script> | @octocat [x](javascript:1) *b*\nnext");
        assert_eq!(
            s,
            "&lt;script&gt;alert(1)&lt;/script&gt; \\| &#64;octocat \\[x\\](javascript:1) \\*b\\* next"
        );
    }

    #[test]
    fn templates_compile_and_escape_by_extension() {
        let env = environment();
        let t = env
            .template_from_str("{{ x }}")
            .unwrap()
            .render(minijinja::context! { x => "<b>" })
            .unwrap();
        // Ad-hoc templates have no extension: no escaping (never used for output files).
        assert_eq!(t, "<b>");
        let mut env = environment();
        env.add_template("t.html", "{{ x }}").unwrap();
        env.add_template("t.md", "{{ x }} {{ y }}").unwrap();
        let ctx = minijinja::context! { x => "<b>|", y => 1.5 };
        assert_eq!(
            env.get_template("t.html").unwrap().render(&ctx).unwrap(),
            "&lt;b&gt;|"
        );
        assert_eq!(
            env.get_template("t.md").unwrap().render(&ctx).unwrap(),
            "&lt;b&gt;\\| 1.5"
        );
    }

    #[test]
    fn slugs_are_safe_and_distinct() {
        assert_eq!(slug("20250101T000000-abcdef"), "20250101T000000-abcdef");
        assert!(slug("op/encode").starts_with("op_encode_"));
        assert_ne!(slug("op/encode"), slug("op_encode"));
        assert!(!slug("../../etc").contains('/'));
        assert!(!slug("..").starts_with('.'));
    }

    #[test]
    fn values_are_formatted_with_units() {
        assert_eq!(fmt_value("time", Some(0.0123)), "12.300 ms");
        assert_eq!(fmt_value("time", Some(2.5e-5)), "25.00 µs");
        assert_eq!(fmt_value("dead_fraction", Some(0.125)), "12.50%");
        assert_eq!(fmt_value("mse", Some(0.00012)), "1.200e-4");
        assert_eq!(fmt_value("mse", None), "–");
        assert_eq!(fmt_change(Some(0.05)), "+5.00%");
        assert_eq!(gpu_peak_gflops("NVIDIA H100 80GB HBM3"), Some(66_900.0));
    }
}
