//! Where saeperf keeps its cache (activation sets, assets, the default store): $SAEPERF_HOME, or the user's cache
//! directory + "saeperf".

use std::path::PathBuf;

pub fn saeperf_home() -> PathBuf {
    match std::env::var_os("SAEPERF_HOME") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("saeperf"),
    }
}
