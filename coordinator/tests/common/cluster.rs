//! A cluster of real processes for fault tests: `mirrorplay serve` on a loopback port with
//! short leases, `mirrorplay-worker` processes, and waiting on what `status --json` says.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{mirrorplay, run, worker_bin};

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // A stopped process must be continued to die of SIGKILL promptly everywhere.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGCONT) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Killed {
    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to a child process we own.
        unsafe { libc::kill(self.0.id() as i32, signal) };
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn spawn_worker(url: &str, name: &str, delay_ms: Option<u64>) -> Killed {
    spawn_worker_env(url, name, delay_ms, &[])
}

/// As `spawn_worker`, with `env` (a token, a fault knob).
pub fn spawn_worker_env(
    url: &str,
    name: &str,
    delay_ms: Option<u64>,
    env: &[(&str, &str)],
) -> Killed {
    let mut cmd = Command::new(worker_bin());
    cmd.args(["--coordinator", url, "--name", name, "--grace-secs", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(ms) = delay_ms {
        cmd.env("MIRRORPLAY_FAULT_TASK_DELAY_MS", ms.to_string());
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Killed(cmd.spawn().unwrap())
}

pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `mirrorplay serve` on `url` (1 s leases) and waits until it answers.
pub fn spawn_coordinator(dir: &Path, url: &str) -> Killed {
    spawn_coordinator_with(dir, url, &[], &[], None)
}

/// `mirrorplay serve --listen URL's address --state DIR/state EXTRA...` (with `--lease-ms
/// 1000` and `--retry-backoff-ms 100` unless EXTRA sets them) with `env`, its stderr into `log` (else
/// discarded); not waited for.
pub fn start_coordinator(
    dir: &Path,
    url: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    log: Option<&Path>,
) -> Killed {
    let listen = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_string();
    let stderr = match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        ),
        None => Stdio::null(),
    };
    let mut cmd = Command::new(mirrorplay());
    cmd.args([
        "serve",
        "--listen",
        &listen,
        "--state",
        dir.join("state").to_str().unwrap(),
    ])
    .args(if extra.contains(&"--lease-ms") {
        &[][..]
    } else {
        &["--lease-ms", "1000"][..]
    })
    .args(extra)
    .args(if extra.contains(&"--retry-backoff-ms") {
        &[][..]
    } else {
        &["--retry-backoff-ms", "100"][..]
    })
    .stdout(Stdio::null())
    .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Killed(cmd.spawn().unwrap())
}

/// As `start_coordinator`, then waits until it answers `status` (with the same `env`, e.g.
/// its token).
pub fn spawn_coordinator_with(
    dir: &Path,
    url: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    log: Option<&Path>,
) -> Killed {
    let mut coordinator = start_coordinator(dir, url, extra, env, log);
    wait_until("the coordinator", Duration::from_secs(20), || {
        if let Ok(Some(status)) = coordinator.0.try_wait() {
            panic!("the coordinator exited: {status:?}");
        }
        super::run_env(&["status", "--coordinator", url], env)
            .status
            .success()
    });
    coordinator
}

/// `status JOB --json` as JSON (Null when it cannot be read).
pub fn status_json(url: &str, job: &str) -> serde_json::Value {
    let o = run(&["status", job, "--json", "--coordinator", url]);
    serde_json::from_slice(&o.stdout).unwrap_or_default()
}

/// Submits `config` (with `--set` overrides) and returns the job id.
pub fn submit_config(url: &str, config: &Path, sets: &[String]) -> String {
    let mut args = vec![
        "submit".to_string(),
        config.display().to_string(),
        "--coordinator".into(),
        url.into(),
    ];
    for s in sets {
        args.push("--set".into());
        args.push(s.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let submitted = run(&args);
    assert!(submitted.status.success(), "{}", super::stderr(&submitted));
    let job = String::from_utf8(submitted.stdout)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        !job.is_empty() && !job.contains('\n'),
        "submit prints only the job id: {job:?}"
    );
    job
}
