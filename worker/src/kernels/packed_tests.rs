//! The packed decoding matmul against an f64 reference, across shapes, row counts, thread
//! counts and instruction sets; its bit-for-bit agreement across all of those (one fused
//! multiply-add chain per element); its errors; and the candle glue's slot and gate.

use candle_core::{Device, Tensor, Var};

use super::packed::{detect, matmul_with, Isa, PackedError, PackedWeight, PANEL};
use super::packed_op::{try_matmul_wt, PackedSlot, PackingBuffers};
use super::skinny_op::MIN_WEIGHT_ELEMENTS;
use crate::test_support::uniform;

/// x · Wᵀ in f64, and Σ_i |x_i · w_i| per element (the error scale of a dot product).
fn reference(x: &[f32], rows: usize, w: &[f32], n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0f64; rows * n];
    let mut scale = vec![0f64; rows * n];
    for r in 0..rows {
        for j in 0..n {
            for i in 0..k {
                let p = x[r * k + i] as f64 * w[j * k + i] as f64;
                y[r * n + j] += p;
                scale[r * n + j] += p.abs();
            }
        }
    }
    (y, scale)
}

fn product(x: &[f32], rows: usize, w: &PackedWeight, parallel: bool, isa: Isa) -> Vec<f32> {
    let mut y = vec![f32::NAN; rows * w.n()];
    matmul_with(x, rows, w, &mut y, parallel, isa).unwrap();
    y
}

const ISAS: [Isa; 3] = [Isa::Avx512, Isa::Avx2Fma, Isa::Portable];

#[test]
fn matches_an_f64_reference_for_every_row_count_shape_and_kernel() {
    // Panels partly filled (n % 16 ≠ 0), k not a multiple of anything, one panel, many.
    for &(n, k) in &[(1, 1), (5, 3), (16, 8), (37, 29), (100, 64), (300, 257)] {
        let w = uniform(n * k, 11, -1.0, 1.0);
        let packed = PackedWeight::pack(&w, n, k).unwrap();
        for rows in 1..=17 {
            let x = uniform(rows * k, rows as u64, -1.0, 1.0);
            let (want, scale) = reference(&x, rows, &w, n, k);
            for isa in ISAS {
                let got = product(&x, rows, &packed, false, isa);
                for (e, (&g, (&v, &s))) in got.iter().zip(want.iter().zip(&scale)).enumerate() {
                    // A chain of k fused multiply-adds: each rounding ≤ 2⁻²⁴ of the running sum.
                    let tol = 1e-6 * (k as f64 + 1.0) * s.max(1e-30);
                    assert!(
                        (g as f64 - v).abs() <= tol,
                        "{isa:?} n={n} k={k} rows={rows} element {e}: {g} vs {v} (tol {tol})"
                    );
                }
            }
        }
    }
}

#[test]
fn every_kernel_row_count_and_thread_count_gives_the_same_bits() {
    // SmolLM2-135M's MLP shape, large enough to be split over the pool.
    let (n, k) = (1536, 576);
    let w = uniform(n * k, 3, -0.1, 0.1);
    let packed = PackedWeight::pack(&w, n, k).unwrap();
    let rows = 16;
    let x = uniform(rows * k, 4, -1.0, 1.0);
    let all = product(&x, rows, &packed, false, Isa::Portable);
    for isa in ISAS {
        for parallel in [false, true] {
            assert_eq!(
                product(&x, rows, &packed, parallel, isa),
                all,
                "{isa:?}, parallel {parallel}"
            );
        }
        // A row's output does not depend on which rows share its batch.
        for (start, len) in [(0, 1), (3, 1), (5, 3), (0, 8), (7, 9), (2, 13)] {
            let part = product(&x[start * k..(start + len) * k], len, &packed, true, isa);
            assert_eq!(
                part,
                all[start * n..(start + len) * n],
                "{isa:?} rows {start}..+{len}"
            );
        }
    }
}

