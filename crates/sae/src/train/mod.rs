//! Training a dictionary: the loop (batches, schedules, Adam, divergence), input scaling, initialisation, resampling
//! of dead features, and pruning of dense features after training. Generic over [`Backend`], so the same loop runs on
//! the fast CPU ops, the reference ops, or a GPU.
//!
//! Deterministic on the CPU: every random choice comes from one ChaCha8 stream seeded by the config, and the fast
//! ops add up in a fixed order, so the same config and seed give bit-identical dictionaries on the same machine.

pub mod resample;

use crate::data::actset::ActivationSet;
use anyhow::{bail, ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use saeperf_kernels::select::{Selected, WithBackend};
use saeperf_kernels::{Activation, AdamHyper, Arch, Backend, Params, Sae, SaeCfg, Shape};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Training diverged: the loss or the parameters stopped being finite. A typed error, so that callers (the bench's
/// training benchmarks) tell a diverged run from a failed one without reading the message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Diverged(pub String);

/// When and how dead features are resampled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResampleConfig {
    /// Steps at which to resample (the paper: 25k, 50k, 75k, 100k).
    pub at_steps: Vec<usize>,
    /// A feature is dead if it did not fire during this many steps before a resample (the paper: 12,500).
    pub window: usize,
    /// Inputs on which the loss is computed to choose new directions (the paper: 819,200).
    pub sample: usize,
}

/// Everything that determines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub arch: Arch,
    /// Dictionary size; None: 8 × d_in.
    pub d_sae: Option<usize>,
    /// λ of the sparsity penalty: L1 for ReLU, L0 for JumpReLU; unused by TopK and BatchTopK.
    pub l1_coeff: f32,
    /// TopK: features per token; BatchTopK: features per token on average over a batch.
    pub k: usize,
    pub steps: usize,
    pub batch: usize,
    pub lr: f32,
    pub lr_warmup: usize,
    pub l1_warmup: usize,
    pub seed: u64,
    /// Encoder init = decoder transpose × this.
    pub enc_init_scale: f32,
    pub resample: Option<ResampleConfig>,
    /// Record a point of the training curve every this many steps.
    pub log_every: usize,
    /// JumpReLU: the bandwidth ε of the threshold's pseudo-gradient (the paper: 0.001 on unit-scale inputs).
    #[serde(default = "default_bandwidth")]
    pub bandwidth: f32,
    /// JumpReLU: every threshold's initial value.
    #[serde(default = "default_init_threshold")]
    pub init_threshold: f32,
    /// Matryoshka: the nested prefix sizes m_1 < … < m_n = d_sae; empty: d_sae/8, /4, /2, d_sae.
    #[serde(default)]
    pub prefixes: Vec<usize>,
    /// AuxK (TopK, BatchTopK, Matryoshka): dead latents that reconstruct the residual per token; 0: off.
    #[serde(default)]
    pub aux_k: usize,
    /// AuxK: the auxiliary loss's coefficient α (Gao et al.: 1/32).
    #[serde(default = "default_aux_coeff")]
    pub aux_coeff: f32,
    /// AuxK: a latent is dead when it has not fired for this many steps.
    #[serde(default = "default_aux_window")]
    pub aux_window: usize,
    /// Time to quality: the FVU the run watches for (batch FVU, smoothed over [`FVU_SMOOTHING`] steps); None: not
    /// watched.
    #[serde(default)]
    pub target_fvu: Option<f64>,
    /// Snapshots of the dictionary kept during training, evenly spaced in steps (the last at the end), so that
    /// quality that needs more than a batch to measure (loss recovered) can be timed too; 0: none.
    #[serde(default)]
    pub checkpoints: usize,
}

/// The batch FVU that time to quality watches is an exponential average with this time constant in steps: one
/// batch's FVU moves by several percent from batch to batch, so the raw value would cross a target by luck.
pub const FVU_SMOOTHING: f64 = 20.0;

fn default_aux_coeff() -> f32 {
    1.0 / 32.0
}
fn default_aux_window() -> usize {
    100
}

fn default_bandwidth() -> f32 {
    0.001
}
fn default_init_threshold() -> f32 {
    0.001
}

/// JumpReLU on a set harvested from a model: every threshold's initial value and the bandwidth, when not given. From
/// the synthetic default θ₀ 0.001 the thresholds cannot rise to the codes' scale at lr 1e-3 (on the LM set, λ 0.3
/// left L0 at 830 after 1000 steps); from 0.7 with ε 0.1 they settle (λ 0.7: L0 31.2, loss recovered 0.954;
/// docs/architectures.md, "Measured on the language-model set").
pub const MODEL_JUMPRELU_INIT_THRESHOLD: f32 = 0.7;
pub const MODEL_JUMPRELU_BANDWIDTH: f32 = 0.1;

/// BatchTopK's inference threshold follows the smallest kept activation of each batch with this decay (a time
/// constant of 100 steps).
pub const BATCHTOPK_THRESHOLD_DECAY: f64 = 0.99;

