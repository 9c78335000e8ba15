//! Training one member of a Bradley–Terry reward-model ensemble (docs/algorithms.md §3,
//! "Bradley–Terry reward loss"). One step: the member's next `batch_size` train pairs (its
//! bootstrap resample when asked, in its epoch order) → r(x, y_w) and r(x, y_l) in one batched
//! classify call → L = mean −log σ(r_w − r_l) → backward → clip → AdamW → metric line (`loss`,
//! `accuracy` of the batch, `lr`, `grad_norm`); every `eval_every` steps and at the end an eval
//! line (`eval/accuracy`, `eval/accuracy_clean` on the held-out pairs). Then the final train
//! and held-out accuracies, the normalisation statistics (`super::norm`) and the member saved
//! as a Hugging Face `*ForSequenceClassification` directory at `task.output`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use mirrorplay_proto::v1::{RewardMemberResult, RewardMemberTask, RewardTrainSpec};

use super::backbone;
use super::norm::{self, NormSpec};
use super::pairs::{self, Order, Pair, PairSpec, Pairs};
use super::RewardError;
use crate::collective::Local;
use crate::model::Model;
use crate::objectives::bradley_terry_loss;
use crate::optim::{AdamW, Gradients};
use crate::report::{MetricsSink, Progress};
use crate::sample::{classify_completions, pooled_completions};
use crate::train::metrics::{MetricsLog, Split};
use crate::train::models::Loaded;
use crate::train::prompts::PromptFormat;
use crate::train::{self, compute_dtype};

/// The sequence-classification head's tensor (the only one trained with a shared backbone).
pub(crate) const HEAD: &str = "score.weight";

/// Pairs scored per forward pass in evaluation (two rows each).
const EVAL_BATCH: usize = 64;

/// Accuracies against the trained labels and (when known) the clean ones; ties count ½.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    pub labels: f64,
    pub clean: f64,
}

/// Trains member `task.member` (see the module doc).
pub async fn run(
    task: &RewardMemberTask,
    device: &Device,
    reports: (Progress<'_>, MetricsSink<'_>),
    cancel: &AtomicBool,
) -> Result<RewardMemberResult, RewardError> {
    Ok(train(task, device, reports, cancel).await?.1)
}

