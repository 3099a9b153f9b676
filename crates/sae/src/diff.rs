//! The feature diff of two dictionaries on the same activations (docs/feature-diff.md): every feature of the base
//! and of the head matched by the cosine of their decoder rows, and classified, each live feature exactly once.
//!
//! Features that never fire on the rows (density 0) are not matched; they are counted as `dead_base` and
//! `dead_head`. Every live feature gets its best live match on the other side (largest cosine of the unit decoder
//! rows; ties go to the lower index). Then, in this order:
//!
//! 1. **split**: a live base feature b that two or more live head features take as their best base match with
//!    cosine ≥ `split_cosine` (the head features are its parts, counted in `split_into`), when the sum of the
//!    parts' unit directions points at b more closely than the best single part does, by [`DECOMPOSE_MARGIN`];
//! 2. **merged**: a live head feature h that two or more live base features not already split take as their best
//!    head match with cosine ≥ `split_cosine` (the parts, counted in `merged_from`), under the same sum rule; a head
//!    feature that is already a split's part is not a merge;
//! 3. **kept**: a live base feature and a live head feature, neither used above, that are each other's best match
//!    with cosine ≥ `match_cosine`; a kept pair whose density band ([`crate::metrics::density_band`]: dead,
//!    ultralow, typical, dense) differs is also counted in `band_moved`, and every kept pair in the transition
//!    table `band_moves[base band][head band]`;
//! 4. **died**: every other live base feature; **new**: every other live head feature.
//!
//! So the counts add up: live base = kept + split + merged_from + died, live head = kept + split_into + merged +
//! new, and the table's entries sum to kept. The sum rule keeps a kept feature plus an unrelated bystander that
//! points roughly the same way from reading as a split (or merge): a feature cut into two halves of a rotation,
//! (A + 0.6u) and (A − 0.6u), is a split (their sum is A), not a kept feature and a new one.
//!
//! The cosines are the product of the two unit decoders, [fb, d] · [fh, d]ᵀ, one SGEMM per block of 512 base rows
//! (`saeperf_kernels::ops::gemm`, parallel over rayon's threads), each block's row and column maxima scanned in
//! parallel; only the maxima are kept, so memory is 512 × fh floats. Two 4608 × 576 dictionaries take about 0.3 s
//! on two cores.

use std::collections::BTreeMap;

use anyhow::{ensure, Result};
use rayon::prelude::*;
use saeperf_kernels::ops::gemm::{sgemm, Trans};
use saeperf_kernels::Sae;
use serde::{Deserialize, Serialize};

use crate::metrics::{density_band, BANDS};

/// How much closer the sum of a split's (merge's) parts must point at the feature than its best single part.
pub const DECOMPOSE_MARGIN: f64 = 0.02;

/// Base rows per SGEMM of the cosine pass.
const BLOCK: usize = 512;
/// Head columns per task of the column-maximum scan.
const COLUMNS_PER_TASK: usize = 256;

/// Thresholds of the classification.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DiffOptions {
    /// A mutual best match at or above this cosine is the same feature (default 0.7).
    pub match_cosine: f64,
    /// Parts of a split or a merge are at least this close to the feature they come from or go to (default 0.5).
    pub split_cosine: f64,
    /// How many features `most_changed` lists (default 16).
    pub top_changed: usize,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            match_cosine: 0.7,
            split_cosine: 0.5,
            top_changed: 16,
        }
    }
}

/// How many features fell in each class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffCounts {
    /// Base features with a mutual best match in the head.
    pub kept: usize,
    /// Base features that split.
    pub split: usize,
    /// Head features they split into.
    pub split_into: usize,
    /// Head features formed by a merge.
    pub merged: usize,
    /// Base features that merged into them.
    pub merged_from: usize,
    /// Live base features with no counterpart in the head.
    pub died: usize,
    /// Live head features with no counterpart in the base.
    pub new: usize,
    /// Kept features whose density band changed.
    pub band_moved: usize,
    /// Base features that never fire on the rows (not matched).
    pub dead_base: usize,
    /// Head features that never fire on the rows (not matched).
    pub dead_head: usize,
}

/// What happened to a feature of `most_changed`. Serialised as "split", "merged", "died", "new", "band moved".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    #[serde(rename = "split")]
    Split,
    #[serde(rename = "merged")]
    Merged,
    #[serde(rename = "died")]
    Died,
    #[serde(rename = "new")]
    New,
    /// A kept feature whose density band changed.
    #[serde(rename = "band moved")]
    BandMoved,
}

/// One changed feature (or group), for the page that shows their contexts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangedFeature {
    pub kind: ChangeKind,
    /// Base feature ids (one, or the parts of a merge; empty for new).
    pub base: Vec<u32>,
    /// Head feature ids (one, or the parts of a split; empty for died).
    pub head: Vec<u32>,
    /// The cosine of the match (mean over the parts of a split or merge), or for a died (new) feature the cosine of
    /// its best live head (base) feature, below the thresholds; null when the other side has no live feature.
    pub cosine: Option<f64>,
    /// Density in the base (summed over the parts of a merge) and in the head (summed over the parts of a split);
    /// 0 on the side a died or new feature does not have.
    pub base_density: f64,
    pub head_density: f64,
}

