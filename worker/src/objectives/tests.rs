//! Objectives against the independent PyTorch implementation (scripts/objective_fixtures.py,
//! fixture under worker/tests/fixtures/objectives/), plus the identities docs/algorithms.md §3
//! states.

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

use super::*;

const FIXTURE: &str = include_str!("../../tests/fixtures/objectives/objectives.json");
const TOL: f64 = 1e-6;

fn fixture() -> Value {
    serde_json::from_str(FIXTURE).unwrap()
}

fn tensor(v: &Value) -> Tensor {
    fn flat(v: &Value, shape: &mut Vec<usize>, out: &mut Vec<f64>, depth: usize) {
        match v {
            Value::Array(items) => {
                if shape.len() == depth {
                    shape.push(items.len());
                }
                items.iter().for_each(|x| flat(x, shape, out, depth + 1));
            }
            x => out.push(x.as_f64().unwrap()),
        }
    }
    let (mut shape, mut data) = (vec![], vec![]);
    flat(v, &mut shape, &mut data, 0);
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_close(found: &Tensor, expected: &Tensor, what: &str) {
    assert_eq!(found.dims(), expected.dims(), "{what}: shape");
    for (i, (a, b)) in values(found).iter().zip(values(expected)).enumerate() {
        assert!((a - b).abs() <= TOL, "{what}[{i}]: found {a}, expected {b}");
    }
}

/// The fixture's pair batch, with the policy log-probs as Vars so gradients can be read.
struct Inputs {
    batch: PairBatch,
    policy_y: Var,
    policy_y_prime: Var,
}

fn inputs(f: &Value) -> Inputs {
    let i = &f["inputs"];
    let policy_y = Var::from_tensor(&tensor(&i["policy_y"])).unwrap();
    let policy_y_prime = Var::from_tensor(&tensor(&i["policy_y_prime"])).unwrap();
    let batch = PairBatch {
        y: Completions {
            policy: policy_y.as_tensor().clone(),
            reference: tensor(&i["reference_y"]),
            mask: tensor(&i["mask_y"]),
        },
        y_prime: Completions {
            policy: policy_y_prime.as_tensor().clone(),
            reference: tensor(&i["reference_y_prime"]),
            mask: tensor(&i["mask_y_prime"]),
        },
        pref: tensor(&i["pref"]),
    };
    Inputs {
        batch,
        policy_y,
        policy_y_prime,
    }
}

fn loss_of(name: &str, batch: &PairBatch, kl_coef: f64) -> Tensor {
    match name {
        "ipo" => ipo_loss(batch, kl_coef),
        "nash_md_pg_sequence" => {
            nash_md_pg_loss(&batch.y, &batch.pref, kl_coef, NashKlGrad::Sequence)
        }
        "nash_md_pg_to_go" => nash_md_pg_loss(&batch.y, &batch.pref, kl_coef, NashKlGrad::ToGo),
        "nash_md_pg_token" => nash_md_pg_loss(&batch.y, &batch.pref, kl_coef, NashKlGrad::Token),
        "online_dpo_hard" => online_dpo_loss(batch, kl_coef, Labels::Hard),
        "online_dpo_soft" => online_dpo_loss(batch, kl_coef, Labels::Soft),
        "online_slic_hard" => online_slic_loss(batch, kl_coef, Labels::Hard),
        "online_slic_soft" => online_slic_loss(batch, kl_coef, Labels::Soft),
        "winner_nll" => winner_nll(batch),
        "sft" => sft_loss(&batch.y.policy, &batch.y.mask),
        other => panic!("unknown fixture case {other}"),
    }
    .unwrap()
}

#[test]
fn losses_and_gradients_match_pytorch() {
    let f = fixture();
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 11);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let kl_coef = case["kl_coef"].as_f64().unwrap();
        let x = inputs(&f);
        let loss = loss_of(name, &x.batch, kl_coef);
        assert_eq!(loss.rank(), 0, "{name}: scalar loss");
        let expected = case["loss"].as_f64().unwrap();
        let found = loss.to_scalar::<f64>().unwrap();
        assert!(
            (found - expected).abs() <= TOL,
            "{name} τ={kl_coef}: loss {found} vs {expected}"
        );
        let grads = loss.backward().unwrap();
        let zeros_yp = x.policy_y_prime.zeros_like().unwrap();
        let g_y = grads.get(x.policy_y.as_tensor()).unwrap();
        let g_yp = grads.get(x.policy_y_prime.as_tensor()).unwrap_or(&zeros_yp);
        assert_close(g_y, &tensor(&case["grad_y"]), &format!("{name}: ∂L/∂ℓ(y)"));
        assert_close(
            g_yp,
            &tensor(&case["grad_y_prime"]),
            &format!("{name}: ∂L/∂ℓ(y′)"),
        );
    }
}