/// [`run`], also handing back the trained (and saved) member.
pub async fn train(
    task: &RewardMemberTask,
    device: &Device,
    reports: (Progress<'_>, MetricsSink<'_>),
    cancel: &AtomicBool,
) -> Result<(Loaded, RewardMemberResult), RewardError> {
    let started = Instant::now();
    let (progress, metrics_sink) = reports;
    let spec = task
        .spec
        .as_ref()
        .ok_or_else(|| RewardError::Invalid("the reward member task carries no spec".into()))?;
    let output = task.output.trim_end_matches('/').to_string();
    let member_seed = pairs::member_seed(task.seed, task.member);
    let init = spec
        .init
        .as_ref()
        .ok_or_else(|| RewardError::Invalid("reward_train: no `init` model".into()))?;
    // A shared backbone is the same for every member: a tiny one is drawn from the job seed,
    // only the head from the member seed (docs/algorithms.md §3, "Shared backbone").
    let backbone_seed = if spec.shared_backbone {
        task.seed
    } else {
        member_seed
    };
    let member = backbone::load(init, backbone_seed, member_seed, device).await?;
    let format = PromptFormat {
        tokenizer: member.tokenizer.clone(),
        chat: spec.chat,
        max_prompt_tokens: spec.max_prompt_tokens as usize,
    };
    let pairs = load_pairs(spec, task.seed, &member, &format).await?;
    let train = member_pairs(&pairs.train, spec.bootstrap, member_seed);
    let dtype = compute_dtype(spec.compute_dtype());

    let mut params = member
        .model
        .vars()
        .ok_or_else(|| RewardError::Invalid("the reward model is not trainable".into()))?
        .clone();
    if spec.shared_backbone {
        params.retain(|name, _| name == HEAD);
    }
    let (adamw, schedule) = train::optimizer(spec.optimizer.as_ref(), spec.steps)?;
    let max_grad_norm = spec.optimizer.as_ref().map_or(0.0, |o| o.max_grad_norm);
    let mut opt = AdamW::new(&params, adamw, schedule).map_err(train::TrainError::from)?;
    let mut metrics = MetricsLog::new(&output, 0, metrics_sink, true)?;
    let mut order = Order::new(train.len(), member_seed);
    let batch = spec.batch_size.max(1) as usize;
    let mut final_loss = f64::NAN;
    for step in 0..spec.steps {
        if cancel.load(Ordering::Relaxed) {
            return Err(RewardError::Invalid(format!(
                "reward member {}: the task was given up by the worker runtime",
                task.member
            )));
        }
        let chosen: Vec<&Pair> = order
            .batch(step, batch)
            .into_iter()
            .map(|i| train[i])
            .collect();
        let compute = member.model.for_compute(dtype)?;
        let (r_w, r_l) = if spec.shared_backbone {
            head_rewards(&compute, &chosen)?
        } else {
            rewards(&compute, &chosen)?
        };
        let loss = bradley_terry_loss(&r_w, &r_l)?;
        let grads =
            Gradients::from_store(&params, &loss.backward()?).map_err(train::TrainError::from)?;
        let (grad_norm, lr) =
            train::reduce_clip_step(&mut Local, grads, max_grad_norm, &mut opt, &params)?;
        final_loss = f64::from(loss.to_scalar::<f32>()?);
        let step_done = step + 1;
        metrics.log(
            step_done,
            Split::Train,
            &[
                ("loss", final_loss),
                ("accuracy", accuracy(&r_w, &r_l, &chosen)?.labels),
                ("lr", lr),
                ("grad_norm", grad_norm),
            ],
        );
        let eval_every = spec.eval_every.max(1);
        if step_done % eval_every == 0 && step_done != spec.steps {
            log_eval(
                &mut metrics,
                step_done,
                &evaluate(&member.model, dtype, &pairs.eval)?,
            );
        }
        progress(step_done as f64 / spec.steps.max(1) as f64 * 0.95);
        metrics.maybe_flush().await?;
    }
    let train_acc = evaluate(&member.model, dtype, &pairs.train)?;
    let eval_acc = evaluate(&member.model, dtype, &pairs.eval)?;
    log_eval(&mut metrics, spec.steps, &eval_acc);

    let norm = match &spec.norm_policy {
        Some(policy) => Some(
            norm::fit(
                &NormSpec {
                    policy,
                    prompts: spec.norm_prompts as usize,
                    samples: spec.norm_samples as usize,
                    sampling: spec.sampling.as_ref().ok_or_else(|| {
                        RewardError::Invalid("reward_train: norm_policy needs `sampling`".into())
                    })?,
                    seed: task.seed,
                    dtype,
                },
                &member,
                &pairs,
                &format,
                device,
            )
            .await?,
        ),
        None => None,
    };
    member.save(&output, None).await?;
    metrics.flush().await?;
    progress(1.0);
    let result = RewardMemberResult {
        member: task.member,
        model_url: output,
        steps: spec.steps,
        train_accuracy: train_acc.labels,
        eval_accuracy: eval_acc.labels,
        train_accuracy_clean: train_acc.clean,
        eval_accuracy_clean: eval_acc.clean,
        has_norm: norm.is_some(),
        norm_mean: norm.map_or(f64::NAN, |n| n.mean),
        norm_std: norm.map_or(f64::NAN, |n| n.std),
        norm_samples: norm.map_or(0, |n| n.samples),
        final_loss,
        wall_s: started.elapsed().as_secs_f64(),
    };
    Ok((member, result))
}

/// The job's pairs, read with the member's tokenizer; task pairs need the task's vocabulary.
async fn load_pairs(
    spec: &RewardTrainSpec,
    seed: u64,
    member: &Loaded,
    format: &PromptFormat,
) -> Result<Pairs, RewardError> {
    let source = spec
        .data
        .as_ref()
        .ok_or_else(|| RewardError::Invalid("reward_train: no `data`".into()))?;
    let pair_spec = PairSpec {
        source,
        train_pairs: spec.train_pairs as usize,
        eval_pairs: spec.eval_pairs as usize,
        label_noise: spec.label_noise,
        seed,
    };
    let pairs = Pairs::load(&pair_spec, format, member.eos_token_ids.first().copied()).await?;
    if let Some(v) = pairs.task.and_then(|t| t.own_vocabulary()) {
        let found = member.model.config().vocab_size;
        if found != v {
            return Err(RewardError::Invalid(format!(
                "{}: vocabulary {found}, but the task's pairs are ids of its own {v}-token \
                 vocabulary (use a tiny model of the task)",
                member.source
            )));
        }
    }
    if pairs.train.is_empty() {
        return Err(RewardError::Invalid("reward_train: no train pairs".into()));
    }
    Ok(pairs)
}

/// The pairs this member trains on: a bootstrap resample (same size, with replacement, from the
/// member seed) or all of them.
pub fn member_pairs(train: &[Pair], bootstrap: bool, member_seed: u64) -> Vec<&Pair> {
    if bootstrap {
        pairs::bootstrap(train.len(), member_seed)
            .into_iter()
            .map(|i| &train[i])
            .collect()
    } else {
        train.iter().collect()
    }
}

