//! Coordinator kill test (docs/architecture.md#restart-recovery): a 2-worker TIES merge (global
//! scope: statistics rounds, then the write round, over several shards) whose coordinator is
//! SIGKILLed at a random point and restarted on the same state. The restarted coordinator takes
//! the lock over once its lease has run out, resumes the job, the workers reconnect and
//! re-register, and the merged files are byte-identical to an uninterrupted run's.
//! CI runs `KILL_TRIALS` trials (default 1); `bench/coordinator_kill.sh` runs 20. And a
//! self-play job whose coordinator is SIGKILLed after its first checkpoint: the restarted
//! coordinator re-issues it, the worker continues from its newest verified checkpoint, and the
//! final model and optimizer state equal an uninterrupted run's bit for bit.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

/// Each task sleeps this long before working, so that the job spans a few seconds.
const TASK_DELAY_MS: u64 = 150;
const LOCK_LEASE_MS: &str = "1000";

fn merge_config(dir: &Path) -> PathBuf {
    let ex = repo_root().join("examples");
    let config = dir.join("ties.toml");
    std::fs::write(
        &config,
        format!(
            "[job]\nkind = \"merge\"\noutput = \"{out}\"\nseed = 5\n[merge]\nmethod = \"ties\"\nscope = \"global\"\ndensity = 0.3\nbase = \"{ex}/base\"\nmodels = [\"{ex}/task-a\", \"{ex}/task-b\", \"{ex}/task-c\"]\nmax_shard_size = \"24KB\"\n",
            out = dir.join("unused").display(),
            ex = ex.display()
        ),
    )
    .unwrap();
    config
}