#[test]
fn a_prefill_of_many_rows_matches_the_reference_and_each_row_alone_across_passes() {
    // 1030 rows: two passes of the kernel (ROWS_PER_PASS = 1024), a partial panel, odd k.
    let (n, k, rows) = (37, 29, 1030);
    let w = uniform(n * k, 21, -1.0, 1.0);
    let packed = PackedWeight::pack(&w, n, k).unwrap();
    let x = uniform(rows * k, 22, -1.0, 1.0);
    let (want, scale) = reference(&x, rows, &w, n, k);
    for isa in ISAS {
        let all = product(&x, rows, &packed, true, isa);
        for (e, (&g, (&v, &s))) in all.iter().zip(want.iter().zip(&scale)).enumerate() {
            let tol = 1e-6 * (k as f64 + 1.0) * s.max(1e-30);
            assert!(
                (g as f64 - v).abs() <= tol,
                "{isa:?} element {e}: {g} vs {v}"
            );
        }
        // Rows on either side of the pass boundary get the bits they get alone.
        for r in [0, 1, 1023, 1024, 1029] {
            let alone = product(&x[r * k..(r + 1) * k], 1, &packed, false, isa);
            assert_eq!(all[r * n..(r + 1) * n], alone[..], "{isa:?} row {r}");
        }
    }
    // k = 0: every product is an empty sum.
    let empty = PackedWeight::pack(&[], 3, 0).unwrap();
    assert_eq!(product(&[], 2, &empty, true, detect()), vec![0.0; 6]);
}

#[test]
fn packing_lays_out_panels_k_major_with_zero_padding() {
    let (n, k) = (18, 3); // two panels, the second holding 2 columns
    let w: Vec<f32> = (0..n * k).map(|e| e as f32).collect();
    let packed = PackedWeight::pack(&w, n, k).unwrap();
    // Row 1 of W (1·k..) is column 1 of panel 0; row 17 is column 1 of panel 1; the rest of
    // panel 1 is zero, so every product of it is exactly zero there.
    let x = vec![0.0, 1.0, 0.0]; // picks W[j][1]
    let y = product(&x, 1, &packed, false, detect());
    let want: Vec<f32> = (0..n).map(|j| (j * k + 1) as f32).collect();
    assert_eq!(y, want);
    assert_eq!(packed.n(), n);
    assert_eq!(packed.k(), k);
    assert_eq!(PANEL, 16);
}

#[test]
fn packing_into_a_used_buffer_gives_the_bits_of_a_fresh_pack() {
    // Two panels, the second partial: its padding columns must be rewritten as zeros.
    let (n, k) = (18, 40);
    let w = uniform(n * k, 11, -1.0, 1.0);
    let fresh = PackedWeight::pack(&w, n, k).unwrap();
    let dirty = vec![f32::NAN; 2 * PANEL * k];
    let reused = PackedWeight::pack_stacked_into(&[&w], k, dirty).unwrap();
    let x = uniform(3 * k, 12, -1.0, 1.0);
    let bits = |y: Vec<f32>| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(product(&x, 3, &reused, false, detect())),
        bits(product(&x, 3, &fresh, false, detect()))
    );
    assert_eq!(reused.clone().into_data(), fresh.clone().into_data());
    // A buffer of another length is not used (fresh memory instead).
    let wrong = PackedWeight::pack_stacked_into(&[&w], k, vec![f32::NAN; 7]).unwrap();
    assert_eq!(wrong.into_data(), fresh.into_data());
}

#[test]
fn a_recycling_slot_gives_its_copys_memory_back_and_the_next_slot_packs_into_it(
) -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let (n, k) = (256, 128);
    let w = Tensor::from_vec(uniform(n * k, 5, -1.0, 1.0), (n, k), &dev)?;
    let x = Tensor::from_vec(uniform(3 * k, 6, -1.0, 1.0), (3, k), &dev)?;
    let buffers = std::sync::Arc::new(PackingBuffers::default());
    let slot = PackedSlot::recycling(buffers.clone());
    let first = try_matmul_wt(&x, &w, &slot, 16)?.expect("admitted");
    assert_eq!(buffers.held(), 0);
    drop(slot);
    assert_eq!(buffers.held(), n * k, "the copy's memory came back");
    // Another weight of the same shape packs into that memory, and its product is its own.
    let w2 = (&w * -2.0)?;
    let slot = PackedSlot::recycling(buffers.clone());
    let second = try_matmul_wt(&x, &w2, &slot, 16)?.expect("admitted");
    assert_eq!(buffers.held(), 0, "the kept buffer was taken");
    let want = try_matmul_wt(&x, &w2, &PackedSlot::default(), 16)?.expect("admitted");
    assert_eq!(
        crate::test_support::bits(&second),
        crate::test_support::bits(&want)
    );
    assert_ne!(
        crate::test_support::bits(&second),
        crate::test_support::bits(&first)
    );
    Ok(())
}

