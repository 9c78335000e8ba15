//! The fused row-wise kernels against the train-safe compositions of `model::ops` (run in
//! f64), on shapes large enough to split over the pool; their row independence; and the gates.

use candle_core::{DType, Device, Result, Tensor, Var};

use super::rowwise;
use super::rowwise_op::{try_masked_softmax, try_rms_norm, try_rope, try_swiglu};
use crate::model::ops;

/// Reproducible values in [−scale, scale).
fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    crate::test_support::uniform(len, seed, -scale, scale)
}

fn tensor(v: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Largest |a − b| over all elements, and the largest |b| (for a relative bound).
fn max_diff(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    Ok((diff, scale))
}

fn assert_close(got: &Tensor, want: &Tensor, what: &str) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (diff, scale) = max_diff(got, want)?;
    assert!(
        diff <= 1e-5 * scale.max(1.0),
        "{what}: max |diff| {diff} (scale {scale})"
    );
    Ok(())
}

#[test]
fn rms_norm_matches_the_composed_op() -> Result<()> {
    // 96 rows of 576 (the SmolLM2 width): over the split threshold.
    let x = tensor(values(96 * 576, 1, 3.0), &[4, 24, 576])?;
    let w = tensor(values(576, 2, 1.5), &[576])?;
    let got = try_rms_norm(&x, &w, 1e-5)?.expect("the gate admits plain f32");
    let want = ops::rms_norm(&x.to_dtype(DType::F64)?, &w.to_dtype(DType::F64)?, 1e-5)?;
    assert_close(&got, &want, "rms_norm")
}

#[test]
fn masked_softmax_matches_the_composed_op_with_a_causal_mask() -> Result<()> {
    let (b, kvh, g, t, s) = (2, 3, 3, 5, 37);
    let scores = tensor(values(b * kvh * g * t * s, 3, 8.0), &[b, kvh, g, t, s])?;
    let mut m = vec![0f32; b * t * s];
    for r in 0..b {
        for i in 0..t {
            for j in 0..s {
                // causal over the last t keys, and batch row 1 has its first 4 keys padded.
                let q = s - t + i;
                if j > q || (r == 1 && j < 4) {
                    m[(r * t + i) * s + j] = f32::NEG_INFINITY;
                }
            }
        }
    }
    let mask = tensor(m, &[b, 1, 1, t, s])?;
    let got = try_masked_softmax(&scores, &mask)?.expect("the gate admits plain f32");
    let want = ops::softmax(
        &scores
            .to_dtype(DType::F64)?
            .broadcast_add(&mask.to_dtype(DType::F64)?)?,
    )?;
    assert_close(&got, &want, "masked softmax")?;
    // Masked keys get exactly zero, and every row sums to 1.
    let v = got.flatten_all()?.to_vec1::<f32>()?;
    let row_1_first = ((kvh * g) * t) * s; // batch row 1, head 0, query 0
    assert!(v[row_1_first..row_1_first + 4].iter().all(|&p| p == 0.0));
    for row in v.chunks(s) {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "row sums to {sum}");
    }
    Ok(())
}

#[test]
fn rope_matches_the_composed_op_on_the_transposed_head_view() -> Result<()> {
    let (b, t, h, d) = (2, 7, 9, 64);
    // The decoder's layout: [b, t, h, d] from the projection, viewed as [b, h, t, d].
    let x = tensor(values(b * t * h * d, 4, 2.0), &[b, t, h, d])?.transpose(1, 2)?;
    assert!(!x.is_contiguous());
    let cos = tensor(values(b * t * d / 2, 5, 1.0), &[b, 1, t, d / 2])?;
    let sin = tensor(values(b * t * d / 2, 6, 1.0), &[b, 1, t, d / 2])?;
    let got = try_rope(&x, &cos, &sin)?.expect("the gate admits a strided x");
    assert!(got.is_contiguous());
    let f64_ = |t: &Tensor| t.to_dtype(DType::F64);
    let want = ops::rope(&f64_(&x)?, &f64_(&cos)?, &f64_(&sin)?)?;
    assert_close(&got, &want, "rope")?;
    // A narrowed (offset) view too.
    let narrowed = x.narrow(2, 3, 4)?;
    let (c2, s2) = (
        cos.narrow(2, 3, 4)?.contiguous()?,
        sin.narrow(2, 3, 4)?.contiguous()?,
    );
    let got = try_rope(&narrowed, &c2, &s2)?.expect("admitted");
    let want = ops::rope(&f64_(&narrowed)?, &f64_(&c2)?, &f64_(&s2)?)?;
    assert_close(&got, &want, "rope on an offset view")
}

