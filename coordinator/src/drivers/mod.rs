//! One driver per job kind: `plan` turns a spec into the first tasks, `on_result` takes each
//! task's result and answers with more tasks, "wait" or "done". Multi-round jobs (merge
//! statistics, pipelines) are drivers that emit their next round from `on_result`. Drivers do
//! I/O through the worker library's `io` module and know nothing about workers or gRPC.

pub mod bon;
pub mod inputs;
pub mod merge;
pub mod pipeline;
pub mod reward_train;
pub mod score;
pub mod train;

use futures::future::BoxFuture;
use mirrorplay_proto::v1::{job_spec, task, train_task, JobSpec, TaskResult};
use mirrorplay_worker::io::IoError;

/// A task a driver wants run; `key` is unique within the job.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub key: String,
    pub work: task::Work,
    /// 1 = an independent task; W > 1 = a gang of W ranks; 0 = a gang of every worker
    /// registered when the task is queued.
    pub group_size: u32,
    /// A gang re-formed after a loss starts with at least this many ranks (0 = group_size).
    pub min_group_size: u32,
}

/// What a driver wants after a result.
#[derive(Debug)]
pub enum Step {
    Run(Vec<NewTask>),
    Wait,
    Done,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{0}")]
    Invalid(String),
}

/// Where a driver reports human-readable progress lines (job logs).
pub trait Log: Send + Sync {
    fn info(&self, message: String);
    fn warn(&self, message: String);
}

pub enum Driver {
    Merge(merge::MergeDriver),
    Pipeline(pipeline::PipelineDriver),
    /// Boxed: it holds a whole SFT or self-play spec, larger than the other drivers.
    Train(Box<train::TrainDriver>),
    RewardTrain(reward_train::RewardTrainDriver),
    Score(score::ScoreDriver),
    Bon(bon::BonDriver),
}

impl Driver {
    pub fn new(spec: &JobSpec) -> Result<Driver, DriverError> {
        match &spec.kind {
            Some(job_spec::Kind::Merge(m)) => Ok(Driver::Merge(merge::MergeDriver::new(
                m.clone(),
                spec.output.clone(),
            ))),
            Some(job_spec::Kind::Pipeline(p)) => {
                Ok(Driver::Pipeline(pipeline::PipelineDriver::new(p.clone())))
            }
            Some(job_spec::Kind::Sft(s)) => Ok(Driver::Train(Box::new(train::TrainDriver::new(
                train_task::Spec::Sft(s.clone()),
                spec.output.clone(),
                spec.seed,
            )))),
            Some(job_spec::Kind::Selfplay(s)) => {
                Ok(Driver::Train(Box::new(train::TrainDriver::new(
                    train_task::Spec::Selfplay(s.clone()),
                    spec.output.clone(),
                    spec.seed,
                ))))
            }
            Some(job_spec::Kind::RewardTrain(r)) => Ok(Driver::RewardTrain(
                reward_train::RewardTrainDriver::new(r.clone(), spec.output.clone(), spec.seed),
            )),
            Some(job_spec::Kind::Score(s)) => Ok(Driver::Score(score::ScoreDriver::new(
                s.clone(),
                spec.output.clone(),
                spec.seed,
            ))),
            Some(job_spec::Kind::Bon(b)) => Ok(Driver::Bon(bon::BonDriver::new(
                b.clone(),
                spec.output.clone(),
                spec.seed,
            ))),
            None => Err(DriverError::Invalid("the job spec names no kind".into())),
        }
    }

    pub fn plan<'a>(
        &'a mut self,
        log: &'a dyn Log,
    ) -> BoxFuture<'a, Result<Vec<NewTask>, DriverError>> {
        match self {
            Driver::Merge(d) => Box::pin(d.plan(log)),
            Driver::Pipeline(d) => Box::pin(d.plan(log)),
            Driver::Train(d) => Box::pin(d.plan(log)),
            Driver::RewardTrain(d) => Box::pin(d.plan(log)),
            Driver::Score(d) => Box::pin(d.plan(log)),
            Driver::Bon(d) => Box::pin(d.plan(log)),
        }
    }

    pub fn on_result<'a>(
        &'a mut self,
        key: &'a str,
        result: TaskResult,
        log: &'a dyn Log,
    ) -> BoxFuture<'a, Result<Step, DriverError>> {
        match self {
            Driver::Merge(d) => Box::pin(d.on_result(key, result, log)),
            Driver::Pipeline(d) => Box::pin(d.on_result(key, result, log)),
            Driver::Train(d) => Box::pin(d.on_result(key, result, log)),
            Driver::RewardTrain(d) => Box::pin(d.on_result(key, result, log)),
            Driver::Score(d) => Box::pin(d.on_result(key, result, log)),
            Driver::Bon(d) => Box::pin(d.on_result(key, result, log)),
        }
    }

    /// Input files read, as (url, size, etag), for provenance.
    pub fn inputs(&self) -> Vec<(String, u64, Option<String>)> {
        match self {
            Driver::Merge(d) => d.inputs(),
            Driver::Pipeline(d) => d.inputs(),
            Driver::Train(d) => d.inputs(),
            Driver::RewardTrain(d) => d.inputs(),
            Driver::Score(d) => d.inputs(),
            Driver::Bon(d) => d.inputs(),
        }
    }

    /// The current pipeline stage, if any.
    pub fn stage(&self) -> Option<String> {
        match self {
            Driver::Pipeline(d) => d.stage(),
            _ => None,
        }
    }
}
