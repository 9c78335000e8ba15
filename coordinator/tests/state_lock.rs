//! The state lock as a lease, with real processes: a second coordinator on a live state is
//! refused with exit 2; a SIGKILLed coordinator's lock is taken over once its lease has run
//! out; a clean stop releases it at once; a serve whose bind fails leaves no lock behind.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

/// Short lock leases keep these tests quick.
const LOCK_LEASE_MS: &str = "3000";

/// `mirrorplay serve` on the state under `dir`, expected to refuse: waits at most 20 s for it
/// to exit (and kills it if it did not, so that the assertions after fail instead of hanging).
fn serve_refused(dir: &std::path::Path, listen: &str) -> std::process::Output {
    let mut child = Command::new(mirrorplay())
        .args([
            "serve",
            "--listen",
            listen,
            "--state",
            dir.join("state").to_str().unwrap(),
            "--lock-lease-ms",
            LOCK_LEASE_MS,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

#[test]
fn a_second_coordinator_on_a_live_state_is_refused_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let _first = spawn_coordinator_with(
        tmp.path(),
        &url,
        &["--lock-lease-ms", LOCK_LEASE_MS],
        &[],
        None,
    );
    // Longer than the lease: the first coordinator keeps renewing it.
    std::thread::sleep(Duration::from_millis(3500));
    let o = serve_refused(tmp.path(), "127.0.0.1:0");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("in use by a live coordinator"), "{err}");
    assert!(err.contains(&format!("pid {}", _first.0.id())), "{err}");
    // The first one still serves.
    assert!(run(&["status", "--coordinator", &url]).status.success());
}

#[test]
fn a_sigkilled_coordinators_lock_is_taken_over_once_its_lease_has_run_out() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut first = spawn_coordinator_with(
        tmp.path(),
        &url,
        &["--lock-lease-ms", LOCK_LEASE_MS],
        &[],
        None,
    );
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let killed_at = Instant::now();
    // Its lease is still live (renewed at most a third of it ago): refused.
    let o = serve_refused(tmp.path(), "127.0.0.1:0");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("start again once its lease has run out"),
        "{}",
        stderr(&o)
    );
    // After the lease: the next coordinator takes the state over.
    std::thread::sleep(Duration::from_millis(3000).saturating_sub(killed_at.elapsed()));
    let log = tmp.path().join("second.log");
    let _second = spawn_coordinator_with(
        tmp.path(),
        &url,
        &["--lock-lease-ms", LOCK_LEASE_MS],
        &[],
        Some(&log),
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("taking over the state lock"), "{log}");
}

#[test]
fn a_cleanly_stopped_coordinator_releases_the_lock_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut first =
        spawn_coordinator_with(tmp.path(), &url, &["--lock-lease-ms", "60000"], &[], None);
    first.signal(libc::SIGTERM);
    let status = first.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // A minute-long lease, yet the next coordinator starts at once.
    let _second =
        spawn_coordinator_with(tmp.path(), &url, &["--lock-lease-ms", "60000"], &[], None);
}

#[test]
fn a_serve_whose_bind_fails_exits_2_and_leaves_no_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let o = serve_refused(tmp.path(), &listen);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("cannot listen on {listen}")),
        "{}",
        stderr(&o)
    );
    assert!(
        !tmp.path().join("state/lease").exists(),
        "no lock was taken"
    );
    // The state is free for the next coordinator.
    let url = format!("http://127.0.0.1:{}", free_port());
    let _next = spawn_coordinator_with(
        tmp.path(),
        &url,
        &["--lock-lease-ms", LOCK_LEASE_MS],
        &[],
        None,
    );
}
