//! Feature cards: the JSON written by `runner features` (saeperf_sae::lm::features) read back and turned into
//! what the run page shows — each sampled feature's band and density, the tokens its decoder direction writes most,
//! and its top activating contexts with every token shaded by the feature's activation on it.
//!
//! The shape read (tested against `saeperf_sae::lm::features::FeatureReport`; extra fields are ignored, missing optional ones default):
//! `{ "d_sae", "eval_tokens", "features": [ { "index", "band", "density", "fires", "mean_activation",
//! "max_activation", "top_tokens": [ { "text", "score" } ], "coherence": { "score", "percentile", "null_median",
//! "null_p95" } | null, "top_examples": [ { "activation", "doc", "pos", "focus",
//! "tokens": [ { "text", "activation": number | null } ] } ] } ] }`.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize)]
pub struct FeatureFile {
    #[serde(default)]
    pub d_sae: Option<usize>,
    #[serde(default)]
    pub eval_tokens: Option<usize>,
    pub features: Vec<FeatureIn>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FeatureIn {
    pub index: usize,
    #[serde(default)]
    pub band: String,
    pub density: f64,
    #[serde(default)]
    pub fires: Option<u64>,
    #[serde(default)]
    pub max_activation: Option<f64>,
    #[serde(default)]
    pub top_tokens: Vec<TokenScoreIn>,
    #[serde(default)]
    pub top_examples: Vec<ExampleIn>,
    #[serde(default)]
    pub coherence: Option<CoherenceIn>,
}

/// A card's token coherence against random directions (docs/metrics.md, "Token coherence").
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct CoherenceIn {
    pub score: f64,
    pub percentile: f64,
    pub null_median: f64,
    pub null_p95: f64,
}

/// Percentiles at or above this read as a coherent token list.
pub const COHERENT_PERCENTILE: f64 = 0.95;

/// The coherence in plain words.
pub fn coherence_words(c: &CoherenceIn) -> String {
    format!(
        "{}: mean token cosine {:.3}, percentile {:.2} among random directions (median {:.3}, 95th {:.3})",
        if c.percentile >= COHERENT_PERCENTILE {
            "coherent"
        } else {
            "no more coherent than random directions"
        },
        c.score,
        c.percentile,
        c.null_median,
        c.null_p95
    )
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenScoreIn {
    pub text: String,
    #[serde(default)]
    pub score: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExampleIn {
    pub activation: f64,
    #[serde(default)]
    pub doc: String,
    #[serde(default)]
    pub pos: Option<u64>,
    #[serde(default)]
    pub focus: Option<usize>,
    #[serde(default)]
    pub tokens: Vec<TokenActIn>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenActIn {
    pub text: String,
    #[serde(default)]
    pub activation: Option<f64>,
}

/// A token as drawn: its text and a shade in [0, 1] (activation ÷ the example's peak).
#[derive(Debug, Clone, Serialize)]
pub struct TokenView {
    pub text: String,
    pub shade: String,
    pub focus: bool,
    pub title: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExampleView {
    pub activation: String,
    pub source: String,
    pub tokens: Vec<TokenView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Card {
    pub index: usize,
    pub band: String,
    pub density: String,
    pub fires: String,
    pub top_tokens: Vec<String>,
    /// The token list's coherence in words, when the card has one.
    pub coherence: Option<String>,
    pub examples: Vec<ExampleView>,
}

/// Read a `runner features` file.
pub fn read(path: &Path) -> Result<FeatureFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading feature contexts {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "feature contexts {}: not the JSON of `runner features`",
            path.display()
        )
    })
}

/// Cards for the run page, in the file's order (at most `max` of them).
pub fn cards(f: &FeatureFile, max: usize) -> Vec<Card> {
    f.features
        .iter()
        .take(max)
        .map(|ft| Card {
            index: ft.index,
            band: if ft.band.is_empty() {
                "–".into()
            } else {
                ft.band.clone()
            },
            density: if ft.density > 0.0 {
                format!("{:.2e} (log10 {:.2})", ft.density, ft.density.log10())
            } else {
                "0 (dead)".into()
            },
            fires: ft
                .fires
                .map(|n| n.to_string())
                .unwrap_or_else(|| "–".into()),
            top_tokens: ft
                .top_tokens
                .iter()
                .take(10)
                .map(|t| t.text.clone())
                .collect(),
            coherence: ft.coherence.as_ref().map(coherence_words),
            examples: ft
                .top_examples
                .iter()
                .take(5)
                .map(|e| {
                    let peak = e
                        .tokens
                        .iter()
                        .filter_map(|t| t.activation)
                        .fold(e.activation.max(0.0), f64::max);
                    ExampleView {
                        activation: format!("{:.3}", e.activation),
                        source: match e.pos {
                            Some(p) => format!("{} @ {p}", e.doc),
                            None => e.doc.clone(),
                        },
                        tokens: e
                            .tokens
                            .iter()
                            .enumerate()
                            .map(|(i, t)| {
                                let a = t.activation.unwrap_or(0.0).max(0.0);
                                let shade = if peak > 0.0 { (a / peak).min(1.0) } else { 0.0 };
                                TokenView {
                                    text: t.text.clone(),
                                    shade: format!("{shade:.2}"),
                                    focus: e.focus == Some(i),
                                    title: match t.activation {
                                        Some(a) => format!("{a:.3}"),
                                        None => "not in the set".into(),
                                    },
                                }
                            })
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_runner_features_writes() {
        use saeperf_sae::lm::features as lf;
        let report = lf::FeatureReport {
            dict: "d".into(),
            data: "x".into(),
            eval_tokens: 10,
            d_sae: 4,
            band_rule: serde_json::json!({}),
            band_counts: Default::default(),
            features: vec![lf::Feature {
                index: 2,
                band: "typical",
                density: 0.1,
                fires: 1,
                mean_activation: 1.0,
                max_activation: 2.0,
                top_examples: vec![lf::Example {
                    activation: 2.0,
                    doc: "ca01".into(),
                    pos: 3,
                    focus: 0,
                    text: "[[a]]".into(),
                    tokens: vec![lf::TokenAct {
                        text: "a".into(),
                        activation: Some(2.0),
                    }],
                }],
                top_tokens: vec![lf::TokenScore {
                    id: 1,
                    text: "a".into(),
                    score: 0.5,
                }],
                coherence: Some(lf::Coherence {
                    score: 0.4,
                    percentile: 0.99,
                    null_median: 0.1,
                    null_p95: 0.2,
                }),
            }],
        };
        let f: FeatureFile =
            serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        let c = cards(&f, 8);
        assert_eq!(c[0].index, 2);
        assert_eq!(c[0].examples[0].tokens[0].shade, "1.00");
        assert!(c[0].examples[0].tokens[0].focus);
        let words = c[0].coherence.as_deref().unwrap();
        assert!(
            words.starts_with("coherent: mean token cosine 0.400, percentile 0.99"),
            "{words}"
        );
    }

    #[test]
    fn coherence_reads_in_words_and_is_absent_without_a_list() {
        let c = |percentile| CoherenceIn {
            score: 0.05,
            percentile,
            null_median: 0.04,
            null_p95: 0.09,
        };
        assert_eq!(
            coherence_words(&c(0.6)),
            "no more coherent than random directions: mean token cosine 0.050, percentile 0.60 among random \
             directions (median 0.040, 95th 0.090)"
        );
        assert!(coherence_words(&c(COHERENT_PERCENTILE)).starts_with("coherent: "));
        // Files written before coherence existed, and cards with no list, read as no coherence.
        let json = r#"{"features":[{"index":1,"density":0.0,"top_tokens":[]},
          {"index":2,"density":0.1,"top_tokens":[{"text":"a"}],"coherence":null}]}"#;
        let f: FeatureFile = serde_json::from_str(json).unwrap();
        assert!(cards(&f, 8).iter().all(|c| c.coherence.is_none()));
    }

    #[test]
    fn reads_the_features_shape_and_shades_by_activation() {
        let json = r#"{"dict":"d","data":"x","eval_tokens":100,"d_sae":8,"band_rule":{},"band_counts":{},
          "features":[{"index":3,"band":"typical","density":0.002,"fires":2,"mean_activation":1.0,
          "max_activation":2.0,"top_tokens":[{"id":1,"text":" the","score":0.5}],
          "top_examples":[{"activation":2.0,"doc":"ca01","pos":7,"focus":1,"text":"a [[b]]",
          "tokens":[{"text":"a","activation":0.5},{"text":"<b>","activation":2.0},{"text":"c","activation":null}]}]}]}"#;
        let f: FeatureFile = serde_json::from_str(json).unwrap();
        let c = cards(&f, 10);
        assert_eq!(c.len(), 1);
        let t = &c[0].examples[0].tokens;
        assert_eq!(
            (
                t[0].shade.as_str(),
                t[1].shade.as_str(),
                t[2].shade.as_str()
            ),
            ("0.25", "1.00", "0.00")
        );
        assert!(t[1].focus);
        assert_eq!(c[0].examples[0].source, "ca01 @ 7");
    }
}
