//! The training driver (`sft`, `selfplay`): one task run by a gang of `parallel.world_size`
//! ranks (data parallelism; 0 = every registered worker, resolved when the task is queued).
//! When it ends, the driver logs the final evaluation and where the model and metrics are.

use mirrorplay_proto::v1::{task, task_result, train_task, TaskResult, TrainTask};

use super::{inputs, DriverError, Log, NewTask, Step};

pub struct TrainDriver {
    task: TrainTask,
    kind: &'static str,
    /// The files its models and data come from, found when planning (job.json).
    inputs: Vec<inputs::Input>,
}

impl TrainDriver {
    pub fn new(spec: train_task::Spec, output: String, seed: u64) -> Self {
        let kind = match spec {
            train_task::Spec::Sft(_) => "sft",
            train_task::Spec::Selfplay(_) => "selfplay",
        };
        TrainDriver {
            task: TrainTask {
                output,
                seed,
                spec: Some(spec),
            },
            kind,
            inputs: vec![],
        }
    }

    pub fn inputs(&self) -> Vec<(String, u64, Option<String>)> {
        self.inputs.clone()
    }

    /// The locations the task reads: its models (policy, reference, SFT init, reward models),
    /// an ensemble's manifest and its JSONL data; tiny models and built-in tasks read none.
    fn input_urls(&self) -> Vec<String> {
        let mut manifest = None;
        let (models, data) = match &self.task.spec {
            Some(train_task::Spec::Sft(s)) => (vec![s.init.as_ref()], vec![s.data.as_ref()]),
            Some(train_task::Spec::Selfplay(s)) => {
                let mut models = vec![s.policy.as_ref(), s.reference.as_ref()];
                if let Some(p) = &s.preference {
                    models.push(p.model.as_ref());
                    models.extend(p.members.iter().map(Some));
                    manifest = Some(p.ensemble.clone()).filter(|m| !m.is_empty());
                }
                (models, vec![s.prompts.as_ref()])
            }
            None => (vec![], vec![]),
        };
        let mut urls: Vec<String> = models.into_iter().filter_map(inputs::model_url).collect();
        urls.extend(data.into_iter().filter_map(inputs::data_url));
        urls.extend(manifest);
        urls.sort();
        urls.dedup();
        urls
    }

    pub async fn plan(&mut self, log: &dyn Log) -> Result<Vec<NewTask>, DriverError> {
        let (steps, parallel) = match &self.task.spec {
            Some(train_task::Spec::Sft(s)) => (s.steps, s.parallel.unwrap_or_default()),
            Some(train_task::Spec::Selfplay(s)) => (s.steps, s.parallel.unwrap_or_default()),
            None => (0, Default::default()),
        };
        let world = match parallel.world_size {
            0 => "every registered worker".to_string(),
            1 => "1 rank".to_string(),
            w => format!("{w} ranks"),
        };
        log.info(format!(
            "{} training: {steps} steps on {world}, writing under {}",
            self.kind, self.task.output
        ));
        self.inputs = inputs::files_at(&self.input_urls()).await;
        Ok(vec![NewTask {
            key: "train".into(),
            work: task::Work::Train(self.task.clone()),
            group_size: parallel.world_size,
            min_group_size: parallel.min_world_size,
        }])
    }

    pub async fn on_result(
        &mut self,
        _key: &str,
        result: TaskResult,
        log: &dyn Log,
    ) -> Result<Step, DriverError> {
        let Some(task_result::Result::Train(r)) = result.result else {
            return Err(DriverError::Invalid(
                "a training task returned no training result".into(),
            ));
        };
        let mut summary = format!(
            "{} finished {} steps in {:.1} s",
            self.kind, r.steps, r.wall_s
        );
        if r.eval_win_rate.is_finite() {
            summary.push_str(&format!(
                "; held-out win rate vs the reference {:.3}",
                r.eval_win_rate
            ));
        }
        if r.eval_gold.is_finite() {
            summary.push_str(&format!("; held-out mean gold {:.3}", r.eval_gold));
        }
        log.info(summary);
        log.info(format!("model: {}", r.model_url));
        log.info(format!("metrics: {}", r.metrics_url));
        Ok(Step::Done)
    }
}
