//! `mirrorplay export --model`: any model `Pretrained::load` reads (a Hugging Face directory or
//! `.safetensors` file beside its config.json, in F32/F16/BF16, single or sharded) → a Hugging
//! Face directory written by `save_model`: the requested dtype (default: the dtype the source's
//! weights are stored in), sharded by `max_shard_size`, the tokenizer and generation files
//! carried. The model is held in memory as f32 while it is written. Must not modify the source.

use anyhow::{Context, Result};
use candle_core::Device;
use mirrorplay_worker::io::Dtype;
use mirrorplay_worker::model::{Pretrained, SaveOptions};

/// Exports the model at `model` to `out`; returns the files written and the dtype written in.
pub async fn run(
    model: &str,
    out: &str,
    dtype: Option<Dtype>,
    max_shard_size: u64,
) -> Result<(Vec<String>, Dtype)> {
    let p = Pretrained::load(model, false, &Device::Cpu)
        .await
        .with_context(|| format!("loading the model {model}"))?;
    let options = SaveOptions {
        dtype: dtype.unwrap_or(p.source_dtype),
        max_shard_size,
    };
    let saved = p
        .save(out, &options)
        .await
        .with_context(|| format!("writing the model to {out}"))?;
    Ok((saved.into_iter().map(|o| o.path).collect(), options.dtype))
}
