//! The self-play loop (DESIGN.md "Self-play step", ALGORITHMS.md §1–§4). One optimizer step:
//!
//! 1. take this rank's slice of the step's global prompt batch (a function of (seed, step));
//! 2. sample y, y′ — from sg π (online IPO, DPO, SLiC), the mixture sg π_mix^β (IPO-MD), or
//!    y ~ π and y′ ~ sg π_mix^β (Nash-MD-PG);
//! 3. preferences p = P(y ≻ y′) from the gold judge;
//! 4. per micro-batch: score y, y′ under π (graph) and μ, loss, backward, accumulate;
//! 5. all-reduce the gradients (one call on the collective), clip, AdamW;
//! 6. metrics: loss, kl/k1, kl/k3 (on samples of π), pref/mean, grad_norm, lr, tokens_per_s;
//!    every `eval_every` steps eval/gold and eval/win_rate against the reference.

use std::time::Instant;

use candle_core::Tensor;
use mirrorplay_proto::v1::{
    Labels as LabelsSpec, NashKlGrad as NashSpec, SelfplayAlgorithm, SelfplaySpec, TrainResult,
};

use super::eval::EvalSet;
use super::metrics::{MetricsLog, Split};
use super::preference::{gold_preferences, golds};
use super::rollout::{self, Source, SAMPLE_KL, SAMPLE_Y, SAMPLE_Y_PRIME};
use super::{data::Prompts, optimizer, shard, Ctx, TrainError};
use crate::collective::Collective;
use crate::objectives::{
    k1, k3, masked_mean, Algorithm, Completions, Labels, NashKlGrad, Objective, PairBatch,
};
use crate::optim::{AdamW, GradAccumulator};
use crate::tasks::goodhart_digits as gd;

/// The objective the spec names.
pub fn objective(spec: &SelfplaySpec) -> Result<Objective, TrainError> {
    let algorithm = match spec.algorithm() {
        SelfplayAlgorithm::OnlineIpo => Algorithm::OnlineIpo,
        SelfplayAlgorithm::IpoMd => Algorithm::IpoMd,
        SelfplayAlgorithm::NashMd => Algorithm::NashMd,
        SelfplayAlgorithm::OnlineDpo => Algorithm::OnlineDpo,
        SelfplayAlgorithm::Slic => Algorithm::Slic,
        SelfplayAlgorithm::Unspecified => {
            return Err(TrainError::Invalid(
                "selfplay algorithm is unspecified".into(),
            ))
        }
    };
    let nash_kl_grad = match spec.nash_kl_grad() {
        NashSpec::Sequence | NashSpec::Unspecified => NashKlGrad::Sequence,
        NashSpec::ToGo => NashKlGrad::ToGo,
        NashSpec::Token => NashKlGrad::Token,
    };
    let labels = match spec.labels() {
        LabelsSpec::Hard | LabelsSpec::Unspecified => Labels::Hard,
        LabelsSpec::Soft => Labels::Soft,
    };
    Ok(Objective {
        algorithm,
        kl_coef: spec.kl_coef,
        nash_kl_grad,
        labels,
        sft_coef: spec.sft_coef,
    })
}

