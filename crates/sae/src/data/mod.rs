//! Data that training reads: activation sets (the on-disk format), synthetic sets with known ground truth, the
//! reference assets (model and corpus) and the Brown corpus as text.

pub mod actset;
pub mod assets;
pub mod corpus;
pub mod synth;