/// Values that replace a [`TrainConfig`]'s defaults: the one way the command line (`runner train` flags) and the
/// suite (a reference dictionary's entry) build a training configuration. `None` keeps the default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainOverrides {
    pub arch: Option<Arch>,
    pub d_sae: Option<usize>,
    pub l1_coeff: Option<f32>,
    pub k: Option<usize>,
    pub steps: Option<usize>,
    pub batch: Option<usize>,
    pub lr: Option<f32>,
    pub lr_warmup: Option<usize>,
    pub l1_warmup: Option<usize>,
    pub seed: Option<u64>,
    pub resample: Option<ResampleConfig>,
    pub log_every: Option<usize>,
    pub bandwidth: Option<f32>,
    pub init_threshold: Option<f32>,
    pub prefixes: Option<Vec<usize>>,
    pub aux_k: Option<usize>,
    pub aux_window: Option<usize>,
    pub target_fvu: Option<f64>,
    pub checkpoints: Option<usize>,
}

impl Default for TrainConfig {
    /// The recipe of docs/metrics.md ("Training") with values tuned on the embedded synthetic set (d_in 64, 512 features): there a
    /// ReLU-L1 dictionary of 512 features reaches MMCS ≈ 0.96 in 4000 steps. Sets from a model use
    /// [`TrainConfig::for_model`].
    fn default() -> Self {
        TrainConfig {
            arch: Arch::Relu,
            d_sae: None,
            l1_coeff: 2.0,
            k: 32,
            steps: 4000,
            batch: 1024,
            lr: 1e-2,
            lr_warmup: 100,
            l1_warmup: 500,
            seed: 0,
            enc_init_scale: 1.0,
            resample: None,
            log_every: 50,
            bandwidth: default_bandwidth(),
            init_threshold: default_init_threshold(),
            prefixes: Vec::new(),
            aux_k: 0,
            aux_coeff: default_aux_coeff(),
            aux_window: default_aux_window(),
            target_fvu: None,
            checkpoints: 0,
        }
    }
}

impl TrainConfig {
    /// Defaults for an activation set harvested from a language model: the reference recipe (lr 1e-3 with warm-ups).
    pub fn for_model() -> Self {
        TrainConfig {
            lr: 1e-3,
            lr_warmup: 1000,
            l1_warmup: 2000,
            ..TrainConfig::default()
        }
    }

    /// The defaults that fit a set's kind ("synthetic" or "model").
    pub fn defaults_for(kind: &str) -> Self {
        if kind == "model" {
            Self::for_model()
        } else {
            Self::default()
        }
    }

    /// The defaults for a set's kind with `o` applied over them.
    pub fn with_overrides(kind: &str, o: &TrainOverrides) -> Self {
        let mut c = Self::defaults_for(kind);
        if let Some(v) = o.arch {
            c.arch = v;
        }
        if o.d_sae.is_some() {
            c.d_sae = o.d_sae;
        }
        if let Some(v) = o.l1_coeff {
            c.l1_coeff = v;
        }
        if let Some(v) = o.k {
            c.k = v;
        }
        if let Some(v) = o.steps {
            c.steps = v;
        }
        if let Some(v) = o.batch {
            c.batch = v;
        }
        if let Some(v) = o.lr {
            c.lr = v;
        }
        if let Some(v) = o.lr_warmup {
            c.lr_warmup = v;
        }
        if let Some(v) = o.l1_warmup {
            c.l1_warmup = v;
        }
        if let Some(v) = o.seed {
            c.seed = v;
        }
        if o.resample.is_some() {
            c.resample = o.resample.clone();
        }
        if let Some(v) = o.log_every {
            c.log_every = v;
        }
        if let Some(v) = o.bandwidth {
            c.bandwidth = v;
        }
        if let Some(v) = o.init_threshold {
            c.init_threshold = v;
        }
        if let Some(v) = &o.prefixes {
            c.prefixes = v.clone();
        }
        if let Some(v) = o.aux_k {
            c.aux_k = v;
        }
        if let Some(v) = o.aux_window {
            c.aux_window = v;
        }
        if o.target_fvu.is_some() {
            c.target_fvu = o.target_fvu;
        }
        if let Some(v) = o.checkpoints {
            c.checkpoints = v;
        }
        if kind == "model" && c.arch == Arch::JumpRelu {
            c.init_threshold = o.init_threshold.unwrap_or(MODEL_JUMPRELU_INIT_THRESHOLD);
            c.bandwidth = o.bandwidth.unwrap_or(MODEL_JUMPRELU_BANDWIDTH);
        }
        c
    }

