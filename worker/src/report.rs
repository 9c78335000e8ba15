//! How a running task reports back: progress, metric lines and committed checkpoints. The
//! runtime supplies these callbacks and forwards what they receive to the coordinator; `jobs`
//! and `train` only call them. One home for the types, so that dependencies run one way
//! (runtime → jobs → train → report).

/// Reports progress in [0, 1].
pub type Progress<'a> = &'a (dyn Fn(f64) + Send + Sync);

/// Takes metric lines (JSON objects; `train::metrics`) to stream to the coordinator.
pub type MetricsSink<'a> = &'a (dyn Fn(String) + Send + Sync);

/// Takes the step of each committed checkpoint (the runtime reports it with CommitCheckpoint).
pub type CommitSink<'a> = &'a (dyn Fn(u64) + Send + Sync);
