//! Data: the reference assets (model and corpus) and the Brown corpus as text.
pub mod assets;
pub mod corpus;
