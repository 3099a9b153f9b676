//! The static dashboard (`runner dashboard --out DIR`): plain HTML, one stylesheet, SVG charts drawn at build time
//! and one small script, all with relative links, so the site works from file:// and from GitHub Pages and makes no
//! request outside itself.
//!
//! Pages: `index.html` (every benchmark × metric of every series group: latest value, change, status, trend line;
//! recent runs), `series/*.html` (history chart with its noise band and flagged changes, commits linked),
//! `runs/*.html` (all metrics, training curves, the feature-density histogram, feature cards), `compare/*.html` (a run
//! against its predecessor or its branch point), `compare.html` (any two runs, chosen in the page), `regressions.html`
//! and the Atom feed `feed.xml`, and `calibration.html` (the detector measured on each machine by `runner calibrate`).
//!
//! Calibration runs (profile [`CALIBRATION_PROFILE`]) are shown only on the calibration page: they are no series
//! group, no run in the lists, the compare picker, the regressions, steps or the feed, and never a base.
//!
//! Steps: every series of the main branch is also searched for steps, change points that persisted over several runs
//! (compare's `steps`, docs/verdicts.md "Steps in history"). Each is drawn on its series chart, listed on the
//! regressions page attributed to the first run after it, and a regression step is one feed entry whose id is made
//! of the series and that run, so a step is reported once however often the site is rebuilt.
//!
//! Triage: the maintainers' acks and dismissals (the store's `triage` tree) are applied to every comparison through
//! compare's `triage::apply`, as `runner compare` and the comment apply them; the regressions page lists open
//! regressions, the acknowledged ones (who, when, why) and the dismissed false alarms, a step whose first run after
//! it was acknowledged is marked so (and makes no feed entry), and the calibration page counts each machine's
//! dismissed false alarms.
//!
//! A series group is one machine fingerprint × backend × profile (runs on different machines are never compared).
//! Within a group the history is the runs on the main branch (all runs when the main branch has none); every run of
//! another branch is compared with the newest main-branch run before it, which is its branch point in practice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use saeperf_compare::history::{self, SpeedHistory};
use saeperf_compare::rules::{Direction, Rules};
use saeperf_compare::steps::{self, StepRule};
use saeperf_compare::triage::{self, TriageSet};
use saeperf_compare::{self as compare, stats, Comparison, Verdict};
use saeperf_store::{
    BenchKind, BenchResult, BenchStatus, Fingerprint, Run, RunMeta, RunState, Store, TriageAction,
    CALIBRATION_PROFILE,
};

use crate::svg::{self, LinePoint};
use crate::view::{RowView, TriageView};
use crate::{fmt_change, fmt_value, short_sha, slug};

/// Feature contexts to show on a run page: (run id, benchmark, file).
#[derive(Debug, Clone)]
pub struct FeatureAttach {
    pub run: String,
    pub bench: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct DashboardOptions {
    pub out: PathBuf,
    pub title: String,
    pub main_branch: String,
    /// e.g. https://github.com/owner/repo: commits link to `{repo_url}/commit/{sha}`.
    pub repo_url: Option<String>,
    /// Absolute URL the site is published at (used by the Atom feed; relative links otherwise).
    pub site_url: Option<String>,
    /// At most this many runs per series group (the newest).
    pub limit: usize,
    pub features: Vec<FeatureAttach>,
}

/// What was written.
#[derive(Debug, Serialize)]
pub struct SiteSummary {
    pub out: PathBuf,
    pub pages: usize,
    pub runs: usize,
    pub series: usize,
    pub groups: usize,
    pub regressions: usize,
    /// Steps found in the main branch's series (regressions and improvements).
    pub steps: usize,
    /// Calibration runs shown on the calibration page (not counted in `runs`).
    pub calibrations: usize,
}

#[derive(Debug, Serialize, Clone)]
struct RunLink {
    id: String,
    href: String,
    commit: String,
    commit_href: Option<String>,
    branch: String,
    pr: String,
    date: String,
    verdict: String,
    compare_href: Option<String>,
    dirty: bool,
}

#[derive(Debug, Serialize)]
struct IndexRow {
    bench: String,
    metric: String,
    latest: String,
    change: String,
    status: String,
    /// The newest point changed significantly or its benchmark failed: never folded away on the index.
    attention: bool,
    href: String,
    spark: svg::Spark,
    points: usize,
}

/// A benchmark's quiet series, folded on the index so one benchmark with many metrics (e.g. the ptxas report's
/// registers, shared memory and spills of every kernel) does not bury the others.
#[derive(Debug, Serialize)]
struct FoldedView {
    bench: String,
    rows: Vec<IndexRow>,
}

/// A benchmark with more series than this shows only those that need attention; the rest are folded.
const FOLD_ABOVE: usize = 12;

#[derive(Debug, Serialize)]
struct GroupView {
    name: String,
    machine: String,
    backend: String,
    profile: String,
    fingerprint: String,
    rows: Vec<IndexRow>,
    folded: Vec<FoldedView>,
    runs: usize,
}

#[derive(Debug, Serialize)]
struct SeriesPointView {
    run: RunLink,
    value: String,
    change: String,
    verdict: String,
    band: String,
}

#[derive(Debug, Serialize)]
struct RegressionView {
    run: RunLink,
    base: RunLink,
    row: RowView,
    compare_href: String,
    updated: String,
}

/// A maintainer's ack or dismissal on the regressions page, with the flagged row when the site compared that run.
#[derive(Debug, Serialize)]
struct TriageRecordView {
    triage: TriageView,
    /// The run's link, when the run is on the site.
    run: Option<RunLink>,
    /// The row of the site's comparison of that run (base, head, change), when there is one.
    row: Option<RowView>,
    compare_href: Option<String>,
    /// The machine the run was made on.
    machine: String,
    /// Later runs whose comparison spans the acked change and that it kept quiet (an ack carried over).
    carried: usize,
}

/// A step in a main-branch series (compare's `steps`), attributed to the first run after it.
#[derive(Debug, Serialize)]
struct StepView {
    /// Stable: the series and the run after the step.
    id: String,
    group: String,
    bench: String,
    metric: String,
    run: RunLink,
    series_href: String,
    before: String,
    after: String,
    change: String,
    /// "regression" or "improvement".
    kind: String,
    n_before: usize,
    n_after: usize,
    updated: String,
    /// The maintainer's ack of this change in the first run after the step, if any (no feed entry then).
    acknowledged: Option<TriageView>,
}

/// One run's data as embedded in compare.html.
#[derive(Debug, Serialize)]
struct RunData {
    id: String,
    label: String,
    group: String,
    values: BTreeMap<String, BTreeMap<String, f64>>,
}

/// Everything the builder knows about a run.
struct RunInfo {
    run: Run,
    group: String,
    /// The run this one is compared with (its predecessor in the series, or its branch point).
    base: Option<usize>,
    cmp: Option<Comparison>,
}

struct Site<'a> {
    opt: &'a DashboardOptions,
    env: minijinja::Environment<'static>,
    pages: usize,
}

impl Site<'_> {
    fn write(&mut self, rel: &str, template: &str, ctx: minijinja::Value) -> Result<()> {
        let html = self
            .env
            .get_template(template)
            .and_then(|t| t.render(ctx))
            .with_context(|| format!("rendering {rel}"))?;
        let path = self.opt.out.join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        std::fs::write(&path, html).with_context(|| format!("writing {}", path.display()))?;
        self.pages += 1;
        Ok(())
    }
}

fn run_href(root: &str, id: &str) -> String {
    format!("{root}runs/{}.html", slug(id))
}

fn compare_href(root: &str, base: &str, head: &str) -> String {
    format!("{root}compare/{}__{}.html", slug(base), slug(head))
}

fn series_href(root: &str, group: &str, bench: &str, metric: &str) -> String {
    format!(
        "{root}series/{}.html",
        slug(&format!("{group}--{bench}--{metric}"))
    )
}

/// Speed history of the series `series` (indices into `infos`, oldest first) for the run at position `upto - 1`, the
/// base of the comparison: the one selection rule and builder of compare's history module.
fn speed_history(
    infos: &[RunInfo],
    series: &[usize],
    upto: usize,
    window: usize,
    set: &TriageSet,
) -> SpeedHistory {
    let base = &infos[series[upto - 1]].run.meta;
    let mut h = SpeedHistory::default();
    for &i in history::select(&series[..upto], |&i| &infos[i].run.meta, base, window) {
        h.push_run(&infos[i].run.meta.id, &infos[i].run.results, set);
    }
    h
}

/// Compare run `base` with run `head` (indices into `infos`) and apply the triage: compare's one rule, with the
/// acked run of a carried ack from the site (or the store, when the site left it out) and the history of the
/// head's group before it (`members`, oldest first).
#[allow(clippy::too_many_arguments)]
fn judged(
    store: &Store,
    infos: &[RunInfo],
    members: &[usize],
    base: usize,
    head: usize,
    hist: &SpeedHistory,
    rules: &Rules,
    set: &TriageSet,
) -> Result<Comparison> {
    let h = &infos[head].run;
    let mut c = compare::compare(&infos[base].run, h, hist, rules);
    triage::apply(&mut c, set, &mut |acked, row| {
        let loaded;
        let a = match infos.iter().find(|x| x.run.meta.id == acked.id) {
            Some(x) => &x.run,
            None => {
                loaded = store.load_run(&acked.id)?;
                &loaded
            }
        };
        let mut since = SpeedHistory::default();
        for &j in history::before(
            members,
            |&j| &infos[j].run.meta,
            &h.meta,
            rules.speed.history,
        ) {
            since.push_run(&infos[j].run.meta.id, &infos[j].run.results, set);
        }
        Ok(compare::judge_against(
            a,
            h,
            &row.bench,
            &row.metric,
            &since,
            rules,
        ))
    })?;
    Ok(c)
}

