//! Every self-play algorithm through the training loop (docs/algorithms.md §3): online IPO,
//! IPO-MD, Nash-MD-PG with each `nash_kl_grad`, online DPO and SLiC with each label kind. Each
//! case runs one step of `selfplay::run` on a tiny policy against a different tiny reference,
//! then recomputes the step independently of `crate::objectives`:
//!
//! - the same samples and preferences (same streams, same gold judge), scored in one batch
//!   (the loop scores per micro-batch), the reference by its own scoring pass (the loop takes
//!   IPO-MD's and Nash-MD-PG's reference log-probs from the sampler, so the tolerances below
//!   also bound the difference between the two);
//! - the objective by hand in f64 from those per-token log-probs, with its gradient with
//!   respect to every policy log-prob written out by hand (and, for the losses whose value
//!   means something, checked by central differences of the f64 loss);
//! - the parameter gradient as the backward pass of Σ G·log π, G the hand gradient.
//!
//! The loop's logged `loss` and `grad_norm` must match, and so must its gradient of every
//! parameter, read back from the saved model: with lr = 1, ε = 1, no weight decay and no
//! clipping, AdamW's first step is Δθ = −g/(|g| + 1) per element, so g = −Δθ/(1 − |Δθ|).

use crate::test_support::block_on;
use candle_core::{DType, Device, Tensor};
use mirrorplay_proto::v1::{
    model_source, train_task, Labels as LabelsSpec, ModelSource, NashKlGrad as NashSpec,
    SelfplayAlgorithm,
};
use serde_json::Value;

use super::prompts::{PromptFormat, Prompts};
use super::rollout::{self, Source, SAMPLE_Y, SAMPLE_Y_PRIME};
use super::tests::{selfplay, tiny, try_run};
use super::{judges, models};
use crate::preference::{preferences, PromptRow};
use crate::tasks::Task;

const SEED: u64 = 7;
const BATCH: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Case {
    algorithm: SelfplayAlgorithm,
    nash: NashSpec,
    labels: LabelsSpec,
    kl_coef: f64,
}

impl Case {
    fn new(algorithm: SelfplayAlgorithm, kl_coef: f64) -> Case {
        Case {
            algorithm,
            nash: NashSpec::Sequence,
            labels: LabelsSpec::Hard,
            kl_coef,
        }
    }
}

/// The per-token log-probs of the step's 2·B completions (rows 0..B are y, B..2B are y′) and
/// the preferences p = P(y ≻ y′), all in f64.
struct Scored {
    policy: Vec<Vec<f64>>,
    reference: Vec<Vec<f64>>,
    mask: Vec<Vec<f64>>,
    pref: Vec<f64>,
}

impl Scored {
    /// log π(y) − log μ(y) of row r under `policy` (which may be a perturbed copy).
    fn ratio(&self, policy: &[Vec<f64>], r: usize) -> f64 {
        (0..self.mask[r].len())
            .filter(|&t| self.mask[r][t] > 0.0)
            .map(|t| policy[r][t] - self.reference[r][t])
            .sum()
    }
}

