//! Helpers shared by the crate's unit tests.

/// Runs `f` to completion on a fresh current-thread runtime (for sync tests of async code).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime")
        .block_on(f)
}