/// Build the site from every complete run in `store`.
pub fn build(store: &Store, rules: &Rules, opt: &DashboardOptions) -> Result<SiteSummary> {
    std::fs::create_dir_all(&opt.out)
        .with_context(|| format!("creating the output directory {}", opt.out.display()))?;
    // Calibration runs go to their own page only: never a series, a listed run or a base.
    let complete: Vec<RunMeta> = store
        .list_runs()?
        .into_iter()
        .filter(|m| m.state == RunState::Complete)
        .collect();
    let set = TriageSet::new(&store.triage()?, &complete);
    let (calibrations, metas): (Vec<_>, Vec<_>) =
        complete.iter().cloned().partition(RunMeta::is_calibration);
    // Group, keeping the newest `limit` runs of each group.
    let mut by_group: BTreeMap<String, Vec<RunMeta>> = BTreeMap::new();
    for m in metas {
        let key = format!(
            "{}-{}-{}",
            m.backend,
            m.profile,
            &m.fingerprint_id[..m.fingerprint_id.len().min(8)]
        );
        by_group.entry(key).or_default().push(m);
    }
    let pb = indicatif::ProgressBar::new(0);
    let mut infos: Vec<RunInfo> = Vec::new();
    for (g, ms) in &by_group {
        let keep = &ms[ms.len().saturating_sub(opt.limit)..];
        pb.inc_length(keep.len() as u64);
        for m in keep {
            let run = store.load_run(&m.id)?;
            infos.push(RunInfo {
                run,
                group: g.clone(),
                base: None,
                cmp: None,
            });
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    // Series per group (indices into infos, oldest first) and comparisons.
    let mut series: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    // Groups whose series is the main branch's history (steps are searched only there).
    let mut main_series: BTreeSet<String> = BTreeSet::new();
    for g in by_group.keys() {
        let members: Vec<usize> = (0..infos.len()).filter(|&i| &infos[i].group == g).collect();
        let main: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| infos[i].run.meta.branch.as_deref() == Some(opt.main_branch.as_str()))
            .collect();
        let s = if main.is_empty() {
            members.clone()
        } else {
            main
        };
        if s.iter()
            .all(|&i| infos[i].run.meta.branch.as_deref() == Some(opt.main_branch.as_str()))
        {
            main_series.insert(g.clone());
        }
        for (pos, &i) in s.iter().enumerate().skip(1) {
            let hist = speed_history(&infos, &s, pos, rules.speed.history, &set);
            let c = judged(store, &infos, &members, s[pos - 1], i, &hist, rules, &set)?;
            infos[i].base = Some(s[pos - 1]);
            infos[i].cmp = Some(c);
        }
        let in_series: BTreeSet<usize> = s.iter().copied().collect();
        for &i in members.iter().filter(|i| !in_series.contains(i)) {
            let t = (infos[i].run.meta.started_at, infos[i].run.meta.id.clone());
            let pos = s.partition_point(|&j| {
                (infos[j].run.meta.started_at, infos[j].run.meta.id.clone()) < t
            });
            if pos == 0 {
                continue;
            }
            let hist = speed_history(&infos, &s, pos, rules.speed.history, &set);
            let c = judged(store, &infos, &members, s[pos - 1], i, &hist, rules, &set)?;
            infos[i].base = Some(s[pos - 1]);
            infos[i].cmp = Some(c);
        }
        series.insert(g.clone(), s);
    }

    let mut site = Site {
        opt,
        env: crate::environment(),
        pages: 0,
    };
    let has_status = crate::status::read(&opt.out).is_some();
    site.env.add_global("has_status", has_status);
    let link = |i: usize, root: &str| -> RunLink {
        let m = &infos[i].run.meta;
        RunLink {
            id: m.id.clone(),
            href: run_href(root, &m.id),
            commit: short_sha(m.commit.as_deref()),
            commit_href: commit_href(opt, m.commit.as_deref()),
            branch: m.branch.clone().unwrap_or_else(|| "–".into()),
            pr: m.pr.map(|p| format!("#{p}")).unwrap_or_default(),
            date: m.started_at.format("%Y-%m-%d %H:%M").to_string(),
            verdict: match &infos[i].cmp {
                Some(c) => c.overall.as_str().to_string(),
                None if m.benchmarks.is_empty() => "empty".into(),
                None => "first".into(),
            },
            compare_href: infos[i]
                .base
                .map(|b| compare_href(root, &infos[b].run.meta.id, &m.id)),
            dirty: m.dirty,
        }
    };

    // Series pages and index rows.
    let mut groups_view = Vec::new();
    let mut n_series = 0;
    let mut all_steps: Vec<StepView> = Vec::new();
    for (g, s) in &series {
        let first = &infos[s[0]].run.meta;
        let mut benches: Vec<String> = Vec::new();
        let mut metrics_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for &i in s {
            for r in &infos[i].run.results {
                if !benches.contains(&r.name) {
                    benches.push(r.name.clone());
                }
                let e = metrics_of.entry(r.name.clone()).or_default();
                if !r.samples.is_empty() {
                    e.insert("time".into());
                }
                e.extend(r.metrics.keys().cloned());
            }
        }
        let mut rows = Vec::new();
        let mut folded = Vec::new();
        for b in &benches {
            let mut bench_rows = Vec::new();
            let mut ms: Vec<&String> = metrics_of[b].iter().collect();
            // time first, then metrics with a rule, then the rest.
            ms.sort_by_key(|m| {
                (
                    m.as_str() != "time",
                    rules.rule(m.as_str()).is_none(),
                    m.to_string(),
                )
            });
            for m in ms {
                let on_main = main_series.contains(g);
                let (row, page, found) =
                    series_page(&infos, s, g, b, m, rules, on_main, &set, &link)?;
                all_steps.extend(found);
                site.write(
                    &series_href("", g, b, m),
                    "series.html",
                    minijinja::Value::from_serialize(&page),
                )?;
                n_series += 1;
                bench_rows.push(row);
            }
            if bench_rows.len() > FOLD_ABOVE {
                let (loud, quiet): (Vec<IndexRow>, Vec<IndexRow>) =
                    bench_rows.into_iter().partition(|r| r.attention);
                rows.extend(loud);
                folded.push(FoldedView {
                    bench: b.clone(),
                    rows: quiet,
                });
            } else {
                rows.extend(bench_rows);
            }
        }
        groups_view.push(GroupView {
            name: g.clone(),
            machine: first.fingerprint.summary(),
            backend: first.backend.to_string(),
            profile: first.profile.clone(),
            fingerprint: first.fingerprint_id.clone(),
            rows,
            folded,
            runs: infos.iter().filter(|x| &x.group == g).count(),
        });
    }

    // Feature cards by (run, bench).
    let mut cards: HashMap<(String, String), Vec<crate::features::Card>> = HashMap::new();
    for f in &opt.features {
        let file = crate::features::read(&f.path)?;
        cards.insert(
            (f.run.clone(), f.bench.clone()),
            crate::features::cards(&file, 24),
        );
    }

    // Run pages and compare pages.
    let mut regressions: Vec<RegressionView> = Vec::new();
    for i in 0..infos.len() {
        run_page(&mut site, &infos, i, &link, &cards, rules)?;
        if let (Some(b), Some(c)) = (infos[i].base, &infos[i].cmp) {
            let page = compare_page(&infos, b, i, c, &link);
            site.write(
                &compare_href("", &infos[b].run.meta.id, &infos[i].run.meta.id),
                "compare.html",
                minijinja::Value::from_serialize(&page),
            )?;
            for r in c.rows.iter().filter(|r| r.verdict == Verdict::Regression) {
                regressions.push(RegressionView {
                    run: link(i, ""),
                    base: link(b, ""),
                    row: RowView::of(r),
                    compare_href: compare_href("", &infos[b].run.meta.id, &infos[i].run.meta.id),
                    updated: infos[i]
                        .run
                        .meta
                        .started_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                });
            }
        }
    }
    regressions.sort_by(|a, b| {
        b.updated
            .cmp(&a.updated)
            .then_with(|| a.row.bench.cmp(&b.row.bench))
    });
    let (acknowledged, dismissed) = triage_records(&infos, &complete, &set, &link);
    all_steps.sort_by(|a, b| {
        b.updated
            .cmp(&a.updated)
            .then_with(|| (&a.group, &a.bench, &a.metric).cmp(&(&b.group, &b.bench, &b.metric)))
    });

    // Recent runs, newest first, over every group.
    let mut order: Vec<usize> = (0..infos.len()).collect();
    order.sort_by(|&a, &b| {
        let (ma, mb) = (&infos[a].run.meta, &infos[b].run.meta);
        (mb.started_at, &mb.id).cmp(&(ma.started_at, &ma.id))
    });
    let recent: Vec<RunLink> = order.iter().take(50).map(|&i| link(i, "")).collect();
    let generated = chrono::Utc::now();
    site.write(
        "index.html",
        "index.html",
        minijinja::context! {
            root => "", title => &opt.title, page_title => "Benchmarks",
            groups => &groups_view, recent => &recent, total_runs => infos.len(),
            regressions => regressions.len(),
            generated => generated.format("%Y-%m-%d %H:%M UTC").to_string(),
        },
    )?;
    site.write(
        "regressions.html",
        "regressions.html",
        minijinja::context! {
            root => "", title => &opt.title, page_title => "Regressions", regressions => &regressions,
            acknowledged => &acknowledged, dismissed => &dismissed,
            steps => &all_steps, step_min_run => StepRule::default().min_run,
        },
    )?;
    // The Atom feed: one entry per run with regressions.
    let mut entries: Vec<minijinja::Value> = Vec::new();
    let base_url = opt
        .site_url
        .as_deref()
        .map(|u| format!("{}/", u.trim_end_matches('/')));
    let mut seen = BTreeSet::new();
    for r in &regressions {
        if !seen.insert(r.run.id.clone()) {
            continue;
        }
        let rows: Vec<&RegressionView> = regressions
            .iter()
            .filter(|x| x.run.id == r.run.id)
            .collect();
        entries.push(minijinja::context! {
            id => format!("urn:saeperf:regression:{}", r.run.id),
            title => format!("{} regression{} in run {} ({} on {})", rows.len(), if rows.len() == 1 { "" } else { "s" }, r.run.id, r.run.commit, r.run.branch),
            href => format!("{}{}", base_url.as_deref().unwrap_or(""), r.compare_href),
            updated => &r.updated,
            rows => rows,
        });
    }
    // One entry per regression step, its id made of the series and the first run after the step.
    for st in all_steps
        .iter()
        .filter(|st| st.kind == "regression" && st.acknowledged.is_none())
    {
        entries.push(minijinja::context! {
            id => format!("urn:saeperf:step:{}:{}", st.id, st.run.id),
            title => format!("Step in {} {}: {} from run {} ({} on {})", st.bench, st.metric, st.change, st.run.id, st.run.commit, st.run.branch),
            href => format!("{}{}", base_url.as_deref().unwrap_or(""), st.series_href),
            updated => &st.updated,
            content => format!(
                "{} {}: {} → {} ({}), a step that persisted: {} runs before it, {} from run {} (commit {}) on",
                st.bench, st.metric, st.before, st.after, st.change, st.n_before, st.n_after, st.run.id, st.run.commit
            ),
        });
    }
    let newest = regressions
        .iter()
        .map(|r| r.updated.clone())
        .chain(
            all_steps
                .iter()
                .filter(|s| s.kind == "regression" && s.acknowledged.is_none())
                .map(|s| s.updated.clone()),
        )
        .max();
    site.write(
        "feed.xml",
        "feed.xml",
        minijinja::context! {
            title => &opt.title, entries => entries,
            self_href => format!("{}feed.xml", base_url.as_deref().unwrap_or("")),
            updated => newest.unwrap_or_else(|| generated.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        },
    )?;
    // compare.html: every run's values embedded (no fetch: file:// pages cannot load JSON files).
    let data: Vec<RunData> = order
        .iter()
        .map(|&i| {
            let m = &infos[i].run.meta;
            RunData {
                id: slug(&m.id),
                label: format!(
                    "{} · {} · {}{}",
                    m.started_at.format("%Y-%m-%d %H:%M"),
                    short_sha(m.commit.as_deref()),
                    m.branch.as_deref().unwrap_or("–"),
                    m.pr.map(|p| format!(" #{p}")).unwrap_or_default()
                ),
                group: infos[i].group.clone(),
                values: infos[i]
                    .run
                    .results
                    .iter()
                    .map(|r| {
                        let mut v: BTreeMap<String, f64> = r
                            .metrics
                            .iter()
                            .filter(|(_, x)| x.is_finite())
                            .map(|(k, x)| (k.clone(), *x))
                            .collect();
                        if let Some(t) = r.median_time() {
                            v.insert("time".into(), t);
                        }
                        (r.name.clone(), v)
                    })
                    .collect(),
            }
        })
        .collect();
    let directions: BTreeMap<&str, &str> = rules
        .metrics
        .iter()
        .map(|(k, r)| {
            (
                k.as_str(),
                match r.direction {
                    Direction::LowerIsBetter => "lower",
                    Direction::HigherIsBetter => "higher",
                    Direction::None => "none",
                },
            )
        })
        .chain([("time", "lower")])
        .collect();
    site.write(
        "compare.html",
        "compare_any.html",
        minijinja::context! {
            root => "", title => &opt.title, page_title => "Compare two runs",
            data => minijinja::Value::from_serialize(serde_json::json!({ "runs": data, "directions": directions })),
            has_runs => !infos.is_empty(),
        },
    )?;
    let mut dismissed_by_machine: BTreeMap<String, usize> = BTreeMap::new();
    for t in set.records().filter(|t| t.action == TriageAction::Dismiss) {
        if let Some(m) = complete.iter().find(|m| m.id == t.run) {
            *dismissed_by_machine
                .entry(m.fingerprint_id.clone())
                .or_default() += 1;
        }
    }
    let n_calibrations = calibration_page(
        &mut site,
        store,
        &calibrations,
        &complete,
        &dismissed_by_machine,
    )?;
    if crate::status::render(&site.env, &opt.out, opt.repo_url.as_deref())? {
        site.pages += 1;
    }
    std::fs::write(opt.out.join("style.css"), crate::STYLE_CSS).context("writing style.css")?;
    std::fs::write(opt.out.join("compare.js"), crate::COMPARE_JS).context("writing compare.js")?;
    Ok(SiteSummary {
        out: opt.out.clone(),
        pages: site.pages,
        runs: infos.len(),
        series: n_series,
        groups: series.len(),
        regressions: regressions.len(),
        steps: all_steps.len(),
        calibrations: n_calibrations,
    })
}

/// The regressions page's triage tables: every ack and every dismissal that applies (the newer of the two on one
/// row), newest first, each with the run's row from the site's comparison when there is one.
fn triage_records(
    infos: &[RunInfo],
    complete: &[RunMeta],
    set: &TriageSet,
    link: &dyn Fn(usize, &str) -> RunLink,
) -> (Vec<TriageRecordView>, Vec<TriageRecordView>) {
    let mut acks = Vec::new();
    let mut dismissals = Vec::new();
    for t in set.records() {
        let i = infos.iter().position(|x| x.run.meta.id == t.run);
        let row = i.and_then(|i| {
            infos[i].cmp.as_ref()?.rows.iter().find(|r| {
                r.bench == t.bench && r.metric == t.metric && r.triage.as_ref() == Some(t)
            })
        });
        let carried = infos
            .iter()
            .filter(|x| x.run.meta.id != t.run)
            .filter_map(|x| x.cmp.as_ref())
            .flat_map(|c| &c.rows)
            .filter(|r| r.triage.as_ref() == Some(t))
            .count();
        let v = TriageRecordView {
            triage: TriageView::of(t),
            run: i.map(|i| link(i, "")),
            row: row.map(RowView::of),
            compare_href: i.and_then(|i| {
                let b = infos[i].base?;
                row.map(|_| compare_href("", &infos[b].run.meta.id, &t.run))
            }),
            machine: complete
                .iter()
                .find(|m| m.id == t.run)
                .map(|m| m.fingerprint.summary())
                .unwrap_or_default(),
            carried,
        };
        match t.action {
            TriageAction::Ack => acks.push((t.at, v)),
            TriageAction::Dismiss => dismissals.push((t.at, v)),
        }
    }
    let newest_first = |mut v: Vec<(chrono::DateTime<chrono::Utc>, TriageRecordView)>| {
        v.sort_by_key(|b| std::cmp::Reverse(b.0));
        v.into_iter().map(|(_, v)| v).collect::<Vec<_>>()
    };
    (newest_first(acks), newest_first(dismissals))
}

/// The link to a commit on the repository's site, when there is one and the commit is a SHA.
fn commit_href(opt: &DashboardOptions, commit: Option<&str>) -> Option<String> {
    match (&opt.repo_url, commit) {
        (Some(u), Some(c)) if c.chars().all(|c| c.is_ascii_hexdigit()) => {
            Some(format!("{}/commit/{c}", u.trim_end_matches('/')))
        }
        _ => None,
    }
}

/// One line of a calibration run's table as stored in its result's `extra`: the shape of the bench crate's
/// `CalibrationRow` (report and bench, one layer, do not know each other, so it is read here as data). A result whose
/// `extra` does not parse is read from its name (`calibrate/<method>/<change>`) and metrics instead.
#[derive(Debug, Clone, Deserialize)]
struct CalibrationRow {
    method: String,
    slowdown: f64,
    comparisons: usize,
    rows: usize,
    flagged: usize,
    #[serde(default)]
    per_op: BTreeMap<String, (usize, usize)>,
    #[serde(default)]
    median_detectable: Option<f64>,
    #[serde(default)]
    pair_spread: Option<f64>,
    #[serde(default)]
    secs_per_comparison: f64,
}

impl CalibrationRow {
    fn of(r: &BenchResult) -> Option<CalibrationRow> {
        if r.kind != BenchKind::Calibration {
            return None;
        }
        if let Ok(row) = serde_json::from_value::<CalibrationRow>(r.extra.clone()) {
            return Some(row);
        }
        let (method, change) = r.name.strip_prefix("calibrate/")?.split_once('/')?;
        let slowdown = match change {
            "A/A" => 0.0,
            c => {
                c.strip_prefix('+')?
                    .strip_suffix('%')?
                    .parse::<f64>()
                    .ok()?
                    / 100.0
            }
        };
        let m = |k: &str| r.metrics.get(k).copied().filter(|v| v.is_finite());
        Some(CalibrationRow {
            method: method.to_string(),
            slowdown,
            comparisons: m("comparisons")? as usize,
            rows: m("rows")? as usize,
            flagged: m("flagged")? as usize,
            per_op: BTreeMap::new(),
            median_detectable: m("median_detectable"),
            pair_spread: m("pair_spread"),
            secs_per_comparison: m("secs_per_comparison").unwrap_or(0.0),
        })
    }

    fn is_aa(&self) -> bool {
        self.slowdown == 0.0
    }

    /// "A/A" or the injected slowdown, e.g. "+3%", "+2.5%".
    fn change(&self) -> String {
        if self.is_aa() {
            return "A/A".into();
        }
        let p = format!("{:.2}", self.slowdown * 100.0);
        format!("+{}%", p.trim_end_matches('0').trim_end_matches('.'))
    }

    /// The flagged share of the judged op rows, e.g. "12.5%"; "–" when none was judged.
    fn rate(&self) -> String {
        if self.rows == 0 {
            return "–".into();
        }
        format!("{:.1}%", self.flagged as f64 / self.rows as f64 * 100.0)
    }
}

#[derive(Debug, Serialize)]
struct CalibrationRowView {
    method: String,
    change: String,
    /// An A/A row that flagged something (false alarms).
    alarm: bool,
    comparisons: usize,
    flagged: String,
    rate: String,
    per_op: String,
    median_detectable: String,
    pair_spread: String,
    secs_per_comparison: String,
}

#[derive(Debug, Serialize)]
struct CalibrationRunView {
    id: String,
    date: String,
    commit: String,
    commit_href: Option<String>,
    branch: String,
    dirty: bool,
    suite: String,
    runner: String,
    rows: Vec<CalibrationRowView>,
}

/// An earlier calibration of a machine as one compact row: a cell per (method, change) column of the machine's
/// history, the A/A false-alarm rate or the catch rate, "–" where that run did not measure it.
#[derive(Debug, Serialize)]
struct CalibrationHistoryRow {
    id: String,
    date: String,
    commit: String,
    commit_href: Option<String>,
    cells: Vec<String>,
}

#[derive(Debug, Serialize)]
struct MachineCalibrationView {
    fingerprint: String,
    summary: String,
    facts: Vec<(String, String)>,
    runs: usize,
    latest: CalibrationRunView,
    columns: Vec<String>,
    history: Vec<CalibrationHistoryRow>,
    /// False alarms maintainers dismissed on this machine (`runner triage dismiss`).
    dismissed: usize,
}

/// A machine with dismissed false alarms but no calibration run.
#[derive(Debug, Serialize)]
struct UncalibratedMachineView {
    fingerprint: String,
    summary: String,
    dismissed: usize,
}

fn machine_facts(f: &Fingerprint) -> Vec<(String, String)> {
    let mut v = vec![
        ("CPU".to_string(), f.cpu_model.clone()),
        ("logical cores".to_string(), f.cpu_cores.to_string()),
        ("OS".to_string(), f.os.clone()),
        (
            "kernel".to_string(),
            f.kernel.clone().unwrap_or_else(|| "–".into()),
        ),
    ];
    for g in &f.gpus {
        v.push((
            "GPU".to_string(),
            format!(
                "{} (driver {}, CUDA {})",
                g.name,
                g.driver,
                g.cuda.as_deref().unwrap_or("?")
            ),
        ));
    }
    v.push(("rustc".to_string(), f.rustc.clone()));
    v
}

/// `calibration.html`: per machine fingerprint (newest calibration first), the newest calibration run's table and
/// the older calibration runs of that machine, one compact row each. Returns how many calibration runs it shows.
/// `dismissed` counts, per machine fingerprint, the false alarms maintainers dismissed there (`runner triage
/// dismiss`); machines with dismissals and no calibration are listed apart.
fn calibration_page(
    site: &mut Site,
    store: &Store,
    metas: &[RunMeta],
    all: &[RunMeta],
    dismissed: &BTreeMap<String, usize>,
) -> Result<usize> {
    let opt = site.opt;
    let mut by_machine: BTreeMap<&str, Vec<&RunMeta>> = BTreeMap::new();
    for m in metas {
        by_machine.entry(&m.fingerprint_id).or_default().push(m);
    }
    let mut shown = 0;
    let mut machines: Vec<(chrono::DateTime<chrono::Utc>, MachineCalibrationView)> = Vec::new();
    for (fp, ms) in by_machine {
        // Oldest first (list_runs' order); the newest `limit` of the machine.
        let keep = &ms[ms.len().saturating_sub(opt.limit.max(1))..];
        let mut runs: Vec<(Run, Vec<CalibrationRow>)> = Vec::new();
        for m in keep.iter().rev() {
            let run = store.load_run(&m.id)?;
            let rows = run.results.iter().filter_map(CalibrationRow::of).collect();
            runs.push((run, rows));
        }
        shown += runs.len();
        let (newest, newest_rows) = &runs[0];
        let nm = &newest.meta;
        let latest = CalibrationRunView {
            id: nm.id.clone(),
            date: nm.started_at.format("%Y-%m-%d %H:%M").to_string(),
            commit: short_sha(nm.commit.as_deref()),
            commit_href: commit_href(opt, nm.commit.as_deref()),
            branch: nm.branch.clone().unwrap_or_else(|| "–".into()),
            dirty: nm.dirty,
            suite: nm.suite.clone(),
            runner: nm.runner_version.clone(),
            rows: newest_rows
                .iter()
                .map(|r| CalibrationRowView {
                    method: r.method.clone(),
                    change: r.change(),
                    alarm: r.is_aa() && r.flagged > 0,
                    comparisons: r.comparisons,
                    flagged: format!("{}/{}", r.flagged, r.rows),
                    rate: r.rate(),
                    per_op: r
                        .per_op
                        .iter()
                        .map(|(k, (f, n))| format!("{} {f}/{n}", k.trim_start_matches("op/")))
                        .collect::<Vec<_>>()
                        .join(", "),
                    median_detectable: r
                        .median_detectable
                        .map(|d| format!("±{:.1}%", d * 100.0))
                        .unwrap_or_else(|| "–".into()),
                    pair_spread: r
                        .pair_spread
                        .map(|d| format!("{:.1}%", d * 100.0))
                        .unwrap_or_else(|| "–".into()),
                    secs_per_comparison: crate::fmt_seconds(r.secs_per_comparison),
                })
                .collect(),
        };
        // The history's columns: every (method, change) an older run measured, counted before timed, A/A first,
        // then by slowdown.
        let mut cols: Vec<(String, f64, String)> = Vec::new();
        for (_, rows) in &runs[1..] {
            for r in rows {
                let key = (r.method.clone(), r.slowdown, r.change());
                if !cols.iter().any(|c| c.0 == key.0 && c.2 == key.2) {
                    cols.push(key);
                }
            }
        }
        cols.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let history = runs[1..]
            .iter()
            .map(|(run, rows)| CalibrationHistoryRow {
                id: run.meta.id.clone(),
                date: run.meta.started_at.format("%Y-%m-%d %H:%M").to_string(),
                commit: short_sha(run.meta.commit.as_deref()),
                commit_href: commit_href(opt, run.meta.commit.as_deref()),
                cells: cols
                    .iter()
                    .map(|(method, _, change)| {
                        rows.iter()
                            .find(|r| &r.method == method && &r.change() == change)
                            .map(|r| format!("{} ({}/{})", r.rate(), r.flagged, r.rows))
                            .unwrap_or_else(|| "–".into())
                    })
                    .collect(),
            })
            .collect();
        machines.push((
            nm.started_at,
            MachineCalibrationView {
                fingerprint: fp.to_string(),
                summary: nm.fingerprint.summary(),
                facts: machine_facts(&nm.fingerprint),
                runs: ms.len(),
                latest,
                columns: cols
                    .into_iter()
                    .map(|(method, _, change)| format!("{method} {change}"))
                    .collect(),
                history,
                dismissed: dismissed.get(fp).copied().unwrap_or(0),
            },
        ));
    }
    machines.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| a.1.fingerprint.cmp(&b.1.fingerprint))
    });
    let machines: Vec<MachineCalibrationView> = machines.into_iter().map(|(_, m)| m).collect();
    let uncalibrated: Vec<UncalibratedMachineView> = dismissed
        .iter()
        .filter(|(fp, _)| !machines.iter().any(|m| &m.fingerprint == *fp))
        .map(|(fp, n)| UncalibratedMachineView {
            fingerprint: fp.clone(),
            summary: all
                .iter()
                .rev()
                .find(|m| &m.fingerprint_id == fp)
                .map(|m| m.fingerprint.summary())
                .unwrap_or_default(),
            dismissed: *n,
        })
        .collect();
    site.write(
        "calibration.html",
        "calibration.html",
        minijinja::context! {
            root => "", title => &opt.title, page_title => "Detector calibration",
            machines => &machines, profile => CALIBRATION_PROFILE, uncalibrated => &uncalibrated,
        },
    )?;
    Ok(shown)
}

