//! The one integration-test binary of saeperf: one module per area.

mod cuda;
