//! The training kernels (`train_op`) against the composed candle ops they replace
//! (`model::ops`), evaluated in f64 with candle's own autograd: values and gradients of a
//! weighted sum of each op's output; a whole model's parameter gradients the same way; the
//! gate.

use candle_core::{DType, Device, Tensor, Var};

use super::train_op::{try_linear, try_masked_softmax, try_rms_norm, try_rope, try_swiglu};
use crate::model::{init_random, ops, ModelConfig};
use crate::sample::score_completions;
use crate::test_support::uniform;

/// f32 and f64 trainable copies of the same values.
fn vars(values: &[f32], shape: &[usize]) -> (Var, Var) {
    let t = Tensor::from_slice(values, shape, &Device::Cpu).unwrap();
    (
        Var::from_tensor(&t).unwrap(),
        Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap(),
    )
}

fn constant(values: &[f32], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_slice(values, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Σ c ⊙ y with fixed coefficients c (so every output element has its own weight).
fn weighted_sum(y: &Tensor, seed: u64) -> Tensor {
    let c = uniform(y.elem_count(), seed, -1.0, 1.0);
    let c = constant(&c, y.dims(), y.dtype());
    (y * c).unwrap().sum_all().unwrap()
}

fn flat64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Element-wise |a − b| ≤ tol · (1 + |b|).
fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: fused {x} vs composed {y}"
        );
    }
}

/// The fused op's output and its inputs' gradients (f32) against the composed op's (f64).
fn check_op(
    name: &str,
    inputs: &[(&[f32], &[usize])],
    fused: impl Fn(&[Tensor]) -> Option<Tensor>,
    composed: impl Fn(&[Tensor]) -> Tensor,
    tol: f64,
) {
    let (v32, v64): (Vec<Var>, Vec<Var>) = inputs.iter().map(|(v, s)| vars(v, s)).unzip();
    let t32: Vec<Tensor> = v32.iter().map(|v| v.as_tensor().clone()).collect();
    let t64: Vec<Tensor> = v64.iter().map(|v| v.as_tensor().clone()).collect();
    let y32 = fused(&t32).unwrap_or_else(|| panic!("{name}: the gate refused"));
    let y64 = composed(&t64);
    assert_eq!(y32.dims(), y64.dims(), "{name}: shape");
    assert_close(&format!("{name} value"), &flat64(&y32), &flat64(&y64), tol);
    let g32 = weighted_sum(&y32, 7).backward().unwrap();
    let g64 = weighted_sum(&y64, 7).backward().unwrap();
    for (i, (a, b)) in v32.iter().zip(&v64).enumerate() {
        let ga = g32.get(a.as_tensor()).expect("fused gradient");
        let gb = g64.get(b.as_tensor()).expect("composed gradient");
        assert_eq!(ga.dims(), a.dims(), "{name}: gradient {i} shape");
        assert_close(
            &format!("{name} gradient {i}"),
            &flat64(ga),
            &flat64(gb),
            tol,
        );
    }
}

#[test]
fn linear_matches_the_composed_matmul_and_its_gradients() {
    let (rows, inp, out) = (20, 192, 200);
    let x = uniform(rows * inp, 1, -1.0, 1.0);
    let w = uniform(out * inp, 2, -0.5, 0.5);
    check_op(
        "linear",
        &[(&x, &[rows, inp]), (&w, &[out, inp])],
        |t| try_linear(&t[0], &t[1]).unwrap(),
        |t| t[0].matmul(&t[1].t().unwrap()).unwrap(),
        1e-5,
    );
}

#[test]
fn rms_norm_matches_the_composed_norm_and_its_gradients() {
    let x = uniform(3 * 5 * 64, 3, -2.0, 2.0);
    let w = uniform(64, 4, 0.5, 1.5);
    check_op(
        "rms_norm",
        &[(&x, &[3, 5, 64]), (&w, &[64])],
        |t| try_rms_norm(&t[0], &t[1], 1e-5).unwrap(),
        |t| ops::rms_norm(&t[0], &t[1], 1e-5).unwrap(),
        1e-5,
    );
}

#[test]
fn masked_softmax_matches_the_composed_softmax_and_its_gradient() {
    let (b, kvh, g, t, s) = (2, 3, 2, 4, 6);
    let scores = uniform(b * kvh * g * t * s, 5, -3.0, 3.0);
    // Causal over the last t of s keys, and batch row 1 cannot see key 0 (padding).
    let mut mask = vec![0f32; b * t * s];
    for bi in 0..b {
        for ti in 0..t {
            for si in 0..s {
                if si > s - t + ti || (bi == 1 && si == 0) {
                    mask[(bi * t + ti) * s + si] = f32::NEG_INFINITY;
                }
            }
        }
    }
    let (m32, m64) = (
        constant(&mask, &[b, 1, 1, t, s], DType::F32),
        constant(&mask, &[b, 1, 1, t, s], DType::F64),
    );
    check_op(
        "masked_softmax",
        &[(&scores, &[b, kvh, g, t, s])],
        |x| try_masked_softmax(&x[0], &m32).unwrap(),
        |x| ops::softmax(&x[0].broadcast_add(&m64).unwrap()).unwrap(),
        1e-5,
    );
}

