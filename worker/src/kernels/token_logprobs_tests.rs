//! The target-token log-probabilities and their gradient against the composed candle ops
//! (`log_softmax`, `gather`, the additive mask) evaluated in f64; the gate; errors.

use candle_core::{DType, Device, Tensor, Var};

use super::token_logprobs::{forward, Rows, TokenLogprobsError};
use super::token_logprobs_op::{try_token_logprobs, MIN_VOCAB};
use crate::model::{gather_last, log_softmax};
use crate::test_support::uniform;

const B: usize = 2;
const L: usize = 3;
const V: usize = MIN_VOCAB + 5;

/// A mask table of 3 slots: none, every third token forbidden, only token 7 allowed.
fn table() -> Vec<f32> {
    let mut t = vec![0f32; 3 * V];
    for j in 0..V {
        if j % 3 == 0 {
            t[V + j] = f32::NEG_INFINITY;
        }
        if j != 7 {
            t[2 * V + j] = f32::NEG_INFINITY;
        }
    }
    t
}

fn case() -> (Vec<f32>, Vec<Vec<u32>>, Vec<u32>, Vec<f32>) {
    let logits = uniform(B * L * V, 21, -4.0, 4.0);
    let targets = vec![vec![1, 7, 500], vec![7, 1001, 2]];
    let slots = vec![0, 2, 1, 2, 1, 0];
    // Weights of each position in the loss (a padding position weighs 0).
    let weights = vec![0.5, -1.0, 2.0, 1.5, 0.25, 0.0];
    (logits, targets, slots, weights)
}

/// The composed path in f64: gather(log_softmax(x + table[slot]), y), and d/dx of Σ w·logp.
fn composed(
    logits: &[f32],
    targets: &[Vec<u32>],
    slots: &[u32],
    weights: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let dev = Device::Cpu;
    let x = Var::from_tensor(
        &Tensor::from_slice(logits, (B, L, V), &dev)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap(),
    )
    .unwrap();
    let tab = Tensor::from_vec(table(), (3, V), &dev)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let idx = Tensor::from_slice(slots, B * L, &dev).unwrap();
    let mask = tab
        .index_select(&idx, 0)
        .unwrap()
        .reshape((B, L, V))
        .unwrap();
    let logp = gather_last(
        &log_softmax(&(x.as_tensor() + mask).unwrap()).unwrap(),
        targets,
    )
    .unwrap();
    let w = Tensor::from_slice(weights, (B, L), &dev)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let grads = (logp.clone() * w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = grads
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    (logp.flatten_all().unwrap().to_vec1::<f64>().unwrap(), g)
}

#[test]
fn values_and_gradients_match_the_composed_ops() -> candle_core::Result<()> {
    let (logits, targets, slots, weights) = case();
    let (want, want_grad) = composed(&logits, &targets, &slots, &weights);
    let x = Var::from_tensor(&Tensor::from_slice(&logits, (B, L, V), &Device::Cpu)?)?;
    let logp = try_token_logprobs(x.as_tensor(), &targets, Some((table(), slots)))?
        .expect("the gate admits f32 CPU logits of a large vocabulary");
    assert_eq!(logp.dims(), [B, L]);
    for (g, w) in logp.flatten_all()?.to_vec1::<f32>()?.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-5, "log-prob {g} vs {w}");
    }
    let w = Tensor::from_slice(&weights, (B, L), &Device::Cpu)?;
    let grads = (logp * w)?.sum_all()?.backward()?;
    let got = grads
        .get(x.as_tensor())
        .expect("a gradient")
        .flatten_all()?
        .to_vec1::<f32>()?;
    for (e, (g, w)) in got.iter().zip(&want_grad).enumerate() {
        assert!(
            (*g as f64 - w).abs() < 1e-6,
            "gradient element {e}: {g} vs {w}"
        );
    }
    // Forbidden tokens get exactly zero gradient; the weight-0 position none at all.
    assert_eq!(got[V + 3], 0.0); // position 1, slot 2: only token 7 allowed
    assert!(got[5 * V..].iter().all(|&g| g == 0.0));
    Ok(())
}

#[test]
fn without_a_mask_it_is_the_plain_log_softmax() -> candle_core::Result<()> {
    let (logits, targets, _, _) = case();
    let x = Tensor::from_slice(&logits, (B, L, V), &Device::Cpu)?;
    let got = try_token_logprobs(&x, &targets, None)?
        .unwrap()
        .flatten_all()?
        .to_vec1::<f32>()?;
    let want = gather_last(&log_softmax(&x.to_dtype(DType::F64)?).unwrap(), &targets)
        .unwrap()
        .flatten_all()?
        .to_vec1::<f64>()?;
    for (g, w) in got.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
    }
    Ok(())
}

#[test]
fn the_gate_keeps_small_vocabularies_and_other_dtypes_on_the_composed_ops(
) -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let small = Tensor::zeros((1, 1, MIN_VOCAB - 1), DType::F32, &dev)?;
    assert!(try_token_logprobs(&small, &[vec![0]], None)?.is_none());
    let f64s = Tensor::zeros((1, 1, V), DType::F64, &dev)?;
    assert!(try_token_logprobs(&f64s, &[vec![0]], None)?.is_none());
    let x = Tensor::zeros((1, 2, V), DType::F32, &dev)?;
    let e = try_token_logprobs(&x, &[vec![0]], None).unwrap_err();
    assert!(e.to_string().contains("targets are not [1][2]"), "{e}");
    Ok(())
}

#[test]
fn bad_targets_slots_and_lengths_are_errors() {
    let logits = vec![0f32; 2 * 4];
    let rows = |targets, table, slots| Rows {
        logits: &logits,
        vocab: 4,
        targets,
        table,
        slots,
    };
    let mut out = vec![0f32; 2];
    assert!(matches!(
        forward(rows(&[0, 4], None, &[]), &mut out),
        Err(TokenLogprobsError::Target {
            row: 1,
            target: 4,
            vocab: 4
        })
    ));
    let table = vec![0f32; 4];
    assert!(matches!(
        forward(rows(&[0, 1], Some(&table), &[0, 1]), &mut out),
        Err(TokenLogprobsError::Slot {
            row: 1,
            slot: 1,
            slots: 1
        })
    ));
    let e = forward(rows(&[0, 1], None, &[]), &mut [0f32; 3]).unwrap_err();
    assert!(
        e.to_string().contains("out has 3 elements, expected 2"),
        "{e}"
    );
}
