//! Pipelines run their stages in order; each stage is the driver of its own kind, writing under
//! `OUTPUT/<stage>/`. `stage:<name>` references were resolved to URLs by the config layer.
//! Task keys are prefixed with the stage name so results find their stage.

use mirrorplay_proto::v1::{PipelineSpec, TaskResult};

use super::{Driver, DriverError, Log, NewTask, Step};

pub struct PipelineDriver {
    spec: PipelineSpec,
    current: usize,
    inner: Option<Box<Driver>>,
    inputs: Vec<(String, u64, Option<String>)>,
}

impl PipelineDriver {
    pub fn new(spec: PipelineSpec) -> Self {
        PipelineDriver {
            spec,
            current: 0,
            inner: None,
            inputs: vec![],
        }
    }

    pub fn stage(&self) -> Option<String> {
        self.spec.stages.get(self.current).map(|s| s.name.clone())
    }

    pub fn inputs(&self) -> Vec<(String, u64, Option<String>)> {
        let mut all = self.inputs.clone();
        if let Some(d) = &self.inner {
            all.extend(d.inputs());
        }
        all
    }

    /// Starts stages from `self.current` until one has tasks to run.
    async fn start_stage(&mut self, log: &dyn Log) -> Result<Step, DriverError> {
        while let Some(stage) = self.spec.stages.get(self.current) {
            let job = stage.job.as_ref().ok_or_else(|| {
                DriverError::Invalid(format!("stage `{}` has no job", stage.name))
            })?;
            log.info(format!(
                "stage {}/{} `{}` started",
                self.current + 1,
                self.spec.stages.len(),
                stage.name
            ));
            let mut driver = Box::new(Driver::new(job)?);
            let tasks = driver.plan(log).await.map_err(|e| prefix(&stage.name, e))?;
            let name = stage.name.clone();
            self.inner = Some(driver);
            if !tasks.is_empty() {
                return Ok(Step::Run(
                    tasks
                        .into_iter()
                        .map(|t| NewTask {
                            key: format!("{name}/{}", t.key),
                            ..t
                        })
                        .collect(),
                ));
            }
            self.finish_stage(log);
        }
        Ok(Step::Done)
    }

    fn finish_stage(&mut self, log: &dyn Log) {
        if let Some(d) = self.inner.take() {
            self.inputs.extend(d.inputs());
        }
        if let Some(stage) = self.spec.stages.get(self.current) {
            log.info(format!("stage `{}` succeeded", stage.name));
        }
        self.current += 1;
    }

    pub async fn plan(&mut self, log: &dyn Log) -> Result<Vec<NewTask>, DriverError> {
        match self.start_stage(log).await? {
            Step::Run(tasks) => Ok(tasks),
            _ => Ok(vec![]),
        }
    }

    pub async fn on_result(
        &mut self,
        key: &str,
        result: TaskResult,
        log: &dyn Log,
    ) -> Result<Step, DriverError> {
        let stage = self
            .spec
            .stages
            .get(self.current)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let Some(inner_key) = key.strip_prefix(&format!("{stage}/")) else {
            return Err(DriverError::Invalid(format!(
                "result for `{key}` does not belong to the current stage `{stage}`"
            )));
        };
        let inner = self
            .inner
            .as_mut()
            .ok_or_else(|| DriverError::Invalid(format!("no stage running for `{key}`")))?;
        match inner
            .on_result(inner_key, result, log)
            .await
            .map_err(|e| prefix(&stage, e))?
        {
            Step::Run(tasks) => Ok(Step::Run(
                tasks
                    .into_iter()
                    .map(|t| NewTask {
                        key: format!("{stage}/{}", t.key),
                        ..t
                    })
                    .collect(),
            )),
            Step::Wait => Ok(Step::Wait),
            Step::Done => {
                self.finish_stage(log);
                self.start_stage(log).await
            }
        }
    }
}

fn prefix(stage: &str, e: DriverError) -> DriverError {
    DriverError::Invalid(format!("stage `{stage}`: {e}"))
}