    /// Checks what does not depend on the data.
    pub fn validate_basic(&self) -> Result<()> {
        ensure!(self.steps > 0, "steps must be positive");
        ensure!(self.batch > 0, "batch must be positive");
        ensure!(self.d_sae != Some(0), "d_sae must be positive");
        ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "lr must be positive and finite, got {}",
            self.lr
        );
        ensure!(
            self.l1_coeff.is_finite() && self.l1_coeff >= 0.0,
            "l1 coefficient must be ≥ 0, got {}",
            self.l1_coeff
        );
        ensure!(
            self.bandwidth.is_finite() && self.bandwidth > 0.0,
            "bandwidth must be positive and finite, got {}",
            self.bandwidth
        );
        ensure!(
            self.init_threshold.is_finite() && self.init_threshold > 0.0,
            "initial threshold must be positive and finite, got {}",
            self.init_threshold
        );
        Ok(())
    }

    /// Checks everything, for data of width `d_in`.
    pub fn validate(&self, d_in: usize) -> Result<()> {
        self.validate_basic()?;
        let d_sae = self.d_sae(d_in);
        if self.arch.uses_k() {
            ensure!(
                self.k > 0 && self.k <= d_sae,
                "k must lie in 1..=d_sae ({d_sae}), got {}",
                self.k
            );
        }
        if self.aux_k > 0 {
            ensure!(
                self.arch.uses_k(),
                "--aux-k needs a TopK-family dictionary (topk, batchtopk, matryoshka), not {}",
                self.arch
            );
            ensure!(self.aux_window > 0, "the AuxK window must be positive");
        }
        if self.arch == Arch::Matryoshka {
            let p = self.prefixes_for(d_sae);
            ensure!(
                p.windows(2).all(|w| w[0] < w[1]) && p.first().is_some_and(|m| *m > 0),
                "matryoshka prefixes must increase strictly from at least 1, got {p:?}"
            );
            ensure!(
                p.last() == Some(&d_sae),
                "the last matryoshka prefix must be d_sae ({d_sae}), got {p:?}"
            );
        } else {
            ensure!(
                self.prefixes.is_empty(),
                "prefixes apply to matryoshka only, not {}",
                self.arch
            );
        }
        if let Some(r) = &self.resample {
            ensure!(
                self.arch != Arch::Gated,
                "resampling does not reset gated's magnitude path (r_mag, b_mag); train gated without resampling"
            );
            ensure!(r.window > 0, "resample window must be positive");
            ensure!(r.sample > 0, "resample sample must be positive");
        }
        ensure!(self.log_every > 0, "log_every must be positive");
        if let Some(t) = self.target_fvu {
            ensure!(
                t.is_finite() && t > 0.0,
                "target FVU must be positive and finite, got {t}"
            );
        }
        ensure!(
            self.checkpoints <= self.steps,
            "checkpoints ({}) cannot outnumber steps ({})",
            self.checkpoints,
            self.steps
        );
        Ok(())
    }
    /// Matryoshka's prefix sizes for a dictionary of `d_sae` features.
    pub fn prefixes_for(&self, d_sae: usize) -> Vec<usize> {
        if self.prefixes.is_empty() {
            saeperf_kernels::ops::matryoshka::default_prefixes(d_sae)
        } else {
            self.prefixes.clone()
        }
    }
    pub fn d_sae(&self, d_in: usize) -> usize {
        self.d_sae.unwrap_or(8 * d_in)
    }
    fn l1_at(&self, step: usize) -> f32 {
        if self.arch.uses_k() {
            return 0.0;
        }
        self.l1_coeff * ramp(step, self.l1_warmup)
    }
    fn lr_at(&self, step: usize) -> f32 {
        self.lr * ramp(step, self.lr_warmup)
    }
}

fn ramp(step: usize, warmup: usize) -> f32 {
    if warmup == 0 {
        1.0
    } else {
        ((step + 1) as f32 / warmup as f32).min(1.0)
    }
}

/// One point of the training curve (batch values at that step).
pub use saeperf_kernels::CurvePoint;

/// The phases of a training step, in the order the step runs them (docs/metrics.md, "Where a step's time goes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The encoder and the activation (threshold, TopK, BatchTopK, Gated's encode).
    Encode,
    /// The decoder: x̂ = f·W_dec + b_dec.
    Decode,
    /// Every gradient: the backward op and the architectures' own (Matryoshka's prefixes, AuxK, JumpReLU's θ).
    Backward,
    /// Adam over every parameter, with the decoder-norm constraint.
    Optimizer,
    /// Everything else: drawing and scaling the batch, the batch statistics, dead-feature bookkeeping, resampling.
    Other,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Encode,
        Phase::Decode,
        Phase::Backward,
        Phase::Optimizer,
        Phase::Other,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Phase::Encode => "encode",
            Phase::Decode => "decode",
            Phase::Backward => "backward",
            Phase::Optimizer => "optimizer",
            Phase::Other => "other",
        }
    }
}

/// Seconds spent in each [`Phase`], summed over the steps of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseTimes(pub [f64; 5]);

