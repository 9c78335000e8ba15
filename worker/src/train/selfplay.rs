//! The self-play loop (docs/architecture.md#self-play-step, docs/algorithms.md §1–§4). One
//! optimizer step:
//!
//! 1. take this rank's slice of the step's global prompt batch (a function of (seed, step));
//! 2. sample y, y′ — from sg π (online IPO, DPO, SLiC), the mixture sg π_mix^β (IPO-MD), or
//!    y ~ π and y′ ~ sg π_mix^β (Nash-MD-PG) — keyed by global prompt index, so samples do
//!    not depend on the world size;
//! 3. preferences p = P(y ≻ y′) from the preference source (`crate::preference`: the task's
//!    gold judge or a reward model);
//! 4. per micro-batch: score y, y′ (Nash-MD-PG: y alone, all its loss reads) under π (graph)
//!    and μ, the batch-mean loss scaled by the micro-batch's share of the global batch,
//!    backward, accumulate;
//! 5. all-reduce (sum) the gradients, clip, AdamW: the step of the global batch's mean loss;
//! 6. metrics summed over the ranks: loss, kl/k1, kl/k3 (on samples of π), pref/mean,
//!    score/mean, the source's own statistics (an ensemble's `ensemble/variance`,
//!    `ensemble/member_K`), prompt/truncated, grad_norm, lr, tokens_per_s; every `eval_every` steps each
//!    judge's eval mean and win rate against the reference on held-out prompts split across
//!    the ranks (`eval` module).

use std::time::Instant;

use candle_core::Tensor;
use mirrorplay_proto::v1::{
    Labels as LabelsSpec, NashKlGrad as NashSpec, SelfplayAlgorithm, SelfplaySpec, TrainResult,
};

