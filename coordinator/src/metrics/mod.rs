//! The coordinator's Prometheus metrics (docs/architecture.md#metrics): counters and histograms
//! that grow as things happen (RPC latencies, task retries, merge bytes, training rates), and
//! gauges read from the control plane at each scrape (jobs by state, tasks, workers). Served
//! in the OpenMetrics text format by `http` on `serve --metrics-listen`. Nothing here carries
//! a token, a spec or a path: labels are RPC names, states, causes and job ids.

pub mod http;
mod training;

use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use training::Rates;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

/// 0.5 ms to about 2 min in steps of 4 (PollTask and JoinGroup hold calls up to minutes).
fn rpc_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 4.0, 10))
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// What the control plane is at the moment of a scrape.
#[derive(Debug, Default)]
pub struct View {
    /// Jobs per state name (every state, zeros included).
    pub jobs: Vec<(&'static str, u64)>,
    pub tasks_queued: u64,
    pub tasks_running: u64,
    pub workers_live: u64,
    /// Jobs that run now: only they show a training rate.
    pub running_jobs: Vec<String>,
}

pub struct Metrics {
    rpc: Family<Method, Histogram, fn() -> Histogram>,
    retried: Family<CauseLabel, Counter>,
    failed: Counter,
    merge_read: Counter,
    merge_written: Counter,
    training: Mutex<Rates>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            rpc: Family::new_with_constructor(rpc_histogram as fn() -> Histogram),
            retried: Family::default(),
            failed: Counter::default(),
            merge_read: Counter::default(),
            merge_written: Counter::default(),
            training: Mutex::new(Rates::default()),
        }
    }
}

/// Observes an RPC's latency when dropped (so errors count too).
pub struct RpcTimer<'a> {
    histogram: &'a Family<Method, Histogram, fn() -> Histogram>,
    method: &'static str,
    start: Instant,
}

impl Drop for RpcTimer<'_> {
    fn drop(&mut self) {
        self.histogram
            .get_or_create(&Method {
                method: self.method.to_string(),
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Times one call of `method` (the RPC's name in the proto) until the timer is dropped.
    pub fn rpc(&self, method: &'static str) -> RpcTimer<'_> {
        RpcTimer {
            histogram: &self.rpc,
            method,
            start: Instant::now(),
        }
    }

    /// Shows the retry counter of `cause` (at 0) before any retry of it.
    pub fn declare_retry_cause(&self, cause: &str) {
        let _ = self.retried.get_or_create(&CauseLabel {
            cause: cause.to_string(),
        });
    }

    /// A task was queued again; `cause` is `scheduler::Cause::label`.
    pub fn task_retried(&self, cause: &str) {
        self.retried
            .get_or_create(&CauseLabel {
                cause: cause.to_string(),
            })
            .inc();
    }

    /// A task failed for good (its job failed).
    pub fn task_failed(&self) {
        self.failed.inc();
    }

    /// A merge task read `read` bytes of its inputs and wrote `written` bytes of output.
    pub fn merge_bytes(&self, read: u64, written: u64) {
        self.merge_read.inc_by(read);
        self.merge_written.inc_by(written);
    }

    /// A metric line of a job (docs/architecture.md#metric-lines); train lines feed its rate.
    pub fn metric_line(&self, job: &str, line: &str) {
        self.training
            .lock()
            .expect("training rates")
            .add_line(job, line);
    }

    /// The OpenMetrics text of these metrics and of `view`.
    pub fn encode(&self, view: &View) -> String {
        let mut registry = Registry::with_prefix("mirrorplay");
        let jobs = Family::<State, Gauge>::default();
        for (state, n) in &view.jobs {
            jobs.get_or_create(&State {
                state: state.to_string(),
            })
            .set(*n as i64);
        }
        registry.register("jobs", "Jobs by state", jobs);
        let tasks = Family::<State, Gauge>::default();
        for (state, n) in [
            ("queued", view.tasks_queued),
            ("running", view.tasks_running),
        ] {
            tasks
                .get_or_create(&State {
                    state: state.into(),
                })
                .set(n as i64);
        }
        registry.register(
            "tasks",
            "Tasks queued (waiting for a worker or a retry's backoff) and running",
            tasks,
        );
        let workers = Gauge::<i64>::default();
        workers.set(view.workers_live as i64);
        registry.register(
            "workers_live",
            "Workers registered with a live lease",
            workers,
        );
        registry.register(
            "tasks_retried",
            "Tasks queued again, by cause (handed_back is not a failure)",
            self.retried.clone(),
        );
        registry.register(
            "tasks_failed",
            "Tasks that failed for good (their job failed)",
            self.failed.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "Latency of the coordinator's RPCs by method (PollTask and JoinGroup wait by design)",
            self.rpc.clone(),
        );
        registry.register(
            "merge_read_bytes",
            "Input bytes read by the merge tasks that succeeded",
            self.merge_read.clone(),
        );
        registry.register(
            "merge_written_bytes",
            "Output bytes written by the merge tasks that succeeded",
            self.merge_written.clone(),
        );
        let steps_per_s = Family::<JobLabel, FloatGauge>::default();
        let step = Family::<JobLabel, Gauge>::default();
        {
            let mut rates = self.training.lock().expect("training rates");
            rates.retain(&view.running_jobs);
            for (job, rate) in rates.iter() {
                let label = JobLabel { job: job.clone() };
                step.get_or_create(&label).set(rate.last_step() as i64);
                if let Some(r) = rate.steps_per_second() {
                    steps_per_s.get_or_create(&label).set(r);
                }
            }
        }
        registry.register(
            "training_steps_per_second",
            "Training steps per second of each running training job (over its latest train metric lines)",
            steps_per_s,
        );
        registry.register(
            "training_step",
            "The latest training step of each running training job",
            step,
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String");
        text
    }
}
