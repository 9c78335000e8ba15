//! The reward_train driver: one independent task per member (any worker may take any
//! member, so K members train in parallel on K workers), then the ensemble manifest
//! `OUTPUT/ensemble.json` (`mirrorplay_worker::preference::manifest`) once every member is done.

use mirrorplay_proto::v1::{
    pair_source, task, task_result, RewardMemberResult, RewardMemberTask, RewardTrainSpec,
    TaskResult,
};
use mirrorplay_worker::io::Location;
use mirrorplay_worker::preference::manifest::{
    Manifest, MemberEntry, MemberNorm, FILE_NAME, FORMAT,
};

use super::{inputs, DriverError, Log, NewTask, Step};

pub struct RewardTrainDriver {
    spec: RewardTrainSpec,
    output: String,
    seed: u64,
    results: Vec<Option<RewardMemberResult>>,
    /// The files it reads, found when planning (job.json).
    inputs: Vec<inputs::Input>,
}

impl RewardTrainDriver {
    pub fn new(spec: RewardTrainSpec, output: String, seed: u64) -> Self {
        let k = spec.members as usize;
        RewardTrainDriver {
            spec,
            output: output.trim_end_matches('/').to_string(),
            seed,
            results: vec![None; k],
            inputs: vec![],
        }
    }

    pub fn inputs(&self) -> Vec<(String, u64, Option<String>)> {
        self.inputs.clone()
    }

    fn member_dir(k: usize) -> String {
        format!("member-{k}")
    }

    pub async fn plan(&mut self, log: &dyn Log) -> Result<Vec<NewTask>, DriverError> {
        if self.results.is_empty() {
            return Err(DriverError::Invalid(
                "reward_train needs members ≥ 1".into(),
            ));
        }
        let data = match self.spec.data.as_ref().and_then(|d| d.source.as_ref()) {
            Some(mirrorplay_proto::v1::pair_source::Source::JsonlUrl(u)) => Some(u.clone()),
            _ => None,
        };
        let urls: Vec<String> = [
            inputs::model_url(self.spec.init.as_ref()),
            inputs::model_url(self.spec.norm_policy.as_ref()),
            data,
        ]
        .into_iter()
        .flatten()
        .collect();
        self.inputs = inputs::files_at(&urls).await;
        log.info(format!(
            "reward_train: {} Bradley–Terry members, {} steps each, writing under {}",
            self.results.len(),
            self.spec.steps,
            self.output
        ));
        Ok((0..self.results.len())
            .map(|k| NewTask {
                key: Self::member_dir(k),
                work: task::Work::RewardMember(RewardMemberTask {
                    spec: Some(self.spec.clone()),
                    member: k as u32,
                    output: format!("{}/{}", self.output, Self::member_dir(k)),
                    seed: self.seed,
                }),
                group_size: 1,
                min_group_size: 1,
            })
            .collect())
    }

    pub async fn on_result(
        &mut self,
        key: &str,
        result: TaskResult,
        log: &dyn Log,
    ) -> Result<Step, DriverError> {
        let Some(task_result::Result::RewardMember(r)) = result.result else {
            return Err(DriverError::Invalid(format!(
                "task `{key}` returned no reward-member result"
            )));
        };
        let slot = self
            .results
            .get_mut(r.member as usize)
            .ok_or_else(|| DriverError::Invalid(format!("no member {}", r.member)))?;
        log.info(format!(
            "member {}: {} steps, final loss {:.4}; accuracy train {}, held-out {}{}",
            r.member,
            r.steps,
            r.final_loss,
            percent(r.train_accuracy),
            percent(r.eval_accuracy),
            if r.eval_accuracy_clean.is_finite() {
                format!(
                    " (against clean labels: train {}, held-out {})",
                    percent(r.train_accuracy_clean),
                    percent(r.eval_accuracy_clean)
                )
            } else {
                String::new()
            }
        ));
        *slot = Some(r);
        if self.results.iter().any(Option::is_none) {
            return Ok(Step::Wait);
        }
        let url = format!("{}/{FILE_NAME}", self.output);
        Location::parse(&url)?
            .put(self.manifest().to_json().into_bytes())
            .await?;
        log.info(format!("ensemble manifest: {url}"));
        Ok(Step::Done)
    }

    fn manifest(&self) -> Manifest {
        let finite = |x: f64| x.is_finite().then_some(x);
        let members = self
            .results
            .iter()
            .flatten()
            .map(|r| MemberEntry {
                path: Self::member_dir(r.member as usize),
                steps: r.steps,
                train_accuracy: finite(r.train_accuracy),
                eval_accuracy: finite(r.eval_accuracy),
                train_accuracy_clean: finite(r.train_accuracy_clean),
                eval_accuracy_clean: finite(r.eval_accuracy_clean),
                norm: r.has_norm.then_some(MemberNorm {
                    mean: r.norm_mean,
                    std: r.norm_std,
                    samples: r.norm_samples,
                }),
            })
            .collect();
        let (data, from_task) = match self.spec.data.as_ref().and_then(|d| d.source.as_ref()) {
            Some(pair_source::Source::Task(t)) => (t.clone(), true),
            Some(pair_source::Source::JsonlUrl(u)) => (u.clone(), false),
            None => (String::new(), false),
        };
        let norm_policy = self.spec.norm_policy.as_ref().map(|m| match &m.source {
            Some(mirrorplay_proto::v1::model_source::Source::Url(u)) => u.clone(),
            Some(mirrorplay_proto::v1::model_source::Source::Tiny(_)) => "tiny".into(),
            None => String::new(),
        });
        Manifest {
            format: FORMAT.into(),
            members,
            data,
            label_noise: from_task.then_some(self.spec.label_noise),
            bootstrap: self.spec.bootstrap,
            shared_backbone: self.spec.shared_backbone,
            norm_policy,
        }
    }
}

fn percent(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1} %", 100.0 * x)
    } else {
        "n/a".into()
    }
}
