//! The judges of a training job (docs/algorithms.md §2): the preference source that drives
//! self-play (`[preference] source`: the task's gold judge or a reward model), and the judges
//! evaluation reports (gold when the job has a task, plus the preference source when it is
//! another, so over-optimising a learned reward shows up against the gold).

use std::sync::Arc;

use mirrorplay_proto::v1::PreferenceSpec;

use super::models::Loaded;
use super::{Ctx, TrainError};
use crate::preference::gold::GoldJudge;
use crate::preference::reward_model::RewardModelJudge;
use crate::preference::Judge;
use crate::tasks::Task;

/// The task's gold judge for completions of `policy`.
pub fn gold(task: Task, policy: &Loaded) -> Arc<dyn Judge> {
    Arc::new(GoldJudge::new(
        task,
        policy.tokenizer.clone(),
        policy.eos_token_ids.clone(),
    ))
}

/// (the preference source, the evaluation judges).
pub async fn for_selfplay(
    ctx: &Ctx<'_>,
    preference: &PreferenceSpec,
    task: Option<Task>,
    policy: &Loaded,
) -> Result<(Arc<dyn Judge>, Vec<Arc<dyn Judge>>), TrainError> {
    let gold_judge = task.map(|t| gold(t, policy));
    let source: Arc<dyn Judge> = match preference.source.as_str() {
        "gold" => gold_judge.clone().ok_or_else(|| {
            TrainError::Invalid(
                "[preference] source = \"gold\" needs a built-in `task` (its gold judge)".into(),
            )
        })?,
        "reward_model" => {
            let rm = ctx
                .load_model(preference.model.as_ref(), "[preference] model", false)
                .await?;
            Arc::new(RewardModelJudge::new(
                rm.model,
                rm.tokenizer.as_ref(),
                policy.model.config().vocab_size,
                policy.tokenizer.as_ref(),
                &rm.source,
            )?)
        }
        other => {
            return Err(TrainError::Invalid(format!(
                "unknown [preference] source `{other}` (known: gold, reward_model)"
            )))
        }
    };
    let mut eval: Vec<Arc<dyn Judge>> = gold_judge.into_iter().collect();
    if source.name() != "gold" {
        eval.push(source.clone());
    }
    Ok((source, eval))
}
