//! Data that training reads: activation sets (the on-disk format), and synthetic sets with known ground truth.

pub mod actset;
pub mod synth;
