//! The feature diff of two dictionaries on the same activations (docs/feature-diff.md): every feature of the base
//! and of the head matched by the cosine of their decoder rows, and classified, each live feature exactly once:
//!
//! - **split**: a live base feature that two or more live head features take as their best base match with cosine
//!   ≥ `split_cosine` (the head features are its parts), where the parts' sum points at it more closely than its
//!   best single part (by [`DECOMPOSE_MARGIN`]);
//! - **merged**: a live head feature that two or more live base features take as their best head match with cosine
//!   ≥ `split_cosine` (the base features are its parts), under the same sum rule;
//! - **kept**: a live base feature and a live head feature, not in a split or a merge, that are each other's best
//!   match with cosine ≥ `match_cosine`;
//! - **died**: any other live base feature; **new**: any other live head feature.
//!
//! Features that never fire on the rows (density 0) are not matched; they are counted as `dead_base` and
//! `dead_head`. So: live base = kept + split + merged_from + died and live head = kept + split_into + merged + new.
//! A kept pair whose density band (dead, ultralow, typical, dense) differs is also counted in `band_moved`, and in
//! the transition table `band_moves[from][to]`.

use std::collections::BTreeMap;

use anyhow::{ensure, Result};
use saeperf_kernels::ops::gemm::{sgemm, Trans};
use saeperf_kernels::Sae;
use serde::{Deserialize, Serialize};

use crate::metrics::{density_band, BANDS};

/// How much closer the sum of a split's (merge's) parts must point at the feature than its best single part.
pub const DECOMPOSE_MARGIN: f64 = 0.02;

/// Thresholds of the classification.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DiffOptions {
    /// A mutual best match at or above this cosine is the same feature.
    pub match_cosine: f64,
    /// Parts of a split or a merge are at least this close to the feature they come from or go to.
    pub split_cosine: f64,
    /// How many features `most_changed` lists.
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
    pub kept: usize,
    /// Base features that split.
    pub split: usize,
    /// Head features they split into.
    pub split_into: usize,
    /// Head features formed by a merge.
    pub merged: usize,
    /// Base features that merged into them.
    pub merged_from: usize,
    pub died: usize,
    pub new: usize,
    /// Kept features whose density band changed.
    pub band_moved: usize,
    pub dead_base: usize,
    pub dead_head: usize,
}

/// One changed feature (or group), for the page that shows their contexts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangedFeature {
    /// split, merged, died, new or "band moved".
    pub kind: String,
    /// Base feature ids (one, or the parts of a merge; empty for new).
    pub base: Vec<u32>,
    /// Head feature ids (one, or the parts of a split; empty for died).
    pub head: Vec<u32>,
    /// The cosine of the match (mean over the parts of a split or merge; the best head cosine of a died feature, the
    /// best base cosine of a new one).
    pub cosine: f64,
    /// Density in the base (summed over the parts of a merge) and in the head (summed over the parts of a split).
    pub base_density: f64,
    pub head_density: f64,
}

/// The feature diff of two dictionaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDiff {
    pub options: DiffOptions,
    pub counts: DiffCounts,
    /// Kept pairs by density band in the base (outer key) and in the head (inner key).
    pub band_moves: BTreeMap<String, BTreeMap<String, usize>>,
    /// The most-changed features, in rounds over the kinds (split, merged, died, new, band moved), densest first.
    pub most_changed: Vec<ChangedFeature>,
}

/// Unit-norm decoder rows (a zero row stays zero).
fn unit_rows(sae: &Sae) -> Vec<f32> {
    let d = sae.cfg.d_in;
    let mut w = sae.w_dec.clone();
    for r in w.chunks_mut(d) {
        let n = r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        if n > 0.0 {
            r.iter_mut().for_each(|v| *v = (*v as f64 / n) as f32);
        }
    }
    w
}

/// A feature's best live match on the other side: (index, cosine).
type Best = Option<(usize, f64)>;