use super::eval::{Eval, EvalSet};
use super::metrics::Split;
use super::prompts::{PromptFormat, Prompts};
use super::rollout::{self, Source, SAMPLE_KL, SAMPLE_Y, SAMPLE_Y_PRIME};
use super::{judges, shard, Ctx, TrainError};
use crate::collective::Collective;
use crate::objectives::{
    k1, k3, masked_mean, Algorithm, Completions, Labels, NashKlGrad, Objective, PairBatch,
};
use crate::optim::GradAccumulator;
use crate::preference::{preferences, PromptRow};
use crate::tasks::Task;

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
    let task = match spec.task.as_str() {
        "" => None,
        name => Some(Task::named(name)?),
    };
    check_vocabularies(&policy, &reference, task)?;
    let format = PromptFormat {
        tokenizer: policy.tokenizer.clone(),
        chat: spec.chat,
        max_prompt_tokens: spec.max_prompt_tokens as usize,
    };
    let prompts = Prompts::load(
        spec.prompts.as_ref().ok_or_else(|| missing("prompts"))?,
        task,
        ctx.seed,
        format,
        spec.eval_prompts as usize,
    )
    .await?;
    let preference = spec
        .preference
        .as_ref()
        .ok_or_else(|| missing("[preference]"))?;
    let temperature = preference.temperature;
    let rules = rollout::rules(task, &sampling, &policy.eos_token_ids, policy.pad_token_id)?;
    let initial = judges::InitialPolicy {
        policy: &policy.model,
        dtype,
        prompts: &prompts,
        rules: &rules,
        sampling: &sampling,
    };
    let (judge, eval_judges) =
        judges::for_selfplay(ctx, preference, task, &policy, initial).await?;
    let stat_names = judge.stat_names();
    let super::Begun {
        params,
        mut opt,
        first_step,
        mut checkpoints,
        max_grad_norm,
    } = ctx
        .begin(
            collective,
            &policy,
            spec,
            spec.optimizer.as_ref(),
            spec.checkpoint.as_ref(),
            spec.steps,
        )
        .await?;
    let mut metrics = ctx.metrics_log()?;
    let eval_set = EvalSet::new(
        ctx.seed,
        spec.eval_prompts as usize,
        |range| prompts.held_out(range),
        &sampling,
        &rules,
        eval_judges,
        Some(&reference.model),
        collective,
    )?;
    // A resumed run logged its earlier evaluations before the checkpoint.
    let mut last_eval = Eval(vec![]);
    if first_step == 0 {
        last_eval = eval_set.run(&policy.model.detached()?.for_compute(dtype)?, 0, collective)?;
        last_eval.log(&mut metrics, 0);
    }

    let batch = spec.batch_prompts as u64;
    let rows = shard(batch as usize, collective.rank(), collective.world_size());
    // grad_accum splits this rank's rows.
    let micro = rows.len().div_ceil(spec.grad_accum.max(1) as usize).max(1);
    for step in first_step..spec.steps {
        ctx.check_cancelled()?;
        let t0 = Instant::now();
        // 1. This rank's prompts of the step's global batch (keyed by global index).
        let global: Vec<u64> = rows.clone().map(|g| step * batch + g as u64).collect();
        let step_prompts: Vec<PromptRow> = rows
            .clone()
            .map(|g| prompts.get(step, batch, g as u64))
            .collect::<Result<_, _>>()?;
        let prompt_ids: Vec<Vec<u32>> = step_prompts.iter().map(|p| p.ids.clone()).collect();
        let b = prompt_ids.len();

        // Sums over this rank's rows, reduced across ranks before they are logged.
        let mut sums = StepSums {
            truncated: step_prompts.iter().filter(|p| p.truncated).count() as f64,
            judge: vec![0.0; stat_names.len()],
            ..StepSums::default()
        };
        // The step's forward weights: cast from the f32 master weights, graph attached; the
        // sampler is a detached view of the same weights.
        let compute = policy.model.for_compute(dtype)?;
        let sampler = policy.model.detached()?.for_compute(dtype)?;
        let mut accumulated = GradAccumulator::new();
        // Seconds in each phase (the `step phases` debug event: RUST_LOG=debug).
        let mut phases = Phases::default();
        if b > 0 {
            let t = Instant::now();
            // 2. Samples (no graph).
            let config = rollout::generate_config(&rules, &sampling, ctx.seed, step);
            let mixture = Source::Mixture {
                policy: &sampler,
                reference: &reference.model,
                mixture_coef: spec.mixture_coef,
            };
            let twice: Vec<Vec<u32>> = prompt_ids.iter().chain(&prompt_ids).cloned().collect();
            let nash_coefs: Vec<f64> = std::iter::repeat_n(0.0, b)
                .chain(std::iter::repeat_n(spec.mixture_coef, b))
                .collect();
            let both_keys: Vec<_> = rollout::keys(global.iter().copied(), SAMPLE_Y)
                .into_iter()
                .chain(rollout::keys(global.iter().copied(), SAMPLE_Y_PRIME))
                .collect();
            // The sampler records the reference's log-probs wherever the reference runs (the
            // mixture's rows, and y under Nash-MD-PG), and the scoring below reads them
            // instead of running the reference again (docs/architecture.md#self-play-step).
            let source = match objective.algorithm {
                Algorithm::OnlineIpo | Algorithm::OnlineDpo | Algorithm::Slic => {
                    Source::Policy(&sampler)
                }
                Algorithm::IpoMd => mixture,
                // y ~ π (β = 0) and y′ ~ π_mix^β in one decode pass, which reads the policy's
                // weights once per token for both (row for row the draws of two separate
                // passes, docs/algorithms.md §1), with the reference run on y's rows too.
                Algorithm::NashMd => Source::PerRow {
                    policy: &sampler,
                    reference: &reference.model,
                    mixture_coefs: &nash_coefs,
                },
            };
            let mut y = rollout::sample_recorded(source, &twice, &both_keys, &config)?;
            let y_prime = y.split_off(b);
            sums.tokens +=
                (rollout::num_tokens(&y.tokens) + rollout::num_tokens(&y_prime.tokens)) as f64;
            phases.sample_s = t.elapsed().as_secs_f64();

            // 3. Preferences from the preference source.
            let t = Instant::now();
            // y's and y′'s rows in one call: a reward model's forward then runs its
            // matmuls over both at once (its scores are per row either way).
            let refs: Vec<&PromptRow> = step_prompts.iter().chain(&step_prompts).collect();
            let completions: Vec<Vec<u32>> =
                y.tokens.iter().chain(&y_prime.tokens).cloned().collect();
            let (mut s_y, stats) = judge.scores_with_stats(&refs, &completions)?;
            let s_y_prime = s_y.split_off(b);
            for (sum, a) in sums.judge.iter_mut().zip(&stats) {
                *sum += a;
            }
            let pref = preferences(&s_y, &s_y_prime, judge.unit(), temperature);
            sums.pref += pref.iter().sum::<f64>();
            sums.score += s_y.iter().chain(&s_y_prime).sum::<f64>() / judge.unit();
            phases.judge_s = t.elapsed().as_secs_f64();
            let t = Instant::now();

            // 4. Score, loss and backward per micro-batch; each micro-batch's mean loss is
            // scaled by its share of the global batch, so the sum over micro-batches and ranks
            // is the gradient of the global batch's mean loss.
            // Nash-MD-PG's loss reads only y's log-probs (y′ only sets p), so only y is scored
            // there: half the forward and backward work of scoring both.
            let y_only = !objective.algorithm.reads_y_prime_logprobs();
            let mut kl_rows: Vec<Completions> = vec![];
            for start in (0..b).step_by(micro) {
                let n = micro.min(b - start);
                let mut both = y.rows(start, n);
                let mut prompts2: Vec<Vec<u32>> = prompt_ids[start..start + n].to_vec();
                if !y_only {
                    both = both.chain(&y_prime.rows(start, n));
                    prompts2.extend_from_slice(&prompt_ids[start..start + n]);
                }
                let scored = match both.ref_logprobs {
                    Some(_) => rollout::score_with_recorded_reference(
                        &compute,
                        &prompts2,
                        &both,
                        &config.rules,
                    )?,
                    None => rollout::score(
                        &compute,
                        &reference.model,
                        &prompts2,
                        &both.tokens,
                        &config.rules,
                    )?,
                };
                let y_rows = rollout::rows(&scored, 0, n)?;
                let pair = PairBatch {
                    // Unscored under Nash-MD-PG: the pair carries y's rows in y′'s place,
                    // which its loss never reads.
                    y_prime: if y_only {
                        y_rows.clone()
                    } else {
                        rollout::rows(&scored, n, n)?
                    },
                    y: y_rows,
                    pref: Tensor::from_iter(
                        pref[start..start + n].iter().map(|&p| p as f32),
                        &ctx.device,
                    )?,
                };
                let loss = objective.loss(&pair)?;
                let share = (&loss * (n as f64 / batch as f64))?;
                accumulated.add(&params, &share.backward()?)?;
                sums.loss += loss.to_scalar::<f32>()? as f64 * n as f64;
                if matches!(
                    objective.algorithm,
                    Algorithm::OnlineIpo | Algorithm::OnlineDpo | Algorithm::Slic
                ) {
                    kl_rows.push(detached(&scored)?)
                }
            }
            // KL is estimated on samples of π. Nash-MD-PG's y: from the log-probs the sampler
            // recorded, both models having decoded the same rows (so a policy equal to the
            // reference reads exactly 0). IPO-MD's samples are the mixture's, so it draws one
            // extra policy sample per prompt for the metric alone, scored by both models: on a
            // memory-bound decode a reference run beside it would cost a whole weight stream
            // per token, more than scoring a few rows.
            match objective.algorithm {
                Algorithm::NashMd => kl_rows.push(rollout::recorded(&y, &ctx.device)?),
                Algorithm::IpoMd => {
                    let keys = rollout::keys(global.iter().copied(), SAMPLE_KL);
                    let extra =
                        rollout::sample(Source::Policy(&sampler), &prompt_ids, &keys, &config)?;
                    sums.tokens += rollout::num_tokens(&extra) as f64;
                    kl_rows.push(rollout::score(
                        &sampler,
                        &reference.model,
                        &prompt_ids,
                        &extra,
                        &config.rules,
                    )?);
                }
                Algorithm::OnlineIpo | Algorithm::OnlineDpo | Algorithm::Slic => {}
            }
            sums.add_kl(&kl_rows)?;
            phases.train_s = t.elapsed().as_secs_f64();
        }
        let t = Instant::now();
        let grads = accumulated.finish(&params)?;

        // 5. All-reduce, clip, AdamW.
        let (grad_norm, lr) =
            super::reduce_clip_step(collective, grads, max_grad_norm, &mut opt, &params)?;

        phases.optimizer_s = t.elapsed().as_secs_f64();

        // 6. Metrics, reduced over the ranks (row- and token-weighted).
        let local_tokens = sums.tokens;
        let totals = sums.reduce(collective)?;
        let step_done = step + 1;
        let secs = t0.elapsed().as_secs_f64();
        tracing::debug!(
            step = step_done,
            rank = collective.rank(),
            tokens = local_tokens,
            sample_s = phases.sample_s,
            judge_s = phases.judge_s,
            train_s = phases.train_s,
            optimizer_s = phases.optimizer_s,
            step_s = secs,
            "step phases"
        );
        let mut logged = vec![
            ("loss", totals.loss / batch as f64),
            ("kl/k1", totals.k1 / totals.sequences.max(1.0)),
            ("kl/k3", totals.k3 / totals.kl_tokens.max(1.0)),
            ("pref/mean", totals.pref / batch as f64),
            ("score/mean", totals.score / (2 * batch) as f64),
            ("prompt/truncated", totals.truncated),
            ("grad_norm", grad_norm),
            ("lr", lr),
            ("tokens_per_s", totals.tokens / secs.max(1e-9)),
        ];
        // The source's own statistics (an ensemble's member means and variance), per scored
        // completion: 2·batch of them (y and y′ of every prompt).
        for (name, sum) in stat_names.iter().zip(&totals.judge) {
            logged.push((name.as_str(), sum / (2 * batch) as f64));
        }
        metrics.log(step_done, Split::Train, &logged);
        if step_done % spec.eval_every.max(1) == 0 || step_done == spec.steps {
            let view = policy.model.detached()?.for_compute(dtype)?;
            last_eval = eval_set.run(&view, step_done, collective)?;
            last_eval.log(&mut metrics, step_done);
        }
        (ctx.progress)(step_done as f64 / spec.steps.max(1) as f64);
        checkpoints
            .after_step(ctx, step_done, &policy, &opt, &mut metrics)
            .await?;
        metrics.maybe_flush().await?;
    }
    checkpoints.finish(ctx).await?;

    ctx.finish(
        &policy,
        &mut metrics,
        spec.steps,
        last_eval.headline(),
        started,
    )
    .await
}