/// −log σ(x), computed stably in f64.
fn softplus_neg(x: f64) -> f64 {
    if x > 0.0 {
        (-x).exp().ln_1p()
    } else {
        -x + x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The pair loss f(x) of DPO / SLiC at margin x = h(y_w, y_l) and its derivative.
fn pair_loss(case: Case, x: f64) -> (f64, f64) {
    let tau = case.kl_coef;
    match case.algorithm {
        // −log σ(τx), derivative −τ·σ(−τx).
        SelfplayAlgorithm::OnlineDpo => (softplus_neg(tau * x), -tau * sigmoid(-tau * x)),
        // max(0, 1 − τx), derivative −τ where the hinge is active.
        SelfplayAlgorithm::Slic => {
            let margin = 1.0 - tau * x;
            if margin > 0.0 {
                (margin, -tau)
            } else {
                (0.0, 0.0)
            }
        }
        other => unreachable!("{other:?} has no pair loss"),
    }
}

/// The objective by hand, from the log-probs `policy` (`s.policy` or a perturbation of it):
/// the batch-mean loss and its gradient with respect to each policy log-prob.
fn by_hand(case: Case, s: &Scored, policy: &[Vec<f64>]) -> (f64, Vec<Vec<f64>>) {
    let b = s.pref.len();
    let tau = case.kl_coef;
    let mut grad: Vec<Vec<f64>> = s.mask.iter().map(|m| vec![0.0; m.len()]).collect();
    let mut loss = 0.0;
    // Adds dL/dh · ∂h/∂ℓ: +1 on y's completion tokens, −1 on y′'s.
    let through_h = |grad: &mut Vec<Vec<f64>>, row: usize, dh: f64| {
        for (r, sign) in [(row, 1.0), (b + row, -1.0)] {
            for (g, m) in grad[r].iter_mut().zip(&s.mask[r]) {
                *g += sign * dh * m;
            }
        }
    };
    for i in 0..b {
        let p = s.pref[i];
        let h = s.ratio(policy, i) - s.ratio(policy, b + i);
        match case.algorithm {
            SelfplayAlgorithm::OnlineIpo | SelfplayAlgorithm::IpoMd => {
                // (h − (p − ½)/τ)².
                let e = h - (p - 0.5) / tau;
                loss += e * e / b as f64;
                through_h(&mut grad, i, 2.0 * e / b as f64);
            }
            SelfplayAlgorithm::OnlineDpo | SelfplayAlgorithm::Slic => match case.labels {
                LabelsSpec::Soft => {
                    let (fwd, dfwd) = pair_loss(case, h);
                    let (bwd, dbwd) = pair_loss(case, -h);
                    loss += (p * fwd + (1.0 - p) * bwd) / b as f64;
                    through_h(&mut grad, i, (p * dfwd - (1.0 - p) * dbwd) / b as f64);
                }
                _ => {
                    let sign = if p >= 0.5 { 1.0 } else { -1.0 };
                    let (f, df) = pair_loss(case, sign * h);
                    loss += f / b as f64;
                    through_h(&mut grad, i, sign * df / b as f64);
                }
            },
            SelfplayAlgorithm::NashMd => {
                // −(p − ½)·Σ_t ℓ_t + τ·Σ_t c_t·ℓ_t with the stop-gradient KL coefficient c_t
                // (docs/algorithms.md §3); y′ only decides p.
                let m = &s.mask[i];
                let d: Vec<f64> = (0..m.len())
                    .map(|t| m[t] * (s.policy[i][t] - s.reference[i][t]))
                    .collect();
                let total: f64 = d.iter().sum();
                for t in 0..m.len() {
                    if m[t] == 0.0 {
                        continue;
                    }
                    let c = match case.nash {
                        NashSpec::ToGo => d[t..].iter().sum::<f64>(),
                        NashSpec::Token => d[t],
                        _ => total,
                    };
                    let coef = -(p - 0.5) + tau * c;
                    loss += coef * policy[i][t] / b as f64;
                    grad[i][t] = coef / b as f64;
                }
            }
            SelfplayAlgorithm::Unspecified => unreachable!(),
        }
    }
    (loss, grad)
}

fn f64_rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap()
}

/// A tiny Goodhart-Digits model of `tiny()`'s shape with other weights, saved under `dir`.
fn other_reference(dir: &std::path::Path) -> ModelSource {
    use crate::model::{init_random, Pretrained, SaveOptions};
    use crate::tasks::vocab::TinyShape;
    let shape = TinyShape {
        hidden_size: 32,
        num_layers: 1,
        num_heads: 2,
        num_kv_heads: 1,
        intermediate_size: 64,
        initializer_range: 0.0,
    };
    let (config, tokenizer) = Task::GoodhartDigits.tiny_model(shape).unwrap().unwrap();
    let model = init_random(&config, SEED + 100, false, &Device::Cpu).unwrap();
    let path = dir.join("reference");
    block_on(
        Pretrained::from_parts(model, Some(tokenizer))
            .unwrap()
            .save(path.to_str().unwrap(), &SaveOptions::default()),
    )
    .unwrap();
    ModelSource {
        source: Some(model_source::Source::Url(path.to_str().unwrap().into())),
    }
}

/// The one-step spec of `case`: B prompts in two micro-batches, AdamW with lr = 1 and ε = 1,
/// no weight decay, no clipping, a reference that is not the policy.
fn spec(case: Case, reference: ModelSource) -> train_task::Spec {
    let mut spec = selfplay();
    let train_task::Spec::Selfplay(s) = &mut spec else {
        unreachable!()
    };
    s.set_algorithm(case.algorithm);
    s.set_nash_kl_grad(case.nash);
    s.set_labels(case.labels);
    s.kl_coef = case.kl_coef;
    s.reference = Some(reference);
    s.steps = 1;
    s.batch_prompts = BATCH as u32;
    s.grad_accum = 2;
    s.eval_every = 1;
    s.eval_prompts = 2;
    let o = s.optimizer.as_mut().unwrap();
    (o.lr, o.eps, o.weight_decay, o.max_grad_norm) = (1.0, 1.0, 0.0, 0.0);
    spec
}

/// The step recomputed outside the loop: its samples, preferences and log-probs, with the
/// policy's log-probs graph-connected to its parameters.
fn rescore(
    case: Case,
    spec: &mirrorplay_proto::v1::SelfplaySpec,
) -> (models::Loaded, Tensor, Scored) {
    let policy = block_on(models::load(&tiny(), true, SEED, &Device::Cpu)).unwrap();
    let reference = block_on(models::load(
        spec.reference.as_ref().unwrap(),
        false,
        SEED,
        &Device::Cpu,
    ))
    .unwrap();
    let task = Some(Task::GoodhartDigits);
    let sampling = spec.sampling.unwrap();
    let prompts = block_on(Prompts::load(
        spec.prompts.as_ref().unwrap(),
        task,
        SEED,
        PromptFormat {
            tokenizer: policy.tokenizer.clone(),
            chat: false,
            max_prompt_tokens: spec.max_prompt_tokens as usize,
        },
        spec.eval_prompts as usize,
    ))
    .unwrap();
    let rows: Vec<PromptRow> = (0..BATCH as u64)
        .map(|g| prompts.get(0, BATCH as u64, g).unwrap())
        .collect();
    let ids: Vec<Vec<u32>> = rows.iter().map(|r| r.ids.clone()).collect();
    let rules =
        rollout::rules(task, &sampling, &policy.eos_token_ids, policy.pad_token_id).unwrap();
    let config = rollout::generate_config(&rules, &sampling, SEED, 0);
    let sampler = policy.model.detached().unwrap();
    let mixture = Source::Mixture {
        policy: &sampler,
        reference: &reference.model,
        mixture_coef: spec.mixture_coef,
    };
    let global = 0..BATCH as u64;
    let y_keys = rollout::keys(global.clone(), SAMPLE_Y);
    let y_prime_keys = rollout::keys(global, SAMPLE_Y_PRIME);
    let twice: Vec<Vec<u32>> = ids.iter().chain(&ids).cloned().collect();
    let both_keys: Vec<_> = y_keys.iter().chain(&y_prime_keys).cloned().collect();
    let completions = match case.algorithm {
        SelfplayAlgorithm::NashMd => {
            let mut y = rollout::sample(Source::Policy(&sampler), &ids, &y_keys, &config).unwrap();
            y.extend(rollout::sample(mixture, &ids, &y_prime_keys, &config).unwrap());
            y
        }
        SelfplayAlgorithm::IpoMd => rollout::sample(mixture, &twice, &both_keys, &config).unwrap(),
        _ => rollout::sample(Source::Policy(&sampler), &twice, &both_keys, &config).unwrap(),
    };
    let judge = judges::gold(Task::GoodhartDigits, &policy);
    let refs: Vec<&PromptRow> = rows.iter().collect();
    let s_y = judge.scores(&refs, &completions[..BATCH]).unwrap();
    let s_y_prime = judge.scores(&refs, &completions[BATCH..]).unwrap();
    let pref = preferences(
        &s_y,
        &s_y_prime,
        judge.unit(),
        spec.preference.as_ref().unwrap().temperature,
    );
    let compute = policy.model.for_compute(DType::F32).unwrap();
    let scored = rollout::score(&compute, &reference.model, &twice, &completions, &rules).unwrap();
    let mask = scored.mask.clone();
    // Padding may hold −∞: keep it out of Σ G·log π (and of its gradient).
    let graph = mask
        .gt(0.0)
        .unwrap()
        .where_cond(&scored.policy, &scored.policy.zeros_like().unwrap())
        .unwrap();
    let s = Scored {
        policy: f64_rows(&scored.policy),
        reference: f64_rows(&scored.reference),
        mask: f64_rows(&mask),
        pref,
    };
    (policy, graph, s)
}

/// Central differences of the f64 loss at two completion tokens (one of y, one of y′) match
/// the hand gradient: the gradient is that of the loss written above it.
fn check_hand_gradient(case: Case, s: &Scored, grad: &[Vec<f64>]) {
    for row in [0, BATCH] {
        let t = (0..s.mask[row].len())
            .find(|&t| s.mask[row][t] > 0.0)
            .unwrap();
        let step = 1e-6;
        let at = |d: f64| {
            let mut lp = s.policy.clone();
            lp[row][t] += d;
            by_hand(case, s, &lp).0
        };
        let numeric = (at(step) - at(-step)) / (2.0 * step);
        assert!(
            (numeric - grad[row][t]).abs() <= 1e-6 * grad[row][t].abs().max(1.0),
            "{case:?}: dL/dℓ[{row}][{t}] by hand {} vs central difference {numeric}",
            grad[row][t]
        );
    }
}

fn check(case: Case) {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(case, other_reference(dir.path()));
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let (result, lines) = try_run(spec.clone(), &out);
    result.unwrap();
    let train: Value = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["split"] == "train")
        .unwrap();
    let (loop_loss, loop_norm) = (
        train["loss"].as_f64().unwrap(),
        train["grad_norm"].as_f64().unwrap(),
    );

    let train_task::Spec::Selfplay(sp) = &spec else {
        unreachable!()
    };
    let (policy, graph, s) = rescore(case, sp);
    let (loss, grad) = by_hand(case, &s, &s.policy);
    if case.algorithm != SelfplayAlgorithm::NashMd {
        check_hand_gradient(case, &s, &grad);
    }
    assert!(
        loss.is_finite() && loss != 0.0,
        "{case:?}: a degenerate loss {loss}"
    );
    assert!(
        (loop_loss - loss).abs() <= 1e-4 * loss.abs().max(1.0),
        "{case:?}: the loop's loss {loop_loss}, by hand {loss}"
    );

    // Parameter gradients of the hand objective: backward of Σ G·log π.
    let g = Tensor::from_vec(
        grad.iter().flatten().map(|&x| x as f32).collect::<Vec<_>>(),
        (grad.len(), grad[0].len()),
        &Device::Cpu,
    )
    .unwrap();
    let grads = (g * &graph).unwrap().sum_all().unwrap().backward().unwrap();
    let saved =
        candle_core::safetensors::load(out.join("model/model.safetensors"), &Device::Cpu).unwrap();
    let (mut hand_sq, mut diff_sq, mut compared) = (0.0, 0.0, 0);
    for (name, var) in policy.model.vars().unwrap() {
        let flat = |t: &Tensor| -> Vec<f64> {
            t.flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let hand = grads
            .get(var.as_tensor())
            .map_or_else(|| vec![0.0; var.elem_count()], flat);
        let after = flat(
            saved
                .get(name)
                .unwrap_or_else(|| panic!("{name} not saved")),
        );
        let before = flat(var.as_tensor());
        for ((h, a), b) in hand.iter().zip(&after).zip(&before) {
            let delta = a - b;
            let from_loop = -delta / (1.0 - delta.abs());
            hand_sq += h * h;
            diff_sq += (h - from_loop) * (h - from_loop);
            compared += 1;
        }
    }
    let hand_norm = f64::sqrt(hand_sq);
    assert!(
        compared > 1000 && hand_norm > 1e-6,
        "{case:?}: {compared} {hand_norm}"
    );
    assert!(
        (loop_norm - hand_norm).abs() <= 1e-4 * hand_norm,
        "{case:?}: the loop's grad_norm {loop_norm}, by hand {hand_norm}"
    );
    assert!(
        diff_sq.sqrt() <= 1e-3 * hand_norm,
        "{case:?}: the loop's gradient is {} away from the hand one (norm {hand_norm})",
        diff_sq.sqrt()
    );
}

#[test]
fn online_ipo_step_matches_the_objective_by_hand() {
    check(Case::new(SelfplayAlgorithm::OnlineIpo, 0.05));
}

#[test]
fn ipo_md_step_matches_the_objective_by_hand() {
    check(Case::new(SelfplayAlgorithm::IpoMd, 0.05));
}

#[test]
fn nash_md_steps_match_the_objective_by_hand_for_each_kl_gradient() {
    for nash in [NashSpec::Sequence, NashSpec::ToGo, NashSpec::Token] {
        check(Case {
            nash,
            ..Case::new(SelfplayAlgorithm::NashMd, 0.05)
        });
    }
}

#[test]
fn online_dpo_steps_match_the_objective_by_hand_for_each_label_kind() {
    for labels in [LabelsSpec::Hard, LabelsSpec::Soft] {
        check(Case {
            labels,
            ..Case::new(SelfplayAlgorithm::OnlineDpo, 0.1)
        });
    }
}

#[test]
fn slic_steps_match_the_objective_by_hand_for_each_label_kind() {
    // τ = 0.5 so that some pairs sit past the hinge (zero loss and gradient).
    for labels in [LabelsSpec::Hard, LabelsSpec::Soft] {
        check(Case {
            labels,
            ..Case::new(SelfplayAlgorithm::Slic, 0.5)
        });
    }
}