#[test]
fn wrong_lengths_are_errors() {
    assert!(matches!(
        PackedWeight::pack(&[0.0; 5], 2, 3),
        Err(PackedError::Length {
            what: "W",
            found: 5,
            expected: 6,
            ..
        })
    ));
    let packed = PackedWeight::pack(&[0.0; 6], 2, 3).unwrap();
    let mut y = vec![0.0; 2];
    let e = matmul_with(&[0.0; 4], 1, &packed, &mut y, false, detect()).unwrap_err();
    assert!(
        e.to_string().contains("x has 4 elements, expected 3"),
        "{e}"
    );
    let mut y = vec![0.0; 3];
    let e = matmul_with(&[0.0; 3], 1, &packed, &mut y, false, detect()).unwrap_err();
    assert!(
        e.to_string().contains("y has 3 elements, expected 2"),
        "{e}"
    );
}

#[test]
fn the_slot_packs_once_and_the_gate_refuses_tracked_or_small_operands() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let (n, k) = (256, 128);
    assert!(n * k >= MIN_WEIGHT_ELEMENTS);
    let w = Tensor::from_vec(uniform(n * k, 5, -1.0, 1.0), (n, k), &dev)?;
    let x = Tensor::from_vec(uniform(3 * k, 6, -1.0, 1.0), (3, k), &dev)?;
    let slot = PackedSlot::default();
    let y = try_matmul_wt(&x, &w, &slot, 16)?.expect("the gate admits 3 untracked f32 rows");
    let want = x.matmul(&w.t()?)?;
    let diff = (y.clone() - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-4, "max difference {diff}");
    // The second call reuses the packed copy (the same allocation, not a repack): the same bits.
    let first = slot.get().expect("the first call filled the slot");
    let again = try_matmul_wt(&x, &w, &slot, 16)?.unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&first, &slot.get().unwrap()),
        "the weight was packed again"
    );
    assert_eq!(
        crate::test_support::bits(&again),
        crate::test_support::bits(&y)
    );
    // A slot holding another shape's copy is an error, not a wrong product.
    let other = Tensor::zeros((n, k + 1), candle_core::DType::F32, &dev)?;
    let x1 = Tensor::zeros((1, k + 1), candle_core::DType::F32, &dev)?;
    let e = try_matmul_wt(&x1, &other, &slot, 16).unwrap_err();
    assert!(
        e.to_string().contains("the slot holds a 256×128 weight"),
        "{e}"
    );
    // Tracked operands (training) and small weights (the tiny test models) are refused.
    let tracked = Var::from_tensor(&w)?;
    assert!(try_matmul_wt(&x, tracked.as_tensor(), &PackedSlot::default(), 16)?.is_none());
    let small = Tensor::zeros((4, k), candle_core::DType::F32, &dev)?;
    assert!(try_matmul_wt(&x, &small, &PackedSlot::default(), 16)?.is_none());
    // Rows beyond the caller's limit are refused; without a limit (a decoding view's prefill)
    // any number is admitted.
    let many = Tensor::from_vec(uniform(200 * k, 7, -1.0, 1.0), (200, k), &dev)?;
    assert!(try_matmul_wt(&many, &w, &slot, 16)?.is_none());
    let y =
        try_matmul_wt(&many, &w, &slot, usize::MAX)?.expect("the gate admits a 200-row prefill");
    let diff = (y - many.matmul(&w.t()?)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(diff < 1e-4, "200 rows: max difference {diff}");
    Ok(())
}

#[test]
fn stacked_weights_give_each_part_the_bits_it_gets_alone() {
    // q, k, v-like parts of 40, 24 and 24 rows (panels straddle the parts).
    let k = 33;
    let parts: Vec<Vec<f32>> = [40, 24, 24]
        .iter()
        .enumerate()
        .map(|(i, &n)| uniform(n * k, 30 + i as u64, -1.0, 1.0))
        .collect();
    let refs: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
    let stacked = PackedWeight::pack_stacked(&refs, k).unwrap();
    assert_eq!((stacked.n(), stacked.k()), (88, k));
    for rows in [1, 5, 9] {
        let x = uniform(rows * k, 40 + rows as u64, -1.0, 1.0);
        let all = product(&x, rows, &stacked, true, detect());
        let mut start = 0;
        for part in &parts {
            let n = part.len() / k;
            let alone = product(
                &x,
                rows,
                &PackedWeight::pack(part, n, k).unwrap(),
                true,
                detect(),
            );
            for r in 0..rows {
                assert_eq!(
                    all[r * 88 + start..r * 88 + start + n],
                    alone[r * n..(r + 1) * n],
                    "rows {rows}, row {r}, part at {start}"
                );
            }
            start += n;
        }
    }
    let e = PackedWeight::pack_stacked(&[&[0.0; 7]], 3).unwrap_err();
    assert!(e.to_string().contains("W has 7 elements"), "{e}");
}