/// (r(x, y_w), r(x, y_l)) [B] of `pairs`, both from one classify call over 2B rows.
pub fn rewards(model: &Model, pairs: &[&Pair]) -> Result<(Tensor, Tensor), RewardError> {
    let b = pairs.len();
    let (prompts, completions) = both_sides(pairs);
    let r = classify_completions(model, &prompts, &completions)?.flatten_all()?;
    Ok((r.narrow(0, 0, b)?, r.narrow(0, b, b)?))
}

/// (prompts, completions) of 2B rows: every pair's chosen side, then every rejected side.
fn both_sides(pairs: &[&Pair]) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let prompts = (0..2)
        .flat_map(|_| pairs.iter().map(|p| p.prompt.clone()))
        .collect();
    let completions = pairs
        .iter()
        .map(|p| p.chosen.clone())
        .chain(pairs.iter().map(|p| p.rejected.clone()))
        .collect();
    (prompts, completions)
}

/// [`rewards`] with the gradient reaching only the `score` head: the backbone's pooled
/// features are computed without a graph (a shared, frozen backbone, docs/algorithms.md §3), so
/// a step costs a forward pass and a [B, hidden] × [hidden, 1] backward.
pub fn head_rewards(model: &Model, pairs: &[&Pair]) -> Result<(Tensor, Tensor), RewardError> {
    let b = pairs.len();
    let (prompts, completions) = both_sides(pairs);
    let features = pooled_completions(&model.detached()?, &prompts, &completions)?;
    let head = model
        .tensors()
        .get(HEAD)
        .ok_or_else(|| RewardError::Invalid(format!("the reward model has no `{HEAD}` tensor")))?;
    let r = features.matmul(&head.t()?)?.flatten_all()?;
    let r = if r.dtype() == DType::F32 {
        r
    } else {
        r.to_dtype(DType::F32)?
    };
    Ok((r.narrow(0, 0, b)?, r.narrow(0, b, b)?))
}

/// Accuracy of rewards [B] on `pairs`: r_w > r_l counts 1, a tie ½; against the clean labels
/// (NaN when unknown) a pair whose clean label disagrees counts r_l > r_w.
pub fn accuracy(r_w: &Tensor, r_l: &Tensor, pairs: &[&Pair]) -> Result<Accuracy, RewardError> {
    let (w, l) = (r_w.to_vec1::<f32>()?, r_l.to_vec1::<f32>()?);
    let win = |a: f32, b: f32| f64::from(u8::from(a > b)) + 0.5 * f64::from(u8::from(a == b));
    let n = pairs.len().max(1) as f64;
    let labels = w.iter().zip(&l).map(|(&a, &b)| win(a, b)).sum::<f64>() / n;
    let clean = pairs
        .iter()
        .zip(w.iter().zip(&l))
        .map(|(p, (&a, &b))| match p.clean_agrees {
            Some(true) => Some(win(a, b)),
            Some(false) => Some(win(b, a)),
            None => None,
        })
        .sum::<Option<f64>>()
        .map_or(f64::NAN, |s| s / n);
    Ok(Accuracy { labels, clean })
}

/// Accuracy of the member on `pairs` (no graph; the compute dtype), NaN for no pairs.
pub fn evaluate(model: &Model, dtype: DType, pairs: &[Pair]) -> Result<Accuracy, RewardError> {
    if pairs.is_empty() {
        return Ok(Accuracy {
            labels: f64::NAN,
            clean: f64::NAN,
        });
    }
    let view = model.detached()?.for_compute(dtype)?;
    let (mut labels, mut clean) = (0.0, 0.0);
    for chunk in pairs.chunks(EVAL_BATCH) {
        let refs: Vec<&Pair> = chunk.iter().collect();
        let (w, l) = rewards(&view, &refs)?;
        let a = accuracy(&w, &l, &refs)?;
        labels += a.labels * chunk.len() as f64;
        clean += a.clean * chunk.len() as f64;
    }
    let n = pairs.len() as f64;
    Ok(Accuracy {
        labels: labels / n,
        clean: clean / n,
    })
}

fn log_eval(metrics: &mut MetricsLog<'_>, step: u64, a: &Accuracy) {
    metrics.log(
        step,
        Split::Eval,
        &[
            ("eval/accuracy", a.labels),
            ("eval/accuracy_clean", a.clean),
        ],
    );
}

#[cfg(test)]
#[path = "member_tests.rs"]
pub(crate) mod tests;
