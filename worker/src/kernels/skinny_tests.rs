//! The skinny matmul against candle's matmul (in f64), across shapes, kernels and thread
//! counts; its determinism; its errors; and the gate of the candle glue.

use candle_core::{DType, Device, Tensor, Var};

use super::skinny::{detect, matmul_wt, matmul_wt_with, Isa, SkinnyError};
use super::skinny_op::{admits, try_matmul_wt, MAX_ROWS, MIN_WEIGHT_ELEMENTS};

/// Reproducible values in [−1, 1) (a 64-bit LCG).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// candle's x · Wᵀ in f64, and Σ_i |x_i · w_i| per element (the error scale of a dot product).
fn reference(x: &[f32], rows: usize, w: &[f32], n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let dev = Device::Cpu;
    let xt = Tensor::from_slice(x, (rows, k), &dev)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let wt = Tensor::from_slice(w, (n, k), &dev)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let y = xt.matmul(&wt.t().unwrap()).unwrap();
    let scale = xt
        .abs()
        .unwrap()
        .matmul(&wt.abs().unwrap().t().unwrap())
        .unwrap();
    let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    (flat(y), flat(scale))
}

fn assert_close(got: &[f32], want: &[f64], scale: &[f64], what: &str) {
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let tol = 1e-6 * s + 1e-30;
        assert!(
            (g as f64 - w).abs() <= tol,
            "{what}: element {i}: {g} vs {w} (tolerance {tol})"
        );
    }
}

const SHAPES: [(usize, usize); 9] = [
    (1, 1),
    (3, 7),
    (4, 8),
    (5, 9),
    (17, 33),
    (64, 576),
    (130, 1031),
    (257, 64),
    (1000, 40),
];

#[test]
fn matches_candle_for_every_row_count_shape_and_kernel() {
    for &(n, k) in &SHAPES {
        let w = values(n * k, n as u64 * 31 + k as u64);
        for rows in 1..=MAX_ROWS {
            let x = values(rows * k, rows as u64);
            let (want, scale) = reference(&x, rows, &w, n, k);
            for isa in [Isa::Portable, detect()] {
                for parallel in [false, true] {
                    let mut y = vec![f32::NAN; rows * n];
                    matmul_wt_with(&x, rows, &w, n, k, &mut y, parallel, isa).unwrap();
                    let what = format!("rows {rows}, n {n}, k {k}, {isa:?}, parallel {parallel}");
                    assert_close(&y, &want, &scale, &what);
                }
            }
        }
    }
}

#[test]
fn results_are_bitwise_the_same_across_runs_and_thread_counts() {
    // Large enough that the default call splits over the pool (in timing-dependent chunks).
    let (rows, n, k) = (8, 1543, 200);
    let x = values(rows * k, 1);
    let w = values(n * k, 2);
    let mut first = vec![0f32; rows * n];
    matmul_wt(&x, rows, &w, n, k, &mut first).unwrap();
    for run in 0..5 {
        let mut y = vec![0f32; rows * n];
        matmul_wt(&x, rows, &w, n, k, &mut y).unwrap();
        assert!(y == first, "run {run} differs from the first");
    }
    let mut alone = vec![0f32; rows * n];
    matmul_wt_with(&x, rows, &w, n, k, &mut alone, false, detect()).unwrap();
    assert!(
        alone == first,
        "the calling thread alone differs from the pool"
    );
    // A row's results do not depend on the other rows of the batch.
    let mut one = vec![0f32; n];
    matmul_wt(&x[3 * k..4 * k], 1, &w, n, k, &mut one).unwrap();
    assert!(
        one[..] == first[3 * n..4 * n],
        "row 3 alone differs from row 3 in a batch"
    );
}

#[test]
fn wrong_lengths_are_errors() {
    let (x, w) = (vec![0f32; 6], vec![0f32; 12]);
    let mut y = vec![0f32; 8];
    assert!(matmul_wt(&x, 2, &w, 4, 3, &mut y).is_ok());
    let err = matmul_wt(&x, 2, &w, 5, 3, &mut y).unwrap_err();
    assert!(
        matches!(err, SkinnyError::Length { what: "w", .. }),
        "{err}"
    );
    let err = matmul_wt(&x, 3, &w, 4, 3, &mut y).unwrap_err();
    assert!(
        matches!(err, SkinnyError::Length { what: "x", .. }),
        "{err}"
    );
    let mut short = vec![0f32; 7];
    let err = matmul_wt(&x, 2, &w, 4, 3, &mut short).unwrap_err();
    assert!(
        matches!(err, SkinnyError::Length { what: "y", .. }),
        "{err}"
    );
}

#[test]
fn the_gate_admits_only_untracked_contiguous_f32_decoding_shapes() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let (n, k) = (256, 128);
    assert!(n * k >= MIN_WEIGHT_ELEMENTS);
    let w = Tensor::from_vec(values(n * k, 3), (n, k), &dev)?;
    let x = Tensor::from_vec(values(4 * k, 4), (4, k), &dev)?;
    assert!(admits(&x, &w));
    let y = try_matmul_wt(&x, &w)?.expect("admitted");
    let (want, scale) = reference(
        &x.flatten_all()?.to_vec1()?,
        4,
        &w.flatten_all()?.to_vec1()?,
        n,
        k,
    );
    assert_close(&y.flatten_all()?.to_vec1()?, &want, &scale, "glue");
    assert_eq!(y.dims(), &[4, n]);

    let many = Tensor::zeros((MAX_ROWS + 1, k), DType::F32, &dev)?;
    let small = Tensor::zeros((8, k), DType::F32, &dev)?;
    let var = Var::from_tensor(&w)?;
    let refused = [
        ("too many rows", admits(&many, &w)),
        ("small weight", admits(&x, &small)),
        (
            "f64",
            admits(&x.to_dtype(DType::F64)?, &w.to_dtype(DType::F64)?),
        ),
        ("tracked weight", admits(&x, var.as_tensor())),
        (
            "non-contiguous weight",
            admits(&x, &w.t()?.t()?.narrow(1, 0, k - 1)?),
        ),
        (
            "mismatched k",
            admits(&x.narrow(1, 0, k - 1)?.contiguous()?, &w),
        ),
    ];
    for (what, admitted) in refused {
        assert!(!admitted, "{what} was admitted");
    }
    Ok(())
}

#[test]
fn linear_keeps_gradients_for_shapes_the_kernel_would_take() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let (n, k) = (256, 128);
    let w = Var::from_vec(values(n * k, 5), (n, k), &dev)?;
    let x = Tensor::from_vec(values(2 * k, 6), (2, k), &dev)?;
    let y = crate::model::ops::linear(&x, w.as_tensor(), None)?;
    let grads = y.sum_all()?.backward()?;
    let g = grads.get(w.as_tensor()).expect("gradient of the weight");
    // d(Σ y)/dW[j] = Σ_r x[r] for every j.
    let want = x.sum(0)?.to_vec1::<f32>()?;
    let got = g.get(7)?.to_vec1::<f32>()?;
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5);
    }
    // Detached (the kernel's case unless MIRRORPLAY_SKINNY_MATMUL=0), the same call
    // agrees with the tracked result.
    let fast = crate::model::ops::linear(&x, &w.as_tensor().detach(), None)?;
    let diff = (fast - y)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-4, "kernel vs candle: {diff}");
    Ok(())
}
