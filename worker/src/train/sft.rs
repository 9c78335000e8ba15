//! The SFT loop (docs/algorithms.md §3 "SFT", used to make reference policies). One optimizer step:
//! take this rank's slice of the step's examples → count the global batch's completion tokens
//! (a scalar all-reduce) → per micro-batch score the completions under π (graph), mean token
//! cross-entropy scaled by the micro-batch's share of the global tokens, backward, accumulate →
//! all-reduce the gradients → clip → AdamW → metrics reduced over the ranks (loss, grad_norm,
//! lr, tokens_per_s; every `eval_every` steps eval/gold of policy samples on the task's
//! held-out prompts, split across the ranks).

use std::time::Instant;

use mirrorplay_proto::v1::{SftSpec, TrainResult};

use super::eval::{Eval, EvalSet};
use super::metrics::Split;
use super::prompts::{task_row, PromptFormat};
use super::{data::Examples, judges, rollout, shard, Ctx, TrainError};
use crate::collective::Collective;
use crate::objectives::sft_loss;
use crate::optim::GradAccumulator;
use crate::sample::score_completions;
use crate::tasks::{Split as TaskSplit, Task};

pub async fn run(
    ctx: &Ctx<'_>,
    spec: &SftSpec,
    collective: &mut dyn Collective,
) -> Result<TrainResult, TrainError> {
    let started = Instant::now();
    let missing = |what: &str| TrainError::Invalid(format!("no {what} in the spec"));
    let policy = ctx.load_model(spec.init.as_ref(), "init", true).await?;
    let dtype = super::compute_dtype(spec.compute_dtype());
    let eos = policy.eos_token_ids.first().copied();
    let format = PromptFormat {
        tokenizer: policy.tokenizer.clone(),
        chat: spec.chat,
        max_prompt_tokens: spec.max_prompt_tokens as usize,
    };
    let examples = Examples::load(
        spec.data.as_ref().ok_or_else(|| missing("data"))?,
        ctx.seed,
        &format,
        eos,
    )
    .await?;
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
    let eval_set = match (&spec.eval_task[..], spec.sampling) {
        ("", _) | (_, None) => None,
        (name, Some(sampling)) => {
            let task = Task::named(name)?;
            let rules = rollout::rules(
                Some(task),
                &sampling,
                &policy.eos_token_ids,
                policy.pad_token_id,
            )?;
            Some(EvalSet::new(
                ctx.seed,
                spec.eval_prompts as usize,
                |range| {
                    range
                        .map(|i| task_row(task, ctx.seed, TaskSplit::HeldOut, i as u64, &format))
                        .collect()
                },
                &sampling,
                &rules,
                vec![judges::gold(task, &policy)],
                None,
                collective,
            )?)
        }
    };
    let mut last_eval: Option<Eval> = None;

    let batch = spec.batch_size as u64;
    let rows = shard(batch as usize, collective.rank(), collective.world_size());
    // grad_accum splits this rank's rows.
    let micro = rows.len().div_ceil(spec.grad_accum.max(1) as usize).max(1);
    for step in first_step..spec.steps {
        ctx.check_cancelled()?;
        let t0 = Instant::now();
        // This rank's examples of the step's global batch.
        let (prompts, completions): (Vec<Vec<u32>>, Vec<Vec<u32>>) = rows
            .clone()
            .map(|g| examples.get(step, batch, g as u64))
            .unzip();
        let b = prompts.len();
        // The loss is a mean over the global batch's completion tokens: count them first.
        let local_tokens: usize = completions.iter().map(Vec::len).sum();
        let mut global_tokens = [local_tokens as f64];
        collective.all_reduce_sum_f64(&mut global_tokens)?;
        let global_tokens = global_tokens[0].max(1.0);

        // Score, loss and backward per micro-batch, each micro-batch's token-mean loss scaled
        // by its share of the global batch's tokens.
        // The step's forward weights: cast from the f32 master weights, graph attached.
        let compute = policy.model.for_compute(dtype)?;
        let mut accumulated = GradAccumulator::new();
        let mut loss_sum = 0.0;
        for start in (0..b).step_by(micro) {
            let n = micro.min(b - start);
            let scored = score_completions(
                &compute,
                &prompts[start..start + n],
                &completions[start..start + n],
            )?;
            let tokens: usize = completions[start..start + n].iter().map(Vec::len).sum();
            let loss = sft_loss(&scored.logprobs, &scored.mask)?;
            let share = (&loss * (tokens as f64 / global_tokens))?;
            accumulated.add(&params, &share.backward()?)?;
            loss_sum += loss.to_scalar::<f32>()? as f64 * tokens as f64;
        }
        let grads = accumulated.finish(&params)?;

        // All-reduce, clip, AdamW.
        let (grad_norm, lr) =
            super::reduce_clip_step(collective, grads, max_grad_norm, &mut opt, &params)?;

        // Metrics, reduced over the ranks.
        let mut loss_total = [loss_sum];
        collective.all_reduce_sum_f64(&mut loss_total)?;
        let step_done = step + 1;
        metrics.log(
            step_done,
            Split::Train,
            &[
                ("loss", loss_total[0] / global_tokens),
                ("grad_norm", grad_norm),
                ("lr", lr),
                (
                    "tokens_per_s",
                    global_tokens / t0.elapsed().as_secs_f64().max(1e-9),
                ),
            ],
        );
        if let Some(set) = &eval_set {
            if step_done % spec.eval_every.max(1) == 0 || step_done == spec.steps {
                let view = policy.model.detached()?.for_compute(dtype)?;
                let e = set.run(&view, step_done, collective)?;
                e.log(&mut metrics, step_done);
                last_eval = Some(e);
            }
        }
        (ctx.progress)(step_done as f64 / spec.steps.max(1) as f64);
        checkpoints
            .after_step(ctx, step_done, &policy, &opt, &mut metrics)
            .await?;
        metrics.maybe_flush().await?;
    }
    checkpoints.finish(ctx).await?;

    let eval = last_eval.map_or((f64::NAN, f64::NAN), |e| e.headline());
    ctx.finish(&policy, &mut metrics, spec.steps, eval, started)
        .await
}