impl PhaseTimes {
    pub fn get(&self, p: Phase) -> f64 {
        self.0[p as usize]
    }
    pub fn total(&self) -> f64 {
        self.0.iter().sum()
    }
    /// `{phase: seconds}` for training.json.
    pub fn to_json(&self) -> serde_json::Value {
        self.scaled_json(1.0)
    }
    /// `{phase: milliseconds per step}` over `steps` steps, for a training benchmark's `extra`.
    pub fn per_step_ms_json(&self, steps: usize) -> serde_json::Value {
        self.scaled_json(1e3 / steps.max(1) as f64)
    }
    fn scaled_json(&self, k: f64) -> serde_json::Value {
        Phase::ALL
            .iter()
            .map(|p| (p.name().to_string(), serde_json::json!(self.get(*p) * k)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// Attributes wall time to phases: each `lap` waits for the backend's queued work, then charges the time since the
/// previous lap to the phase that just ended. On the CPU `sync` is free; on CUDA it costs one synchronisation per
/// phase, which is the price of a breakdown that names the right phase.
struct PhaseClock {
    last: Instant,
    times: PhaseTimes,
}

impl PhaseClock {
    fn new() -> Self {
        PhaseClock {
            last: Instant::now(),
            times: PhaseTimes::default(),
        }
    }
    fn lap<B: Backend>(&mut self, backend: &B, p: Phase) -> Result<()> {
        backend.sync().map_err(|e| anyhow::anyhow!(e))?;
        let now = Instant::now();
        self.times.0[p as usize] += (now - self.last).as_secs_f64();
        self.last = now;
        Ok(())
    }
}

/// When a run first reached a quality target: after `step` steps, `secs` seconds of training.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reached {
    pub step: usize,
    pub secs: f64,
}

/// A snapshot of the dictionary after `step` steps and `secs` seconds of training (the snapshots' own time excluded).
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub step: usize,
    pub secs: f64,
    pub sae: Sae,
}

/// What a training run produced.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub sae: Sae,
    pub curve: Vec<CurvePoint>,
    pub tokens_per_sec: f64,
    /// Tokens per second over the second half of the steps: the steady state, once L0 has settled (the first half
    /// holds the L1 warm-up, when codes are dense and the sparse paths cannot be taken).
    pub steady_tokens_per_sec: f64,
    /// Where the steps' time went, over all steps and over the second half (the steady state).
    pub phases: PhaseTimes,
    pub steady_phases: PhaseTimes,
    /// The first step at which the smoothed batch FVU reached `target_fvu` (None: not watched, or not reached).
    pub reached_fvu: Option<Reached>,
    /// `checkpoints` snapshots in step order (the last one is the final dictionary).
    pub checkpoints: Vec<Checkpoint>,
    pub wall_secs: f64,
    /// (step, features resampled).
    pub resamples: Vec<(usize, usize)>,
    /// The name of the backend that trained it.
    pub backend: String,
}

/// The scalar s with E‖s·x‖² = d_in, estimated on up to 16,384 training rows, and the mean of those rows × s.
pub fn input_scaling(set: &ActivationSet, rng: &mut ChaCha8Rng) -> Result<(f32, Vec<f32>)> {
    let d = set.d_in();
    let train = set.train_rows();
    ensure!(
        !train.is_empty(),
        "activation set {} has an empty training split",
        set.dir().display()
    );
    let mut idx: Vec<usize> = train.collect();
    idx.shuffle(rng);
    idx.truncate(16_384);
    idx.sort_unstable();
    let x = set.gather_f32(&idx);
    let n = idx.len() as f64;
    let mean_sq: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n;
    ensure!(
        mean_sq > 0.0,
        "activation set {}: the training rows are all zero",
        set.dir().display()
    );
    let s = (d as f64 / mean_sq).sqrt();
    let mut mean = vec![0.0f64; d];
    for row in x.chunks(d) {
        mean.iter_mut().zip(row).for_each(|(m, v)| *m += *v as f64);
    }
    Ok((s as f32, mean.iter().map(|m| (m / n * s) as f32).collect()))
}

/// Trains a dictionary on the training split of `set` with the backend the caller opened (the command line opens
/// it once, from `--backend`, and says which `auto` chose).
pub fn train(
    backend: &Selected,
    cfg: &TrainConfig,
    set: &ActivationSet,
    progress: bool,
) -> Result<TrainOutcome> {
    struct Job<'a> {
        cfg: &'a TrainConfig,
        set: &'a ActivationSet,
        progress: bool,
    }
    impl WithBackend for Job<'_> {
        type Output = Result<TrainOutcome>;
        fn run<B: Backend>(self, backend: &B) -> Result<TrainOutcome> {
            train_on(backend, self.cfg, self.set, self.progress)
        }
    }
    backend.with(Job { cfg, set, progress })
}

/// Draws training batches: a fresh permutation of the training rows every epoch.
struct Batches {
    order: Vec<usize>,
    pos: usize,
}

impl Batches {
    fn new(n: usize) -> Self {
        Batches {
            order: (0..n).collect(),
            pos: n,
        }
    }
    fn next(&mut self, batch: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
        let mut out = Vec::with_capacity(batch);
        while out.len() < batch {
            if self.pos == self.order.len() {
                self.order.shuffle(rng);
                self.pos = 0;
            }
            let take = (batch - out.len()).min(self.order.len() - self.pos);
            out.extend_from_slice(&self.order[self.pos..self.pos + take]);
            self.pos += take;
        }
        out
    }
}

/// A parameter vector outside [`Params`] on the device (JumpReLU's log θ, Gated's r_mag and b_mag), with its
/// gradient and Adam moments.
struct VecParam<B> {
    t: B,
    g: B,
    m: B,
    v: B,
}

/// Gated's r_mag and b_mag with their moments, and the gate's pre-activations π_gate.
type GatedState<B> = (VecParam<B>, VecParam<B>, B);