#[test]
fn bradley_terry_and_kl_metrics_match_pytorch() {
    let f = fixture();
    let i = &f["inputs"];
    let rw = Var::from_tensor(&tensor(&i["reward_w"])).unwrap();
    let rl = Var::from_tensor(&tensor(&i["reward_l"])).unwrap();
    let loss = bradley_terry_loss(rw.as_tensor(), rl.as_tensor()).unwrap();
    let bt = &f["bradley_terry"];
    assert!((loss.to_scalar::<f64>().unwrap() - bt["loss"].as_f64().unwrap()).abs() <= TOL);
    let grads = loss.backward().unwrap();
    assert_close(
        grads.get(rw.as_tensor()).unwrap(),
        &tensor(&bt["grad_w"]),
        "BT ∂L/∂r_w",
    );
    assert_close(
        grads.get(rl.as_tensor()).unwrap(),
        &tensor(&bt["grad_l"]),
        "BT ∂L/∂r_l",
    );

    let x = inputs(&f);
    let m = &f["metrics"];
    assert_close(&k1(&x.batch.y).unwrap(), &tensor(&m["k1"]), "k1");
    assert_close(&k3(&x.batch.y).unwrap(), &tensor(&m["k3"]), "k3");
    let exact = exact_kl(
        &tensor(&i["policy_logprobs_btv"]),
        &tensor(&i["reference_logprobs_btv"]),
    )
    .unwrap();
    assert_close(&exact, &tensor(&m["exact_kl"]), "exact KL");
    // The k3 token mean is the masked mean of the per-token values.
    let k3_mean = masked_mean(&k3(&x.batch.y).unwrap(), &x.batch.y.mask)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let flat = values(&tensor(&m["k3"]));
    let n_tokens: f64 = values(&x.batch.y.mask).iter().sum();
    assert!((k3_mean - flat.iter().sum::<f64>() / n_tokens).abs() <= TOL);
}