/// The feature diff of two dictionaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDiff {
    pub options: DiffOptions,
    pub counts: DiffCounts,
    /// Kept pairs by density band in the base (outer key) and in the head (inner key); every band is a key.
    pub band_moves: BTreeMap<String, BTreeMap<String, usize>>,
    /// The most-changed features, `options.top_changed` at most, taken in rounds over the kinds (split, merged,
    /// died, new, band moved): within a kind the densest first, band moves by the largest |log10 density change|.
    pub most_changed: Vec<ChangedFeature>,
}

/// Unit-norm decoder rows (a zero row stays zero).
fn unit_rows(sae: &Sae) -> Vec<f32> {
    let d = sae.cfg.d_in;
    let mut w = sae.w_dec.clone();
    for r in w.chunks_mut(d.max(1)) {
        let n = r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        if n > 0.0 {
            r.iter_mut().for_each(|v| *v = (*v as f64 / n) as f32);
        }
    }
    w
}

/// A feature's best live match on the other side: (index, cosine).
type Best = Option<(usize, f64)>;

/// Whether a candidate with cosine `cos` replaces `best`: only when strictly larger, so that, visiting indices in
/// increasing order, ties go to the lower index.
fn better(best: Best, cos: f64) -> bool {
    best.is_none_or(|(_, x)| cos > x)
}

/// Per base feature its best live head match, per head feature its best live base match (dead features get None).
fn best_matches(
    base: &[f32],
    head: &[f32],
    d: usize,
    base_live: &[bool],
    head_live: &[bool],
) -> (Vec<Best>, Vec<Best>) {
    let (fb, fh) = (base_live.len(), head_live.len());
    let mut best_h: Vec<Best> = Vec::with_capacity(fb);
    let mut best_b: Vec<Best> = vec![None; fh];
    let mut c = vec![0f32; BLOCK.min(fb) * fh];
    for start in (0..fb).step_by(BLOCK) {
        let m = BLOCK.min(fb - start);
        let c = &mut c[..m * fh];
        // cos[i, h] = base[start + i] · head[h].
        sgemm(
            m,
            fh,
            d,
            &base[start * d..(start + m) * d],
            Trans::N,
            head,
            Trans::T,
            c,
            false,
        );
        let c = &*c;
        // Row maxima: each base feature of the block, its best head feature.
        best_h.par_extend((0..m).into_par_iter().map(|i| {
            if !base_live[start + i] {
                return None;
            }
            let mut best: Best = None;
            for (h, &v) in c[i * fh..(i + 1) * fh].iter().enumerate() {
                if head_live[h] && better(best, v as f64) {
                    best = Some((h, v as f64));
                }
            }
            best
        }));
        // Column maxima, a range of head features per task, base rows in increasing order (so blocks and tasks do
        // not change the answer).
        best_b
            .par_chunks_mut(COLUMNS_PER_TASK)
            .enumerate()
            .for_each(|(t, out)| {
                let h0 = t * COLUMNS_PER_TASK;
                for i in (0..m).filter(|&i| base_live[start + i]) {
                    let cells = &c[i * fh + h0..i * fh + h0 + out.len()];
                    for (k, (o, &v)) in out.iter_mut().zip(cells).enumerate() {
                        if head_live[h0 + k] && better(*o, v as f64) {
                            *o = Some((start + i, v as f64));
                        }
                    }
                }
            });
    }
    (best_h, best_b)
}

/// Row `i` of a row-major matrix with `d` columns.
fn row(u: &[f32], d: usize, i: usize) -> &[f32] {
    &u[i * d..(i + 1) * d]
}

/// Whether the parts' unit directions, summed, point at `target` more closely than the best single part (cosine
/// `best`) by [`DECOMPOSE_MARGIN`]: a real decomposition, not a kept feature plus a bystander.
fn decomposes(target: &[f32], parts: &[&[f32]], best: f64) -> bool {
    let mut sum = vec![0f64; target.len()];
    for p in parts {
        sum.iter_mut()
            .zip(p.iter())
            .for_each(|(s, v)| *s += *v as f64);
    }
    let n = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
    let dot: f64 = sum.iter().zip(target).map(|(s, t)| s * *t as f64).sum();
    n > 0.0 && dot / n > best + DECOMPOSE_MARGIN
}

