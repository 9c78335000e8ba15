//! `mirrorplay export` (docs/checkpoints.md "Export"): a verified checkpoint step directory →
//! a plain Hugging Face model directory in the requested dtype, sharded by `max_shard_size` with
//! the merge's shard plan (tensors in name order, packed greedily). Refuses a checkpoint whose
//! manifest does not verify. Reads each tensor in bounded chunks; must not modify the checkpoint.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use mirrorplay_worker::checkpoint::{Manifest, TrainState, MANIFEST, OPTIMIZER, STATE};
use mirrorplay_worker::io::dtype::encode_f32_owned;
use mirrorplay_worker::io::hf::{open_model, INDEX_FILE, SINGLE_FILE};
use mirrorplay_worker::io::safetensors::{pt_metadata, TensorLayout};
use mirrorplay_worker::io::writer::SafetensorsWriter;
use mirrorplay_worker::io::{Dtype, Location};
use serde_json::{json, Value};

use crate::drivers::shard_plan::plan_shards;

/// Elements read, converted and written at a time.
const CHUNK_ELEMENTS: u64 = 4 << 20;

/// The dtype names `--dtype` accepts.
pub fn parse_dtype(s: &str) -> Option<Dtype> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Some(Dtype::F32),
        "bf16" | "bfloat16" => Some(Dtype::BF16),
        "f16" | "float16" => Some(Dtype::F16),
        _ => None,
    }
}

fn torch_name(d: Dtype) -> &'static str {
    match d {
        Dtype::BF16 => "bfloat16",
        Dtype::F16 => "float16",
        _ => "float32",
    }
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
            if let Some(obj) = config.as_object_mut() {
                let key = if obj.contains_key("dtype") {
                    "dtype"
                } else {
                    "torch_dtype"
                };
                obj.insert(key.into(), json!(torch_name(dtype)));
            }
            bytes = serde_json::to_vec_pretty(&config)?.into();
        }
        out_dir.join(p).put(bytes).await?;
        written.push(p.to_string());
    }

    let names: Vec<&String> = files.tensors.keys().collect();
    let sizes: Vec<u64> = names
        .iter()
        .map(|n| files.tensors[*n].info.numel() * dtype.size() as u64)
        .collect();
    let mut shards = plan_shards(&sizes, max_shard_size);
    if shards.len() == 1 {
        shards[0].file_name = SINGLE_FILE.to_string();
    }
    let mut weight_map = BTreeMap::new();
    for shard in &shards {
        let layout: Vec<TensorLayout> = shard
            .tensors
            .iter()
            .map(|&i| TensorLayout {
                name: names[i].clone(),
                dtype,
                shape: files.tensors[names[i]].info.shape.clone(),
            })
            .collect();
        let loc = out_dir.join(&shard.file_name);
        let mut writer = SafetensorsWriter::create(&loc, layout, &pt_metadata()).await?;
        for &i in &shard.tensors {
            let entry = &files.tensors[names[i]];
            let info = &entry.info;
            if !info.dtype.is_float() {
                bail!("{}: tensor `{}` is {}", dir, names[i], info.dtype);
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
            weight_map.insert(names[i].clone(), shard.file_name.clone());
        }
        writer.finish().await?;
        written.push(shard.file_name.clone());
    }
    if shards.len() > 1 {
        let total: u64 = sizes.iter().sum();
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        out_dir
            .join(INDEX_FILE)
            .put(serde_json::to_vec_pretty(&index)?)
            .await?;
        written.push(INDEX_FILE.to_string());
    }
    Ok(written)
}
