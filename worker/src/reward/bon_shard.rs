//! One shard of a best-of-n job (docs/algorithms.md §4 "Best-of-n estimator"): for each of its
//! held-out prompts, N samples of the policy are scored by every scorer of the ensemble
//! (`super::scorers`) and by the task's gold judge, and the unbiased estimator gives each
//! scorer's expected proxy and gold of best-of-n for every n of the grid. The shard returns
//! their sums over its prompts; the coordinator averages them into `bon.csv`.
//!
//! Pool samples are keyed (seed, step 0, prompt, sample 0..N); LSC's reference samples (the
//! policy is the reference here) are (seed, step 1, prompt, sample 0..M).

use candle_core::Device;
use mirrorplay_proto::v1::{BonShardResult, BonShardTask};

use super::ensemble::{LoadedEnsemble, Reader};
use super::scorers::Scorers;
use super::{samples_of_prompt, RewardError};
use crate::preference::aggregate::NormKind;
use crate::preference::bon::{best_of_n, n_grid};
use crate::preference::gold::GoldJudge;
use crate::preference::{Judge, JudgeError};
use crate::report::Progress;
use crate::tasks::{Split, Task};
use crate::train::prompts::{task_row, PromptFormat};
use crate::train::rollout;

/// Step of the pool's sample streams and of LSC's reference samples.
const STEP_POOL: u64 = 0;
const STEP_LSC_REFERENCE: u64 = 1;

pub async fn run(
    task: &BonShardTask,
    device: &Device,
    progress: Progress<'_>,
) -> Result<BonShardResult, RewardError> {
    let spec = task
        .spec
        .as_ref()
        .ok_or_else(|| RewardError::Invalid("the bon task carries no spec".into()))?;
    let source = spec
        .policy
        .as_ref()
        .ok_or_else(|| RewardError::Invalid("the bon spec names no policy".into()))?;
    let policy = crate::train::models::load(source, false, task.seed, device).await?;
    let judged = Task::named(&spec.task)?;
    let ensemble = LoadedEnsemble::load(
        &spec.ensemble,
        Some(Reader {
            vocab_size: policy.model.config().vocab_size,
            tokenizer: policy.tokenizer.as_ref(),
        }),
        device,
    )
    .await?;
    let kind = NormKind::parse(&spec.normalize).map_err(JudgeError::from)?;
    let lsc_samples = spec.lsc_samples as usize;
    let scorers = Scorers::new(
        ensemble.len(),
        kind,
        ensemble.normalisation(kind)?,
        spec.uwo_lambda,
        lsc_samples > 0,
    );
    let n_samples = spec.samples as usize;
    let ns = n_grid(spec.max_n as usize);
    let sampling = spec
        .sampling
        .ok_or_else(|| RewardError::Invalid("the bon spec has no sampling settings".into()))?;
    let rules = rollout::rules(
        Some(judged),
        &sampling,
        &policy.eos_token_ids,
        policy.pad_token_id,
    )?;
    let format = PromptFormat {
        tokenizer: policy.tokenizer.clone(),
        chat: false,
        max_prompt_tokens: 0,
    };
    let gold = GoldJudge::new(
        judged,
        policy.tokenizer.clone(),
        policy.eos_token_ids.clone(),
    );
    let pool = rollout::generate_config(&rules, &sampling, task.seed, STEP_POOL);
    let lsc_reference = rollout::generate_config(&rules, &sampling, task.seed, STEP_LSC_REFERENCE);

    let rows = scorers.names().len() * ns.len();
    let (mut proxy_sums, mut gold_sums) = (vec![0.0; rows], vec![0.0; rows]);
    for i in 0..u64::from(task.prompts) {
        let index = task.first_prompt + i;
        let row = task_row(judged, task.seed, Split::HeldOut, index, &format)?;
        let completions = samples_of_prompt(&policy.model, &row.ids, index, n_samples, &pool)?;
        let prompts = vec![&row; completions.len()];
        let raw = ensemble.member_scores(&prompts, &completions)?;
        let golds: Vec<f64> = gold
            .scores(&prompts, &completions)?
            .into_iter()
            .map(|g| g / gold.unit())
            .collect();
        let reference = if lsc_samples > 0 {
            let refs =
                samples_of_prompt(&policy.model, &row.ids, index, lsc_samples, &lsc_reference)?;
            Some(ensemble.reference_quantiles(&row, &refs, spec.lsc_quantile)?)
        } else {
            None
        };
        // proxies[scorer][sample]
        let mut proxies = vec![Vec::with_capacity(n_samples); scorers.names().len()];
        for s in 0..completions.len() {
            let member_raw: Vec<f64> = raw.iter().map(|m| m[s]).collect();
            let scored = scorers.score(&member_raw, reference.as_deref().unwrap_or(&[]));
            for (column, v) in proxies.iter_mut().zip(scored.values) {
                column.push(v);
            }
        }
        for (s, proxy) in proxies.iter().enumerate() {
            let points = best_of_n(proxy, &golds, &ns).map_err(|e| {
                RewardError::Invalid(format!(
                    "best-of-n for scorer `{}` on held-out prompt {index}: {e}",
                    scorers.names()[s]
                ))
            })?;
            for (j, p) in points.iter().enumerate() {
                proxy_sums[s * ns.len() + j] += p.proxy;
                gold_sums[s * ns.len() + j] += p.gold;
            }
        }
        progress((i + 1) as f64 / f64::from(task.prompts.max(1)));
    }
    Ok(BonShardResult {
        prompts: task.prompts,
        scorers: scorers.names().to_vec(),
        ns: ns.iter().map(|&n| n as u32).collect(),
        proxy_sums,
        gold_sums,
    })
}
