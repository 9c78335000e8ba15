//! `mirrorplay export --checkpoint` (docs/checkpoints.md "Export"): a verified checkpoint step
//! directory → a plain Hugging Face model directory in the requested dtype, sharded by
//! `max_shard_size` as every saved model is (`io::sharded`: tensors in name order, packed
//! greedily). Refuses a checkpoint whose manifest does not verify. Reads each tensor in bounded
//! chunks; must not modify the checkpoint. `--model` is `export_model`.

use anyhow::{bail, Context, Result};
use mirrorplay_worker::checkpoint::{Manifest, TrainState, MANIFEST, OPTIMIZER, STATE};
use mirrorplay_worker::io::dtype::encode_f32_owned;
use mirrorplay_worker::io::hf::{open_model, INDEX_FILE};
use mirrorplay_worker::io::safetensors::TensorLayout;
use mirrorplay_worker::io::sharded::ShardedWriter;
use mirrorplay_worker::io::{Dtype, Location};
use mirrorplay_worker::model::save::set_config_dtype;
use serde_json::Value;

/// Elements read, converted and written at a time.
const CHUNK_ELEMENTS: u64 = 4 << 20;

/// The dtype names `--dtype` accepts.
pub fn parse_dtype(s: &str) -> Option<Dtype> {
    Dtype::parse_float_name(s)
}

/// Exports the checkpoint at `checkpoint` to `out`; returns the files written.
pub async fn run(
    checkpoint: &str,
    out: &str,
    dtype: Option<Dtype>,
    max_shard_size: u64,
) -> Result<Vec<String>> {
    let dir = Location::parse(checkpoint)?;
    let manifest = Manifest::read(&dir)
        .await?
        .with_context(|| format!("{dir}: no {MANIFEST}: not a committed checkpoint"))?;
    manifest
        .verify(&dir)
        .await
        .with_context(|| format!("{dir}: the checkpoint does not verify; refusing to export"))?;
    let state_loc = dir.join(STATE);
    let state = TrainState::parse(&state_loc.read().await?, state_loc.url())?;
    let dtype = dtype.unwrap_or_else(|| {
        state
            .model_dtype
            .as_deref()
            .and_then(parse_dtype)
            .unwrap_or(Dtype::F32)
    });
    let files = open_model(dir.url()).await?;
    let out_dir = Location::parse(out)?;
    let mut written = Vec::new();

    // Small files: everything in the manifest but weights, optimizer and state.
    for o in &manifest.objects {
        let p = o.path.as_str();
        if p.ends_with(".safetensors") || p == INDEX_FILE || p == OPTIMIZER || p == STATE {
            continue;
        }
        let mut bytes = dir.join(p).read().await?;
        if p == "config.json" {
            let mut config: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: invalid JSON", dir.join(p)))?;
            set_config_dtype(&mut config, dtype);
            bytes = serde_json::to_vec_pretty(&config)?.into();
        }
        out_dir.join(p).put(bytes).await?;
        written.push(p.to_string());
    }

    let layout: Vec<TensorLayout> = files
        .tensors
        .iter()
        .map(|(name, entry)| TensorLayout {
            name: name.clone(),
            dtype,
            shape: entry.info.shape.clone(),
        })
        .collect();
    let mut writer = ShardedWriter::new(&out_dir, layout, max_shard_size);
    for (name, entry) in &files.tensors {
        let info = &entry.info;
        if !info.dtype.is_float() {
            bail!("{}: tensor `{name}` is {}", dir, info.dtype);
        }
        let src = files.file_of(entry);
        let esize = info.dtype.size() as u64;
        let mut done = 0;
        let numel = info.numel();
        while done < numel {
            let n = CHUNK_ELEMENTS.min(numel - done);
            let start = info.start + done * esize;
            let values = src
                .read_range_f32(start..start + n * esize, info.dtype, Vec::new())
                .await?;
            writer.write_owned(encode_f32_owned(dtype, values)).await?;
            done += n;
        }
    }
    written.extend(writer.finish().await?.into_iter().map(|o| o.path));
    Ok(written)
}
