//! The optimizer against PyTorch (scripts/optim_fixtures.py; fixture under
//! worker/tests/fixtures/optim/), save/load continuity, accumulation and schedules.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

use super::*;
use crate::io::Location;

const FIXTURE: &str = include_str!("../../tests/fixtures/optim/adamw.json");

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

struct Fixture {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    init: Vec<Vec<f32>>,
    grads: Vec<Vec<Vec<f32>>>,
    runs: Vec<Value>,
}

fn fixture() -> Fixture {
    let f: Value = serde_json::from_str(FIXTURE).unwrap();
    let names = f["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    let shapes = f["shapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect()
        })
        .collect();
    let init = f["init"].as_array().unwrap().iter().map(floats).collect();
    let grads = f["grads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step.as_array().unwrap().iter().map(floats).collect())
        .collect();
    Fixture {
        names,
        shapes,
        init,
        grads,
        runs: f["runs"].as_array().unwrap().clone(),
    }
}

impl Fixture {
    fn params(&self, values: &[Vec<f32>]) -> Params {
        let dev = Device::Cpu;
        self.names
            .iter()
            .zip(&self.shapes)
            .zip(values)
            .map(|((n, s), v)| {
                (
                    n.clone(),
                    Var::from_tensor(&Tensor::from_vec(v.clone(), s.as_slice(), &dev).unwrap())
                        .unwrap(),
                )
            })
            .collect()
    }

    fn grads(&self, step: usize) -> Gradients {
        let dev = Device::Cpu;
        let map = self
            .names
            .iter()
            .zip(&self.shapes)
            .zip(&self.grads[step])
            .map(|((n, s), g)| {
                (
                    n.clone(),
                    Tensor::from_vec(g.clone(), s.as_slice(), &dev).unwrap(),
                )
            });
        Gradients::from_map(map.collect())
    }
}

/// The run's AdamW config, schedule and clipping norm (None: no clipping).
fn config_of(run: &Value) -> (AdamWConfig, Schedule, Option<f64>) {
    let f = |k: &str| run[k].as_f64().unwrap();
    let decay = match run["decay"].as_str().unwrap() {
        "cosine" => Decay::Cosine,
        "linear" => Decay::Linear,
        _ => Decay::Constant,
    };
    let config = AdamWConfig {
        beta1: f("beta1"),
        beta2: f("beta2"),
        eps: f("eps"),
        weight_decay: f("weight_decay"),
    };
    let schedule = Schedule {
        lr: f("lr"),
        warmup_steps: f("warmup_steps") as u64,
        total_steps: f("total_steps") as u64,
        decay,
    };
    (config, schedule, run["max_grad_norm"].as_f64())
}