/// Per base feature its best live head match, per head feature its best live base match: (index, cosine).
fn best_matches(
    base: &[f32],
    head: &[f32],
    d: usize,
    base_live: &[bool],
    head_live: &[bool],
) -> (Vec<Best>, Vec<Best>) {
    let (fb, fh) = (base_live.len(), head_live.len());
    let mut best_h: Vec<Best> = vec![None; fb];
    let mut best_b: Vec<Best> = vec![None; fh];
    const BLOCK: usize = 512;
    let mut c = vec![0f32; BLOCK * fh];
    for start in (0..fb).step_by(BLOCK) {
        let m = BLOCK.min(fb - start);
        let c = &mut c[..m * fh];
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
        for i in 0..m {
            let b = start + i;
            if !base_live[b] {
                continue;
            }
            for (h, &v) in c[i * fh..(i + 1) * fh].iter().enumerate() {
                if !head_live[h] {
                    continue;
                }
                let v = v as f64;
                // Ties: the lower index, so the result does not depend on the block size.
                if best_h[b].is_none_or(|(_, x)| v > x) {
                    best_h[b] = Some((h, v));
                }
                if best_b[h].is_none_or(|(_, x)| v > x) {
                    best_b[h] = Some((b, v));
                }
            }
        }
    }
    (best_h, best_b)
}