#[derive(Serialize)]
struct SeriesPage {
    root: &'static str,
    title: String,
    page_title: String,
    group: String,
    bench: String,
    metric: String,
    direction: String,
    band_note: String,
    /// What a kernel metric counts and what it predicts or cannot see on a GPU; None for other metrics.
    metric_note: Option<&'static str>,
    chart: svg::LineChart,
    points: Vec<SeriesPointView>,
    steps: Vec<StepView>,
}

/// One (group, bench, metric) series: its page, its index row, and its steps (searched when `on_main`, the series
/// being the main branch's history; links relative to the site's root).
#[allow(clippy::too_many_arguments)]
fn series_page(
    infos: &[RunInfo],
    s: &[usize],
    group: &str,
    bench: &str,
    metric: &str,
    rules: &Rules,
    on_main: bool,
    set: &TriageSet,
    link: &dyn Fn(usize, &str) -> RunLink,
) -> Result<(IndexRow, SeriesPage, Vec<StepView>)> {
    let values: Vec<(usize, Option<f64>, Option<&BenchResult>)> = s
        .iter()
        .map(|&i| {
            let r = infos[i].run.result(bench);
            (
                i,
                r.filter(|r| r.status.is_ok())
                    .and_then(|r| r.series_value(metric)),
                r,
            )
        })
        .collect();
    let rule = rules.rule(metric);
    let sp = &rules.speed;
    let mut pts = Vec::new();
    let mut views = Vec::new();
    let mut xlabels = Vec::new();
    let mut prev: Option<f64> = None;
    // Whether the newest point needs a person's attention (a significant change, or a failed benchmark).
    let mut attention = false;
    let mut hist: Vec<f64> = Vec::new();
    for (k, (i, v, r)) in values.iter().enumerate() {
        let verdict = infos[*i]
            .cmp
            .as_ref()
            .and_then(|c| {
                c.rows
                    .iter()
                    .find(|row| row.bench == bench && row.metric == metric)
            })
            .map(|row| row.verdict);
        let band = match (prev, metric) {
            (Some(p), "time") => {
                let fence = stats::fence(&hist, sp.history, sp.min_history);
                let single = r.is_some_and(|r| r.samples.len() < sp.min_samples);
                let mut t = fence.unwrap_or(sp.min_threshold).max(sp.floor);
                if single {
                    t = t.max(sp.single_sample_threshold);
                }
                Some((p * (1.0 - t), p * (1.0 + t)))
            }
            (Some(p), _) => rule.filter(|r| r.direction != Direction::None).map(|r| {
                let tol = r.abs_tol + r.rel_tol * p.abs();
                (p - tol, p + tol)
            }),
            _ => None,
        };
        attention =
            verdict.is_some_and(Verdict::needs_attention) || r.is_some_and(|r| !r.status.is_ok());
        let status = match (r, verdict) {
            (None, _) => "missing".to_string(),
            (Some(r), _) if !r.status.is_ok() => match &r.status {
                BenchStatus::Diverged(_) => "diverged".into(),
                _ => "failed".into(),
            },
            (_, Some(v)) => v.as_str().to_string(),
            (_, None) => {
                if k == 0 {
                    "first".into()
                } else {
                    "–".into()
                }
            }
        };
        let l = link(*i, "../");
        let change = match (prev, v) {
            (Some(p), Some(v)) if p != 0.0 => Some((v - p) / p.abs()),
            _ => None,
        };
        if let Some(v) = v {
            pts.push(LinePoint {
                x: k as f64,
                y: *v,
                band,
                class: match verdict {
                    Some(Verdict::Regression) => "regression".into(),
                    Some(Verdict::Improvement) => "improvement".into(),
                    Some(Verdict::Acknowledged) => "acknowledged".into(),
                    _ => "point".into(),
                },
                title: format!(
                    "{} {} · {}: {}{}",
                    l.date,
                    l.commit,
                    l.branch,
                    fmt_value(metric, Some(*v)),
                    if matches!(
                        status.as_str(),
                        "regression" | "improvement" | "acknowledged"
                    ) {
                        format!(" ({status} {})", fmt_change(change))
                    } else {
                        String::new()
                    }
                ),
                href: Some(l.href.clone()),
            });
            // The noise band restarts at a run where the speed change was acknowledged (compare's history rule).
            if metric == "time" && set.restarts(&infos[*i].run.meta.id, bench) {
                hist.clear();
            }
            hist.push(*v);
        }
        xlabels.push((
            k as f64,
            infos[*i]
                .run
                .meta
                .commit
                .as_deref()
                .map(|c| c[..c.len().min(7)].to_string())
                .unwrap_or_else(|| infos[*i].run.meta.started_at.format("%m-%d").to_string()),
        ));
        views.push(SeriesPointView {
            value: fmt_value(metric, *v),
            change: fmt_change(change),
            verdict: status,
            band: band
                .map(|(a, b)| {
                    format!(
                        "{} … {}",
                        fmt_value(metric, Some(a)),
                        fmt_value(metric, Some(b))
                    )
                })
                .unwrap_or_else(|| "–".into()),
            run: l,
        });
        if v.is_some() {
            prev = *v;
        }
    }
    let unit = if metric == "time" {
        "median time"
    } else {
        metric
    };
    let mut chart = svg::line_chart(&pts, 860.0, 300.0, unit, "commit", Some(&xlabels), true);
    for t in &mut chart.yticks {
        t.label = match metric {
            "time" => crate::fmt_seconds(t.value),
            "dead_fraction" | "dense_fraction" => format!("{:.1}%", t.value * 100.0),
            _ => t.label.clone(),
        };
    }
    // Steps: over the points with a value (time lower is better; a metric by its rule's direction).
    let step_direction = if metric == "time" {
        Direction::LowerIsBetter
    } else {
        rule.map_or(Direction::None, |r| r.direction)
    };
    let known: Vec<(usize, usize, f64)> = values
        .iter()
        .enumerate()
        .filter_map(|(k, (i, v, _))| v.filter(|v| v.is_finite()).map(|v| (k, *i, v)))
        .collect();
    let found = if on_main {
        let ys: Vec<f64> = known.iter().map(|p| p.2).collect();
        steps::detect(&ys, step_direction, &StepRule::default())
    } else {
        vec![]
    };
    let step_view = |st: &steps::Step, root: &str| {
        let (_, i, _) = known[st.at];
        StepView {
            id: slug(&format!("{group}--{bench}--{metric}")),
            group: group.to_string(),
            bench: bench.to_string(),
            metric: metric.to_string(),
            run: link(i, root),
            series_href: series_href(root, group, bench, metric),
            before: fmt_value(metric, Some(st.before)),
            after: fmt_value(metric, Some(st.after)),
            change: st
                .change
                .map_or_else(|| "from 0".into(), |c| fmt_change(Some(c))),
            kind: st.kind.as_str().to_string(),
            n_before: st.n_before,
            n_after: st.n_after,
            updated: infos[i]
                .run
                .meta
                .started_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            acknowledged: set
                .effective(&infos[i].run.meta.id, bench, metric)
                .filter(|t| t.action == TriageAction::Ack)
                .map(TriageView::of),
        }
    };
    let page_steps: Vec<StepView> = found.iter().map(|st| step_view(st, "../")).collect();
    for (st, v) in found.iter().zip(&page_steps) {
        svg::add_step(
            &mut chart,
            &pts,
            known[st.at].0 as f64,
            &format!("step {}", v.change),
            &v.kind,
            &format!(
                "step ({}): {} → {} ({}) from {} {} on",
                v.kind, v.before, v.after, v.change, v.run.date, v.run.commit
            ),
            Some(v.run.href.clone()),
        );
    }
    let site_steps: Vec<StepView> = found.iter().map(|st| step_view(st, "")).collect();
    let finite: Vec<f64> = values.iter().filter_map(|v| v.1).collect();
    let last = views.last();
    let row = IndexRow {
        bench: bench.to_string(),
        metric: metric.to_string(),
        latest: last.map(|v| v.value.clone()).unwrap_or_default(),
        change: last.map(|v| v.change.clone()).unwrap_or_default(),
        status: last.map(|v| v.verdict.clone()).unwrap_or_default(),
        attention,
        href: series_href("", group, bench, metric),
        spark: svg::sparkline(&finite, 120.0, 24.0),
        points: finite.len(),
    };
    views.reverse();
    let direction = match rule.map(|r| r.direction) {
        _ if metric == "time" => "lower is better",
        Some(Direction::LowerIsBetter) => "lower is better",
        Some(Direction::HigherIsBetter) => "higher is better",
        _ => "not judged",
    };
    let band_note = if metric == "time" {
        format!(
            "Band: the previous point ± the noise threshold (rustc-perf fence Q3 + 3·IQR of the relative changes over the last {} points; {:.0}% while history is short; never below {:.0}%). A speed change is flagged only when it leaves the band and the Mann–Whitney test on the raw samples rejects at p < {}.",
            sp.history,
            sp.min_threshold * 100.0,
            sp.floor * 100.0,
            sp.alpha
        )
    } else if let Some(r) = rule.filter(|r| r.direction != Direction::None) {
        format!(
            "Band: the previous value ± (abs {:.0e} + rel {:.0e} × |value|), the metric's tolerance in the suite.",
            r.abs_tol, r.rel_tol
        )
    } else {
        "No band: this metric is recorded but not judged.".into()
    };
    Ok((
        row,
        SeriesPage {
            root: "../",
            title: String::new(),
            page_title: format!("{bench} · {metric}"),
            group: group.to_string(),
            bench: bench.to_string(),
            metric: metric.to_string(),
            direction: direction.into(),
            band_note,
            metric_note: kernel_metric_note(metric),
            chart,
            points: views,
            steps: page_steps,
        },
        site_steps,
    ))
}