fn values(params: &Params) -> Vec<Vec<f32>> {
    params
        .values()
        .map(|v| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

#[test]
fn adamw_with_clipping_and_schedules_matches_pytorch() {
    let fx = fixture();
    for run in &fx.runs {
        let (config, schedule, clip) = config_of(run);
        let params = fx.params(&fx.init);
        let mut opt = AdamW::new(&params, config, schedule).unwrap();
        for (k, expected) in run["steps"].as_array().unwrap().iter().enumerate() {
            let what = format!("{} step {k}", run["decay"]);
            let mut grads = fx.grads(k);
            let grad_norm = match clip {
                Some(max_norm) => grads.clip(max_norm).unwrap(),
                None => grads.global_norm().unwrap(),
            };
            let stats = opt.step(&params, &grads).unwrap();
            assert!(
                (stats.lr - expected["lr"].as_f64().unwrap()).abs() < 1e-15,
                "{what}: lr {}",
                stats.lr
            );
            if let Some(norm) = expected["grad_norm"].as_f64() {
                assert!(
                    (grad_norm - norm).abs() <= 1e-6 * norm.max(1.0),
                    "{what}: grad norm {grad_norm} vs {norm}"
                );
            }
            let want: Vec<Vec<f32>> = expected["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(floats)
                .collect();
            for (name, (found, want)) in fx.names.iter().zip(values(&params).iter().zip(&want)) {
                for (a, b) in found.iter().zip(want) {
                    assert!((a - b).abs() <= 1e-6, "{what} `{name}`: {a} vs {b}");
                }
            }
        }
        assert_eq!(opt.steps_taken(), 12);
    }
}

#[tokio::test]
async fn save_and_load_mid_run_continues_bit_identically() {
    let fx = fixture();
    let (config, schedule, _) = config_of(&fx.runs[0]);
    let dir = tempfile::tempdir().unwrap();
    let loc = |name: &str| Location::parse(dir.path().join(name).to_str().unwrap()).unwrap();

    let straight = fx.params(&fx.init);
    let mut opt = AdamW::new(&straight, config, schedule).unwrap();
    for k in 0..12 {
        opt.step(&straight, &fx.grads(k)).unwrap();
    }
    opt.save(&loc("straight.safetensors")).await.unwrap();

    let first = fx.params(&fx.init);
    let mut opt = AdamW::new(&first, config, schedule).unwrap();
    for k in 0..5 {
        opt.step(&first, &fx.grads(k)).unwrap();
    }
    opt.save(&loc("mid.safetensors")).await.unwrap();
    drop(opt);
    // A new process: parameters restored from their values, optimizer from its file.
    let resumed = fx.params(&values(&first));
    let mut opt = AdamW::load(&loc("mid.safetensors"), &resumed, config, schedule)
        .await
        .unwrap();
    assert_eq!(opt.steps_taken(), 5);
    assert_eq!(opt.next_lr(), schedule.lr_at(5));
    for k in 5..12 {
        opt.step(&resumed, &fx.grads(k)).unwrap();
    }
    opt.save(&loc("resumed.safetensors")).await.unwrap();

    let bits = |p: &Params| {
        values(p)
            .iter()
            .flatten()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&straight), bits(&resumed));
    let a = loc("straight.safetensors").read().await.unwrap();
    let b = loc("resumed.safetensors").read().await.unwrap();
    assert!(a == b, "optimizer state files differ after resuming");
}

#[tokio::test]
async fn load_rejects_a_state_for_other_parameters() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let loc = Location::parse(dir.path().join("opt.safetensors").to_str().unwrap()).unwrap();
    let params = fx.params(&fx.init);
    AdamW::new(&params, AdamWConfig::default(), Schedule::constant(1e-3))
        .unwrap()
        .save(&loc)
        .await
        .unwrap();

    let mut fewer = params.clone();
    fewer.remove("c");
    let err = AdamW::load(
        &loc,
        &fewer,
        AdamWConfig::default(),
        Schedule::constant(1e-3),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`exp_avg/c` belongs to no parameter") && err.contains("opt.safetensors"),
        "{err}"
    );

    let mut reshaped = params.clone();
    reshaped.insert(
        "c".into(),
        Var::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    let err = AdamW::load(
        &loc,
        &reshaped,
        AdamWConfig::default(),
        Schedule::constant(1e-3),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`exp_avg/c` is F32 [4], expected F32 [2, 2]"),
        "{err}"
    );
}

/// y = w·x summed: micro-batch means of a batch-mean loss, each scaled by its share of the batch,
/// sum to the full batch's gradient.
#[test]
fn accumulation_of_scaled_micro_batches_gives_the_full_batch_gradient() {
    let dev = Device::Cpu;
    let w = Var::from_tensor(&Tensor::new(&[0.5f64, -1.0, 2.0], &dev).unwrap()).unwrap();
    let params: Params = BTreeMap::from([("w".to_string(), w.clone())]);
    let x = Tensor::new(
        &[
            [1.0f64, 2.0, 3.0],
            [0.0, -1.0, 4.0],
            [2.0, 2.0, 2.0],
            [-3.0, 1.0, 0.5],
        ],
        &dev,
    )
    .unwrap();
    let loss = |rows: &Tensor| {
        rows.broadcast_mul(w.as_tensor())
            .unwrap()
            .sum(1)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
    };
    let full = Gradients::from_store(&params, &loss(&x).backward().unwrap()).unwrap();
    // Uneven micro-batches (1 and 3 rows), each loss scaled by its share of the batch.
    let mut acc = GradAccumulator::new();
    for (start, n) in [(0, 1), (1, 3)] {
        let share = (loss(&x.narrow(0, start, n).unwrap()) * (n as f64 / 4.0)).unwrap();
        acc.add(&params, &share.backward().unwrap()).unwrap();
    }
    assert_eq!(acc.count(), 2);
    let mean = acc.finish(&params).unwrap();
    let (a, b) = (
        full.tensors()["w"].to_vec1::<f64>().unwrap(),
        mean.tensors()["w"].to_vec1::<f64>().unwrap(),
    );
    for (a, b) in a.iter().zip(&b) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    let zeros = GradAccumulator::new().finish(&params).unwrap();
    assert_eq!(
        zeros.tensors()["w"].to_vec1::<f64>().unwrap(),
        vec![0.0; 3],
        "a rank with no rows contributes zeros"
    );
}

#[test]
fn a_parameter_without_gradient_is_an_error_naming_it() {
    let dev = Device::Cpu;
    let used = Var::new(&[1.0f32], &dev).unwrap();
    let unused = Var::new(&[1.0f32], &dev).unwrap();
    let params: Params = BTreeMap::from([
        ("used".to_string(), used.clone()),
        ("unused".to_string(), unused),
    ]);
    let store = used
        .as_tensor()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let err = Gradients::from_store(&params, &store)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("parameter `unused`: received no gradient"),
        "{err}"
    );
}

#[test]
fn clipping_scales_to_max_norm_and_reports_the_norm_before() {
    let dev = Device::Cpu;
    let map = BTreeMap::from([
        ("a".to_string(), Tensor::new(&[3.0f32], &dev).unwrap()),
        ("b".to_string(), Tensor::new(&[4.0f32], &dev).unwrap()),
    ]);
    let mut g = Gradients::from_map(map.clone());
    assert_eq!(g.clip(10.0).unwrap(), 5.0);
    assert_eq!(g.tensors()["a"].to_vec1::<f32>().unwrap(), vec![3.0]);
    let mut g = Gradients::from_map(map);
    assert_eq!(g.clip(1.0).unwrap(), 5.0);
    assert!((g.global_norm().unwrap() - 1.0).abs() < 1e-6);
}

#[test]
fn schedules_by_hand() {
    let s = |decay| Schedule {
        lr: 1.0,
        warmup_steps: 3,
        total_steps: 13,
        decay,
    };
    // Warmup: 1/4, 2/4, 3/4, then the decay starts at 1.
    for decay in [Decay::Constant, Decay::Linear, Decay::Cosine] {
        let lrs: Vec<f64> = (0..4).map(|k| s(decay).lr_at(k)).collect();
        assert_eq!(lrs, vec![0.25, 0.5, 0.75, 1.0], "{decay:?}");
        assert_eq!(
            s(decay).lr_at(13),
            if decay == Decay::Constant { 1.0 } else { 0.0 }
        );
    }
    assert_eq!(s(Decay::Linear).lr_at(8), 0.5);
    assert!((s(Decay::Cosine).lr_at(8) - 0.5).abs() < 1e-15);
    assert!(
        (s(Decay::Cosine).lr_at(5) - 0.5 * (1.0 + (0.2 * std::f64::consts::PI).cos())).abs()
            < 1e-15
    );
    assert_eq!(s(Decay::Linear).lr_at(100), 0.0);
    assert_eq!(Schedule::constant(3e-4).lr_at(1_000_000), 3e-4);
}

/// The pieces compose as the trainer will use them: a table of logits (a Var) → token log-probs
/// → SFT loss → backward → accumulated gradients → AdamW; the loss falls.
#[test]
fn a_training_loop_on_sft_reduces_the_loss() {
    let dev = Device::Cpu;
    let logits = Var::zeros((4, 6), DType::F32, &dev).unwrap();
    let params: Params = BTreeMap::from([("logits".to_string(), logits.clone())]);
    let schedule = Schedule {
        lr: 0.1,
        warmup_steps: 2,
        total_steps: 30,
        decay: Decay::Cosine,
    };
    let mut opt = AdamW::new(&params, AdamWConfig::default(), schedule).unwrap();
    let targets = Tensor::new(&[[1u32], [3], [0], [5]], &dev).unwrap();
    let mask = Tensor::ones((4, 1), DType::F32, &dev).unwrap();
    let loss_of = |rows: std::ops::Range<usize>| {
        let l = logits
            .as_tensor()
            .narrow(0, rows.start, rows.len())
            .unwrap();
        let lse = l.log_sum_exp(1).unwrap().unsqueeze(1).unwrap();
        let logp = l
            .broadcast_sub(&lse)
            .unwrap()
            .gather(&targets.narrow(0, rows.start, rows.len()).unwrap(), 1)
            .unwrap();
        crate::objectives::sft_loss(&logp, &mask.narrow(0, rows.start, rows.len()).unwrap())
            .unwrap()
    };
    let initial = loss_of(0..4).to_scalar::<f32>().unwrap();
    for _ in 0..30 {
        let mut acc = GradAccumulator::new();
        for half in [0..2, 2..4] {
            // Equal halves with as many tokens each: each is half of the batch's mean.
            let share = (loss_of(half) * 0.5).unwrap();
            acc.add(&params, &share.backward().unwrap()).unwrap();
        }
        opt.step(&params, &acc.finish(&params).unwrap()).unwrap();
    }
    let last = loss_of(0..4).to_scalar::<f32>().unwrap();
    assert!((initial - 6f32.ln()).abs() < 1e-6);
    assert!(last < 0.25 * initial, "loss {initial} -> {last}");
}

#[test]
fn the_global_norm_has_the_bits_of_candles_f64_composition_on_every_layout() {
    let dev = Device::Cpu;
    let random = |shape: &[usize], seed: u64| {
        let n: usize = shape.iter().product();
        let v = crate::test_support::uniform(n, seed, -3.0, 3.0);
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    // Contiguous f32 (the fast pass), a transposed view and an f64 gradient (candle's ops).
    let map = BTreeMap::from([
        ("a".to_string(), random(&[300, 77], 1)),
        ("b".to_string(), random(&[5001], 2)),
        ("c".to_string(), random(&[64, 48], 3).t().unwrap()),
        (
            "d".to_string(),
            random(&[33, 9], 4).to_dtype(DType::F64).unwrap(),
        ),
    ]);
    let mut want = 0.0f64;
    for g in map.values() {
        want += g
            .to_dtype(DType::F64)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
    }
    let got = Gradients::from_map(map).global_norm().unwrap();
    assert_eq!(
        got.to_bits(),
        want.sqrt().to_bits(),
        "{got} vs {}",
        want.sqrt()
    );
}
