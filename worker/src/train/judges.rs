//! The judges of a training job (docs/algorithms.md §2): the preference source that drives
//! self-play (`[preference] source`: the task's gold judge, a reward model or an ensemble of
//! them, whose normalisation is fitted here on samples of the initial policy), and the judges
//! evaluation reports (gold when the job has a task, plus the preference source when it is
//! another, so over-optimising a learned reward shows up against the gold).

use std::sync::Arc;

use mirrorplay_proto::v1::{model_source, ModelSource, PreferenceSpec, SamplingSpec};

use super::models::Loaded;
use super::prompts::Prompts;
use super::rollout::{self, Source, SAMPLE_NORM};
use super::{Ctx, TrainError};
use crate::model::Model;
use crate::preference::aggregate::{Aggregate, NormKind};
use crate::preference::ensemble::{EnsembleJudge, Member};
use crate::preference::gold::GoldJudge;
use crate::preference::manifest::Manifest;
use crate::preference::reward_model::RewardModelJudge;
use crate::preference::{Judge, JudgeError, PromptRow};
use crate::sample::TokenRules;
use crate::tasks::Task;

/// What an ensemble's normalisation is fitted on: samples of the initial policy for the first
/// train prompts (docs/algorithms.md §2).
pub struct InitialPolicy<'a> {
    /// The policy; a detached view of it in `dtype` samples (built only for an ensemble).
    pub policy: &'a Model,
    pub dtype: candle_core::DType,
    pub prompts: &'a Prompts,
    pub rules: &'a TokenRules,
    pub sampling: &'a SamplingSpec,
}

impl InitialPolicy<'_> {
    /// One sample at temperature 1 (no top-k/top-p) for each of train prompts 0..n, keyed by
    /// prompt index with sample index [`SAMPLE_NORM`], so every rank draws the same ones.
    fn samples(&self, n: u64, seed: u64) -> Result<(Vec<PromptRow>, Vec<Vec<u32>>), TrainError> {
        let rows: Vec<PromptRow> = (0..n)
            .map(|g| self.prompts.get(0, n, g))
            .collect::<Result<_, _>>()?;
        let t1 = SamplingSpec {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            ..*self.sampling
        };
        let config = rollout::generate_config(self.rules, &t1, seed, 0);
        let ids: Vec<Vec<u32>> = rows.iter().map(|r| r.ids.clone()).collect();
        let keys = rollout::keys(0..n, SAMPLE_NORM);
        let sampler = self.policy.detached()?.for_compute(self.dtype)?;
        let completions = rollout::sample(Source::Policy(&sampler), &ids, &keys, &config)?;
        Ok((rows, completions))
    }
}

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
    initial: InitialPolicy<'_>,
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
        "ensemble" => Arc::new(ensemble(ctx, preference, policy, initial).await?),
        other => {
            return Err(TrainError::Invalid(format!(
                "unknown [preference] source `{other}` (known: gold, reward_model, ensemble)"
            )))
        }
    };
    let mut eval: Vec<Arc<dyn Judge>> = gold_judge.into_iter().collect();
    if source.name() != "gold" {
        eval.push(source.clone());
    }
    Ok((source, eval))
}

/// Checks the aggregate and normalisation names, loads the members (each checked like a reward
/// model; `members`, or the manifest `ensemble` names), then takes the manifest's
/// normalisation statistics when it has them, or fits the normalisation on the members' scores
/// of `norm_prompts` initial-policy samples.
async fn ensemble(
    ctx: &Ctx<'_>,
    preference: &PreferenceSpec,
    policy: &Loaded,
    initial: InitialPolicy<'_>,
) -> Result<EnsembleJudge, TrainError> {
    let aggregate =
        Aggregate::parse(&preference.aggregate, preference.uwo_lambda).map_err(JudgeError::from)?;
    aggregate
        .check_without_reference()
        .map_err(JudgeError::from)?;
    let kind = NormKind::parse(&preference.normalize).map_err(JudgeError::from)?;
    let (sources, manifest) = if preference.ensemble.is_empty() {
        (preference.members.clone(), None)
    } else {
        let (manifest, urls) = Manifest::read(&preference.ensemble)
            .await
            .map_err(|e| TrainError::Invalid(format!("[preference] ensemble: {e}")))?;
        let sources = urls
            .into_iter()
            .map(|u| ModelSource {
                source: Some(model_source::Source::Url(u)),
            })
            .collect();
        (sources, Some(manifest))
    };
    let mut models = Vec::with_capacity(sources.len());
    let mut tokenizers = Vec::with_capacity(sources.len());
    for (i, m) in sources.iter().enumerate() {
        let what = format!("[preference] members.{i}");
        let rm = ctx.load_model(Some(m), &what, false).await?;
        models.push((rm.model, rm.source));
        tokenizers.push(rm.tokenizer);
    }
    let mut members = Vec::with_capacity(models.len());
    for ((model, source), tokenizer) in models.into_iter().zip(&tokenizers) {
        members.push(Member {
            judge: RewardModelJudge::new(
                model,
                tokenizer.as_ref(),
                policy.model.config().vocab_size,
                policy.tokenizer.as_ref(),
                &source,
            )?,
            source,
            tokenizer: tokenizer.as_ref(),
        });
    }
    let mut judge = EnsembleJudge::new(members, aggregate, kind)?;
    match manifest.and_then(|m| m.normalisation()) {
        Some(fitted) => {
            tracing::info!(
                ensemble = %preference.ensemble,
                "normalisation statistics from the ensemble manifest"
            );
            judge.set_normalisation(fitted)?;
        }
        None => {
            let (rows, completions) =
                initial.samples(u64::from(preference.norm_prompts.max(1)), ctx.seed)?;
            let refs: Vec<&PromptRow> = rows.iter().collect();
            judge.fit_normalisation(&refs, &completions)?;
        }
    }
    Ok(judge)
}
