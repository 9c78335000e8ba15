//! A member's normalisation statistics (docs/algorithms.md §2, "Ensembles", member normalisation): the mean
//! and population standard deviation (ddof 0, floored at `MIN_STD`) of its scores of
//! `norm_samples` samples of `norm_policy` for each of `norm_prompts` prompts (the task's train
//! prompts, or the distinct prompts of the JSONL's train pairs in file order). Sample j of
//! prompt i is keyed by (job seed, step j, prompt i, `SAMPLE_NORM`), so every member scores the
//! same samples, and sample 0 is the one a self-play ensemble fits its normalisation on.

use candle_core::{DType, Device};
use mirrorplay_proto::v1::{ModelSource, SamplingSpec};

use super::pairs::Pairs;
use super::RewardError;
use crate::preference::aggregate::Normalisation;
use crate::preference::reward_model::RewardModelJudge;
use crate::preference::{Judge, JudgeError, PromptRow};
use crate::tasks::Split;
use crate::train::models::{self, Loaded};
use crate::train::prompts::{task_row, PromptFormat};
use crate::train::rollout::{self, Source, SAMPLE_NORM};

/// Prompts sampled per generation call (keys are per global prompt, so chunking changes nothing).
const CHUNK: usize = 64;

/// Fitted statistics of one member.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormStats {
    pub mean: f64,
    pub std: f64,
    pub samples: u64,
}

/// What the samples are drawn from and how.
pub struct NormSpec<'a> {
    pub policy: &'a ModelSource,
    pub prompts: usize,
    pub samples: usize,
    pub sampling: &'a SamplingSpec,
    /// The job seed (never the member's: every member scores the same samples).
    pub seed: u64,
    pub dtype: DType,
}

/// The samples' prompts and completions (prompt-major: sample j of prompt i at i·samples + j).
pub async fn samples(
    spec: &NormSpec<'_>,
    pairs: &Pairs,
    format: &PromptFormat,
    device: &Device,
) -> Result<(Loaded, Vec<PromptRow>, Vec<Vec<u32>>), RewardError> {
    let policy = models::load(spec.policy, false, spec.seed, device).await?;
    let prompts = prompts(spec, pairs, format)?;
    let rules = rollout::rules(
        pairs.task,
        spec.sampling,
        &policy.eos_token_ids,
        policy.pad_token_id,
    )?;
    let sampler = policy.model.for_compute(spec.dtype)?;
    let n = prompts.len();
    let mut by_sample: Vec<Vec<Vec<u32>>> = Vec::with_capacity(spec.samples);
    for j in 0..spec.samples {
        let config = rollout::generate_config(&rules, spec.sampling, spec.seed, j as u64);
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            let ids: Vec<Vec<u32>> = prompts[start..end].iter().map(|r| r.ids.clone()).collect();
            let keys = rollout::keys(start as u64..end as u64, SAMPLE_NORM);
            out.extend(rollout::sample(
                Source::Policy(&sampler),
                &ids,
                &keys,
                &config,
            )?);
        }
        by_sample.push(out);
    }
    let mut rows = Vec::with_capacity(n * spec.samples);
    let mut completions = Vec::with_capacity(n * spec.samples);
    for (i, prompt) in prompts.iter().enumerate() {
        for sample in &by_sample {
            rows.push(prompt.clone());
            completions.push(sample[i].clone());
        }
    }
    Ok((policy, rows, completions))
}

/// The first `spec.prompts` prompts (fewer when a file has fewer distinct train prompts).
fn prompts(
    spec: &NormSpec<'_>,
    pairs: &Pairs,
    format: &PromptFormat,
) -> Result<Vec<PromptRow>, RewardError> {
    if let Some(task) = pairs.task {
        return (0..spec.prompts as u64)
            .map(|i| Ok(task_row(task, spec.seed, Split::Train, i, format)?))
            .collect();
    }
    let mut seen = std::collections::HashSet::new();
    Ok(pairs
        .train
        .iter()
        .filter(|p| seen.insert(p.prompt.clone()))
        .take(spec.prompts)
        .map(|p| PromptRow {
            ids: p.prompt.clone(),
            task: None,
            truncated: false,
        })
        .collect())
}

/// Draws the samples and fits the member's statistics with
/// [`Normalisation::fit`], scoring as a self-play reward judge scores ([`RewardModelJudge`],
/// which also checks that the member and the policy share a tokenizer).
pub async fn fit(
    spec: &NormSpec<'_>,
    member: &Loaded,
    pairs: &Pairs,
    format: &PromptFormat,
    device: &Device,
) -> Result<NormStats, RewardError> {
    let (policy, rows, completions) = samples(spec, pairs, format, device).await?;
    if completions.is_empty() {
        return Err(RewardError::Invalid(
            "reward_train: norm_prompts and norm_samples give no samples to fit on".into(),
        ));
    }
    let judge = RewardModelJudge::new(
        member.model.detached()?,
        member.tokenizer.as_ref(),
        policy.model.config().vocab_size,
        policy.tokenizer.as_ref(),
        &format!("the member against norm_policy {}", policy.source),
    )?;
    let refs: Vec<&PromptRow> = rows.iter().collect();
    let scores = judge.scores(&refs, &completions)?;
    let fitted = Normalisation::fit(&[scores]).map_err(JudgeError::from)?;
    Ok(NormStats {
        mean: fitted.mean[0],
        std: fitted.std[0],
        samples: completions.len() as u64,
    })
}