/// xorshift64*, so that a seed reproduces a bench run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Starts a coordinator on `dir`'s state, retrying while the state is still locked by the
/// killed one (its lease has not run out yet: exit 2).
fn restart_coordinator(dir: &Path, url: &str, log: &Path) -> Killed {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the coordinator did not restart"
        );
        let mut c = start_coordinator(
            dir,
            url,
            &["--lock-lease-ms", LOCK_LEASE_MS],
            &[],
            Some(log),
        );
        let up = Instant::now();
        loop {
            if let Some(status) = c.0.try_wait().unwrap() {
                assert_eq!(status.code(), Some(2), "see {}", log.display());
                break;
            }
            if run(&["status", "--coordinator", url]).status.success() {
                return c;
            }
            assert!(
                up.elapsed() < Duration::from_secs(20),
                "see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One trial: returns a line describing it, or why it failed.
fn trial(i: usize, config: &Path, reference: &Path, kill_after_ms: u64) -> Result<String, String> {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let log = tmp.path().join("coordinator.log");
    let mut coordinator = spawn_coordinator_with(
        tmp.path(),
        &url,
        &["--lock-lease-ms", LOCK_LEASE_MS],
        &[],
        Some(&log),
    );
    let _workers = [
        spawn_worker(&url, "w0", Some(TASK_DELAY_MS)),
        spawn_worker(&url, "w1", Some(TASK_DELAY_MS)),
    ];
    let out = tmp.path().join("out");
    let job = submit_config(&url, config, &[format!("job.output={}", out.display())]);
    std::thread::sleep(Duration::from_millis(kill_after_ms));
    let before = status_json(&url, &job);
    coordinator.0.kill().unwrap();
    coordinator.0.wait().unwrap();
    let at_kill = format!(
        "{} {}/{} tasks",
        before["state"].as_str().unwrap_or("?"),
        before["progress"]["tasks_done"],
        before["progress"]["tasks_total"]
    );
    let _restarted = restart_coordinator(tmp.path(), &url, &log);
    let start = Instant::now();
    let end = loop {
        let v = status_json(&url, &job);
        match v["state"].as_str() {
            Some("succeeded") => break v,
            Some("failed" | "cancelled") => return Err(format!("trial {i}: job ended {v}")),
            _ if start.elapsed() > Duration::from_secs(120) => {
                return Err(format!("trial {i}: job not done after 120 s: {v}"))
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    if files_of(&out.join("model")) != files_of(&reference.join("model")) {
        return Err(format!(
            "trial {i}: merged files differ from the uninterrupted run (killed at {at_kill})"
        ));
    }
    if before["state"] != "succeeded" {
        let watched = run(&["watch", &job, "--json", "--coordinator", &url]);
        let events = String::from_utf8_lossy(&watched.stdout);
        if !events.contains("the coordinator restarted while this job was") {
            return Err(format!(
                "trial {i}: no restart line in the job log: {events}"
            ));
        }
    }
    Ok(format!(
        "trial {i}: killed after {kill_after_ms} ms ({at_kill}); restarted, {} tasks, byte-identical",
        end["progress"]["tasks_total"]
    ))
}

#[test]
fn a_merge_survives_sigkills_of_its_coordinator() {
    let n: usize = std::env::var("KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let seed: u64 = std::env::var("KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let tmp = tempfile::tempdir().unwrap();
    let config = merge_config(tmp.path());
    let reference = tmp.path().join("reference");
    let o = run(&[
        "local",
        config.to_str().unwrap(),
        "--workers",
        "2",
        "--set",
        &format!("job.output={}", reference.display()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut failures = vec![];
    for i in 0..n {
        // Between just after the submit and about the end of an undisturbed run.
        let kill_after_ms = 100 + rng.below(1500);
        match trial(i, &config, &reference, kill_after_ms) {
            Ok(line) => println!("{line}"),
            Err(why) => {
                println!("{why}");
                failures.push(why);
            }
        }
    }
    println!("trials: {}/{n} passed (seed {seed})", n - failures.len());
    assert!(failures.is_empty(), "{failures:#?}");
}

fn selfplay_config(out: &Path) -> String {
    format!(
        "[job]\nkind = \"selfplay\"\noutput = \"{}\"\nseed = 2\n[selfplay]\nalgorithm = \"ipo_md\"\nkl_coef = 0.05\npolicy = \"tiny\"\nreference = \"tiny\"\ntask = \"goodhart_digits\"\nbatch_prompts = 6\nsteps = 40\neval_every = 10\neval_prompts = 6\ncheckpoint_every = 10\nkeep_last = 0\n",
        out.display()
    )
}

#[test]
fn a_training_job_survives_a_sigkill_of_its_coordinator_from_its_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    let cfg = tmp.path().join("straight.toml");
    std::fs::write(&cfg, selfplay_config(&straight)).unwrap();
    let o = run(&["local", cfg.to_str().unwrap(), "--workers", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let url = format!("http://127.0.0.1:{}", free_port());
    let log = tmp.path().join("coordinator.log");
    let mut coordinator = spawn_coordinator_with(
        tmp.path(),
        &url,
        &["--lock-lease-ms", LOCK_LEASE_MS],
        &[],
        Some(&log),
    );
    let _worker = spawn_worker(&url, "trainer", None);
    let resumed = tmp.path().join("resumed");
    let cfg = tmp.path().join("resumed.toml");
    std::fs::write(&cfg, selfplay_config(&resumed)).unwrap();
    let job = submit_config(&url, &cfg, &[]);
    wait_until("a committed checkpoint", Duration::from_secs(120), || {
        status_json(&url, &job)["progress"]["checkpoint_step"]
            .as_u64()
            .unwrap_or(0)
            >= 10
    });
    coordinator.0.kill().unwrap();
    coordinator.0.wait().unwrap();
    let _restarted = restart_coordinator(tmp.path(), &url, &log);
    let watched = run(&["watch", &job, "--coordinator", &url]);
    let events = stderr(&watched);
    assert!(watched.status.success(), "{events}");
    assert!(
        events.contains("the coordinator restarted while this job was running")
            && events.contains("resumes from its newest verified checkpoint (last committed: step"),
        "{events}"
    );
    for file in [
        "model/model.safetensors",
        "checkpoints/step-000040/optimizer.safetensors",
    ] {
        assert!(
            std::fs::read(straight.join(file)).unwrap()
                == std::fs::read(resumed.join(file)).unwrap(),
            "{file} differs between the straight and the restarted run"
        );
    }
}