/// Policy and reference share a vocabulary; a task with its own vocabulary needs it.
fn check_vocabularies(
    policy: &super::models::Loaded,
    reference: &super::models::Loaded,
    task: Option<Task>,
) -> Result<(), TrainError> {
    let (p, r) = (
        policy.model.config().vocab_size,
        reference.model.config().vocab_size,
    );
    if p != r {
        return Err(TrainError::Invalid(format!(
            "{}: vocabulary {r} differs from the policy's {p} ({})",
            reference.source, policy.source
        )));
    }
    if let Some((task, v)) = task.and_then(|t| Some((t, t.own_vocabulary()?))) {
        if p != v {
            return Err(TrainError::Invalid(format!(
                "{}: vocabulary {p} is not {}'s {v} (the gold judge reads task token ids)",
                policy.source,
                task.name()
            )));
        }
    }
    Ok(())
}

fn detached(c: &Completions) -> Result<Completions, TrainError> {
    Ok(Completions {
        policy: c.policy.detach(),
        reference: c.reference.detach(),
        mask: c.mask.clone(),
    })
}

/// Where a step's time goes on this rank (seconds): sampling y and y′, the preference source
/// scoring them, scoring under π and μ with the loss and backward pass (and the KL metric's
/// extra sample for IPO-MD), and the gradient all-reduce, clip and AdamW step.
#[derive(Debug, Default, Clone, Copy)]
struct Phases {
    sample_s: f64,
    judge_s: f64,
    train_s: f64,
    optimizer_s: f64,
}

