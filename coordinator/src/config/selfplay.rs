//! `[selfplay]`: online preference optimisation against a frozen reference
//! (docs/algorithms.md §1–§4). Keys: `algorithm` (online_ipo | ipo_md | nash_md | online_dpo |
//! slic), `kl_coef` (τ), `mixture_coef` (β), `policy`, `reference` (path | URL | `.gguf` |
//! `stage:<name>` | "tiny"), `[sampling]`, `batch_prompts`, `grad_accum`, `steps`, `[optimizer]`,
//! `eval_every`, `eval_prompts`, `nash_kl_grad`, `labels`, `sft_coef`, `task` (the built-in task
//! whose gold judge and held-out prompts are used: goodhart_digits | exact_words; default
//! goodhart_digits when `prompts` is absent, none when it is given), `prompts` (JSONL path or URL;
//! default: the task's train prompts; without a task its last `eval_prompts` rows are held out),
//! `chat`, `max_prompt_tokens` (`training::prompt_format`), `[preference]` (`super::preference`), `compute_dtype`, the data
//! parallelism keys `world_size`, `min_world_size`, `collective_timeout_s` (`training::parallel`)
//! the checkpoint keys `checkpoint_every`, `keep_last`, `keep_every`, `checkpoint_timeout_s`
//! (`training::checkpoint`), and the final model's `save_dtype` ("auto" = the policy's own dtype |
//! "f32" | "bf16" | "f16") and `max_shard_size` (default "5GB") (`training::save`). Defaults follow
//! docs/algorithms.md §3: τ = 1 for IPO / IPO-MD, 0.008 for Nash-MD-PG, 0.1 for DPO and SLiC;
//! β = 0.125; lr 1e-4 (Nash-MD-PG 3e-5).

use mirrorplay_proto::v1::{
    data_source, DataSource, Labels, NashKlGrad, SelfplayAlgorithm, SelfplaySpec,
};
use toml::Value;

use super::preference::preference;
use super::reader::Tbl;
use super::training::{
    checkpoint, compute_dtype, count, model, optimizer, parallel, prompt_format, sampling, save,
    TASKS,
};
use super::{ConfigError, Resolver};

pub const ALGORITHMS: &[&str] = &["online_ipo", "ipo_md", "nash_md", "online_dpo", "slic"];

pub(super) fn read(t: &Tbl, resolver: &Resolver) -> Result<SelfplaySpec, ConfigError> {
    let algorithm_name = t.choice("algorithm", ALGORITHMS, None)?;
    let (algorithm, default_kl, default_lr) = match algorithm_name.as_str() {
        "online_ipo" => (SelfplayAlgorithm::OnlineIpo, 1.0, 1e-4),
        "ipo_md" => (SelfplayAlgorithm::IpoMd, 1.0, 1e-4),
        "nash_md" => (SelfplayAlgorithm::NashMd, 0.008, 3e-5),
        "online_dpo" => (SelfplayAlgorithm::OnlineDpo, 0.1, 1e-4),
        _ => (SelfplayAlgorithm::Slic, 0.1, 1e-4),
    };
    let kl_coef = t.f64_in("kl_coef", default_kl, 0.0, 1e6)?;
    if kl_coef <= 0.0 {
        return Err(t.error("kl_coef", format!("must be > 0, found {kl_coef}")));
    }
    let mixture_coef = t.f64_in("mixture_coef", 0.125, 0.0, 1.0)?;
    let task = if t.has("task") || !t.has("prompts") {
        Some(t.choice("task", TASKS, Some("goodhart_digits"))?)
    } else {
        None
    };
    let policy = model(t, "policy", task.as_deref(), resolver)?;
    let reference = model(t, "reference", task.as_deref(), resolver)?;
    let sampling = sampling(t)?;
    let batch_prompts = count(t, "batch_prompts", 32, 1 << 20)?;
    let grad_accum = count(t, "grad_accum", 1, batch_prompts)?;
    if batch_prompts % grad_accum != 0 {
        return Err(t.error(
            "grad_accum",
            format!("must divide batch_prompts = {batch_prompts}, found {grad_accum}"),
        ));
    }
    let steps = count(t, "steps", 100, 1 << 40)?;
    let optimizer = optimizer(t, default_lr)?;
    let eval_every = count(t, "eval_every", 20, 1 << 40)?;
    let eval_prompts = count(t, "eval_prompts", 256, 1 << 20)?;
    let nash_kl_grad = match t
        .choice(
            "nash_kl_grad",
            &["sequence", "to_go", "token"],
            Some("sequence"),
        )?
        .as_str()
    {
        "to_go" => NashKlGrad::ToGo,
        "token" => NashKlGrad::Token,
        _ => NashKlGrad::Sequence,
    };
    let labels = match t
        .choice("labels", &["hard", "soft"], Some("hard"))?
        .as_str()
    {
        "soft" => Labels::Soft,
        _ => Labels::Hard,
    };
    let sft_coef = t.f64_in("sft_coef", 0.0, 0.0, 1e6)?;
    if sft_coef != 0.0 && algorithm == SelfplayAlgorithm::NashMd {
        return Err(t.error(
            "sft_coef",
            "is not defined for nash_md (docs/algorithms.md §3); remove it",
        ));
    }
    let prompts = match t.opt_str("prompts")? {
        Some(raw) => {
            let url = resolver.input(t, "prompts", &raw)?;
            t.record("prompts", Value::String(url.clone()));
            data_source::Source::JsonlUrl(url)
        }
        None => data_source::Source::Task(task.clone().unwrap_or_default()),
    };
    let (chat, max_prompt_tokens) = prompt_format(t)?;
    let preference = preference(t, task.as_deref(), resolver)?;
    let compute_dtype = compute_dtype(t)?;
    let parallel = parallel(t)?;
    let checkpoint = checkpoint(t)?;
    let save = save(t)?;
    let mut spec = SelfplaySpec {
        algorithm: 0,
        kl_coef,
        mixture_coef,
        policy: Some(policy),
        reference: Some(reference),
        sampling: Some(sampling),
        batch_prompts: batch_prompts as u32,
        grad_accum: grad_accum as u32,
        steps,
        optimizer: Some(optimizer),
        eval_every,
        eval_prompts: eval_prompts as u32,
        nash_kl_grad: 0,
        labels: 0,
        sft_coef,
        prompts: Some(DataSource {
            source: Some(prompts),
        }),
        task: task.unwrap_or_default(),
        preference: Some(preference),
        chat,
        max_prompt_tokens,
        compute_dtype: 0,
        parallel: Some(parallel),
        checkpoint: Some(checkpoint),
        save: Some(save),
    };
    spec.set_compute_dtype(compute_dtype);
    spec.set_algorithm(algorithm);
    spec.set_nash_kl_grad(nash_kl_grad);
    spec.set_labels(labels);
    Ok(spec)
}