/// The training loop on any backend.
pub fn train_on<B: Backend>(
    backend: &B,
    cfg: &TrainConfig,
    set: &ActivationSet,
    progress: bool,
) -> Result<TrainOutcome> {
    let d = set.d_in();
    cfg.validate(d)?;
    let d_sae = cfg.d_sae(d);
    let s = Shape::new(cfg.batch, d, d_sae);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let (scale, b_dec) = input_scaling(set, &mut rng)?;
    // Per-token variance of the scaled inputs, E‖s·x − μ‖² = d_in − ‖μ‖² (the scale makes E‖s·x‖² = d_in): the
    // denominator of the batch FVU that time to quality watches.
    let var_token = (d as f64 - b_dec.iter().map(|m| (*m as f64).powi(2)).sum::<f64>()).max(1e-12);
    let mut fvu_avg: Option<f64> = None;
    let mut reached_fvu = None;
    let mut checkpoints = Vec::new();
    let every = if cfg.checkpoints > 0 {
        cfg.steps.div_ceil(cfg.checkpoints)
    } else {
        0
    };
    // Time spent taking snapshots, left out of every reported time.
    let mut excluded = std::time::Duration::ZERO;
    let sae_cfg = SaeCfg {
        d_in: d,
        d_sae,
        architecture: cfg.arch,
        k: cfg.arch.uses_k().then_some(cfg.k),
        l1_coefficient: if cfg.arch.uses_k() { 0.0 } else { cfg.l1_coeff },
        scaling_factor: scale,
        seed: cfg.seed,
        steps: cfg.steps,
        batch_size: cfg.batch,
        lr: cfg.lr,
        activation_set_sha256: set.manifest().sha256.clone(),
        // A harvested set records its hook under source.params (lm::harvest).
        hook_name: set.manifest().source["params"]["hook"]
            .as_str()
            .map(String::from),
        pruned_features: 0,
        dtype: "float32".into(),
        apply_b_dec_to_input: true,
    };
    let act = sae_cfg.activation();
    let init = Sae::init(sae_cfg, b_dec, cfg.enc_init_scale, &mut rng);
    let be = |e: saeperf_kernels::BackendError| anyhow::anyhow!(e);
    let up = |v: &Vec<f32>| backend.upload(v);
    let mut p = Params {
        w_enc: init.w_enc.clone(),
        b_enc: init.b_enc.clone(),
        w_dec: init.w_dec.clone(),
        b_dec: init.b_dec.clone(),
    }
    .try_map(up)
    .map_err(be)?;
    let zeros = Params::zeros(s);
    let mut g = zeros.try_map(up).map_err(be)?;
    let mut m = zeros.try_map(up).map_err(be)?;
    let mut v = zeros.try_map(up).map_err(be)?;
    let mut x = backend.zeros(s.batch * d).map_err(be)?;
    let mut f = backend.zeros(s.batch * d_sae).map_err(be)?;
    // JumpReLU, BatchTopK, Matryoshka and TopK with AuxK select from the ReLU'd pre-activations a, kept beside the
    // codes (AuxK reads a again for the dead latents).
    let arch = cfg.arch;
    let mut a = if arch.has_threshold() || cfg.aux_k > 0 {
        Some(backend.zeros(s.batch * d_sae).map_err(be)?)
    } else {
        None
    };
    // JumpReLU's t = log θ, its gradient and Adam moments.
    let mut jump = if arch == Arch::JumpRelu {
        let t0 = vec![cfg.init_threshold.ln(); d_sae];
        Some(VecParam {
            t: backend.upload(&t0).map_err(be)?,
            g: backend.zeros(d_sae).map_err(be)?,
            m: backend.zeros(d_sae).map_err(be)?,
            v: backend.zeros(d_sae).map_err(be)?,
        })
    } else {
        None
    };
    // Gated: r_mag and b_mag (from the initial dictionary: zeros), and the gate's pre-activations π_gate.
    let mut gated = match &init.gated {
        Some(gm) => {
            let vp = |v: &Vec<f32>| -> Result<VecParam<B::Buf>> {
                Ok(VecParam {
                    t: backend.upload(v).map_err(be)?,
                    g: backend.zeros(d_sae).map_err(be)?,
                    m: backend.zeros(d_sae).map_err(be)?,
                    v: backend.zeros(d_sae).map_err(be)?,
                })
            };
            Some((
                vp(&gm.r_mag)?,
                vp(&gm.b_mag)?,
                backend.zeros(s.batch * d_sae).map_err(be)?,
            ))
        }
        None => None,
    };
    // BatchTopK's inference threshold, averaged over batches.
    let mut batch_theta: Option<f64> = None;
    // Matryoshka: the prefixes below d_sae, each with its masked codes, reconstruction and gradients.
    let prefixes: Vec<usize> = if arch == Arch::Matryoshka {
        let mut p = cfg.prefixes_for(d_sae);
        p.pop();
        p
    } else {
        Vec::new()
    };
    let mut nested = if prefixes.is_empty() {
        None
    } else {
        Some((
            backend.zeros(s.batch * d_sae).map_err(be)?,
            backend.zeros(s.batch * d).map_err(be)?,
            zeros.try_map(up).map_err(be)?,
        ))
    };
    let mut xhat = backend.zeros(s.batch * d).map_err(be)?;
    let mut batches = Batches::new(set.train_rows().len());
    let mut fire = vec![0u32; d_sae];
    let mut dead_tracker = resample::DeadTracker::new(d_sae);
    let mut curve = Vec::new();
    let mut resamples = Vec::new();
    let bar = progress_bar(cfg.steps, progress);
    let start = Instant::now();
    let mut clock = PhaseClock::new();
    let half = cfg.steps / 2;
    let mut half_at = start;
    let mut half_times = PhaseTimes::default();
    let mut excluded_at_half = std::time::Duration::ZERO;
    let mut hostx = vec![0.0f32; s.batch * d];
    for step in 0..cfg.steps {
        if step == half {
            clock.lap(backend, Phase::Other)?;
            half_at = clock.last;
            half_times = clock.times;
            excluded_at_half = excluded;
        }
        if let Some(rc) = &cfg.resample {
            if step > 0 && rc.at_steps.contains(&step) {
                let dead = dead_tracker.dead(step, rc.window);
                let n = resample::resample_dead(
                    backend, s, act, set, scale, &dead, rc.sample, &mut rng, &mut p, &mut m, &mut v,
                )?;
                dead_tracker.revive(&dead, step);
                tracing::info!(step, resampled = n, "resampled dead features");
                resamples.push((step, n));
            }
        }
        let idx = batches.next(s.batch, &mut rng);
        let train_start = set.train_rows().start;
        let abs: Vec<usize> = idx.iter().map(|i| i + train_start).collect();
        let raw = set.gather_f32(&abs);
        hostx.iter_mut().zip(&raw).for_each(|(h, r)| *h = r * scale);
        backend.write(&mut x, &hostx).map_err(be)?;
        clock.lap(backend, Phase::Other)?;
        match (&mut a, &jump) {
            _ if gated.is_some() => {
                let (r, bm, pg) = gated.as_mut().expect("checked");
                backend
                    .gated_encode(s, &x, &p, [&r.t, &bm.t], pg, &mut f)
                    .map_err(be)?;
            }
            (Some(a), Some(j)) => {
                backend.encode(s, act, &x, &p, a).map_err(be)?;
                backend.threshold(s, a, &j.t, &mut f).map_err(be)?;
            }
            (Some(a), None) if arch == Arch::TopK => {
                backend.encode(s, Activation::Relu, &x, &p, a).map_err(be)?;
                backend.topk(s, cfg.k, a, &mut f).map_err(be)?;
            }
            (Some(a), None) => {
                backend.encode(s, act, &x, &p, a).map_err(be)?;
                let min_kept = backend.batch_topk(s, cfg.k, a, &mut f).map_err(be)? as f64;
                if min_kept > 0.0 {
                    batch_theta = Some(match batch_theta {
                        None => min_kept,
                        Some(t) => {
                            BATCHTOPK_THRESHOLD_DECAY * t
                                + (1.0 - BATCHTOPK_THRESHOLD_DECAY) * min_kept
                        }
                    });
                }
            }
            _ => backend.encode(s, act, &x, &p, &mut f).map_err(be)?,
        }
        clock.lap(backend, Phase::Encode)?;
        backend.decode(s, &f, &p, &mut xhat).map_err(be)?;
        clock.lap(backend, Phase::Decode)?;
        fire.fill(0);
        let st = backend
            .batch_stats(s, &x, &xhat, &f, &mut fire)
            .map_err(be)?;
        let l1 = cfg.l1_at(step);
        // JumpReLU's penalty is λ·L0 and reaches only θ; ReLU's is λ·L1 and reaches the encoder through backward;
        // Gated's is λ·L1 of the gate, added below from its backward's sums with the auxiliary reconstruction.
        let (mut loss, l1_backward) = match arch {
            Arch::JumpRelu => ((st.sse + l1 as f64 * st.l0) / s.batch.max(1) as f64, 0.0),
            Arch::Gated => (st.sse / s.batch.max(1) as f64, l1),
            _ => (st.loss(s.batch, l1), l1),
        };
        dead_tracker.record(&fire, step);
        clock.lap(backend, Phase::Other)?;
        if let Some((r, bm, pg)) = &mut gated {
            let sums = backend
                .gated_backward(
                    s,
                    l1,
                    [&x, pg, &f, &xhat],
                    &p,
                    [&r.t, &bm.t],
                    &mut g,
                    [&mut r.g, &mut bm.g],
                )
                .map_err(be)?;
            loss += (sums.aux_sse + l1 as f64 * sums.gate_l1) / s.batch.max(1) as f64;
        } else {
            backend
                .backward(s, l1_backward, &x, &f, &xhat, &p, &mut g)
                .map_err(be)?;
        }
        // Matryoshka: every shorter prefix's reconstruction loss and gradient on top of the full one.
        if let Some((fj, xhj, gj)) = &mut nested {
            for &size in &prefixes {
                backend.prefix_mask(s, size, &f, fj).map_err(be)?;
                backend.decode(s, fj, &p, xhj).map_err(be)?;
                let sse: f64 = backend
                    .per_token_sq_err(s, &x, xhj)
                    .map_err(be)?
                    .iter()
                    .map(|v| *v as f64)
                    .sum();
                loss += sse / s.batch.max(1) as f64;
                backend.backward(s, 0.0, &x, fj, xhj, &p, gj).map_err(be)?;
                backend.accumulate(s, &mut g, gj).map_err(be)?;
            }
        }
        // AuxK: once a window has passed, the latents silent for it reconstruct the residual.
        if let (true, Some(a)) = (cfg.aux_k > 0 && step >= cfg.aux_window, &a) {
            let dead = dead_tracker.dead(step, cfg.aux_window);
            if !dead.is_empty() {
                loss += backend
                    .auxk(s, cfg.aux_k, cfg.aux_coeff, a, &dead, &x, &xhat, &p, &mut g)
                    .map_err(be)?;
            }
        }
        if !loss.is_finite() {
            bail!(Diverged(format!(
                "training diverged at step {step}: the loss is {loss} (try a lower --lr)"
            )));
        }
        let hyper = AdamHyper::new(cfg.lr_at(step), step as u64 + 1);
        if let (Some(j), Some(a)) = (&mut jump, &a) {
            backend
                .threshold_grad(s, cfg.bandwidth, l1, a, &j.t, &x, &xhat, &p, &mut j.g)
                .map_err(be)?;
        }
        clock.lap(backend, Phase::Backward)?;
        if let Some((r, bm, _)) = &mut gated {
            for q in [r, bm] {
                backend
                    .adam_vec(hyper, &mut q.t, &q.g, &mut q.m, &mut q.v)
                    .map_err(be)?;
            }
        }
        if let Some(j) = &mut jump {
            backend
                .adam_vec(hyper, &mut j.t, &j.g, &mut j.m, &mut j.v)
                .map_err(be)?;
        }
        backend
            .adam(s, hyper, &mut p, &mut g, &mut m, &mut v)
            .map_err(be)?;
        clock.lap(backend, Phase::Optimizer)?;
        let fvu = st.sse / s.batch.max(1) as f64 / var_token;
        let avg = match fvu_avg {
            None => fvu,
            Some(a) => a + (fvu - a) / FVU_SMOOTHING,
        };
        fvu_avg = Some(avg);
        if let (None, Some(t)) = (reached_fvu, cfg.target_fvu) {
            if avg <= t {
                reached_fvu = Some(Reached {
                    step: step + 1,
                    secs: (start.elapsed() - excluded).as_secs_f64(),
                });
            }
        }
        if every > 0 && ((step + 1) % every == 0 || step + 1 == cfg.steps) {
            let t0 = Instant::now();
            let secs = (t0 - start - excluded).as_secs_f64();
            let snap = snapshot(backend, &init.cfg, &p, &jump, batch_theta, &gated)?;
            checkpoints.push(Checkpoint {
                step: step + 1,
                secs,
                sae: snap,
            });
            let spent = t0.elapsed();
            excluded += spent;
            clock.last += spent;
        }
        let l0 = st.l0 / s.batch as f64;
        if step % cfg.log_every == 0 || step + 1 == cfg.steps {
            let mut point = st.curve_point(step, s, l1_backward);
            point.loss = loss;
            curve.push(point);
            tracing::debug!(step, loss, l0, "training");
        }
        if let Some(b) = &bar {
            b.inc(1);
            if step % 10 == 0 {
                let tps = ((step + 1) * s.batch) as f64 / start.elapsed().as_secs_f64().max(1e-9);
                b.set_message(format!("{tps:>8.0} tok/s  loss {loss:.4}  L0 {l0:.1}"));
            }
        }
    }
    clock.lap(backend, Phase::Other)?;
    let wall = (start.elapsed() - excluded).as_secs_f64();
    let steady_secs = half_at.elapsed().as_secs_f64() - (excluded - excluded_at_half).as_secs_f64();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let sae = snapshot(backend, &init.cfg, &p, &jump, batch_theta, &gated)?;
    let diverged = |what: &str| {
        Diverged(format!(
            "training diverged: {what} after {} steps",
            cfg.steps
        ))
    };
    let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
    if ![&sae.w_enc, &sae.w_dec, &sae.b_enc, &sae.b_dec]
        .iter()
        .all(|v| finite(v))
    {
        bail!(diverged("the parameters hold NaN or Inf"));
    }
    match &sae.threshold {
        None if arch.has_threshold() => bail!(Diverged(format!(
            "training kept no activation in {} steps, so {arch} has no threshold (every pre-activation was ≤ 0)",
            cfg.steps
        ))),
        Some(t) if !finite(t) => bail!(diverged("a threshold is NaN or Inf")),
        _ => {}
    }
    if let Some(gm) = &sae.gated {
        if !(finite(&gm.r_mag) && finite(&gm.b_mag)) {
            bail!(diverged("r_mag or b_mag holds NaN or Inf"));
        }
    }
    Ok(TrainOutcome {
        sae,
        curve,
        tokens_per_sec: (cfg.steps * cfg.batch) as f64 / wall.max(1e-9),
        steady_tokens_per_sec: ((cfg.steps - half) * cfg.batch) as f64 / steady_secs.max(1e-9),
        phases: clock.times,
        reached_fvu,
        checkpoints,
        steady_phases: PhaseTimes(std::array::from_fn(|i| clock.times.0[i] - half_times.0[i])),
        wall_secs: wall,
        resamples,
        backend: backend.name(),
    })
}