#[derive(Serialize, Clone)]
struct MetricView {
    name: String,
    value: String,
    base: String,
    change: String,
    verdict: String,
    /// What the comparison could see ([`compare::Row::detectable_text`]), empty without a comparison row.
    detectable: String,
    href: String,
}

#[derive(Serialize)]
struct BenchView {
    name: String,
    kind: String,
    status: String,
    reason: Option<String>,
    timing: Option<String>,
    metrics: Vec<MetricView>,
    curves: Vec<svg::LineChart>,
    histogram: Option<svg::Histogram>,
    /// Pruning benchmarks: the histogram before pruning, with the high-frequency cluster marked.
    before_histogram: Option<svg::Histogram>,
    /// The high-frequency cluster the spike rule found (docs/metrics.md, "spike"), in words.
    spike: Option<String>,
    /// The pruning experiment's answer.
    experiment: Option<String>,
    /// The dictionary's features matched with the baseline's (docs/feature-diff.md).
    diff: Option<DiffView>,
    cards: Vec<crate::features::Card>,
    /// Training benchmarks: where a step's time went, per phase (name, ms per step over the run, ms per step in the
    /// steady state, share of the steady step).
    phases: Vec<(String, String, String, String)>,
    /// An emulated result's counts, one row per kernel.
    emulated: Option<EmulatedView>,
    /// A roofline result's estimates, per op and kernel, beside the run's measured CUDA times.
    roofline: Option<RooflineView>,
    /// The metric table is long (and for the kernel results the tables above say it better): folded in a
    /// `<details>`, with the rows the comparison flagged (`flagged`) shown above it.
    fold_metrics: bool,
    flagged: Vec<MetricView>,
    extra: Vec<(String, String)>,
}

