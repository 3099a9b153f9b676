//! saeperf-sae: the SAE side of saeperf, everything between an activation set and a dictionary's metrics.
//!
//! - [`data`]: activation sets (the checksummed file format), synthetic sets with a ground truth, the reference
//!   model and corpus assets, and the corpus itself;
//! - [`lm`]: the language model (our llama forward with a residual hook), harvesting activation sets from it, loss
//!   recovered, feature contexts;
//! - [`train`]: the training loop, generic over the kernels' `Backend`, with resampling and pruning;
//! - [`metrics`]: a dictionary's quality metrics (metrics.json), defined in docs/metrics.md;
//! - [`formats`]: the field's dictionary layouts (SAELens), exported to and read from, docs/formats.md;
//! - [`diff`]: the feature diff of two dictionaries (features matched by decoder cosine), docs/feature-diff.md;
//! - [`home`]: `$SAEPERF_HOME`, the one cache directory every command uses.
//!
//! It reaches the SAE math only through `saeperf_kernels::Backend` (training) and `saeperf_kernels::Sae` (a
//! dictionary's own encode, decode and decoder geometry); it knows nothing of runs, stores or reports.

pub mod data;
pub mod diff;
pub mod formats;
pub mod home;
pub mod lm;
pub mod metrics;
pub mod train;