/// The dictionary as it stands on the device: its parameters, JumpReLU's thresholds (exp of t), BatchTopK's running
/// threshold, Gated's magnitude path. No checks (the end of training checks the final one).
fn snapshot<B: Backend>(
    backend: &B,
    cfg: &SaeCfg,
    p: &Params<B::Buf>,
    jump: &Option<VecParam<B::Buf>>,
    batch_theta: Option<f64>,
    gated: &Option<GatedState<B::Buf>>,
) -> Result<Sae> {
    let be = |e: saeperf_kernels::BackendError| anyhow::anyhow!(e);
    let host = p.try_map(|b| backend.download(b)).map_err(be)?;
    let threshold = match (jump, batch_theta) {
        (Some(j), _) => Some(
            backend
                .download(&j.t)
                .map_err(be)?
                .iter()
                .map(|t| t.exp())
                .collect::<Vec<f32>>(),
        ),
        (None, Some(t)) => Some(vec![t as f32; cfg.d_sae]),
        _ => None,
    };
    let gated = match gated {
        Some((r, bm, _)) => Some(saeperf_kernels::GatedMag {
            r_mag: backend.download(&r.t).map_err(be)?,
            b_mag: backend.download(&bm.t).map_err(be)?,
        }),
        None => None,
    };
    Ok(Sae {
        cfg: cfg.clone(),
        w_enc: host.w_enc,
        b_enc: host.b_enc,
        w_dec: host.w_dec,
        b_dec: host.b_dec,
        threshold,
        gated,
    })
}

