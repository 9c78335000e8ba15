//! Crash consistency of checkpoints with real processes: a self-play job on a
//! coordinator + worker on loopback, its writer killed during a checkpoint — by SIGKILL of the
//! worker while a (slowed) checkpoint is being written, or by an injected store error or stall
//! on a put / part / complete (`MIRRORPLAY_FAULT_STORE`) — then a second worker resumes and the
//! job finishes. An injected store error is transient (docs/architecture.md#failure-policy): the
//! task is retried after the backoff, with no `resume`. After every trial: resume used the newest checkpoint that verified when the
//! writer died, which is the one being written (`new`) or the one before (`previous`), never a
//! torn one; every step directory left verifies; every step ran; the final parameters and
//! optimizer state are bit-identical to an uninterrupted run's.
//!
//! CI runs three fixed trials (`three_crash_trials`) and `random_crash_trials` (N from
//! `CRASH_TRIALS`, default 2, seed `CRASH_SEED`); `bench/checkpoint_crash.sh` runs the latter
//! with many more.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use sha2::{Digest, Sha256};

const STEPS: u64 = 24;
const EVERY: u64 = 4;
/// Per-checkpoint store calls of the tiny model: 5 puts (4 small files + the manifest), one
/// part and one complete for each of the two safetensors files.
const PUTS: u64 = 5;
const PARTS: u64 = 2;
const COMPLETES: u64 = 2;
/// Every checkpoint store call of a SIGKILL trial's worker waits this long (a slow store), so
/// that a checkpoint is being written for a few hundred milliseconds.
const SLOW_MS: u64 = 50;
/// The coordinator's backoff before retrying a failed task: long enough for an error trial to
/// snapshot the checkpoints and kill the victim before the retry starts.
const RETRY_BACKOFF_MS: u64 = 2_000;

fn config(out: &Path) -> String {
    format!(
        "[job]\nkind = \"selfplay\"\noutput = \"{}\"\nseed = 5\n[selfplay]\nalgorithm = \"ipo_md\"\nkl_coef = 0.05\npolicy = \"tiny\"\nreference = \"tiny\"\ntask = \"goodhart_digits\"\nbatch_prompts = 4\nsteps = {STEPS}\neval_every = 1000\neval_prompts = 4\ncheckpoint_every = {EVERY}\nkeep_last = 0\n",
        out.display()
    )
}

/// How a trial kills the checkpoint writer.
#[derive(Debug, Clone)]
enum Fault {
    /// SIGKILL `after_ms` after the step directory of `step` appears (still uncommitted).
    Kill { step: u64, after_ms: u64 },
    /// The `nth` call of `op` fails: the task fails with a transient error and is retried
    /// after the coordinator's backoff.
    Error { op: &'static str, nth: u64 },
    /// The `nth` call of `op` never returns; the worker is SIGKILLed `after_ms` later.
    Stall {
        op: &'static str,
        nth: u64,
        after_ms: u64,
    },
}

impl Fault {
    fn env(&self) -> String {
        match self {
            Fault::Kill { .. } => format!("op=any,mode=delay,ms={SLOW_MS}"),
            Fault::Error { op, nth } => format!("op={op},nth={nth},mode=error"),
            Fault::Stall { op, nth, .. } => format!("op={op},nth={nth},mode=stall"),
        }
    }
}

/// Which checkpoint the second worker resumed from, relative to the one being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resumed {
    Previous,
    New,
}

/// The step directories after the writer died: step → whether its manifest verifies.
fn snapshot(out: &Path) -> BTreeMap<u64, bool> {
    let mut steps = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(out.join("checkpoints")) else {
        return steps;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse().ok()) {
            steps.insert(step, verifies(&e.path()));
        }
    }
    steps
}

/// An independent check of docs/checkpoints.md's rule: the manifest exists and lists every
/// object with its exact size and SHA-256.
fn verifies(dir: &Path) -> bool {
    let Ok(text) = std::fs::read(dir.join("manifest.json")) else {
        return false;
    };
    let Ok(m) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return false;
    };
    let Some(objects) = m["objects"].as_array() else {
        return false;
    };
    !objects.is_empty()
        && objects.iter().all(|o| {
            let (Some(path), Some(size), Some(sha)) =
                (o["path"].as_str(), o["size"].as_u64(), o["sha256"].as_str())
            else {
                return false;
            };
            std::fs::read(dir.join(path))
                .is_ok_and(|b| b.len() as u64 == size && hex::encode(Sha256::digest(&b)) == sha)
        })
}

