//! Wall-clock time as the project records it (metric lines, job records): seconds since the
//! Unix epoch as f64; 0 when the system clock is before the epoch.

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
