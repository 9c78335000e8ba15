//! The KV cache's in-place buffers: decoding token by token through a cache that grows, one
//! sized up front and one without an estimate gives the logits of a full forward, also after
//! rows leave the batch; and a tracked (training) forward through a sized cache keeps its
//! gradients.

use candle_core::{Device, Tensor};

use super::*;

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The three cache sizings the tests decode through: none (plain tensors for the first call,
/// then moved into a buffer), a small one grown by doubling, one with room for everything.
fn sizings() -> [KvCache; 3] {
    [
        KvCache::new(),
        KvCache::with_capacity(2),
        KvCache::with_capacity(64),
    ]
}

/// Decodes two rows of 8 tokens through `cache`: a prompt of 3, then one token per call, row 0
/// leaving after position 5. Checks every step's logits against the full forward `full` (within
/// `tol`) and returns them, one flat vector per step.
fn decode_two_rows(
    model: &Model,
    rows: &[Vec<u32>],
    full: &Tensor,
    cache: &mut KvCache,
    tol: f32,
) -> Result<Vec<Vec<f32>>> {
    let token_at = |r: usize, pos: usize| rows[r][pos];
    let prompt: Vec<Vec<u32>> = rows.iter().map(|r| r[..3].to_vec()).collect();
    model.forward_hidden(&prompt, &[vec![true; 3], vec![true; 3]], cache)?;
    let mut live = vec![0usize, 1];
    let mut steps = Vec::new();
    for pos in 3..8 {
        if pos == 6 {
            cache.retain_rows(&[1])?;
            live = vec![1];
        }
        let ids: Vec<Vec<u32>> = live.iter().map(|&r| vec![token_at(r, pos)]).collect();
        let hidden = model.forward_hidden(&ids, &vec![vec![true]; live.len()], cache)?;
        let logits = model.lm_logits(&hidden)?;
        for (i, &r) in live.iter().enumerate() {
            let d = max_diff(&logits.get(i)?.get(0)?, &full.get(r)?.get(pos)?);
            assert!(d < tol, "row {r}, position {pos}: {d}");
        }
        steps.push(logits.flatten_all()?.to_vec1::<f32>()?);
    }
    assert_eq!(cache.len(), 8);
    Ok(steps)
}

/// A tiny model of hidden size 256: every projection passes the skinny and packed kernels'
/// size gates, and the decoder takes the fused row-wise kernels.
fn kernel_sized_config() -> ModelConfig {
    let config = ModelConfig::tiny_with(300, 256, 2, 4, 2, 512);
    assert!(crate::kernels::rowwise_op::model_takes_kernels(
        config.hidden_size
    ));
    config
}

#[test]
fn token_by_token_decoding_matches_a_full_forward_for_every_cache_sizing() -> Result<()> {
    let model = init_random(&ModelConfig::tiny(32), 3, false, &Device::Cpu)?;
    let rows: Vec<Vec<u32>> = vec![
        vec![1, 5, 9, 2, 7, 4, 11, 3],
        vec![6, 8, 10, 12, 14, 16, 18, 20],
    ];
    let full = model.logits(&rows, &[vec![true; 8], vec![true; 8]])?;
    for mut cache in sizings() {
        decode_two_rows(&model, &rows, &full, &mut cache, 1e-5)?;
    }
    Ok(())
}

/// A model on the fused kernels decoding token by token gives the same bits for every cache
/// sizing, with a row dropped on the way, and matches the full forward: the fused attention
/// reads each layout's strided views alike.
#[test]
fn decoding_on_the_kernels_gives_the_same_bits_for_every_cache_sizing() -> Result<()> {
    let config = kernel_sized_config();
    let model = init_random(&config, 11, false, &Device::Cpu)?;
    let rows: Vec<Vec<u32>> = vec![
        vec![1, 50, 99, 2, 7, 240, 11, 3],
        vec![6, 8, 10, 12, 14, 16, 18, 20],
    ];
    let full = model.logits(&rows, &[vec![true; 8], vec![true; 8]])?;
    let bits = |run: Vec<Vec<f32>>| -> Vec<Vec<u32>> {
        run.iter()
            .map(|s| s.iter().map(|x| x.to_bits()).collect())
            .collect()
    };
    let runs: Vec<Vec<Vec<u32>>> = sizings()
        .into_iter()
        .map(|mut cache| {
            Ok(bits(decode_two_rows(
                &model, &rows, &full, &mut cache, 1e-4,
            )?))
        })
        .collect::<Result<_>>()?;
    assert_eq!(runs[0], runs[1], "no capacity vs capacity 2");
    assert_eq!(runs[0], runs[2], "no capacity vs capacity 64");
    Ok(())
}

#[test]
fn a_tracked_forward_through_a_sized_cache_keeps_its_gradients() -> Result<()> {
    let model = init_random(&ModelConfig::tiny(32), 4, true, &Device::Cpu)?;
    let mut cache = KvCache::with_capacity(16);
    let ids = vec![vec![1u32, 5, 9, 2]];
    let hidden = model.forward_hidden(&ids, &[vec![true; 4]], &mut cache)?;
    let grads = model.lm_logits(&hidden)?.sqr()?.sum_all()?.backward()?;
    let vars = model.vars().expect("trainable");
    let k = &vars["model.layers.0.self_attn.k_proj.weight"];
    let g = grads.get(k.as_tensor()).expect("gradient of k_proj");
    let norm = g.abs()?.sum_all()?.to_scalar::<f32>()?;
    assert!(norm > 0.0, "k_proj got a zero gradient through the cache");
    Ok(())
}

#[test]
fn decoding_on_the_inference_kernels_matches_a_tracked_forward_on_the_composed_ops() -> Result<()> {
    // Hidden 256: the skinny gate admits the projections, so the frozen model decodes on the
    // skinny matmul and the fused row-wise kernels, while the trainable one (same seed, same
    // weights) is tracked and runs the train-safe compositions.
    let config = kernel_sized_config();
    let frozen = init_random(&config, 7, false, &Device::Cpu)?;
    let trainable = init_random(&config, 7, true, &Device::Cpu)?;
    let rows: Vec<Vec<u32>> = vec![
        vec![1, 50, 99, 2, 7, 240, 11],
        vec![6, 8, 10, 12, 14, 16, 18],
    ];
    let valid = vec![vec![true; 7]; 2];
    let want = trainable.logits(&rows, &valid)?;
    let mut cache = KvCache::with_capacity(7);
    let prompt: Vec<Vec<u32>> = rows.iter().map(|r| r[..3].to_vec()).collect();
    let hidden = frozen.forward_hidden(&prompt, &[vec![true; 3], vec![true; 3]], &mut cache)?;
    let first = frozen.lm_logits(&hidden)?;
    assert!(
        max_diff(&first, &want.narrow(1, 0, 3)?) < 1e-4,
        "prompt logits"
    );
    for pos in 3..7 {
        let ids: Vec<Vec<u32>> = rows.iter().map(|r| vec![r[pos]]).collect();
        let hidden = frozen.forward_hidden(&ids, &vec![vec![true]; 2], &mut cache)?;
        let got = frozen.lm_logits(&hidden)?;
        let d = max_diff(&got, &want.narrow(1, pos, 1)?);
        assert!(d < 1e-4, "position {pos}: {d}");
    }
    Ok(())
}

#[test]
fn a_frozen_models_own_long_forwards_never_pack_but_a_decoding_views_prefill_does() -> Result<()> {
    let config = kernel_sized_config();
    let frozen = init_random(&config, 7, false, &Device::Cpu)?;
    // 2 × 12 = 24 rows, past the skinny kernel's 16: scoring on the frozen model itself keeps
    // candle's gemm and makes no packed copy (which would double its weights' memory).
    let rows: Vec<Vec<u32>> = vec![(1..13).collect(), (20..32).collect()];
    let valid = vec![vec![true; 12]; 2];
    let scored = frozen.forward_hidden(&rows, &valid, &mut KvCache::new())?;
    assert_eq!(frozen.packed_copies(), 0);
    // A decoding view's prefill of the same rows runs on packed copies, shared with the
    // frozen model (its weights never change), and agrees with the gemm to rounding.
    let view = frozen.for_decoding()?;
    let prefilled = view.forward_hidden(&rows, &valid, &mut KvCache::new())?;
    assert!(view.packed_copies() > 0 && frozen.packed_copies() == view.packed_copies());
    assert!(max_diff(&scored, &prefilled) < 1e-4, "prefill vs scoring");
    Ok(())
}

#[test]
fn a_trainable_models_next_decoding_view_repacks_its_updated_weights_into_the_kept_memory(
) -> Result<()> {
    let config = kernel_sized_config();
    let trainable = init_random(&config, 7, true, &Device::Cpu)?;
    let keeps = crate::kernels::packed_op::keeps_packed();
    let rows: Vec<Vec<u32>> = vec![(1..9).collect(), (20..28).collect()];
    let valid = vec![vec![true; 8]; 2];
    let decode = |model: &Model| -> Result<Tensor> {
        let view = model.for_decoding()?;
        let hidden = view.forward_hidden(&rows, &valid, &mut KvCache::new())?;
        assert!(
            view.packed_copies() > 0,
            "the view decoded on packed copies"
        );
        Ok(hidden)
    };
    let before = decode(&trainable)?;
    // The view is gone; its copies' memory stays with the trainable model.
    let held = trainable.packed_elements_kept();
    assert_eq!(held > 0, keeps, "kept {held} elements (keeping: {keeps})");
    // An optimizer step changes every weight in place.
    for var in trainable.vars().expect("trainable").values() {
        var.set(&(var.as_tensor() * 1.5)?)?;
    }
    let view = trainable.for_decoding()?;
    let after = view.forward_hidden(&rows, &valid, &mut KvCache::new())?;
    // Every kept buffer was taken again (the same shapes), and the new view decodes the new
    // weights: the bits of a fresh pack of a frozen copy of them, not the old weights'.
    assert_eq!(trainable.packed_elements_kept(), 0);
    let fresh = decode(&trainable.frozen_copy()?)?;
    assert_eq!(
        crate::test_support::bits(&after),
        crate::test_support::bits(&fresh)
    );
    assert!(
        max_diff(&after, &before) > 1e-3,
        "the old weights were decoded"
    );
    drop(view);
    assert_eq!(trainable.packed_elements_kept(), held);
    Ok(())
}
