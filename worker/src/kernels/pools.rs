//! The process's compute thread pools, settled once at start (docs/architecture.md#compute-threads).
//!
//! Two pools compute on the CPU: rayon's global pool (`RAYON_NUM_THREADS` threads), which runs
//! candle's matmuls (the `gemm` crate) and every kernel of this module's siblings, and candle's
//! own element-wise pool, which runs candle's unary and binary maps above a size threshold on the
//! calling thread plus `CANDLE_NUM_THREADS − 1` threads of its own (default: as many as rayon's;
//! maps of fewer than 64 Ki elements run on the calling thread anyway).
//! candle's threads spin for a while after each map before they sleep, and rayon's do the same
//! between calls, so on a machine whose cores rayon's pool already fills the two pools take
//! cores from each other at every switch between a matmul and a map. With `CANDLE_NUM_THREADS=1`
//! candle's pool has no threads and its maps run on the calling thread. On the 2-vCPU Zen 5
//! VM a self-play step of the SmolLM2-135M shape ran 5.4 % faster so (faster in 5 of 6
//! alternating pairs; its forward+backward 13 %), the training pass alone 14–27 % per phase
//! (BENCHMARKS.md, "candle's element-wise pool"). Machines with more cores have not been
//! measured; setting `CANDLE_NUM_THREADS` overrides the default.
//!
//! The maps are element-wise, so results do not depend on how candle splits them: the bits
//! are the same either way.

/// candle's element-wise pool size (the calling thread included), read once by candle.
pub const CANDLE_THREADS_ENV: &str = "CANDLE_NUM_THREADS";

/// The value [`settle_at_start`] gives `CANDLE_NUM_THREADS`: `Some("1")` when the environment
/// does not set it, `None` (leave it) when it does.
pub fn candle_threads_default(current: Option<&std::ffi::OsStr>) -> Option<&'static str> {
    current.is_none().then_some("1")
}

/// Gives candle's element-wise pool its default size (see the module's doc) unless the
/// environment sets one, and returns the size in effect. Call it first thing in `main`, before
/// any other thread starts and before the first candle op: candle reads the variable once, and
/// changing the environment while other threads may read it is a data race.
pub fn settle_at_start() -> String {
    if let Some(value) = candle_threads_default(std::env::var_os(CANDLE_THREADS_ENV).as_deref()) {
        std::env::set_var(CANDLE_THREADS_ENV, value);
    }
    std::env::var(CANDLE_THREADS_ENV).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_gets_one_thread_unless_the_environment_says_otherwise() {
        assert_eq!(candle_threads_default(None), Some("1"));
        assert_eq!(candle_threads_default(Some("4".as_ref())), None);
        assert_eq!(candle_threads_default(Some("".as_ref())), None);
    }
}