fn check_inputs(
    base: &Sae,
    head: &Sae,
    base_density: &[f64],
    head_density: &[f64],
    opts: &DiffOptions,
) -> Result<()> {
    let d = base.cfg.d_in;
    ensure!(
        head.cfg.d_in == d,
        "feature diff: the dictionaries read different activations (d_in {d} vs {})",
        head.cfg.d_in
    );
    let (fb, fh) = (base.cfg.d_sae, head.cfg.d_sae);
    ensure!(
        base_density.len() == fb && head_density.len() == fh,
        "feature diff: {} base densities for {fb} features, {} head densities for {fh}",
        base_density.len(),
        head_density.len()
    );
    ensure!(
        base.w_dec.len() == fb * d && head.w_dec.len() == fh * d,
        "feature diff: a decoder does not have d_sae × d_in values (base {} for {fb} × {d}, head {} for {fh} × {d})",
        base.w_dec.len(),
        head.w_dec.len()
    );
    for (side, dens) in [("base", base_density), ("head", head_density)] {
        if let Some(i) = dens.iter().position(|p| !(0.0..=1.0).contains(p)) {
            anyhow::bail!(
                "feature diff: {side} feature {i} has density {}, not a fraction in [0, 1]",
                dens[i]
            );
        }
    }
    for (side, sae) in [("base", base), ("head", head)] {
        if let Some(i) = sae.w_dec.iter().position(|v| !v.is_finite()) {
            anyhow::bail!(
                "feature diff: the {side} decoder has a non-finite value in row {}",
                i / d.max(1)
            );
        }
    }
    ensure!(
        opts.match_cosine.is_finite() && opts.split_cosine.is_finite(),
        "feature diff: the thresholds must be finite (match {}, split {})",
        opts.match_cosine,
        opts.split_cosine
    );
    Ok(())
}

/// The feature diff of `head` against `base` (see the module doc); densities are each feature's firing fraction on
/// the same rows (`crate::metrics::feature_density`). Errors when the dictionaries read activations of different
/// widths, when a density vector's length is not its dictionary's d_sae, when a density is not in [0, 1] and when
/// a decoder holds a non-finite value.
pub fn diff(
    base: &Sae,
    head: &Sae,
    base_density: &[f64],
    head_density: &[f64],
    opts: &DiffOptions,
) -> Result<FeatureDiff> {
    check_inputs(base, head, base_density, head_density, opts)?;
    let d = base.cfg.d_in;
    let (fb, fh) = (base.cfg.d_sae, head.cfg.d_sae);
    let base_live: Vec<bool> = base_density.iter().map(|&x| x > 0.0).collect();
    let head_live: Vec<bool> = head_density.iter().map(|&x| x > 0.0).collect();
    let (ub, uh) = (unit_rows(base), unit_rows(head));
    let (best_h, best_b) = best_matches(&ub, &uh, d, &base_live, &head_live);
    let ts = opts.split_cosine;
    // Candidate parts: head features per base feature (splits), base features per head feature (merges), each
    // with its cosine; every feature is a candidate part of at most one feature (its best match).
    let mut children: Vec<Vec<(usize, f64)>> = vec![vec![]; fb];
    for (h, m) in best_b.iter().enumerate() {
        if let Some((b, c)) = *m {
            if c >= ts {
                children[b].push((h, c));
            }
        }
    }
    let mut parents: Vec<Vec<(usize, f64)>> = vec![vec![]; fh];
    for (b, m) in best_h.iter().enumerate() {
        if let Some((h, c)) = *m {
            if c >= ts {
                parents[h].push((b, c));
            }
        }
    }
    let mut counts = DiffCounts {
        dead_base: base_live.iter().filter(|l| !**l).count(),
        dead_head: head_live.iter().filter(|l| !**l).count(),
        ..DiffCounts::default()
    };
    let (mut base_done, mut head_done) = (vec![false; fb], vec![false; fh]);
    let (mut splits, mut merges, mut died, mut new, mut moved) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mean = |parts: &[(usize, f64)]| parts.iter().map(|p| p.1).sum::<f64>() / parts.len() as f64;
    let best_of = |parts: &[(usize, f64)]| parts.iter().map(|p| p.1).fold(f64::MIN, f64::max);

    // 1. Splits.
    for b in 0..fb {
        let parts = &children[b];
        if parts.len() < 2 {
            continue;
        }
        let rows: Vec<&[f32]> = parts.iter().map(|&(h, _)| row(&uh, d, h)).collect();
        if !decomposes(row(&ub, d, b), &rows, best_of(parts)) {
            continue;
        }
        counts.split += 1;
        counts.split_into += parts.len();
        base_done[b] = true;
        parts.iter().for_each(|&(h, _)| head_done[h] = true);
        splits.push(ChangedFeature {
            kind: ChangeKind::Split,
            base: vec![b as u32],
            head: parts.iter().map(|&(h, _)| h as u32).collect(),
            cosine: Some(mean(parts)),
            base_density: base_density[b],
            head_density: parts.iter().map(|&(h, _)| head_density[h]).sum(),
        });
    }
    // 2. Merges, of base features not split into head features not a split's parts.
    for h in 0..fh {
        if head_done[h] {
            continue;
        }
        let parts: Vec<(usize, f64)> = parents[h]
            .iter()
            .copied()
            .filter(|&(b, _)| !base_done[b])
            .collect();
        if parts.len() < 2 {
            continue;
        }
        let rows: Vec<&[f32]> = parts.iter().map(|&(b, _)| row(&ub, d, b)).collect();
        if !decomposes(row(&uh, d, h), &rows, best_of(&parts)) {
            continue;
        }
        counts.merged += 1;
        counts.merged_from += parts.len();
        head_done[h] = true;
        parts.iter().for_each(|&(b, _)| base_done[b] = true);
        merges.push(ChangedFeature {
            kind: ChangeKind::Merged,
            base: parts.iter().map(|&(b, _)| b as u32).collect(),
            head: vec![h as u32],
            cosine: Some(mean(&parts)),
            base_density: parts.iter().map(|&(b, _)| base_density[b]).sum(),
            head_density: head_density[h],
        });
    }
    // 3. Kept (mutual best matches above the match threshold), with their bands; 4. died.
    let mut band_moves: BTreeMap<String, BTreeMap<String, usize>> = BANDS
        .iter()
        .map(|from| {
            let to = BANDS.iter().map(|t| (t.to_string(), 0)).collect();
            (from.to_string(), to)
        })
        .collect();
    for b in 0..fb {
        if !base_live[b] || base_done[b] {
            continue;
        }
        match best_h[b] {
            Some((h, c))
                if c >= opts.match_cosine
                    && !head_done[h]
                    && best_b[h].is_some_and(|(bb, _)| bb == b) =>
            {
                counts.kept += 1;
                base_done[b] = true;
                head_done[h] = true;
                let (from, to) = (density_band(base_density[b]), density_band(head_density[h]));
                *band_moves
                    .get_mut(from)
                    .and_then(|m| m.get_mut(to))
                    .expect("every band is in the table") += 1;
                if from != to {
                    counts.band_moved += 1;
                    moved.push(ChangedFeature {
                        kind: ChangeKind::BandMoved,
                        base: vec![b as u32],
                        head: vec![h as u32],
                        cosine: Some(c),
                        base_density: base_density[b],
                        head_density: head_density[h],
                    });
                }
            }
            m => {
                counts.died += 1;
                died.push(ChangedFeature {
                    kind: ChangeKind::Died,
                    base: vec![b as u32],
                    head: vec![],
                    cosine: m.map(|(_, c)| c),
                    base_density: base_density[b],
                    head_density: 0.0,
                });
            }
        }
    }
    // 4. New.
    for h in (0..fh).filter(|&h| head_live[h] && !head_done[h]) {
        counts.new += 1;
        new.push(ChangedFeature {
            kind: ChangeKind::New,
            base: vec![],
            head: vec![h as u32],
            cosine: best_b[h].map(|(_, c)| c),
            base_density: 0.0,
            head_density: head_density[h],
        });
    }
    Ok(FeatureDiff {
        options: *opts,
        counts,
        band_moves,
        most_changed: most_changed([splits, merges, died, new, moved], opts.top_changed),
    })
}