/// The step of the first `step-NNNNNN` in `text`.
fn step_in(text: &str) -> Option<u64> {
    let i = text.find("step-")?;
    text[i + 5..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// The first train step of attempts after the first, and every train step of the run.
fn train_steps(out: &Path) -> (Option<u64>, Vec<u64>) {
    let mut first_resumed = None;
    let mut all = vec![];
    for entry in std::fs::read_dir(out.join("metrics")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["split"] != "train" {
                continue;
            }
            let s = v["step"].as_u64().unwrap();
            all.push(s);
            if v["attempt"].as_u64().unwrap() > 1 {
                first_resumed = Some(first_resumed.map_or(s, |f: u64| f.min(s)));
            }
        }
    }
    all.sort_unstable();
    all.dedup();
    (first_resumed, all)
}

/// Polls `check` every `every` until it returns a value.
fn wait_for<T>(what: &str, every: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The uninterrupted run the trials are compared with.
fn straight_run(dir: &Path) -> PathBuf {
    let out = dir.join("straight");
    let cfg = dir.join("straight.toml");
    std::fs::write(&cfg, config(&out)).unwrap();
    let o = run(&["local", cfg.to_str().unwrap(), "--workers", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

/// One trial on the coordinator at `url`; panics (naming the trial) when a check fails.
fn trial(url: &str, dir: &Path, straight: &Path, n: usize, fault: &Fault) -> Resumed {
    let out = dir.join(format!("trial-{n}"));
    let cfg = dir.join(format!("trial-{n}.toml"));
    std::fs::write(&cfg, config(&out)).unwrap();
    let log_path = dir.join(format!("victim-{n}.log"));
    let mut victim = Killed(
        Command::new(worker_bin())
            .args(["--coordinator", url, "--name", &format!("victim-{n}")])
            .args(["--grace-secs", "0"])
            .env("MIRRORPLAY_FAULT_STORE", fault.env())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let job = submit_config(url, &cfg, &[]);
    let ckpts = out.join("checkpoints");
    let injected = || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let line = log.lines().find(|l| l.contains("fault injection"))?;
        step_in(line)
    };
    let (fast, slow) = (Duration::from_millis(5), Duration::from_millis(100));
    // The step being written when the writer died (for a SIGKILL: the newest step directory,
    // committed by then or not).
    let written = match fault {
        Fault::Kill { step, after_ms } => {
            let dir = ckpts.join(format!("step-{step:06}"));
            wait_for("the checkpoint to start", fast, || {
                (dir.exists() && !dir.join("manifest.json").exists()).then_some(())
            });
            std::thread::sleep(Duration::from_millis(*after_ms));
            victim.signal(libc::SIGKILL);
            let _ = victim.0.wait();
            snapshot(&out).keys().copied().max().unwrap_or(*step)
        }
        Fault::Stall { after_ms, .. } => {
            let step = wait_for("the stall", fast, injected);
            std::thread::sleep(Duration::from_millis(*after_ms));
            victim.signal(libc::SIGKILL);
            step
        }
        Fault::Error { .. } => {
            // The failure is transient: a retry is planned (after RETRY_BACKOFF_MS), not a
            // failed job. The victim dies before the retry can start, so the rescuer runs it.
            let failure = wait_for("the task to fail", slow, || {
                let failures = status_json(url, &job)["failures"].clone();
                failures.as_array()?.first().cloned()
            });
            victim.signal(libc::SIGKILL);
            assert_eq!(failure["retry"], 1, "trial {n}: {failure}");
            assert_ne!(status_json(url, &job)["state"], "failed", "trial {n}");
            injected().expect("the victim logs the injected error")
        }
    };
    let _ = victim.0.wait();
    let at_death = snapshot(&out);
    let newest_valid = at_death
        .iter()
        .filter(|(_, &ok)| ok)
        .map(|(&s, _)| s)
        .max()
        .unwrap_or(0);

    let _rescuer = spawn_worker(url, &format!("rescuer-{n}"), None);
    let watched = run(&["watch", &job, "--coordinator", url]);
    assert!(
        watched.status.success(),
        "trial {n} ({fault:?}): {}",
        stderr(&watched)
    );

    // (a) Resume used the newest checkpoint that verified when the writer died: the one being
    // written or the one before it; never a torn one.
    let (first_resumed, all) = train_steps(&out);
    let resumed_from = first_resumed.expect("the resumed attempt logged train steps") - 1;
    let ctx = format!("trial {n} ({fault:?}), written {written}, at death {at_death:?}");
    assert_eq!(resumed_from, newest_valid, "{ctx}");
    assert!(
        resumed_from == 0 || at_death.get(&resumed_from) == Some(&true),
        "{ctx}: resumed from a torn checkpoint"
    );
    let resumed = if resumed_from == written {
        Resumed::New
    } else {
        assert_eq!(resumed_from + EVERY, written, "{ctx}");
        Resumed::Previous
    };
    // Every step directory left verifies, and every checkpoint step is there.
    let left = snapshot(&out);
    assert!(left.values().all(|&ok| ok), "{ctx}: left {left:?}");
    let expected: Vec<u64> = (1..=STEPS / EVERY).map(|k| k * EVERY).collect();
    assert_eq!(left.keys().copied().collect::<Vec<_>>(), expected, "{ctx}");
    // (b) Every step ran.
    assert_eq!(all, (1..=STEPS).collect::<Vec<_>>(), "{ctx}");
    // (c) Bit-identical to the uninterrupted run.
    for file in [
        "model/model.safetensors".to_string(),
        format!("checkpoints/step-{STEPS:06}/optimizer.safetensors"),
    ] {
        assert!(
            bytes(&straight.join(&file)) == bytes(&out.join(&file)),
            "{ctx}: {file} differs from the uninterrupted run's"
        );
    }
    resumed
}

/// Runs `faults` as trials on one coordinator; returns (previous, new).
fn trials(faults: &[Fault]) -> (usize, usize) {
    let tmp = tempfile::tempdir().unwrap();
    let straight = straight_run(tmp.path());
    let url = format!("http://127.0.0.1:{}", free_port());
    let backoff = RETRY_BACKOFF_MS.to_string();
    let _coordinator = spawn_coordinator_with(
        tmp.path(),
        &url,
        &["--retry-backoff-ms", &backoff],
        &[],
        None,
    );
    let (mut previous, mut new) = (0, 0);
    for (n, fault) in faults.iter().enumerate() {
        let t0 = Instant::now();
        let r = trial(&url, tmp.path(), &straight, n, fault);
        eprintln!(
            "trial {n}: {fault:?}: resumed from {r:?} ({:.1} s)",
            t0.elapsed().as_secs_f64()
        );
        match r {
            Resumed::Previous => previous += 1,
            Resumed::New => new += 1,
        }
    }
    eprintln!(
        "trials: {}, resumed from previous: {previous}, from new: {new}, torn used: 0, finished: {}",
        faults.len(),
        faults.len()
    );
    (previous, new)
}

#[test]
fn three_crash_trials() {
    trials(&[
        Fault::Kill {
            step: 2 * EVERY,
            after_ms: 60,
        },
        // The first part of the second checkpoint.
        Fault::Error { op: "part", nth: 3 },
        // The second complete of the third checkpoint.
        Fault::Stall {
            op: "complete",
            nth: 2 * COMPLETES + 2,
            after_ms: 300,
        },
    ]);
}

/// A small deterministic generator (xorshift64*), so that a seed reproduces a bench run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// `CRASH_TRIALS` random trials (default 2 in CI; `bench/checkpoint_crash.sh` runs 50), half
/// SIGKILLs during a write at a random delay, half injected errors or stalls on a random call.
#[test]
fn random_crash_trials() {
    let n: usize = std::env::var("CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    // Checkpoints 2..=5 of 6 can be hit (the first has no previous one to fall back to but is
    // also fine; the last overlaps the end of the run).
    let ckpts = STEPS / EVERY - 1;
    let faults: Vec<Fault> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                return Fault::Kill {
                    step: (2 + rng.below(ckpts - 1)) * EVERY,
                    after_ms: rng.below(8 * SLOW_MS),
                };
            }
            let (op, per) = match rng.below(3) {
                0 => ("put", PUTS),
                1 => ("part", PARTS),
                _ => ("complete", COMPLETES),
            };
            let nth = per + 1 + rng.below(per * (ckpts - 1));
            if rng.below(2) == 0 {
                Fault::Error { op, nth }
            } else {
                Fault::Stall {
                    op,
                    nth,
                    after_ms: rng.below(1000),
                }
            }
        })
        .collect();
    let (previous, new) = trials(&faults);
    assert_eq!(previous + new, n);
}
