//! placeholder (being written)
pub struct CudaBackend;