/// `top` features taken in rounds over the lists (split, merged, died, new, band moved), each list's largest
/// first: the densest (the larger of the two densities), band moves by |log10(head / base)|; ties keep the order of
/// the ids (the sort is stable).
fn most_changed(mut lists: [Vec<ChangedFeature>; 5], top: usize) -> Vec<ChangedFeature> {
    let dens = |c: &ChangedFeature| c.base_density.max(c.head_density);
    let moved = |c: &ChangedFeature| (c.head_density / c.base_density).log10().abs();
    for l in lists.iter_mut() {
        if l.first().is_some_and(|c| c.kind == ChangeKind::BandMoved) {
            l.sort_by(|a, b| moved(b).total_cmp(&moved(a)));
        } else {
            l.sort_by(|a, b| dens(b).total_cmp(&dens(a)));
        }
    }
    let mut iters: Vec<_> = lists.into_iter().map(|l| l.into_iter()).collect();
    let mut out = vec![];
    while out.len() < top {
        let before = out.len();
        for it in iters.iter_mut() {
            if out.len() < top {
                out.extend(it.next());
            }
        }
        if out.len() == before {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use saeperf_kernels::{Arch, SaeCfg};

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    fn random_unit(rng: &mut StdRng, d: usize) -> Vec<f32> {
        unit((0..d).map(|_| rng.random::<f32>() - 0.5).collect())
    }

    /// A random unit vector orthogonal to the unit vector `a`.
    fn orthogonal(rng: &mut StdRng, a: &[f32]) -> Vec<f32> {
        let r = random_unit(rng, a.len());
        let dot: f32 = r.iter().zip(a).map(|(x, y)| x * y).sum();
        unit(r.iter().zip(a).map(|(x, y)| x - dot * y).collect())
    }

    /// unit(x · a + y · b).
    fn comb(x: f32, a: &[f32], y: f32, b: &[f32]) -> Vec<f32> {
        unit(a.iter().zip(b).map(|(p, q)| x * p + y * q).collect())
    }

    fn noisy(rng: &mut StdRng, v: &[f32]) -> Vec<f32> {
        unit(
            v.iter()
                .map(|x| x + 0.02 * (rng.random::<f32>() - 0.5))
                .collect(),
        )
    }

    fn cfg(d: usize, f: usize) -> SaeCfg {
        SaeCfg::inference(d, f, Arch::Relu, None)
    }

    /// A dictionary through the public API: `Sae::init`, then the decoder rows overwritten (scaled by 3, which the
    /// diff must not see).
    fn sae_of(rows: &[Vec<f32>]) -> Sae {
        let d = rows[0].len();
        let mut rng = StdRng::seed_from_u64(9);
        let mut s = Sae::init(cfg(d, rows.len()), vec![0.0; d], 1.0, &mut rng);
        s.w_dec = rows.concat().into_iter().map(|v| 3.0 * v).collect();
        s
    }

    /// Live base = kept + split + merged_from + died, live head = kept + split_into + merged + new, and the band
    /// table sums to kept.
    fn assert_identities(dd: &FeatureDiff, fb: usize, fh: usize) {
        let c = dd.counts;
        assert_eq!(
            c.kept + c.split + c.merged_from + c.died + c.dead_base,
            fb,
            "{c:?}"
        );
        assert_eq!(
            c.kept + c.split_into + c.merged + c.new + c.dead_head,
            fh,
            "{c:?}"
        );
        let table: usize = dd.band_moves.values().flat_map(|m| m.values()).sum();
        assert_eq!(table, c.kept);
        let off: usize = dd
            .band_moves
            .iter()
            .flat_map(|(f, m)| m.iter().filter(move |(t, _)| *t != f).map(|(_, n)| *n))
            .sum();
        assert_eq!(off, c.band_moved);
    }

    /// The base (d_in 32, 64 features) and head of the known-structure test, with densities.
    struct Case {
        base: Vec<Vec<f32>>,
        head: Vec<Vec<f32>>,
        base_density: Vec<f64>,
        head_density: Vec<f64>,
    }

    fn known_case() -> Case {
        let d = 32;
        let mut rng = StdRng::seed_from_u64(1);
        let mut base: Vec<Vec<f32>> = (0..64).map(|_| random_unit(&mut rng, d)).collect();
        // B1 = base[50] and B2 = base[51] at cosine 0.8: they merge along unit(B1 + B2), cosine 0.95 to each.
        let u = orthogonal(&mut rng, &base[50]);
        base[51] = comb(0.8, &base[50], 0.6, &u);
        let mut base_density = vec![1e-3; 64];
        // 62 and 63 never fire in the base.
        base_density[62] = 0.0;
        base_density[63] = 0.0;
        let (mut head, mut head_density) = (vec![], vec![]);
        // 0..40 kept; 0..3 move from typical to dense, 3 from typical to ultralow.
        for (i, b) in base.iter().enumerate().take(40) {
            head.push(noisy(&mut rng, b));
            head_density.push(match i {
                0..3 => 0.05,
                3 => 5e-5,
                _ => 2e-3,
            });
        }
        // A = base[40] splits into two halves of a rotation: unit(A ± 0.6 w), cosine 0.86 to A each.
        let w = orthogonal(&mut rng, &base[40]);
        head.push(comb(1.0, &base[40], 0.6, &w));
        head.push(comb(1.0, &base[40], -0.6, &w));
        head_density.extend([5e-4, 5e-4]);
        // 50 and 51 merge.
        head.push(comb(1.0, &base[50], 1.0, &base[51]));
        head_density.push(2e-3);
        // base[41]'s copy is there but never fires: 41 died.
        head.push(noisy(&mut rng, &base[41]));
        head_density.push(0.0);
        // Five new directions.
        for _ in 0..5 {
            head.push(random_unit(&mut rng, d));
            head_density.push(1e-3);
        }
        // base[63]'s copy, dead in both.
        head.push(noisy(&mut rng, &base[63]));
        head_density.push(0.0);
        // 42..50 and 52..62 are not in the head: they die (41..50 and 52..62 live: 19 died).
        Case {
            base,
            head,
            base_density,
            head_density,
        }
    }

    #[test]
    fn known_splits_merges_deaths_births_and_band_moves() {
        let k = known_case();
        let dd = diff(
            &sae_of(&k.base),
            &sae_of(&k.head),
            &k.base_density,
            &k.head_density,
            &DiffOptions::default(),
        )
        .unwrap();
        let c = dd.counts;
        assert_eq!(
            (c.kept, c.split, c.split_into, c.merged, c.merged_from),
            (40, 1, 2, 1, 2),
            "{c:?}"
        );
        assert_eq!(
            (c.died, c.new, c.band_moved, c.dead_base, c.dead_head),
            (19, 5, 4, 2, 2),
            "{c:?}"
        );
        assert_identities(&dd, 64, k.head.len());
        assert_eq!(dd.band_moves["typical"]["dense"], 3);
        assert_eq!(dd.band_moves["typical"]["ultralow"], 1);
        assert_eq!(dd.band_moves["typical"]["typical"], 36);
        let kinds: Vec<ChangeKind> = dd.most_changed.iter().map(|c| c.kind).collect();
        use ChangeKind::*;
        assert_eq!(&kinds[..5], [Split, Merged, Died, New, BandMoved]);
        assert_eq!(dd.most_changed.len(), 16);
        let split = &dd.most_changed[0];
        assert_eq!(
            (split.base.as_slice(), split.head.as_slice()),
            (&[40][..], &[40, 41][..])
        );
        assert!(
            (split.cosine.unwrap() - 1.0 / 1.36f64.sqrt()).abs() < 1e-4,
            "{split:?}"
        );
        assert!((split.head_density - 1e-3).abs() < 1e-12);
        let merge = &dd.most_changed[1];
        assert_eq!(
            (merge.base.as_slice(), merge.head.as_slice()),
            (&[50, 51][..], &[42][..])
        );
        assert!(
            (merge.cosine.unwrap() - 0.9f64.sqrt()).abs() < 1e-4,
            "{merge:?}"
        );
        // The largest band moves first: 0..3 (1e-3 → 0.05, a factor 50) before 3 (1e-3 → 5e-5, a factor 20).
        let moves: Vec<u32> = dd
            .most_changed
            .iter()
            .filter(|c| c.kind == BandMoved)
            .map(|c| c.base[0])
            .collect();
        assert_eq!(moves, [0, 1, 2, 3]);
        // The head's dead copy of 41: 41 died, and its best live head feature is below the thresholds.
        let died: Vec<&ChangedFeature> =
            dd.most_changed.iter().filter(|c| c.kind == Died).collect();
        assert!(died
            .iter()
            .all(|c| c.head.is_empty() && c.cosine.unwrap() < 0.7));
    }

    #[test]
    fn reordering_the_head_changes_ids_not_counts() {
        let k = known_case();
        let mut perm: Vec<usize> = (0..k.head.len()).collect();
        perm.shuffle(&mut StdRng::seed_from_u64(4));
        let head: Vec<Vec<f32>> = perm.iter().map(|&i| k.head[i].clone()).collect();
        let dens: Vec<f64> = perm.iter().map(|&i| k.head_density[i]).collect();
        let o = DiffOptions::default();
        let (sb, sh) = (sae_of(&k.base), sae_of(&k.head));
        let a = diff(&sb, &sh, &k.base_density, &k.head_density, &o).unwrap();
        let b = diff(&sb, &sae_of(&head), &k.base_density, &dens, &o).unwrap();
        assert_eq!(a.counts, b.counts);
        assert_eq!(a.band_moves, b.band_moves);
        // The split's parts are the same head features under their new ids.
        let mut parts: Vec<u32> = b.most_changed[0]
            .head
            .iter()
            .map(|&h| perm[h as usize] as u32)
            .collect();
        parts.sort();
        assert_eq!(parts, a.most_changed[0].head);
    }

    #[test]
    fn a_kept_feature_and_a_bystander_are_not_a_split() {
        let mut rng = StdRng::seed_from_u64(6);
        let base: Vec<Vec<f32>> = (0..8).map(|_| random_unit(&mut rng, 48)).collect();
        let mut head: Vec<Vec<f32>> = base.iter().map(|b| noisy(&mut rng, b)).collect();
        // Near base[0] (cosine 0.6), but its sum with base[0]'s copy points at base[0] less well than the copy.
        let w = orthogonal(&mut rng, &base[0]);
        head.push(comb(0.6, &base[0], 0.8, &w));
        let dd = diff(
            &sae_of(&base),
            &sae_of(&head),
            &[1e-3; 8],
            &[1e-3; 9],
            &DiffOptions::default(),
        )
        .unwrap();
        let c = dd.counts;
        assert_eq!(
            (c.kept, c.split, c.merged, c.died, c.new),
            (8, 0, 0, 0, 1),
            "{c:?}"
        );
        assert_identities(&dd, 8, 9);
    }

    #[test]
    fn a_dictionary_against_itself_keeps_everything() {
        let mut rng = StdRng::seed_from_u64(2);
        let rows: Vec<Vec<f32>> = (0..100).map(|_| random_unit(&mut rng, 16)).collect();
        let dens: Vec<f64> = (0..100)
            .map(|i| if i < 10 { 0.0 } else { 1e-4 * i as f64 })
            .collect();
        let s = sae_of(&rows);
        let dd = diff(&s, &s, &dens, &dens, &DiffOptions::default()).unwrap();
        let c = dd.counts;
        assert_eq!((c.kept, c.dead_base, c.dead_head), (90, 10, 10));
        assert_eq!(
            (
                c.split,
                c.split_into,
                c.merged,
                c.merged_from,
                c.died,
                c.new,
                c.band_moved
            ),
            (0, 0, 0, 0, 0, 0, 0)
        );
        assert_identities(&dd, 100, 100);
        assert_eq!(dd.band_moves["typical"]["typical"], 90);
        assert!(dd.most_changed.is_empty());
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let mut rng = StdRng::seed_from_u64(7);
        let (a, b) = (random_unit(&mut rng, 8), random_unit(&mut rng, 8));
        // Two identical base features: the lower id keeps the head's copy, the other dies (no merge: the sum of two
        // equal parts points no better than one).
        let base = sae_of(&[a.clone(), a.clone(), b.clone()]);
        let head = sae_of(&[a, b]);
        let o = DiffOptions::default();
        let dd = diff(&base, &head, &[0.5; 3], &[0.5; 2], &o).unwrap();
        assert_eq!(
            (dd.counts.kept, dd.counts.died, dd.counts.merged),
            (2, 1, 0)
        );
        assert_eq!(dd.most_changed[0].base, [1]);
    }

    #[test]
    fn the_blocked_parallel_scan_matches_a_plain_loop() {
        // More base rows than a block, head columns not a multiple of a task's, some dead on each side.
        let (d, fb, fh) = (12, BLOCK + 77, 2 * COLUMNS_PER_TASK + 13);
        let mut rng = StdRng::seed_from_u64(8);
        let ub: Vec<f32> = (0..fb).flat_map(|_| random_unit(&mut rng, d)).collect();
        let uh: Vec<f32> = (0..fh).flat_map(|_| random_unit(&mut rng, d)).collect();
        let bl: Vec<bool> = (0..fb).map(|i| i % 7 != 3).collect();
        let hl: Vec<bool> = (0..fh).map(|i| i % 5 != 1).collect();
        let (bh, bb) = best_matches(&ub, &uh, d, &bl, &hl);
        let dot = |b: usize, h: usize| -> f64 {
            (0..d)
                .map(|j| ub[b * d + j] as f64 * uh[h * d + j] as f64)
                .sum()
        };
        for b in 0..fb {
            let want = (0..fh)
                .filter(|&h| bl[b] && hl[h])
                .map(|h| dot(b, h))
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            match (bh[b], want) {
                (Some((h, c)), Some(w)) => {
                    assert!(hl[h] && (c - w).abs() < 1e-5 && (dot(b, h) - c).abs() < 1e-5)
                }
                (None, None) => {}
                other => panic!("base {b}: {other:?}"),
            }
        }
        for h in 0..fh {
            let want = (0..fb)
                .filter(|&b| bl[b] && hl[h])
                .map(|b| dot(b, h))
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            match (bb[h], want) {
                (Some((b, c)), Some(w)) => {
                    assert!(bl[b] && (c - w).abs() < 1e-5 && (dot(b, h) - c).abs() < 1e-5)
                }
                (None, None) => {}
                other => panic!("head {h}: {other:?}"),
            }
        }
    }

    #[test]
    fn random_mixtures_count_every_live_feature_once() {
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(100 + seed);
            let d = 24;
            let base: Vec<Vec<f32>> = (0..40).map(|_| random_unit(&mut rng, d)).collect();
            let base_density: Vec<f64> = (0..40)
                .map(|_| {
                    if rng.random::<f32>() < 0.1 {
                        0.0
                    } else {
                        10f64.powf(-5.0 + 4.0 * rng.random::<f64>())
                    }
                })
                .collect();
            let mut head = vec![];
            for b in &base {
                match rng.random_range(0..5) {
                    0 => {}
                    1 => {
                        let w = orthogonal(&mut rng, b);
                        head.push(comb(1.0, b, 0.7, &w));
                        head.push(comb(1.0, b, -0.7, &w));
                    }
                    2 => head.push(comb(1.0, b, 1.0, &random_unit(&mut rng, d))),
                    _ => head.push(noisy(&mut rng, b)),
                }
            }
            for _ in 0..5 {
                head.push(random_unit(&mut rng, d));
            }
            let head_density: Vec<f64> = (0..head.len())
                .map(|_| {
                    if rng.random::<f32>() < 0.1 {
                        0.0
                    } else {
                        10f64.powf(-5.0 + 4.0 * rng.random::<f64>())
                    }
                })
                .collect();
            let o = DiffOptions {
                top_changed: usize::MAX,
                ..DiffOptions::default()
            };
            let dd = diff(
                &sae_of(&base),
                &sae_of(&head),
                &base_density,
                &head_density,
                &o,
            )
            .unwrap();
            assert_identities(&dd, base.len(), head.len());
            // With every changed feature listed, each live feature appears at most once, dead ones never, and the
            // listed ids are exactly the changed ones.
            let (mut seen_b, mut seen_h) = (vec![0; base.len()], vec![0; head.len()]);
            for c in &dd.most_changed {
                c.base.iter().for_each(|&b| seen_b[b as usize] += 1);
                c.head.iter().for_each(|&h| seen_h[h as usize] += 1);
            }
            assert!(seen_b.iter().all(|&n| n <= 1) && seen_h.iter().all(|&n| n <= 1));
            assert!((0..base.len()).all(|b| base_density[b] > 0.0 || seen_b[b] == 0));
            assert!((0..head.len()).all(|h| head_density[h] > 0.0 || seen_h[h] == 0));
            let c = dd.counts;
            assert_eq!(
                seen_b.iter().sum::<usize>(),
                c.split + c.merged_from + c.died + c.band_moved
            );
            assert_eq!(
                seen_h.iter().sum::<usize>(),
                c.split_into + c.merged + c.new + c.band_moved
            );
        }
    }

    #[test]
    fn the_diff_round_trips_through_json() {
        let mut rng = StdRng::seed_from_u64(3);
        let rows: Vec<Vec<f32>> = (0..6).map(|_| random_unit(&mut rng, 8)).collect();
        let s = sae_of(&rows);
        // Nothing fires in the head: every base feature died with no live head feature to compare with.
        let dd = diff(&s, &s, &[0.2; 6], &[0.0; 6], &DiffOptions::default()).unwrap();
        assert_eq!((dd.counts.died, dd.counts.dead_head), (6, 6));
        assert!(dd.most_changed.iter().all(|c| c.cosine.is_none()));
        let v = serde_json::to_value(&dd).unwrap();
        assert_eq!(v["most_changed"][0]["kind"], "died");
        assert!(v["most_changed"][0]["cosine"].is_null());
        assert_eq!(v["counts"]["died"], 6);
        assert_eq!(v["band_moves"]["typical"]["dense"], 0);
        let back: FeatureDiff = serde_json::from_value(v).unwrap();
        assert_eq!(back, dd);
        let moved = ChangedFeature {
            kind: ChangeKind::BandMoved,
            base: vec![1],
            head: vec![2],
            cosine: Some(0.9),
            base_density: 1e-3,
            head_density: 0.02,
        };
        assert_eq!(serde_json::to_value(&moved).unwrap()["kind"], "band moved");
    }

    #[test]
    fn mismatched_shapes_and_bad_inputs_are_errors() {
        let mut rng = StdRng::seed_from_u64(3);
        let a = sae_of(&(0..4).map(|_| random_unit(&mut rng, 8)).collect::<Vec<_>>());
        let b = sae_of(&(0..4).map(|_| random_unit(&mut rng, 9)).collect::<Vec<_>>());
        let o = DiffOptions::default();
        let err = |r: Result<FeatureDiff>| r.unwrap_err().to_string();
        let e = err(diff(&a, &b, &[1.0; 4], &[1.0; 4], &o));
        assert!(e.contains("d_in 8 vs 9"), "{e}");
        let e = err(diff(&a, &a, &[1.0; 3], &[1.0; 4], &o));
        assert!(e.contains("3 base densities"), "{e}");
        let e = err(diff(&a, &a, &[1.0; 4], &[1.0; 5], &o));
        assert!(e.contains("5 head densities"), "{e}");
        let e = err(diff(&a, &a, &[0.5, f64::NAN, 0.5, 0.5], &[1.0; 4], &o));
        assert!(e.contains("base feature 1 has density NaN"), "{e}");
        let e = err(diff(&a, &a, &[0.5; 4], &[0.5, 0.5, -0.1, 0.5], &o));
        assert!(e.contains("head feature 2"), "{e}");
        let mut c = a.clone();
        c.w_dec[8 * 3 + 2] = f32::INFINITY;
        let e = err(diff(&a, &c, &[0.5; 4], &[0.5; 4], &o));
        assert!(
            e.contains("head decoder has a non-finite value in row 3"),
            "{e}"
        );
        let mut c = a.clone();
        c.w_dec.pop();
        let e = err(diff(&c, &a, &[0.5; 4], &[0.5; 4], &o));
        assert!(e.contains("d_sae × d_in"), "{e}");
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use rand::SeedableRng;
    use saeperf_kernels::{Arch, SaeCfg};

    /// `cargo test -p saeperf-sae --lib diff::timing -- --ignored --nocapture`: diffs at the suite's reference
    /// shape (4608 × 576) and the largest (9216 × 576), three times each.
    #[test]
    #[ignore]
    fn time_reference_shapes() {
        for f in [4608, 9216] {
            let d = 576;
            let cfg = SaeCfg::inference(d, f, Arch::Relu, None);
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            let a = Sae::init(cfg.clone(), vec![0.0; d], 1.0, &mut rng);
            let b = Sae::init(cfg, vec![0.0; d], 1.0, &mut rng);
            let dens = vec![1e-3; f];
            for _ in 0..3 {
                let t = std::time::Instant::now();
                let dd = diff(&a, &b, &dens, &dens, &DiffOptions::default()).unwrap();
                eprintln!(
                    "{f} x {d}: {:?} on {} threads ({} died, {} new)",
                    t.elapsed(),
                    rayon::current_num_threads(),
                    dd.counts.died,
                    dd.counts.new
                );
            }
        }
    }
}