/// One number of a kernel table, linked to its series.
#[derive(Serialize)]
struct CellView {
    text: String,
    href: String,
    /// Base and change, for the tooltip; empty without a base.
    title: String,
    /// "worse" / "better" when the comparison flagged this metric.
    class: &'static str,
}

/// The columns of the emulated table: (metric of `kernel.emu.<kernel>.<metric>`, heading).
const EMU_COLUMNS: [(&str, &str); 8] = [
    ("global_load_sectors", "load sectors"),
    ("global_store_sectors", "store sectors"),
    ("global_requests", "requests"),
    ("coalescing", "coalescing"),
    ("shared_requests", "shared requests"),
    ("bank_conflicts", "bank conflicts"),
    ("barriers_per_block", "barriers / block"),
    ("fp32_ops_per_thread", "fp32 ops / thread"),
];

#[derive(Serialize)]
struct EmuKernelRow {
    kernel: String,
    cells: Vec<CellView>,
    /// The worst verdict of the kernel's metrics vs the base ("" without a comparison), the metric it is on (when
    /// it needs attention) and how many more of its metrics have the same verdict.
    verdict: String,
    verdict_metric: Option<CellView>,
    also: usize,
}

#[derive(Serialize)]
struct EmulatedView {
    shapes: String,
    compiler: String,
    comparisons: String,
    failed: u64,
    failures: Vec<String>,
    headings: Vec<&'static str>,
    rows: Vec<EmuKernelRow>,
}

#[derive(Serialize)]
struct RooflineKernelView {
    kernel: String,
    flops: CellView,
    bytes: CellView,
    bound: String,
    h100: CellView,
    h200: CellView,
}

#[derive(Serialize)]
struct RooflineOpView {
    op: String,
    flops: String,
    bytes: String,
    bound: String,
    h100: CellView,
    h200: CellView,
    /// The measured time of the same sequence (cuda/ops), µs; "no GPU run" without a cuda/ops result.
    measured: String,
    measured_href: Option<String>,
    /// measured ÷ estimate at the run's GPU's peaks.
    ratio: String,
    kernels: Vec<RooflineKernelView>,
}

#[derive(Serialize)]
struct RooflineView {
    shape: String,
    sampled_blocks: String,
    peaks: String,
    /// The peak the measured time is divided by ("H100").
    ratio_of: &'static str,
    /// The run has CUDA timings (a cuda/ops result).
    gpu: bool,
    ops: Vec<RooflineOpView>,
}

/// A metric's value cell, linked to its series, with the base and change in its tooltip and its verdict's colour.
fn kernel_cell(
    r: &BenchResult,
    b: Option<&BenchResult>,
    metric: &str,
    text: String,
    href: &dyn Fn(&str) -> String,
    verdicts: &HashMap<(&str, &str), Verdict>,
) -> CellView {
    let hv = r.metrics.get(metric).copied();
    let bv = b.and_then(|b| b.metrics.get(metric).copied());
    CellView {
        text,
        href: href(metric),
        title: match bv {
            Some(_) => format!(
                "base {} ({})",
                crate::comment::kernel_value(metric, bv),
                crate::comment::kernel_change(metric, bv, hv)
            ),
            None => String::new(),
        },
        class: match verdicts.get(&(r.name.as_str(), metric)) {
            Some(Verdict::Regression | Verdict::Failed) => "worse",
            Some(Verdict::Improvement) => "better",
            _ => "",
        },
    }
}