#[test]
fn rope_matches_the_composed_rotation_and_its_gradient_on_a_strided_view() {
    let (b, h, t, d) = (2, 3, 4, 8);
    // x as the decoder hands it over: [b, t, h, d] viewed as [b, h, t, d].
    let x = uniform(b * t * h * d, 6, -1.0, 1.0);
    let angles = uniform(b * t * d / 2, 7, -3.0, 3.0);
    let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
    let cs = |v: &[f32], dtype| constant(v, &[b, 1, t, d / 2], dtype);
    let (c32, s32) = (cs(&cos, DType::F32), cs(&sin, DType::F32));
    let (c64, s64) = (cs(&cos, DType::F64), cs(&sin, DType::F64));
    check_op(
        "rope",
        &[(&x, &[b, t, h, d])],
        |v| try_rope(&v[0].transpose(1, 2).unwrap(), &c32, &s32).unwrap(),
        |v| ops::rope(&v[0].transpose(1, 2).unwrap(), &c64, &s64).unwrap(),
        1e-5,
    );
}

#[test]
fn swiglu_matches_the_composed_gate_and_its_gradients() {
    let g = uniform(3 * 50, 8, -6.0, 6.0);
    let u = uniform(3 * 50, 9, -2.0, 2.0);
    check_op(
        "swiglu",
        &[(&g, &[3, 50]), (&u, &[3, 50])],
        |t| try_swiglu(&t[0], &t[1]).unwrap(),
        |t| ops::swiglu(&t[0], &t[1]).unwrap(),
        1e-5,
    );
}

#[test]
fn the_gate_refuses_untracked_non_f32_and_small_operands() {
    let dev = Device::Cpu;
    let x = Tensor::ones((20, 192), DType::F32, &dev).unwrap();
    let w = Tensor::ones((200, 192), DType::F32, &dev).unwrap();
    // Nothing tracked: the inference kernels' business.
    assert!(try_linear(&x, &w).unwrap().is_none());
    assert!(try_rms_norm(&x, &w.get(0).unwrap(), 1e-5)
        .unwrap()
        .is_none());
    assert!(try_swiglu(&x, &x).unwrap().is_none());
    let wv = Var::from_tensor(&w).unwrap();
    assert!(try_linear(&x, wv.as_tensor()).unwrap().is_some());
    // f64, a small weight, a few rows: the composed ops.
    let w64 = Var::from_tensor(&w.to_dtype(DType::F64).unwrap()).unwrap();
    let x64 = x.to_dtype(DType::F64).unwrap();
    assert!(try_linear(&x64, w64.as_tensor()).unwrap().is_none());
    let small = Var::from_tensor(&Tensor::ones((16, 192), DType::F32, &dev).unwrap()).unwrap();
    assert!(try_linear(&x, small.as_tensor()).unwrap().is_none());
    let few = Tensor::ones((16, 192), DType::F32, &dev).unwrap();
    assert!(try_linear(&few, wv.as_tensor()).unwrap().is_none());
}

/// A model the fused kernels take (hidden 192): every parameter's gradient of a scoring loss
/// with the training kernels (f32) against the composed ops (the same model in f64, which the
/// gate refuses), as relative L2 error per parameter.
#[test]
fn a_whole_model_gets_the_composed_gradients_through_the_training_kernels() {
    let dev = Device::Cpu;
    let config = ModelConfig::tiny_with(64, 192, 2, 3, 1, 384);
    // The f32 model must take the training kernels, or the comparison below would be the
    // compositions against themselves.
    assert!(
        super::skinny_op::enabled(),
        "{} = 0 turns off the kernels this test exercises",
        super::skinny_op::ENABLE_VAR
    );
    assert!(
        super::rowwise_op::model_takes_kernels(config.hidden_size),
        "the kernels' gate changed: hidden {} keeps the compositions",
        config.hidden_size
    );
    let m32 = init_random(&config, 3, true, &dev).unwrap();
    let m64 = m32.to(DType::F64, &dev).unwrap();
    let prompts: Vec<Vec<u32>> = (0..3)
        .map(|r| (0..6).map(|i| (r * 7 + i * 3) % 60 + 1).collect())
        .collect();
    let completions: Vec<Vec<u32>> = (0..3)
        .map(|r| {
            (0..(4 + 2 * r as usize))
                .map(|i| ((r as usize * 11 + i * 5) % 60 + 1) as u32)
                .collect()
        })
        .collect();
    let loss = |m: &crate::model::Model| {
        let scored = score_completions(m, &prompts, &completions).unwrap();
        weighted_sum(&scored.logprobs, 11)
    };
    let (l32, l64) = (loss(&m32), loss(&m64));
    assert_close("loss", &flat64(&l32), &flat64(&l64), 1e-5);
    let (g32, g64) = (l32.backward().unwrap(), l64.backward().unwrap());
    let (v32, v64) = (m32.vars().unwrap(), m64.vars().unwrap());
    assert_eq!(v32.len(), v64.len());
    for (name, var) in v32 {
        let a = flat64(
            g32.get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}")),
        );
        let b = flat64(g64.get(v64[name].as_tensor()).unwrap());
        let diff: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
        assert!(norm > 0.0, "{name}: zero gradient");
        assert!(
            diff <= 1e-4 * norm,
            "{name}: relative error {}",
            diff / norm
        );
    }
}