#[test]
fn swiglu_matches_the_composed_op() -> Result<()> {
    let n = 3 * 1536 * 8; // over the split threshold, not a multiple of the piece size
    let gate = tensor(values(n, 7, 6.0), &[3, 8, 1536])?;
    let up = tensor(values(n, 8, 2.0), &[3, 8, 1536])?;
    let got = try_swiglu(&gate, &up)?.expect("admitted");
    let want = ops::swiglu(&gate.to_dtype(DType::F64)?, &up.to_dtype(DType::F64)?)?;
    assert_close(&got, &want, "swiglu")
}

#[test]
fn a_row_does_not_depend_on_the_other_rows_or_the_split() -> Result<()> {
    let (rows, width) = (128, 576); // split over the pool
    let x = values(rows * width, 9, 3.0);
    let w = values(width, 10, 1.0);
    let mut all = vec![0f32; rows * width];
    rowwise::rms_norm(&x, &w, 1e-6, &mut all).unwrap();
    let mut again = vec![0f32; rows * width];
    rowwise::rms_norm(&x, &w, 1e-6, &mut again).unwrap();
    assert!(all == again, "two runs differ");
    let mut one = vec![0f32; width];
    rowwise::rms_norm(&x[77 * width..78 * width], &w, 1e-6, &mut one).unwrap();
    assert!(
        one[..] == all[77 * width..78 * width],
        "row 77 alone differs"
    );
    Ok(())
}

#[test]
fn gates_refuse_what_the_kernels_do_not_take() -> Result<()> {
    let dev = Device::Cpu;
    let x = tensor(values(4 * 64, 11, 1.0), &[4, 64])?;
    let w = tensor(values(64, 12, 1.0), &[64])?;
    // Tracked by autograd (a training forward): the composed op, with its backward.
    let tracked = Var::from_tensor(&x)?;
    assert!(try_rms_norm(tracked.as_tensor(), &w, 1e-5)?.is_none());
    assert!(try_swiglu(tracked.as_tensor(), &x)?.is_none());
    // Other dtypes, shapes that do not match.
    assert!(try_rms_norm(&x.to_dtype(DType::F64)?, &w.to_dtype(DType::F64)?, 1e-5)?.is_none());
    assert!(try_rms_norm(&x, &w.narrow(0, 0, 32)?, 1e-5)?.is_none());
    assert!(try_swiglu(&x, &x.narrow(1, 0, 32)?)?.is_none());
    let scores = Tensor::zeros((1, 1, 1, 2, 3), DType::F32, &dev)?;
    let bad_mask = Tensor::zeros((1, 1, 1, 2, 4), DType::F32, &dev)?;
    assert!(try_masked_softmax(&scores, &bad_mask)?.is_none());
    let x4 = Tensor::zeros((1, 2, 3, 8), DType::F32, &dev)?;
    let cos_bad = Tensor::zeros((1, 1, 3, 3), DType::F32, &dev)?;
    assert!(try_rope(&x4, &cos_bad, &cos_bad)?.is_none());
    // A gradient through the composed path still reaches every input.
    let y = ops::rms_norm(tracked.as_tensor(), &w, 1e-5)?.sum_all()?;
    let g = y.backward()?;
    assert!(g.get(tracked.as_tensor()).is_some());
    Ok(())
}

#[test]
fn wrong_lengths_are_errors_not_panics() {
    let mut y = vec![0f32; 10];
    assert!(rowwise::rms_norm(&[0.0; 10], &[1.0; 3], 1e-5, &mut y).is_err());
    assert!(rowwise::masked_softmax(&[0.0; 10], &[0.0; 4], 1, 2, 5, &mut y).is_err());
    assert!(rowwise::swiglu(&[0.0; 10], &[0.0; 9], &mut y).is_err());
    let layout = rowwise::Strided4 {
        dims: [1, 1, 2, 4],
        strides: [8, 8, 4, 1],
        offset: 4,
    };
    let mut y8 = vec![0f32; 8];
    let err = rowwise::rope(&[0.0; 8], layout, &[0.0; 4], &[0.0; 4], &mut y8).unwrap_err();
    assert!(err.to_string().contains("storage shorter"), "{err}");
}