pub async fn run(
    ctx: &Ctx<'_>,
    spec: &SelfplaySpec,
    collective: &mut dyn Collective,
) -> Result<TrainResult, TrainError> {
    let started = Instant::now();
    let objective = objective(spec)?;
    let sampling = spec
        .sampling
        .ok_or_else(|| TrainError::Invalid("no [sampling] in the spec".into()))?;
    let missing = |what: &str| TrainError::Invalid(format!("no {what} in the spec"));
    let policy = ctx.load_model(spec.policy.as_ref(), "policy", true).await?;
    let dtype = super::compute_dtype(spec.compute_dtype());
    let mut reference = ctx
        .load_model(spec.reference.as_ref(), "reference", false)
        .await?;
    // Mixed precision: the frozen reference simply lives in the compute dtype.
    reference.model = reference.model.to(dtype, &ctx.device)?;
    for m in [&policy, &reference] {
        if m.model.config().vocab_size != gd::VOCAB_SIZE {
            return Err(TrainError::Invalid(format!(
                "{}: vocabulary {} is not goodhart_digits' {} (the gold judge reads task token ids)",
                m.source,
                m.model.config().vocab_size,
                gd::VOCAB_SIZE
            )));
        }
    }
    let prompts = Prompts::load(
        spec.prompts.as_ref().ok_or_else(|| missing("prompts"))?,
        ctx.seed,
        policy.tokenizer.as_ref(),
    )
    .await?;
    let temperature = spec
        .preference
        .as_ref()
        .ok_or_else(|| missing("[preference]"))?
        .temperature;
    let params = policy
        .model
        .vars()
        .ok_or_else(|| TrainError::Invalid("the policy is not trainable".into()))?
        .clone();
    let (adamw, schedule) = optimizer(spec.optimizer.as_ref(), spec.steps)?;
    let max_grad_norm = spec.optimizer.as_ref().map_or(0.0, |o| o.max_grad_norm);
    let mut opt = AdamW::new(&params, adamw, schedule)?;
    let mut metrics = MetricsLog::new(&ctx.output, ctx.attempt, ctx.metrics)?;
    let eval_set = EvalSet::new(
        ctx.seed,
        spec.eval_prompts as usize,
        &sampling,
        Some(&reference.model),
    )?;
    let mut last_eval = eval_set.run(&policy.model.detached()?.for_compute(dtype)?, 0)?;
    log_eval(&mut metrics, 0, &last_eval);

    let batch = spec.batch_prompts as u64;
    let micro = (spec.batch_prompts / spec.grad_accum.max(1)) as usize;
    let rows = shard(batch as usize, collective.rank(), collective.world_size());
    for step in 0..spec.steps {
        ctx.check_cancelled()?;
        let t0 = Instant::now();
        // 1. This rank's prompts of the step's global batch.
        let global: Vec<u64> = rows.clone().map(|g| step * batch + g as u64).collect();
        let task_prompts: Vec<gd::Prompt> = rows
            .clone()
            .map(|g| prompts.get(step, batch, g as u64))
            .collect();
        let prompt_ids: Vec<Vec<u32>> = task_prompts.iter().map(|p| p.tokens().to_vec()).collect();
        let b = prompt_ids.len();

        // 2. Samples (no graph: the sampler is a detached view of the current weights).
        let sampler = policy.model.detached()?.for_compute(dtype)?;
        let config = rollout::task_config(&sampling, ctx.seed, step);
        let mixture = Source::Mixture {
            policy: &sampler,
            reference: &reference.model,
            mixture_coef: spec.mixture_coef,
        };
        let twice: Vec<Vec<u32>> = prompt_ids.iter().chain(&prompt_ids).cloned().collect();
        let both_keys: Vec<_> = rollout::keys(global.iter().copied(), SAMPLE_Y)
            .into_iter()
            .chain(rollout::keys(global.iter().copied(), SAMPLE_Y_PRIME))
            .collect();
        let (y, y_prime) = match objective.algorithm {
            Algorithm::OnlineIpo | Algorithm::OnlineDpo | Algorithm::Slic => split(
                rollout::sample(Source::Policy(&sampler), &twice, &both_keys, &config)?,
                b,
            ),
            Algorithm::IpoMd => split(rollout::sample(mixture, &twice, &both_keys, &config)?, b),
            Algorithm::NashMd => (
                rollout::sample(
                    Source::Policy(&sampler),
                    &prompt_ids,
                    &both_keys[..b],
                    &config,
                )?,
                rollout::sample(mixture, &prompt_ids, &both_keys[b..], &config)?,
            ),
        };
        let mut num_tokens = rollout::num_tokens(&y) + rollout::num_tokens(&y_prime);

        // 3. Preferences from the gold judge.
        let gold_y = golds(&task_prompts, &y)?;
        let pref = gold_preferences(&gold_y, &golds(&task_prompts, &y_prime)?, temperature);

        // 4. Score, loss and backward per micro-batch.
        // The step's forward weights: cast from the f32 master weights, graph attached.
        let compute = policy.model.for_compute(dtype)?;
        let mut accumulated = GradAccumulator::new();
        let mut loss_sum = 0.0;
        let mut kl_rows: Vec<Completions> = vec![];
        for start in (0..b).step_by(micro.max(1)) {
            let n = micro.min(b - start);
            let both: Vec<Vec<u32>> = y[start..start + n]
                .iter()
                .chain(&y_prime[start..start + n])
                .cloned()
                .collect();
            let prompts2: Vec<Vec<u32>> = prompt_ids[start..start + n]
                .iter()
                .chain(&prompt_ids[start..start + n])
                .cloned()
                .collect();
            let scored = rollout::score(&compute, &reference.model, &prompts2, &both)?;
            let pair = PairBatch {
                y: rollout::rows(&scored, 0, n)?,
                y_prime: rollout::rows(&scored, n, n)?,
                pref: Tensor::from_iter(
                    pref[start..start + n].iter().map(|&p| p as f32),
                    &ctx.device,
                )?,
            };
            let loss = objective.loss(&pair)?;
            accumulated.add(&params, &loss.backward()?)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            match objective.algorithm {
                Algorithm::OnlineIpo | Algorithm::OnlineDpo | Algorithm::Slic => {
                    kl_rows.push(detached(&scored)?)
                }
                Algorithm::NashMd => kl_rows.push(detached(&pair.y)?),
                Algorithm::IpoMd => {}
            }
        }
        let grads = accumulated.finish()?;

        // 5. All-reduce, clip, AdamW.
        let (grad_norm, lr) =
            super::reduce_clip_step(collective, grads, max_grad_norm, &mut opt, &params)?;

        // 6. Metrics. KL is estimated on samples of π; IPO-MD's are mixture samples, so it
        // draws one extra policy sample per prompt for the metric alone.
        if objective.algorithm == Algorithm::IpoMd {
            let keys = rollout::keys(global.iter().copied(), SAMPLE_KL);
            let extra = rollout::sample(Source::Policy(&sampler), &prompt_ids, &keys, &config)?;
            num_tokens += rollout::num_tokens(&extra);
            kl_rows.push(rollout::score(
                &sampler,
                &reference.model,
                &prompt_ids,
                &extra,
            )?);
        }
        let (kl1, kl3) = kl_means(&kl_rows)?;
        let step_done = step + 1;
        let secs = t0.elapsed().as_secs_f64();
        metrics.log(
            step_done,
            Split::Train,
            &[
                ("loss", loss_sum / accumulated_count(b, micro) as f64),
                ("kl/k1", kl1),
                ("kl/k3", kl3),
                ("pref/mean", pref.iter().sum::<f64>() / b.max(1) as f64),
                ("grad_norm", grad_norm),
                ("lr", lr),
                ("tokens_per_s", num_tokens as f64 / secs.max(1e-9)),
            ],
        );
        if step_done % spec.eval_every.max(1) == 0 || step_done == spec.steps {
            last_eval = eval_set.run(&policy.model.detached()?.for_compute(dtype)?, step_done)?;
            log_eval(&mut metrics, step_done, &last_eval);
        }
        (ctx.progress)(step_done as f64 / spec.steps.max(1) as f64);
        metrics.maybe_flush().await?;
    }

    let eval = (last_eval.gold, last_eval.win_rate.unwrap_or(f64::NAN));
    ctx.finish(&policy, &mut metrics, spec.steps, eval, started)
        .await
}