/// An emulated result's table: one row per kernel of `kernel.emu.<kernel>.<metric>`, with the worst verdict of its
/// metrics; the shapes, the compiler and the failed comparisons from `extra`.
fn emulated_view(
    r: &BenchResult,
    b: Option<&BenchResult>,
    href: &dyn Fn(&str) -> String,
    verdicts: &HashMap<(&str, &str), Verdict>,
) -> EmulatedView {
    let mut kernels: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for m in r.metrics.keys() {
        if let Some((k, what)) = m
            .strip_prefix("kernel.emu.")
            .and_then(|e| e.rsplit_once('.'))
        {
            kernels.entry(k).or_default().push(what);
        }
    }
    let rows = kernels
        .iter()
        .map(|(k, whats)| {
            let name = |w: &str| format!("kernel.emu.{k}.{w}");
            let cells = EMU_COLUMNS
                .iter()
                .map(|(w, _)| {
                    let m = name(w);
                    let v = r.metrics.get(&m).copied();
                    let text = match (*w, v) {
                        (_, None) => "–".into(),
                        ("barriers_per_block" | "fp32_ops_per_thread", Some(v)) => {
                            crate::comment::kernel_value(w, Some((v * 100.0).round() / 100.0))
                        }
                        _ => crate::comment::kernel_value(w, v),
                    };
                    kernel_cell(r, b, &m, text, href, verdicts)
                })
                .collect();
            // The worst verdict over every metric of the kernel, columns first, then the rest by name.
            let mut order: Vec<&str> = EMU_COLUMNS.iter().map(|c| c.0).collect();
            let rest: Vec<&str> = whats
                .iter()
                .copied()
                .filter(|w| !order.contains(w))
                .collect();
            order.extend(rest);
            let judged: Vec<(&str, Verdict)> = order
                .iter()
                .filter_map(|w| Some((*w, *verdicts.get(&(r.name.as_str(), name(w).as_str()))?)))
                .collect();
            let worst = judged.iter().map(|j| j.1).max();
            let first = worst.and_then(|v| judged.iter().find(|j| j.1 == v));
            let flagged = worst.filter(|v| *v != Verdict::Noise && *v != Verdict::New);
            EmuKernelRow {
                kernel: k.to_string(),
                cells,
                verdict: worst.map(|v| v.as_str().to_string()).unwrap_or_default(),
                verdict_metric: flagged.and(first).map(|(w, _)| {
                    let m = name(w);
                    CellView {
                        text: w.to_string(),
                        href: href(&m),
                        title: String::new(),
                        class: "",
                    }
                }),
                also: flagged.map_or(0, |v| judged.iter().filter(|j| j.1 == v).count() - 1),
            }
        })
        .collect();
    let e = &r.extra;
    let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("–").to_string();
    EmulatedView {
        shapes: s("shapes"),
        compiler: s("compiler"),
        comparisons: e
            .get("comparisons")
            .and_then(|v| v.as_u64())
            .map_or("?".into(), |c| c.to_string()),
        failed: e.get("failed").and_then(|v| v.as_u64()).unwrap_or(0),
        failures: e["failures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect(),
        headings: EMU_COLUMNS.iter().map(|c| c.1).collect(),
        rows,
    }
}

/// A row of a roofline result's `extra.rows` (the kernels crate's `RooflineRow`, read as plain data).
#[derive(Deserialize)]
struct RoofRow {
    op: String,
    kernel: String,
    counts: RoofCounts,
    #[serde(default)]
    us: BTreeMap<String, f64>,
}

#[derive(Deserialize)]
struct RoofCounts {
    #[serde(default)]
    flops: f64,
    #[serde(default)]
    gld_sectors: f64,
    #[serde(default)]
    gst_sectors: f64,
}

/// A GPU's peaks in a roofline result's `extra.peaks`.
#[derive(Deserialize)]
struct RoofPeak {
    name: String,
    fp32_flops: f64,
    hbm_bytes: f64,
}

/// Which term bounds (flops, bytes) at each peak: "memory", "compute", or both named where the peaks disagree.
fn roof_bound(flops: f64, bytes: f64, peaks: &[RoofPeak]) -> String {
    let at: Vec<(String, &str)> = peaks
        .iter()
        .map(|p| {
            let compute = flops / p.fp32_flops >= bytes / p.hbm_bytes;
            (
                p.name.to_uppercase(),
                if compute { "compute" } else { "memory" },
            )
        })
        .collect();
    match at.first() {
        None => "–".into(),
        Some((_, b)) if at.iter().all(|a| a.1 == *b) => b.to_string(),
        _ => at
            .iter()
            .map(|(p, b)| format!("{b} on {p}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// A large count with an SI prefix: "249.5 G", "3.4 GB", "512".
fn si(v: f64, unit: &str) -> String {
    let a = v.abs();
    let (x, p) = if a >= 1e12 {
        (v / 1e12, "T")
    } else if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        return format!("{v:.0}{}{unit}", if unit.is_empty() { "" } else { " " });
    };
    format!("{x:.1} {p}{unit}")
}

/// A roofline result's table: per op its kernels' FLOPs, sector bytes, bound and µs at each peak, the op's sum, and
/// beside it the measured time of the same sequence from the run's cuda/ops result (None: no rows to show).
fn roofline_view(
    run: &Run,
    r: &BenchResult,
    b: Option<&BenchResult>,
    href: &dyn Fn(&str, &str) -> String,
    verdicts: &HashMap<(&str, &str), Verdict>,
) -> Option<RooflineView> {
    let rows: Vec<RoofRow> = serde_json::from_value(r.extra.get("rows")?.clone()).ok()?;
    let peaks: Vec<RoofPeak> = r
        .extra
        .get("peaks")
        .and_then(|p| serde_json::from_value(p.clone()).ok())
        .unwrap_or_default();
    let cuda = crate::comment::cuda_ops(run);
    let (key, label) = crate::comment::roofline_peak(&run.meta);
    let own = |m: &str| href(&r.name, m);
    let us_text = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
    let mut ops: Vec<RooflineOpView> = Vec::new();
    // Each op's kernels together, ops in the order they first appear.
    let mut rows: Vec<&RoofRow> = rows.iter().collect();
    let first: HashMap<&str, usize> = rows
        .iter()
        .enumerate()
        .rev()
        .map(|(i, x)| (x.op.as_str(), i))
        .collect();
    rows.sort_by_key(|x| first[x.op.as_str()]);
    for row in rows.iter().copied() {
        if ops.last().is_none_or(|o| o.op != row.op) {
            let sum = |p: &str| -> Option<f64> {
                r.metrics
                    .get(&format!("roofline.{}.{p}_us", row.op))
                    .copied()
                    .or_else(|| {
                        let v: Vec<f64> = rows
                            .iter()
                            .filter(|x| x.op == row.op)
                            .filter_map(|x| x.us.get(p).copied())
                            .collect();
                        (!v.is_empty()).then(|| v.iter().sum())
                    })
            };
            let (flops, bytes) =
                rows.iter()
                    .filter(|x| x.op == row.op)
                    .fold((0.0, 0.0), |(f, s), x| {
                        (
                            f + x.counts.flops,
                            s + 32.0 * (x.counts.gld_sectors + x.counts.gst_sectors),
                        )
                    });
            let cell = |p: &str| {
                let m = format!("roofline.{}.{p}_us", row.op);
                kernel_cell(r, b, &m, us_text(sum(p)), &own, verdicts)
            };
            // The cuda/ops metric timing the same sequence, where one exists, and its value in this run.
            let counterpart = r
                .extra
                .get("measured_metric")
                .and_then(|m| m.get(&row.op)?.as_str());
            let measured = cuda
                .zip(counterpart)
                .and_then(|(c, name)| Some((c, name, crate::comment::measured_ms(r, c, &row.op)?)));
            ops.push(RooflineOpView {
                op: row.op.clone(),
                flops: si(flops, ""),
                bytes: si(bytes, "B"),
                bound: roof_bound(flops, bytes, &peaks),
                h100: cell("h100"),
                h200: cell("h200"),
                measured: match (cuda, &measured) {
                    (None, _) => "no GPU run".into(),
                    (Some(_), Some((_, _, ms))) => format!("{:.1}", ms * 1e3),
                    // cuda/ops times no such sequence.
                    (Some(_), None) if counterpart.is_none() => "–".into(),
                    (Some(_), None) => "not measured".into(),
                },
                measured_href: measured.as_ref().map(|(c, name, _)| href(&c.name, name)),
                ratio: match (&measured, sum(key)) {
                    (Some((_, _, ms)), Some(est)) if est > 0.0 => {
                        format!("{:.2}×", ms * 1e3 / est)
                    }
                    _ => "–".into(),
                },
                kernels: vec![],
            });
        }
        let base = format!("roofline.{}.{}", row.op, row.kernel);
        let c = &row.counts;
        let bytes = 32.0 * (c.gld_sectors + c.gst_sectors);
        let cell = |what: &str, text: String| {
            kernel_cell(r, b, &format!("{base}.{what}"), text, &own, verdicts)
        };
        let k = RooflineKernelView {
            kernel: row.kernel.clone(),
            flops: cell("flops", si(c.flops, "")),
            bytes: cell("sector_bytes", si(bytes, "B")),
            bound: roof_bound(c.flops, bytes, &peaks),
            h100: cell("h100_us", us_text(row.us.get("h100").copied())),
            h200: cell("h200_us", us_text(row.us.get("h200").copied())),
        };
        if let Some(o) = ops.last_mut() {
            o.kernels.push(k);
        }
    }
    let peaks_text = peaks
        .iter()
        .map(|p| {
            format!(
                "{} {:.1} TFLOP/s FP32, {:.2} TB/s HBM",
                p.name.to_uppercase(),
                p.fp32_flops / 1e12,
                p.hbm_bytes / 1e12
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Some(RooflineView {
        shape: crate::comment::roofline_shape(&r.extra),
        sampled_blocks: r
            .extra
            .get("sampled_blocks")
            .and_then(|v| v.as_u64())
            .map_or("a few".into(), |n| n.to_string()),
        peaks: if peaks_text.is_empty() {
            "not recorded".into()
        } else {
            peaks_text
        },
        ratio_of: label,
        gpu: cuda.is_some(),
        ops,
    })
}

/// One line under a series chart of a kernel metric: what it counts, and what it predicts or cannot see on a GPU
/// (docs/kernel-metrics.md, docs/kernel-metrics-sass.md). None for other metrics.
fn kernel_metric_note(metric: &str) -> Option<&'static str> {
    if metric == "kernel.emu.failed_checks" {
        return Some("Comparisons of the emulated kernels' results with their C++ references that failed: above 0 a kernel computes a wrong result. The emulator runs the threads in one order, so a race can still pass.");
    }
    if let Some(e) = metric.strip_prefix("kernel.emu.") {
        let what = e.rsplit_once('.').map_or(e, |x| x.1);
        return Some(match what {
            "global_load_sectors" => "32-byte global-memory sectors the kernel's loads touched, counted warp by warp in the CPU emulator at its fixed small shapes: the memory traffic it asks for. It cannot see how much of it the L1 and L2 caches serve.",
            "global_store_sectors" => "32-byte global-memory sectors the kernel's stores touched, counted warp by warp in the CPU emulator at its fixed small shapes: the write traffic it asks for. It cannot see caches or how the writes overlap with other work.",
            "global_requests" => "Warp-wide global load and store instructions executed, in the emulator. More requests for the same sectors usually means narrower (less vectorised) accesses; their latency, and how much of it other warps hide, is not seen.",
            "coalescing" => "Bytes the lanes asked for ÷ bytes in the 32-byte sectors they touched (100%: every byte fetched is used; above: lanes share data). Lower means wasted memory bandwidth on a GPU, unless caches serve the waste, which the count cannot see.",
            "shared_requests" => "Warp-wide shared-memory loads and stores executed, in the emulator: the work of the shared-memory pipe; whether it limits the kernel depends on occupancy and overlap, which the count cannot see.",
            "bank_conflicts" => "Shared-memory wavefronts beyond one per request phase (32 banks of 4 bytes): each is an extra pass the GPU serialises. Whether other warps hide the delay is not seen.",
            "atomics" => "Warp-wide atomic operations (global or shared), in the emulator. On a GPU their cost depends on contention for the same addresses, which the count does not see.",
            "barriers_per_block" => "__syncthreads executed per block: each stalls the block until its slowest warp arrives; how long that wait is depends on scheduling the count cannot see.",
            "fp32_ops_per_thread" => "fp32 operations per thread (arithmetic, comparisons, math functions: one each), in the emulator: the arithmetic work. How it is issued (FFMA or not, latency, occupancy) is not seen.",
            "flops" => "Floating-point operations (an FMA counts two) at the emulator's small shapes: the arithmetic work the kernel does, not how fast the GPU does it.",
            _ => "A count from the CPU emulator of the CUDA kernels (docs/kernel-metrics.md): what a kernel asks of the GPU; caches, occupancy, clocks and the order warps run in are not seen.",
        });
    }
    if let Some(rest) = metric.strip_prefix("roofline.") {
        let kernel = rest.matches('.').count() >= 3;
        let what = rest.rsplit_once('.').map_or(rest, |x| x.1);
        return Some(match (what, kernel) {
            ("flops", _) => "FP32 FLOPs of the kernel at the roofline shape: a few blocks of each launch emulated and scaled to the grid.",
            ("sector_bytes", _) => "Bytes in the 32-byte sectors the kernel touches at the roofline shape, all counted as DRAM traffic: where caches serve repeats, the real traffic is lower.",
            ("h100_us" | "h200_us", false) => "The op's estimated time at the GPU's FP32 and HBM peaks, summed over its kernels: an idealised figure (no cache reuse, latency, launch overhead or occupancy limit), not a prediction of the measured cuda/ops time; a change in it says the counted work or traffic changed.",
            ("h100_us" | "h200_us", true) => "The kernel's estimated time at the GPU's peaks: max(FLOPs ÷ FP32 peak, sector bytes ÷ HBM bandwidth). Idealised (no cache reuse, latency, launch overhead or occupancy limit): a change says the counted work or traffic changed, not the measured time.",
            _ => "An estimate from the kernels emulated at a real shape; never judged.",
        });
    }
    let (_, what) = metric.split_once(".sass.")?;
    Some(match what {
        "instructions" => "SASS instructions in the kernel's code (nvdisasm of ptxas's cubin), each counted once: static, so loop trip counts, divergence, latency and occupancy are not seen.",
        "ffma" => "FFMA instructions in the kernel's code (static: each once, however often the loop runs).",
        "fma_share" => "FFMA ÷ all instructions in the code: where instruction issue is the limit, it bounds how close the main loop can come to the FMA peak. Static: memory latency, occupancy and trip counts are not seen.",
        "main_loop_instructions" => "Instructions in the kernel's main loop (the backward branch holding the most FFMA): longer for the same FFMA means more instructions per unit of work. Static: its trip count and stalls are not seen.",
        "local_loads" | "local_stores" => "Local-memory instructions in the code: register spills. Static: how often they run and whether the cache serves them is not seen.",
        _ => "Memory instructions of this kind in the kernel's code: more for the same work usually means lost vectorisation or reuse in registers. Static: how often each runs and whether it hits a cache is not seen.",
    })
}

/// The rows of a training benchmark's per-phase breakdown (`extra.phase_ms`, `extra.steady_phase_ms`).
fn phase_rows(r: &BenchResult) -> Vec<(String, String, String, String)> {
    let get = |k: &str| r.extra.get(k).and_then(|v| v.as_object());
    let (Some(all), Some(steady)) = (get("phase_ms"), get("steady_phase_ms")) else {
        return vec![];
    };
    let total: f64 = steady.values().filter_map(|v| v.as_f64()).sum();
    let ms = |v: Option<f64>| {
        v.map(|x| format!("{x:.1} ms"))
            .unwrap_or_else(|| "–".into())
    };
    ["encode", "decode", "backward", "optimizer", "other"]
        .iter()
        .map(|k| {
            let s = steady.get(*k).and_then(|v| v.as_f64());
            (
                k.to_string(),
                ms(all.get(*k).and_then(|v| v.as_f64())),
                ms(s),
                s.filter(|_| total > 0.0)
                    .map(|x| format!("{:.0}%", x / total * 100.0))
                    .unwrap_or_else(|| "–".into()),
            )
        })
        .collect()
}

/// `extra.feature_diff` of a training benchmark, for its run page: the counts, the band moves, the most-changed
/// features and their top contexts under the head's and the base's dictionaries.
#[derive(Serialize)]
struct DiffView {
    base_run: Option<String>,
    unavailable: Option<String>,
    counts: Vec<(String, String)>,
    moves: Vec<(String, String, String)>,
    changed: Vec<ChangedView>,
    head_cards: Vec<crate::features::Card>,
    base_cards: Vec<crate::features::Card>,
    contexts_unavailable: Option<String>,
}

#[derive(Serialize)]
struct ChangedView {
    kind: String,
    base: String,
    head: String,
    cosine: String,
    density: String,
}

fn diff_view(d: &serde_json::Value) -> DiffView {
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let ids = |v: &serde_json::Value| match v {
        serde_json::Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        serde_json::Value::Number(n) => n.to_string(),
        _ => "–".into(),
    };
    let num = |v: &serde_json::Value| v.as_f64().map_or("–".to_string(), |x| format!("{x:.3}"));
    let counts = d["counts"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.replace('_', " "), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let mut moves = vec![];
    if let Some(o) = d["band_moves"].as_object() {
        for (from, to) in o {
            for (t, n) in to.as_object().into_iter().flatten() {
                if from != t && n.as_u64().unwrap_or(0) > 0 {
                    moves.push((from.clone(), t.clone(), n.to_string()));
                }
            }
        }
    }
    let changed = d["most_changed"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| ChangedView {
            kind: s(&c["kind"]).unwrap_or_default(),
            base: ids(&c["base"]),
            head: ids(&c["head"]),
            cosine: num(&c["cosine"]),
            density: format!("{} → {}", num(&c["base_density"]), num(&c["head_density"])),
        })
        .collect();
    let cards = |side: &str| {
        serde_json::from_value::<crate::features::FeatureFile>(d["contexts"][side].clone())
            .map(|f| crate::features::cards(&f, 16))
            .unwrap_or_default()
    };
    DiffView {
        base_run: s(&d["base_run"]),
        unavailable: s(&d["unavailable"]),
        counts,
        moves,
        changed,
        head_cards: cards("head"),
        base_cards: cards("base"),
        contexts_unavailable: s(&d["contexts_unavailable"]),
    }
}

/// The spike of `extra.spike` in words: its size, density, share of L0 and the features it holds.
fn spike_words(s: &serde_json::Value) -> Option<String> {
    let n = s.get("features")?.as_u64()?;
    let ids: Vec<String> = s
        .get("feature_ids")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x.to_string())
                .collect()
        })
        .unwrap_or_default();
    Some(format!(
        "high-frequency cluster: {n} features firing on ≥ {:.2}% of tokens (peak {:.2}%), carrying {:.1}% of L0{}",
        s.get("min_density")?.as_f64()? * 100.0,
        s.get("peak_density").and_then(|v| v.as_f64()).unwrap_or(f64::NAN) * 100.0,
        s.get("l0_share")?.as_f64()? * 100.0,
        if ids.is_empty() {
            String::new()
        } else {
            format!(
                "; features {}{}",
                ids.join(", "),
                if (ids.len() as u64) < n { ", …" } else { "" }
            )
        }
    ))
}

fn run_page(
    site: &mut Site,
    infos: &[RunInfo],
    i: usize,
    link: &dyn Fn(usize, &str) -> RunLink,
    cards: &HashMap<(String, String), Vec<crate::features::Card>>,
    rules: &Rules,
) -> Result<()> {
    let info = &infos[i];
    let run = &info.run;
    let base = info.base.map(|b| &infos[b].run);
    let verdicts: HashMap<(&str, &str), Verdict> = info
        .cmp
        .iter()
        .flat_map(|c| c.rows.iter())
        .map(|r| ((r.bench.as_str(), r.metric.as_str()), r.verdict))
        .collect();
    let detectables: HashMap<(&str, &str), String> = info
        .cmp
        .iter()
        .flat_map(|c| c.rows.iter())
        .filter_map(|r| Some(((r.bench.as_str(), r.metric.as_str()), r.detectable_text()?)))
        .collect();
    let benches: Vec<BenchView> = run
        .results
        .iter()
        .map(|r| {
            let b = base.and_then(|b| b.result(&r.name));
            let mut names: Vec<String> = Vec::new();
            if !r.samples.is_empty() {
                names.push("time".into());
            }
            let mut ms: Vec<&String> = r.metrics.keys().collect();
            ms.sort_by_key(|m| (rules.rule(m.as_str()).is_none(), m.to_string()));
            names.extend(ms.into_iter().cloned());
            let metrics: Vec<MetricView> = names
                .iter()
                .map(|m| {
                    let hv = r.series_value(m);
                    let bv = b.and_then(|b| b.series_value(m));
                    // Kernel counts are exact: whole numbers, ratios as percentages, a change from 0 as a difference.
                    let kernel = m.starts_with("kernel.");
                    let value = |v| {
                        if kernel {
                            crate::comment::kernel_value(m, v)
                        } else {
                            fmt_value(m, v)
                        }
                    };
                    MetricView {
                        name: m.clone(),
                        value: value(hv),
                        base: value(bv),
                        change: match (bv, hv) {
                            _ if kernel => crate::comment::kernel_change(m, bv, hv),
                            (Some(b), Some(h)) if b != 0.0 => fmt_change(Some((h - b) / b.abs())),
                            _ => "–".into(),
                        },
                        verdict: verdicts
                            .get(&(r.name.as_str(), m.as_str()))
                            .map(|v| v.as_str().to_string())
                            .unwrap_or_default(),
                        detectable: detectables
                            .get(&(r.name.as_str(), m.as_str()))
                            .cloned()
                            .unwrap_or_default(),
                        href: series_href("../", &info.group, &r.name, m),
                    }
                })
                .collect();
            let curves = if r.curve.len() >= 2 {
                type Get = fn(&saeperf_store::schema::CurvePoint) -> f64;
                let fs: [(&str, Get); 3] =
                    [("loss", |c| c.loss), ("mse", |c| c.mse), ("l0", |c| c.l0)];
                fs.iter()
                    .map(|(name, f)| {
                        let pts: Vec<LinePoint> = r
                            .curve
                            .iter()
                            .map(|c| LinePoint {
                                x: c.step as f64,
                                y: f(c),
                                band: None,
                                class: "point".into(),
                                title: String::new(),
                                href: None,
                            })
                            .collect();
                        svg::line_chart(&pts, 300.0, 180.0, name, "step", None, false)
                    })
                    .collect()
            } else {
                vec![]
            };
            let spike = r.extra.get("spike").filter(|s| !s.is_null());
            let draw = |key: &str, mark: bool| {
                let h: saeperf_sae::metrics::DensityHistogram =
                    serde_json::from_value(r.extra.get(key)?.clone()).ok()?;
                let mut g = svg::density_histogram(h.lo, h.width, &h.counts, h.dead, 620.0, 220.0);
                if let Some(d) = spike
                    .filter(|_| mark)
                    .and_then(|s| s.get("min_density")?.as_f64())
                {
                    svg::mark_spike(&mut g, h.lo, h.width, d);
                }
                Some(g)
            };
            let is_prune = r.kind == BenchKind::Prune;
            let histogram = draw("density_histogram", !is_prune);
            let before_histogram = draw("before_density_histogram", true);
            let spike_text = spike.and_then(spike_words);
            let experiment = r
                .extra
                .get("experiment")
                .and_then(|e| e.get("answer")?.as_str())
                .map(str::to_string);
            let timing = (!r.samples.is_empty()).then(|| {
                let mut s = format!(
                    "{} samples: median {}, min {}, max {}",
                    r.samples.len(),
                    fmt_value("time", r.median_time()),
                    fmt_value("time", r.samples.iter().copied().reduce(f64::min)),
                    fmt_value("time", r.samples.iter().copied().reduce(f64::max)),
                );
                if let Some(y) = crate::comment::yardstick_ratio(r) {
                    s.push_str(&format!("; time ÷ yardstick {y:.3}×"));
                }
                if let Some(g) = crate::comment::gflops(r) {
                    s.push_str(&format!("; {g:.1} GFLOP/s"));
                }
                s
            });
            let ok = r.status.is_ok();
            let emulated = (r.kind == BenchKind::Emulated && ok).then(|| {
                emulated_view(
                    r,
                    b,
                    &|m| series_href("../", &info.group, &r.name, m),
                    &verdicts,
                )
            });
            let roofline = (r.kind == BenchKind::Roofline && ok)
                .then(|| {
                    roofline_view(
                        run,
                        r,
                        b,
                        &|bench, m| series_href("../", &info.group, bench, m),
                        &verdicts,
                    )
                })
                .flatten();
            // What the kernel tables show is not repeated in the line of extra facts.
            // Long metric lists (the kernel results: hundreds of kernel × metric) are folded, the rows the
            // comparison flagged kept above the fold.
            let fold_metrics = emulated.is_some()
                || roofline.is_some()
                || (r.kind == BenchKind::Resources && metrics.len() > FOLD_ABOVE);
            let flagged: Vec<MetricView> = if fold_metrics {
                metrics
                    .iter()
                    .filter(|m| {
                        verdicts
                            .get(&(r.name.as_str(), m.name.as_str()))
                            .is_some_and(|v| v.needs_attention())
                    })
                    .map(MetricView::clone)
                    .collect()
            } else {
                vec![]
            };
            let shown: &[&str] = if emulated.is_some() {
                &[
                    "kernels",
                    "failures",
                    "shapes",
                    "failed",
                    "comparisons",
                    "compiler",
                ]
            } else if roofline.is_some() {
                &[
                    "rows",
                    "peaks",
                    "measured_metric",
                    "shape",
                    "topk",
                    "sampled_blocks",
                ]
            } else {
                &[]
            };
            let mut extra: Vec<(String, String)> = Vec::new();
            if let Some(o) = r.extra.as_object() {
                for (k, v) in o {
                    if matches!(
                        k.as_str(),
                        "density_histogram"
                            | "before_pruning"
                            | "before_density_histogram"
                            | "spike"
                            | "experiment"
                            | "feature_diff"
                            | "phase_ms"
                            | "steady_phase_ms"
                    ) || shown.contains(&k.as_str())
                    {
                        continue;
                    }
                    let text = match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Number(n) => n
                            .as_f64()
                            .map(svg::short_num)
                            .unwrap_or_else(|| n.to_string()),
                        other => other.to_string(),
                    };
                    extra.push((k.clone(), text));
                }
            }
            BenchView {
                name: r.name.clone(),
                kind: match r.kind {
                    BenchKind::Train => "training",
                    BenchKind::Prune => "training + pruning",
                    BenchKind::Op => "op",
                    BenchKind::Resources => "kernel resources (ptxas)",
                    BenchKind::Emulated => "kernels emulated (counted traffic)",
                    BenchKind::Roofline => "kernel roofline (H100 / H200)",
                    BenchKind::CudaOps => "CUDA ops vs cuBLAS",
                    BenchKind::Peer => "PyTorch peer",
                    BenchKind::Calibration => "detector calibration",
                }
                .into(),
                status: match &r.status {
                    BenchStatus::Ok => "ok".into(),
                    BenchStatus::Failed(_) => "failed".into(),
                    BenchStatus::Diverged(_) => "diverged".into(),
                },
                reason: match &r.status {
                    BenchStatus::Ok => None,
                    BenchStatus::Failed(m) | BenchStatus::Diverged(m) => Some(m.clone()),
                },
                timing,
                metrics,
                curves,
                histogram,
                before_histogram,
                spike: spike_text,
                experiment,
                diff: r.extra.get("feature_diff").map(diff_view),
                cards: cards
                    .get(&(run.meta.id.clone(), r.name.clone()))
                    .cloned()
                    .unwrap_or_default(),
                phases: phase_rows(r),
                fold_metrics,
                flagged,
                emulated,
                roofline,
                extra,
            }
        })
        .collect();
    let m = &run.meta;
    let meta_rows: Vec<(&str, String)> = vec![
        ("run", m.id.clone()),
        (
            "commit",
            m.commit.clone().unwrap_or_else(|| "–".into())
                + if m.dirty { " (dirty tree)" } else { "" },
        ),
        ("branch", m.branch.clone().unwrap_or_else(|| "–".into())),
        (
            "pull request",
            m.pr.map(|p| format!("#{p}")).unwrap_or_else(|| "–".into()),
        ),
        (
            "started",
            m.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        ),
        (
            "finished",
            m.finished_at
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_else(|| "–".into()),
        ),
        ("machine", m.fingerprint.summary()),
        ("fingerprint", m.fingerprint_id.clone()),
        (
            "kernel",
            m.fingerprint.kernel.clone().unwrap_or_else(|| "–".into()),
        ),
        ("rustc", m.fingerprint.rustc.clone()),
        ("backend", m.backend.to_string()),
        ("suite / profile", format!("{} / {}", m.suite, m.profile)),
        ("suite hash", m.suite_hash.clone()),
        (
            "activation sets",
            m.activation_sets
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("runner", m.runner_version.clone()),
    ];
    let l = link(i, "../");
    site.write(
        &run_href("", &m.id),
        "run.html",
        minijinja::context! {
            root => "../", title => "", page_title => format!("Run {}", m.id),
            run => l, meta => meta_rows, benches => benches,
            base => info.base.map(|b| link(b, "../")),
            overall => info.cmp.as_ref().map(|c| c.overall.as_str()),
            notes => info.cmp.as_ref().map(|c| c.notes.clone()).unwrap_or_default(),
        },
    )
}

#[derive(Serialize)]
struct CompareRowView {
    #[serde(flatten)]
    row: RowView,
    href: String,
}

fn compare_page(
    infos: &[RunInfo],
    b: usize,
    h: usize,
    c: &Comparison,
    link: &dyn Fn(usize, &str) -> RunLink,
) -> minijinja::Value {
    let mut rows: Vec<&compare::Row> = c.rows.iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.verdict.needs_attention()));
    let rows: Vec<CompareRowView> = rows
        .into_iter()
        .map(|r| CompareRowView {
            row: RowView::of(r),
            href: series_href("../", &infos[h].group, &r.bench, &r.metric),
        })
        .collect();
    let (bm, hm) = (&infos[b].run.meta, &infos[h].run.meta);
    let env: Vec<(&str, String, String)> = vec![
        (
            "commit",
            bm.commit.clone().unwrap_or_default(),
            hm.commit.clone().unwrap_or_default(),
        ),
        (
            "branch",
            bm.branch.clone().unwrap_or_default(),
            hm.branch.clone().unwrap_or_default(),
        ),
        (
            "machine",
            bm.fingerprint.summary(),
            hm.fingerprint.summary(),
        ),
        (
            "backend / profile",
            format!("{} / {}", bm.backend, bm.profile),
            format!("{} / {}", hm.backend, hm.profile),
        ),
        ("suite hash", bm.suite_hash.clone(), hm.suite_hash.clone()),
        (
            "rustc",
            bm.fingerprint.rustc.clone(),
            hm.fingerprint.rustc.clone(),
        ),
        (
            "kernel",
            bm.fingerprint.kernel.clone().unwrap_or_default(),
            hm.fingerprint.kernel.clone().unwrap_or_default(),
        ),
    ];
    minijinja::context! {
        root => "../", title => "", page_title => format!("Compare {} → {}", bm.id, hm.id),
        base => link(b, "../"), head => link(h, "../"), overall => c.overall.as_str(),
        rows => rows, notes => &c.notes, env => env,
        attention => c.rows.iter().filter(|r| r.verdict.needs_attention()).count(),
    }
}

/// Check that a directory is a place the dashboard may write: missing, empty, or a previous dashboard.
pub fn check_out_dir(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let names: Vec<String> = std::fs::read_dir(out)
        .with_context(|| format!("reading {}", out.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    // Empty, a previous dashboard, or only what the scheduler writes before the first dashboard exists.
    let scheduler_only = names.iter().all(|n| {
        [
            crate::status::STATUS_JSON,
            "status.json.tmp",
            crate::status::STATUS_HTML,
            crate::status::LOG_DIR,
        ]
        .contains(&n.as_str())
    });
    if scheduler_only || out.join("index.html").exists() && out.join("style.css").exists() {
        return Ok(());
    }
    anyhow::bail!(
        "{} is not empty and does not hold a saeperf dashboard; choose another --out",
        out.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, extra: serde_json::Value) -> BenchResult {
        BenchResult {
            name: name.into(),
            kind: BenchKind::Calibration,
            status: BenchStatus::Ok,
            samples: vec![],
            yardstick: vec![],
            metrics: BTreeMap::from([
                ("flagged".to_string(), 3.0),
                ("rows".to_string(), 8.0),
                ("comparisons".to_string(), 2.0),
                ("secs_per_comparison".to_string(), 1.5),
            ]),
            metric_seeds: BTreeMap::new(),
            deterministic: true,
            curve: vec![],
            extra,
        }
    }

    #[test]
    fn calibration_rows_read_from_extra_or_name_and_metrics() {
        // The bench crate's CalibrationRow as serialized (per_op pairs are JSON arrays).
        let extra = serde_json::json!({
            "method": "timed", "slowdown": 0.07, "comparisons": 4, "rows": 8, "flagged": 6,
            "per_op": { "op/encode": [4, 4], "op/decode": [2, 4] },
            "median_detectable": 0.021, "pair_spread": 0.004, "secs_per_comparison": 12.5
        });
        let r = CalibrationRow::of(&result("calibrate/timed/+7.000000000000001%", extra)).unwrap();
        assert_eq!(
            (r.method.as_str(), r.change(), r.rate()),
            ("timed", "+7%".to_string(), "75.0%".to_string())
        );
        assert_eq!(r.per_op["op/decode"], (2, 4));
        // A result whose extra is not a row: its name and metrics.
        let r = CalibrationRow::of(&result("calibrate/counted/+2.5%", serde_json::Value::Null))
            .unwrap();
        assert_eq!((r.method.as_str(), r.change()), ("counted", "+2.5%".into()));
        assert_eq!((r.flagged, r.rows, r.comparisons), (3, 8, 2));
        let r =
            CalibrationRow::of(&result("calibrate/counted/A/A", serde_json::Value::Null)).unwrap();
        assert!(r.is_aa() && r.change() == "A/A");
        let mut other = result("op/encode", serde_json::Value::Null);
        other.kind = BenchKind::Op;
        assert!(CalibrationRow::of(&other).is_none());
    }
}
