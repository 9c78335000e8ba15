//! The Prometheus endpoint (`serve --metrics-listen`) with real processes: a coordinator (with a
//! token) and two workers run a multi-round merge, then a self-play job; the endpoint is
//! scraped while they run and after, parsed by a strict OpenMetrics parser
//! (`common/openmetrics.rs`), and its values are held against what `status` says of the job at
//! that moment: jobs by state, tasks queued and running, live workers, RPC counts, the bytes
//! the merge read and wrote (from its inputs' and outputs' files), the training step and rate.
//! The endpoint answers without the token and shows neither it nor any path of the spec.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::openmetrics::{parse, Scrape};
use common::*;

const TOKEN: &str = "tok-metrics-5d41402abc4b2a76b9719d911017c592";
const TASK_DELAY_MS: u64 = 700;

fn scrape(addr: &str) -> (Scrape, String) {
    let (status, content_type, body) = http::get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let parsed = parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    (parsed, body)
}

fn status(url: &str, job: &str) -> serde_json::Value {
    let o = run_env(
        &["status", job, "--json", "--coordinator", url],
        &[("MIRRORPLAY_TOKEN", TOKEN)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn submit(url: &str, config: &Path) -> String {
    let o = run_env(
        &["submit", config.to_str().unwrap(), "--coordinator", url],
        &[("MIRRORPLAY_TOKEN", TOKEN)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn jobs_by_state(s: &Scrape) -> Vec<(String, f64)> {
    ["queued", "running", "succeeded", "failed", "cancelled"]
        .iter()
        .map(|st| (st.to_string(), s.value("mirrorplay_jobs", &[("state", st)])))
        .collect()
}

fn expect_jobs(s: &Scrape, running: f64, succeeded: f64) {
    let want: Vec<(String, f64)> = [
        ("queued", 0.0),
        ("running", running),
        ("succeeded", succeeded),
        ("failed", 0.0),
        ("cancelled", 0.0),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), *v))
    .collect();
    assert_eq!(jobs_by_state(s), want);
}

/// The bytes of tensor data in a safetensors file (the file less its header).
fn tensor_bytes(file: &Path) -> u64 {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    bytes.len() as u64 - 8 - n
}

fn merge_config(dir: &Path) -> std::path::PathBuf {
    let ex = repo_root().join("examples");
    let config = dir.join("ties.toml");
    std::fs::write(
        &config,
        format!(
            "[job]\nkind = \"merge\"\noutput = \"{out}\"\n[merge]\nmethod = \"ties\"\nscope = \"global\"\ndensity = 0.3\nbase = \"{ex}/base\"\nmodels = [\"{ex}/task-a\", \"{ex}/task-b\", \"{ex}/task-c\"]\nmax_shard_size = \"24KB\"\n",
            out = dir.join("merged").display(),
            ex = ex.display()
        ),
    )
    .unwrap();
    config
}

fn train_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("selfplay.toml");
    std::fs::write(
        &config,
        format!(
            "[job]\nkind = \"selfplay\"\noutput = \"{}\"\nseed = 5\n[selfplay]\nalgorithm = \"ipo_md\"\nkl_coef = 0.05\npolicy = \"tiny\"\nreference = \"tiny\"\ntask = \"goodhart_digits\"\nbatch_prompts = 4\nsteps = 400\neval_every = 1000\neval_prompts = 4\n",
            dir.join("trained").display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn the_metrics_endpoint_matches_a_running_merge_and_training_job() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let env = [("MIRRORPLAY_TOKEN", TOKEN)];
    let _coordinator = spawn_coordinator_with(
        tmp.path(),
        &url,
        &["--metrics-listen", &metrics],
        &env,
        None,
    );

    // Open: no token needed; only /metrics is served.
    let (s, _) = scrape(&metrics);
    expect_jobs(&s, 0.0, 0.0);
    assert_eq!(s.value("mirrorplay_workers_live", &[]), 0.0);
    assert_eq!(http::get(&metrics, "/other").0, 404);

    let _w1 = spawn_worker_env(&url, "w1", Some(TASK_DELAY_MS), &env);
    let _w2 = spawn_worker_env(&url, "w2", Some(TASK_DELAY_MS), &env);
    wait_until("two workers", Duration::from_secs(30), || {
        scrape(&metrics).0.value("mirrorplay_workers_live", &[]) == 2.0
    });

    // During the merge: a scrape between two equal `status` answers matches them.
    let job = submit(&url, &merge_config(tmp.path()));
    let mut checked = 0;
    let start = Instant::now();
    while checked < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no stable scrape"
        );
        let before = status(&url, &job);
        let (s, _) = scrape(&metrics);
        let after = status(&url, &job);
        let p = &before["progress"];
        if before["state"] != "running" || before["progress"] != after["progress"] {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let (total, done, running) = (
            p["tasks_total"].as_f64().unwrap(),
            p["tasks_done"].as_f64().unwrap(),
            p["tasks_running"].as_f64().unwrap(),
        );
        expect_jobs(&s, 1.0, 0.0);
        assert_eq!(
            s.value("mirrorplay_tasks", &[("state", "running")]),
            running
        );
        assert_eq!(
            s.value("mirrorplay_tasks", &[("state", "queued")]),
            total - done - running
        );
        assert_eq!(s.value("mirrorplay_workers_live", &[]), 2.0);
        checked += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_until("the merge", Duration::from_secs(120), || {
        status(&url, &job)["state"] == "succeeded"
    });
    let (s, merge_text) = scrape(&metrics);
    expect_jobs(&s, 0.0, 1.0);
    assert_eq!(s.value("mirrorplay_tasks", &[("state", "running")]), 0.0);
    assert_eq!(s.value("mirrorplay_tasks", &[("state", "queued")]), 0.0);
    let count = |m: &str| s.value("mirrorplay_rpc_duration_seconds_count", &[("method", m)]);
    assert_eq!(count("Register"), 2.0);
    assert_eq!(count("SubmitJob"), 1.0);
    let tasks = status(&url, &job)["progress"]["tasks_total"]
        .as_f64()
        .unwrap();
    assert!(
        count("ReportTask") >= tasks,
        "{} reports for {tasks} tasks",
        count("ReportTask")
    );
    // Written: the output shards. Read: every round (tasks / shards of them) reads the base's
    // and the three models' tensors once.
    let out = tmp.path().join("merged").join("model");
    let shards: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    assert!(shards.len() > 1, "{shards:?}");
    let written: u64 = shards.iter().map(|p| p.metadata().unwrap().len()).sum();
    assert_eq!(
        s.value("mirrorplay_merge_written_bytes_total", &[]),
        written as f64
    );
    let ex = repo_root().join("examples");
    let inputs: u64 = ["base", "task-a", "task-b", "task-c"]
        .iter()
        .map(|m| tensor_bytes(&ex.join(m).join("model.safetensors")))
        .sum();
    let rounds = tasks / shards.len() as f64;
    assert_eq!(
        s.value("mirrorplay_merge_read_bytes_total", &[]),
        rounds * inputs as f64
    );
    assert_eq!(
        s.value(
            "mirrorplay_tasks_retried_total",
            &[("cause", "lost_worker")]
        ),
        0.0
    );

    // During training: the job's step and a positive rate; they leave with the job.
    let train = submit(&url, &train_config(tmp.path()));
    let mut steps = vec![];
    wait_until("two training scrapes", Duration::from_secs(120), || {
        let (s, _) = scrape(&metrics);
        let step = s.get("mirrorplay_training_step", &[("job", &train)]);
        let rate = s.get("mirrorplay_training_steps_per_second", &[("job", &train)]);
        if let (Some(step), Some(rate)) = (step, rate) {
            expect_jobs(&s, 1.0, 1.0);
            assert!(rate > 0.0 && rate.is_finite(), "{rate}");
            assert!((1.0..=400.0).contains(&step), "{step}");
            steps.push(step);
        }
        steps.len() >= 2 && steps.last() > steps.first()
    });
    let o = run_env(
        &["cancel", &train, "--coordinator", &url],
        &[("MIRRORPLAY_TOKEN", TOKEN)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (s, train_text) = scrape(&metrics);
    assert_eq!(s.value("mirrorplay_jobs", &[("state", "cancelled")]), 1.0);
    assert!(s.series("mirrorplay_training_step").is_empty());

    // Neither the token nor anything of the specs shows.
    for text in [&merge_text, &train_text] {
        for secret in [
            TOKEN,
            "examples",
            "merged",
            "trained",
            tmp.path().to_str().unwrap(),
        ] {
            assert!(!text.contains(secret), "`{secret}` in the metrics");
        }
    }
}

#[test]
fn the_parser_accepts_the_format_and_refuses_deviations() {
    let good = "# HELP a_total A.\n# TYPE a counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n# TYPE h histogram\nh_sum 1.5\nh_count 2\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\n# EOF\n";
    let s = parse(good).unwrap();
    assert_eq!(s.value("a_total", &[("x", "1"), ("y", "q\"")]), 3.0);
    for bad in [
        "a 1\n# EOF\n",
        "# TYPE a counter\na_total 1\n",
        "# TYPE a counter\na_total{x=1} 1\n# EOF\n",
        "# TYPE a gauge\na 1\na 2\n# EOF\n",
        "# TYPE a gauge\na one\n# EOF\n",
        "# TYPE h histogram\nh_count 2\nh_bucket{le=\"+Inf\"} 1\n# EOF\n",
        "# TYPE a gauge\n# EOF\na 1\n",
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad}");
    }
}