/// The feature diff of `head` against `base` (see the module doc); densities are each feature's firing fraction on
/// the same rows (`crate::metrics::feature_density`).
pub fn diff(
    base: &Sae,
    head: &Sae,
    base_density: &[f64],
    head_density: &[f64],
    opts: &DiffOptions,
) -> Result<FeatureDiff> {
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
        "feature diff: a decoder does not have d_sae × d_in values"
    );
    let base_live: Vec<bool> = base_density.iter().map(|&x| x > 0.0).collect();
    let head_live: Vec<bool> = head_density.iter().map(|&x| x > 0.0).collect();
    let (ub, uh) = (unit_rows(base), unit_rows(head));
    let (best_h, best_b) = best_matches(&ub, &uh, d, &base_live, &head_live);
    // A split or merge must be a real decomposition: the parts' sum points at the feature better than the best
    // single part does (else it is a kept feature plus a bystander that happens to point roughly the same way).
    let decomposes = |target: &[f32], parts: &[&[f32]], best: f64| -> bool {
        let mut sum = vec![0f64; d];
        for p in parts {
            sum.iter_mut()
                .zip(p.iter())
                .for_each(|(s, v)| *s += *v as f64);
        }
        let n = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
        let dot: f64 = sum.iter().zip(target).map(|(s, t)| s * *t as f64).sum();
        n > 0.0 && dot / n > best + DECOMPOSE_MARGIN
    };
    let ts = opts.split_cosine;
    // Parts: head features per base feature (splits), base features per head feature (merges).
    let mut children: Vec<Vec<usize>> = vec![vec![]; fb];
    for (h, m) in best_b.iter().enumerate() {
        if let Some((b, c)) = m {
            if *c >= ts {
                children[*b].push(h);
            }
        }
    }
    let mut parents: Vec<Vec<usize>> = vec![vec![]; fh];
    for (b, m) in best_h.iter().enumerate() {
        if let Some((h, c)) = m {
            if *c >= ts {
                parents[*h].push(b);
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
    let cos = |b: usize, h: usize| -> f64 {
        // The cosine of a pair that is some side's best match.
        match (best_h[b], best_b[h]) {
            (Some((hh, c)), _) if hh == h => c,
            (_, Some((bb, c))) if bb == b => c,
            _ => f64::NAN,
        }
    };
    let row = |u: &'_ [f32], i: usize| -> Vec<f32> { u[i * d..(i + 1) * d].to_vec() };
    for b in 0..fb {
        let is_split = base_live[b] && children[b].len() >= 2 && {
            let parts: Vec<Vec<f32>> = children[b].iter().map(|&h| row(&uh, h)).collect();
            let refs: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
            let best = children[b]
                .iter()
                .map(|&h| cos(b, h))
                .fold(f64::MIN, f64::max);
            decomposes(&ub[b * d..(b + 1) * d], &refs, best)
        };
        if is_split {
            counts.split += 1;
            counts.split_into += children[b].len();
            base_done[b] = true;
            for &h in &children[b] {
                head_done[h] = true;
            }
            splits.push(ChangedFeature {
                kind: "split".into(),
                base: vec![b as u32],
                head: children[b].iter().map(|&h| h as u32).collect(),
                cosine: children[b].iter().map(|&h| cos(b, h)).sum::<f64>()
                    / children[b].len() as f64,
                base_density: base_density[b],
                head_density: children[b].iter().map(|&h| head_density[h]).sum(),
            });
        }
    }
    for h in 0..fh {
        let ps: Vec<usize> = parents[h]
            .iter()
            .copied()
            .filter(|&b| !base_done[b])
            .collect();
        let is_merge = head_live[h] && !head_done[h] && ps.len() >= 2 && {
            let parts: Vec<Vec<f32>> = ps.iter().map(|&b| row(&ub, b)).collect();
            let refs: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
            let best = ps.iter().map(|&b| cos(b, h)).fold(f64::MIN, f64::max);
            decomposes(&uh[h * d..(h + 1) * d], &refs, best)
        };
        if is_merge {
            counts.merged += 1;
            counts.merged_from += ps.len();
            head_done[h] = true;
            for &b in &ps {
                base_done[b] = true;
            }
            merges.push(ChangedFeature {
                kind: "merged".into(),
                base: ps.iter().map(|&b| b as u32).collect(),
                head: vec![h as u32],
                cosine: ps.iter().map(|&b| cos(b, h)).sum::<f64>() / ps.len() as f64,
                base_density: ps.iter().map(|&b| base_density[b]).sum(),
                head_density: head_density[h],
            });
        }
    }
    let mut band_moves: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for from in BANDS {
        band_moves.insert(
            from.to_string(),
            BANDS.iter().map(|t| (t.to_string(), 0)).collect(),
        );
    }
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
                        kind: "band moved".into(),
                        base: vec![b as u32],
                        head: vec![h as u32],
                        cosine: c,
                        base_density: base_density[b],
                        head_density: head_density[h],
                    });
                }
            }
            m => {
                counts.died += 1;
                died.push(ChangedFeature {
                    kind: "died".into(),
                    base: vec![b as u32],
                    head: vec![],
                    cosine: m.map_or(f64::NAN, |(_, c)| c),
                    base_density: base_density[b],
                    head_density: 0.0,
                });
            }
        }
    }
    for h in 0..fh {
        if head_live[h] && !head_done[h] {
            counts.new += 1;
            new.push(ChangedFeature {
                kind: "new".into(),
                base: vec![],
                head: vec![h as u32],
                cosine: best_b[h].map_or(f64::NAN, |(_, c)| c),
                base_density: 0.0,
                head_density: head_density[h],
            });
        }
    }
    // Most changed: the densest of each kind first, taking one of each kind in turn.
    let mut lists = [splits, merges, died, new, moved];
    for l in lists.iter_mut() {
        l.sort_by(|a, b| {
            let w = |c: &ChangedFeature| c.base_density.max(c.head_density);
            w(b).total_cmp(&w(a))
        });
        l.reverse(); // pop() takes from the end
    }
    let mut most_changed = vec![];
    while most_changed.len() < opts.top_changed && lists.iter().any(|l| !l.is_empty()) {
        for l in lists.iter_mut() {
            if most_changed.len() < opts.top_changed {
                if let Some(c) = l.pop() {
                    most_changed.push(c);
                }
            }
        }
    }
    Ok(FeatureDiff {
        options: *opts,
        counts,
        band_moves,
        most_changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use saeperf_kernels::{Arch, SaeCfg};

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    fn random_unit(rng: &mut impl Rng, d: usize) -> Vec<f32> {
        unit((0..d).map(|_| rng.random::<f32>() - 0.5).collect())
    }

    fn sae_of(rows: &[Vec<f32>]) -> Sae {
        let d = rows[0].len();
        let cfg = SaeCfg {
            d_in: d,
            d_sae: rows.len(),
            architecture: Arch::Relu,
            k: None,
            l1_coefficient: 0.0,
            scaling_factor: 1.0,
            seed: 0,
            steps: 0,
            batch_size: 0,
            lr: 0.0,
            activation_set_sha256: String::new(),
            hook_name: None,
            pruned_features: 0,
            dtype: "float32".into(),
            apply_b_dec_to_input: true,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut s = Sae::init(cfg, vec![0.0; d], 1.0, &mut rng);
        s.w_dec = rows.concat();
        s
    }

    #[test]
    fn known_splits_merges_deaths_births_and_band_moves() {
        let d = 64;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let base: Vec<Vec<f32>> = (0..64).map(|_| random_unit(&mut rng, d)).collect();
        let mut base = base;
        // B1 = base[50], B2 close to it (cos 0.8): they will merge.
        let u = {
            let r = random_unit(&mut rng, d);
            let dot: f32 = r.iter().zip(&base[50]).map(|(a, b)| a * b).sum();
            unit(r.iter().zip(&base[50]).map(|(a, b)| a - dot * b).collect())
        };
        base[51] = unit(
            base[50]
                .iter()
                .zip(&u)
                .map(|(a, b)| 0.8 * a + 0.6 * b)
                .collect(),
        );
        let base_density = vec![1e-3; 64];
        let noise = |v: &[f32], rng: &mut rand::rngs::StdRng| {
            unit(
                v.iter()
                    .map(|x| x + 0.02 * (rng.random::<f32>() - 0.5))
                    .collect(),
            )
        };
        let mut head: Vec<Vec<f32>> = vec![];
        let mut head_density = vec![];
        // 0..40 kept; 0..3 of them move from typical to dense.
        for (i, b) in base.iter().enumerate().take(40) {
            head.push(noise(b, &mut rng));
            head_density.push(if i < 3 { 0.05 } else { 1e-3 });
        }
        // 40 splits along an orthogonal direction.
        let a = &base[40];
        let w = {
            let r = random_unit(&mut rng, d);
            let dot: f32 = r.iter().zip(a).map(|(x, y)| x * y).sum();
            unit(r.iter().zip(a).map(|(x, y)| x - dot * y).collect())
        };
        head.push(unit(a.iter().zip(&w).map(|(x, y)| x + 0.6 * y).collect()));
        head.push(unit(a.iter().zip(&w).map(|(x, y)| x - 0.6 * y).collect()));
        head_density.extend([5e-4, 5e-4]);
        // 50 and 51 merge.
        head.push(unit(
            base[50].iter().zip(&base[51]).map(|(x, y)| x + y).collect(),
        ));
        head_density.push(2e-3);
        // 41..50 and 52..64 die (not in the head); 5 new directions; 2 dead head features.
        for _ in 0..5 {
            head.push(random_unit(&mut rng, d));
            head_density.push(1e-3);
        }
        for _ in 0..2 {
            head.push(random_unit(&mut rng, d));
            head_density.push(0.0);
        }
        let dd = diff(
            &sae_of(&base),
            &sae_of(&head),
            &base_density,
            &head_density,
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
            (21, 5, 3, 0, 2),
            "{c:?}"
        );
        // The identities.
        assert_eq!(c.kept + c.split + c.merged_from + c.died, 64 - c.dead_base);
        assert_eq!(
            c.kept + c.split_into + c.merged + c.new,
            head.len() - c.dead_head
        );
        assert_eq!(dd.band_moves["typical"]["dense"], 3);
        assert_eq!(dd.band_moves["typical"]["typical"], 37);
        let kinds: Vec<&str> = dd.most_changed.iter().map(|c| c.kind.as_str()).collect();
        assert_eq!(
            &kinds[..5],
            ["split", "merged", "died", "new", "band moved"]
        );
        assert_eq!(dd.most_changed[0].head.len(), 2);
        assert_eq!(dd.most_changed[1].base, vec![50, 51]);
        assert_eq!(dd.most_changed.len(), 16);
    }

    #[test]
    fn a_dictionary_against_itself_keeps_everything() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let rows: Vec<Vec<f32>> = (0..100).map(|_| random_unit(&mut rng, 16)).collect();
        let dens: Vec<f64> = (0..100)
            .map(|i| if i < 10 { 0.0 } else { 1e-3 * i as f64 })
            .collect();
        let s = sae_of(&rows);
        let dd = diff(&s, &s, &dens, &dens, &DiffOptions::default()).unwrap();
        assert_eq!(dd.counts.kept, 90);
        assert_eq!(dd.counts.dead_base, 10);
        assert_eq!(
            (
                dd.counts.split,
                dd.counts.merged,
                dd.counts.died,
                dd.counts.new,
                dd.counts.band_moved
            ),
            (0, 0, 0, 0, 0)
        );
        assert!(dd.most_changed.is_empty());
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let a = sae_of(&(0..4).map(|_| random_unit(&mut rng, 8)).collect::<Vec<_>>());
        let b = sae_of(&(0..4).map(|_| random_unit(&mut rng, 9)).collect::<Vec<_>>());
        let e = diff(&a, &b, &[1.0; 4], &[1.0; 4], &DiffOptions::default()).unwrap_err();
        assert!(e.to_string().contains("d_in 8 vs 9"), "{e}");
        let e = diff(&a, &a, &[1.0; 3], &[1.0; 4], &DiffOptions::default()).unwrap_err();
        assert!(e.to_string().contains("3 base densities"), "{e}");
    }
}