#[test]
fn exact_kl_is_zero_for_equal_distributions_and_ignores_impossible_tokens() {
    let lp = Tensor::new(
        &[[[0.5f64.ln(), 0.5f64.ln(), f64::NEG_INFINITY]]],
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(values(&exact_kl(&lp, &lp).unwrap()), vec![0.0]);
}

/// p·(h − 1/2τ)² + (1−p)·(h′ − 1/2τ)² = (h − (p−½)/τ)² + p(1−p)/τ² with h′ = −h
/// (docs/algorithms.md §3, online IPO), checked on the fixture's h for several p and τ, and the IPO
/// loss equals the right side's first term.
#[test]
fn ipo_identity_holds() {
    let x = inputs(&fixture());
    let h = values(&x.batch.h().unwrap());
    for tau in [0.1, 0.5, 1.0, 3.0] {
        for p in [0.0, 0.03, 0.5, 0.77, 1.0] {
            for &h in &h {
                let lhs = p * (h - 0.5 / tau).powi(2) + (1.0 - p) * (-h - 0.5 / tau).powi(2);
                let rhs = (h - (p - 0.5) / tau).powi(2) + p * (1.0 - p) / (tau * tau);
                assert!(
                    (lhs - rhs).abs() <= 1e-9 * lhs.abs().max(1.0),
                    "τ={tau} p={p} h={h}: {lhs} vs {rhs}"
                );
            }
            let batch = PairBatch {
                pref: x.batch.pref.ones_like().unwrap().affine(p, 0.0).unwrap(),
                ..x.batch.clone()
            };
            let loss = ipo_loss(&batch, tau).unwrap().to_scalar::<f64>().unwrap();
            let soft: f64 = h
                .iter()
                .map(|&h| {
                    p * (h - 0.5 / tau).powi(2) + (1.0 - p) * (-h - 0.5 / tau).powi(2)
                        - p * (1.0 - p) / (tau * tau)
                })
                .sum::<f64>()
                / h.len() as f64;
            assert!(
                (loss - soft).abs() <= 1e-9 * soft.abs().max(1.0),
                "τ={tau} p={p}: {loss} vs {soft}"
            );
        }
    }
}

/// ∂L/∂ℓ_t for each `nash_kl_grad`, computed by hand from docs/algorithms.md §3 (B rows, mean):
/// sequence: (−(p−½) + τ·Σ_s d_s)/B;  to_go: (−(p−½) + τ·Σ_{s≥t} d_s)/B;  token: (−(p−½) + τ·d_t)/B,
/// with d_s = ℓ_s − ℓ_s^ref on completion tokens and 0 off the mask. For `sequence` this is
/// −ĝ/B with ĝ = ∇log π(y)·(p − ½ − τ·(log π(y) − log μ(y))), the paper's ascent direction.
#[test]
fn nash_md_pg_gradients_are_the_stated_ones() {
    let x = inputs(&fixture());
    let tau = 0.25;
    let (b, t) = x.batch.y.policy.dims2().unwrap();
    let pol = x.batch.y.policy.to_vec2::<f64>().unwrap();
    let rf = x.batch.y.reference.to_vec2::<f64>().unwrap();
    let mask = x.batch.y.mask.to_vec2::<f64>().unwrap();
    let pref = x.batch.pref.to_vec1::<f64>().unwrap();
    for kind in [NashKlGrad::Sequence, NashKlGrad::ToGo, NashKlGrad::Token] {
        let loss = nash_md_pg_loss(&x.batch.y, &x.batch.pref, tau, kind).unwrap();
        let grad = loss
            .backward()
            .unwrap()
            .get(x.policy_y.as_tensor())
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for r in 0..b {
            let d: Vec<f64> = (0..t)
                .map(|s| (pol[r][s] - rf[r][s]) * mask[r][s])
                .collect();
            for c in 0..t {
                let coef = match kind {
                    NashKlGrad::Sequence => d.iter().sum::<f64>(),
                    NashKlGrad::ToGo => d[c..].iter().sum::<f64>(),
                    NashKlGrad::Token => d[c],
                };
                let expected = mask[r][c] * (-(pref[r] - 0.5) + tau * coef) / b as f64;
                assert!(
                    (grad[r][c] - expected).abs() <= 1e-12,
                    "{kind:?} [{r},{c}]: {} vs {expected}",
                    grad[r][c]
                );
            }
        }
    }
    // The y′ log-probs never receive a gradient: y′ only enters through p.
    let loss = nash_md_pg_loss(&x.batch.y, &x.batch.pref, tau, NashKlGrad::Sequence).unwrap();
    assert!(loss
        .backward()
        .unwrap()
        .get(x.policy_y_prime.as_tensor())
        .is_none());
}

/// At the first step π = μ, so h = 0 exactly: DPO's gradient must be −τ·σ(0)·(±1)/B there
/// (a relu/abs-based softplus in candle would give 1.5× that).
#[test]
fn dpo_gradient_is_exact_at_h_zero() {
    let dev = Device::Cpu;
    let lp = Var::from_tensor(&Tensor::new(&[[-1.0f64, -2.0]], &dev).unwrap()).unwrap();
    let c = Completions {
        policy: lp.as_tensor().clone(),
        reference: lp.as_tensor().detach(),
        mask: Tensor::ones((1, 2), DType::F64, &dev).unwrap(),
    };
    let batch = PairBatch {
        y: c.clone(),
        y_prime: Completions {
            policy: c.policy.detach(),
            ..c
        },
        pref: Tensor::new(&[0.7f64], &dev).unwrap(),
    };
    let loss = online_dpo_loss(&batch, 0.5, Labels::Hard).unwrap();
    assert!((loss.to_scalar::<f64>().unwrap() - 2f64.ln()).abs() < 1e-12);
    let g = loss
        .backward()
        .unwrap()
        .get(lp.as_tensor())
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    assert!(
        (g[0][0] + 0.25).abs() < 1e-12 && (g[0][1] + 0.25).abs() < 1e-12,
        "{g:?}"
    );
}

/// Large margins stay finite in f32 (no exp overflow in either branch or its gradient).
#[test]
fn losses_are_finite_for_extreme_margins_in_f32() {
    let dev = Device::Cpu;
    let lp = Var::from_tensor(&Tensor::new(&[[-500.0f32], [-0.001]], &dev).unwrap()).unwrap();
    let mask = Tensor::ones((2, 1), DType::F32, &dev).unwrap();
    let y = Completions {
        policy: lp.as_tensor().clone(),
        reference: Tensor::new(&[[-0.001f32], [-500.0]], &dev).unwrap(),
        mask: mask.clone(),
    };
    let yp = Completions {
        policy: Tensor::new(&[[-1.0f32], [-1.0]], &dev).unwrap(),
        reference: Tensor::new(&[[-1.0f32], [-1.0]], &dev).unwrap(),
        mask,
    };
    let batch = PairBatch {
        y,
        y_prime: yp,
        pref: Tensor::new(&[0.9f32, 0.1], &dev).unwrap(),
    };
    for labels in [Labels::Hard, Labels::Soft] {
        let loss = online_dpo_loss(&batch, 1.0, labels).unwrap();
        assert!(loss.to_scalar::<f32>().unwrap().is_finite());
        let g = loss
            .backward()
            .unwrap()
            .get(lp.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{labels:?}: {g:?}");
    }
}

#[test]
fn objective_dispatch_adds_the_rpo_term_and_refuses_it_for_nash_md() {
    let x = inputs(&fixture());
    let base = Objective {
        algorithm: Algorithm::OnlineDpo,
        kl_coef: 0.3,
        nash_kl_grad: NashKlGrad::Sequence,
        labels: Labels::Soft,
        sft_coef: 0.0,
    };
    let plain = base.loss(&x.batch).unwrap().to_scalar::<f64>().unwrap();
    let with_rpo = Objective {
        sft_coef: 0.2,
        ..base
    }
    .loss(&x.batch)
    .unwrap()
    .to_scalar::<f64>()
    .unwrap();
    let nll = winner_nll(&x.batch).unwrap().to_scalar::<f64>().unwrap();
    assert!((with_rpo - (plain + 0.2 * nll)).abs() < 1e-12);
    let nash = Objective {
        algorithm: Algorithm::NashMd,
        sft_coef: 0.1,
        ..base
    };
    assert!(nash
        .loss(&x.batch)
        .unwrap_err()
        .to_string()
        .contains("sft_coef"));
}

/// Padding may hold −∞ (or NaN) log-probs: losses, gradients and metrics ignore it.
#[test]
fn padding_values_are_ignored_even_when_not_finite() {
    let f = fixture();
    let clean = inputs(&f);
    let dirty = inputs(&f);
    let poison = |c: &Completions, v: f64| {
        let fill = c.policy.ones_like().unwrap().affine(v, 0.0).unwrap();
        let keep = c.mask.gt(0.0).unwrap();
        (
            keep.where_cond(&c.policy, &fill).unwrap(),
            keep.where_cond(&c.reference, &fill).unwrap(),
        )
    };
    let (py, ry) = poison(&dirty.batch.y, f64::NEG_INFINITY);
    let (pyp, ryp) = poison(&dirty.batch.y_prime, f64::NAN);
    // Rebuild the dirty batch on fresh Vars carrying the poisoned values.
    let vy = Var::from_tensor(&py).unwrap();
    let vyp = Var::from_tensor(&pyp).unwrap();
    let batch = PairBatch {
        y: Completions {
            policy: vy.as_tensor().clone(),
            reference: ry,
            mask: dirty.batch.y.mask.clone(),
        },
        y_prime: Completions {
            policy: vyp.as_tensor().clone(),
            reference: ryp,
            mask: dirty.batch.y_prime.mask.clone(),
        },
        pref: dirty.batch.pref.clone(),
    };
    for case in f["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let tau = case["kl_coef"].as_f64().unwrap();
        let want = loss_of(name, &clean.batch, tau).to_scalar::<f64>().unwrap();
        let loss = loss_of(name, &batch, tau);
        assert_eq!(loss.to_scalar::<f64>().unwrap(), want, "{name}");
        let grads = loss.backward().unwrap();
        for v in [&vy, &vyp] {
            if let Some(g) = grads.get(v.as_tensor()) {
                assert!(
                    values(g).iter().all(|x| x.is_finite()),
                    "{name}: non-finite gradient"
                );
            }
        }
    }
    assert_eq!(
        values(&k1(&batch.y).unwrap()),
        values(&k1(&clean.batch.y).unwrap())
    );
    assert_eq!(
        values(&k3(&batch.y_prime).unwrap()),
        values(&k3(&clean.batch.y_prime).unwrap())
    );
}

/// The same fixture in f32 (the training dtype) agrees to f32 precision.
#[test]
fn losses_match_pytorch_in_f32() {
    let f = fixture();
    let x = inputs(&f);
    let f32_of = |c: &Completions| Completions {
        policy: c.policy.to_dtype(DType::F32).unwrap(),
        reference: c.reference.to_dtype(DType::F32).unwrap(),
        mask: c.mask.to_dtype(DType::F32).unwrap(),
    };
    let batch = PairBatch {
        y: f32_of(&x.batch.y),
        y_prime: f32_of(&x.batch.y_prime),
        pref: x.batch.pref.to_dtype(DType::F32).unwrap(),
    };
    for case in f["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let expected = case["loss"].as_f64().unwrap();
        let found = loss_of(name, &batch, case["kl_coef"].as_f64().unwrap())
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!(
            (found - expected).abs() <= 1e-5 * expected.abs().max(1.0),
            "{name}: {found} vs {expected}"
        );
    }
}