fn progress_bar(steps: usize, show: bool) -> Option<indicatif::ProgressBar> {
    if !show {
        return None;
    }
    let b = indicatif::ProgressBar::new(steps as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    Some(b)
}

/// Removes every feature whose firing frequency on the training split exceeds `above`. Returns the pruned dictionary
/// and the removed feature indices (in the original numbering).
pub fn prune_dense(sae: &Sae, set: &ActivationSet, above: f64) -> Result<(Sae, Vec<usize>)> {
    ensure!(
        (0.0..=1.0).contains(&above),
        "--prune-above must lie in [0, 1], got {above}"
    );
    let density = crate::metrics::feature_density(sae, set, set.train_rows());
    let (removed, keep): (Vec<usize>, Vec<usize>) =
        (0..sae.cfg.d_sae).partition(|&i| density[i] > above);
    ensure!(
        !keep.is_empty(),
        "pruning above {above} would remove every feature"
    );
    Ok((sae.select_features(&keep), removed))
}

/// Writes a training record (config, curve, resamples, throughput) as training.json.
pub fn write_record(dir: &std::path::Path, cfg: &TrainConfig, out: &TrainOutcome) -> Result<()> {
    let rec = serde_json::json!({
        "config": cfg,
        "backend": out.backend,
        "curve": out.curve,
        "resamples": out.resamples,
        "tokens_per_sec": out.tokens_per_sec,
        "steady_tokens_per_sec": out.steady_tokens_per_sec,
        "phase_secs": out.phases.to_json(),
        "steady_phase_secs": out.steady_phases.to_json(),
        "reached_fvu": out.reached_fvu,
        "checkpoints": out.checkpoints.iter().map(|c| serde_json::json!({"step": c.step, "secs": c.secs})).collect::<Vec<_>>(),
        "wall_secs": out.wall_secs,
    });
    let path = dir.join("training.json");
    saeperf_kernels::sae::write_atomic(&path, &serde_json::to_vec_pretty(&rec)?)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumprelu_on_a_model_set_starts_its_thresholds_at_the_codes_scale() {
        let jump = TrainOverrides {
            arch: Some(Arch::JumpRelu),
            ..Default::default()
        };
        let m = TrainConfig::with_overrides("model", &jump);
        assert_eq!(m.init_threshold, MODEL_JUMPRELU_INIT_THRESHOLD);
        assert_eq!(m.bandwidth, MODEL_JUMPRELU_BANDWIDTH);
        // The synthetic set keeps the paper's values, and a given value always wins.
        let syn = TrainConfig::with_overrides("synthetic", &jump);
        assert_eq!((syn.init_threshold, syn.bandwidth), (0.001, 0.001));
        let given = TrainOverrides {
            init_threshold: Some(0.2),
            bandwidth: Some(0.05),
            ..jump.clone()
        };
        let g = TrainConfig::with_overrides("model", &given);
        assert_eq!((g.init_threshold, g.bandwidth), (0.2, 0.05));
        // Other architectures are untouched on a model set.
        let relu = TrainConfig::with_overrides("model", &TrainOverrides::default());
        assert_eq!(relu.init_threshold, 0.001);
    }
}
