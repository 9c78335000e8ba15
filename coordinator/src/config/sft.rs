//! `[sft]`: supervised fine-tuning (docs/algorithms.md §3 "SFT"), used to make reference policies.
//! Keys: `init` ("tiny" | path | URL | `stage:<name>`), `task` (a built-in task: its base
//! sampler is the data when `data` is absent, its held-out prompts give `eval/gold`), `data`
//! (JSONL path or URL: `{prompt, completion}` or `{messages}`), `batch_size`, `grad_accum`,
//! `steps`, `[optimizer]` (lr default 1e-3), `compute_dtype`, `eval_every`, `eval_prompts`,
//! `chat`, `max_prompt_tokens` (`training::prompt_format`),
//! `[sampling]` (for evaluation samples), and the data parallelism keys `world_size`,
//! `min_world_size`, `collective_timeout_s` (`training::parallel`), the checkpoint keys
//! `checkpoint_every`, `keep_last`, `keep_every`, `checkpoint_timeout_s`
//! (`training::checkpoint`), and the final model's `save_dtype` ("auto" = `init`'s own dtype |
//! "f32" | "bf16" | "f16") and `max_shard_size` (default "5GB") (`training::save`).

use mirrorplay_proto::v1::{data_source, DataSource, SftSpec};
use toml::Value;

use super::reader::Tbl;
use super::training::{
    checkpoint, compute_dtype, count, model, optimizer, parallel, prompt_format, sampling, save,
    TASKS,
};
use super::{ConfigError, Resolver};

pub(super) fn read(t: &Tbl, resolver: &Resolver) -> Result<SftSpec, ConfigError> {
    let task = match t.opt_str("task")? {
        Some(_) => Some(t.choice("task", TASKS, None)?),
        None => None,
    };
    let init = model(t, "init", task.as_deref(), resolver)?;
    let data = match t.opt_str("data")? {
        Some(raw) => {
            let url = resolver.input(t, "data", &raw)?;
            t.record("data", Value::String(url.clone()));
            data_source::Source::JsonlUrl(url)
        }
        None => match &task {
            Some(task) => data_source::Source::Task(task.clone()),
            None => {
                return Err(t.error("data", "missing: give `data` (JSONL) or a built-in `task`"))
            }
        },
    };
    let batch_size = count(t, "batch_size", 64, 1 << 20)?;
    let grad_accum = count(t, "grad_accum", 1, batch_size)?;
    if batch_size % grad_accum != 0 {
        return Err(t.error(
            "grad_accum",
            format!("must divide batch_size = {batch_size}, found {grad_accum}"),
        ));
    }
    let steps = count(t, "steps", 300, 1 << 40)?;
    let optimizer = optimizer(t, 1e-3)?;
    let eval_every = count(t, "eval_every", 50, 1 << 40)?;
    let eval_prompts = count(t, "eval_prompts", 256, 1 << 20)?;
    let sampling = sampling(t)?;
    let compute_dtype = compute_dtype(t)?;
    let parallel = parallel(t)?;
    let checkpoint = checkpoint(t)?;
    let (chat, max_prompt_tokens) = prompt_format(t)?;
    let save = save(t)?;
    let mut spec = SftSpec {
        init: Some(init),
        data: Some(DataSource { source: Some(data) }),
        eval_task: task.unwrap_or_default(),
        batch_size: batch_size as u32,
        grad_accum: grad_accum as u32,
        steps,
        optimizer: Some(optimizer),
        eval_every,
        eval_prompts: eval_prompts as u32,
        sampling: Some(sampling),
        compute_dtype: 0,
        parallel: Some(parallel),
        checkpoint: Some(checkpoint),
        chat,
        max_prompt_tokens,
        save: Some(save),
    };
    spec.set_compute_dtype(compute_dtype);
    Ok(spec)
}