fn log_eval(metrics: &mut MetricsLog, step: u64, e: &super::eval::Eval) {
    let mut values = vec![("eval/gold", e.gold)];
    if let Some(w) = e.win_rate {
        values.push(("eval/win_rate", w));
    }
    metrics.log(step, Split::Eval, &values);
}

fn split(mut both: Vec<Vec<u32>>, b: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let second = both.split_off(b);
    (both, second)
}

fn accumulated_count(b: usize, micro: usize) -> usize {
    b.div_ceil(micro.max(1))
}

fn detached(c: &Completions) -> Result<Completions, TrainError> {
    Ok(Completions {
        policy: c.policy.detach(),
        reference: c.reference.detach(),
        mask: c.mask.clone(),
    })
}

/// Batch means of k1 (per sequence) and k3 (per token) over samples of π.
fn kl_means(rows: &[Completions]) -> Result<(f64, f64), TrainError> {
    let (mut k1_sum, mut n_seq, mut k3_sum, mut n_tok) = (0.0, 0usize, 0.0, 0.0);
    for c in rows {
        k1_sum += k1(c)?.sum_all()?.to_scalar::<f32>()? as f64;
        n_seq += c.mask.dim(0)?;
        let tokens = c.mask.sum_all()?.to_scalar::<f32>()? as f64;
        k3_sum += masked_mean(&k3(c)?, &c.mask)?.to_scalar::<f32>()? as f64 * tokens;
        n_tok += tokens;
    }
    Ok((k1_sum / n_seq.max(1) as f64, k3_sum / n_tok.max(1.0)))
}