/// One rank's sums of a step's metrics; [`StepSums::reduce`] adds them over the ranks.
#[derive(Debug, Default, Clone)]
struct StepSums {
    /// Σ over micro-batches of (mean loss × rows).
    loss: f64,
    /// Σ k1 over sequences sampled from π, and their count.
    k1: f64,
    sequences: f64,
    /// Σ k3 over the tokens of those sequences, and their count.
    k3: f64,
    kl_tokens: f64,
    /// Σ p.
    pref: f64,
    /// Σ score / unit over y and y′.
    score: f64,
    /// Prompts cut to max_prompt_tokens.
    truncated: f64,
    /// Tokens sampled this step.
    tokens: f64,
    /// Σ of each of the preference source's statistics (`Judge::stat_names`) over y and y′.
    judge: Vec<f64>,
}

impl StepSums {
    /// Adds k1 (per sequence) and k3 (per token) over completions sampled from π.
    fn add_kl(&mut self, rows: &[Completions]) -> Result<(), TrainError> {
        for c in rows {
            self.k1 += k1(c)?.sum_all()?.to_scalar::<f32>()? as f64;
            self.sequences += c.mask.dim(0)? as f64;
            let tokens = c.mask.sum_all()?.to_scalar::<f32>()? as f64;
            self.k3 += masked_mean(&k3(c)?, &c.mask)?.to_scalar::<f32>()? as f64 * tokens;
            self.kl_tokens += tokens;
        }
        Ok(())
    }

    /// The sums over every rank (the same bits on each).
    fn reduce(self, collective: &mut dyn Collective) -> Result<StepSums, TrainError> {
        let mut v = vec![
            self.loss,
            self.k1,
            self.sequences,
            self.k3,
            self.kl_tokens,
            self.pref,
            self.score,
            self.truncated,
            self.tokens,
        ];
        v.extend(&self.judge);
        collective.all_reduce_sum_f64(&mut v)?;
        let judge = v.split_off(9);
        let [loss, k1, sequences, k3, kl_tokens, pref, score, truncated, tokens] = v[..] else {
            unreachable!("nine sums");
        };
        Ok(StepSums {
            loss,
            k1,
            sequences,
            k3,
            kl_tokens,
            pref,
            score,
            truncated,
            tokens,
            judge,
        })
    }
}
