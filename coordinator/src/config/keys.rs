//! The description of every key a job config can have: the one table `docs/configuration.md` is
//! generated from (`keydoc`), whose tests fail on a key the reader resolves but this table lacks,
//! and on a description no config resolves. Defaults are not written here: they are read off the
//! reader's resolved config. Descriptions follow the module docs of `merge.rs`, `sft.rs`,
//! `selfplay.rs`, `training.rs` and the README's "Configs" section; one line each.

/// One config key: its table (as the sections below name tables) and what it means.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    pub table: &'static str,
    pub key: &'static str,
    pub description: &'static str,
}

/// A section of the generated page: a table id (as `KeyDoc::table`), its heading and one line
/// about it.
pub struct Section {
    pub table: &'static str,
    pub heading: &'static str,
    pub about: &'static str,
}

pub const SECTIONS: &[Section] = &[
    Section {
        table: "job",
        heading: "`[job]`",
        about: "Every config has it; `kind` names the table that configures the job.",
    },
    Section {
        table: "stage",
        heading: "`[[stage]]` (pipelines)",
        about: "A pipeline's stages, run in order; each holds one kind's table (`[stage.merge]`, `[stage.sft]`, `[stage.selfplay]`, with the keys of the sections below), and a model key of a later stage accepts `\"stage:NAME\"` for an earlier stage's model.",
    },
    Section {
        table: "merge",
        heading: "`[merge]`",
        about: "Model merging (docs/algorithms.md §5). Only the keys of the chosen `method` are accepted; a default given per method applies to that method only.",
    },
    Section {
        table: "sft",
        heading: "`[sft]`",
        about: "Supervised fine-tuning (docs/algorithms.md §3, \"SFT\"), used to make reference policies.",
    },
    Section {
        table: "selfplay",
        heading: "`[selfplay]`",
        about: "Online preference optimisation against a frozen reference (docs/algorithms.md §1–§4).",
    },
    Section {
        table: "selfplay.preference",
        heading: "`[selfplay.preference]`",
        about: "Where preferences come from (docs/algorithms.md §2).",
    },
    Section {
        table: "reward_train",
        heading: "`[reward_train]`",
        about: "K Bradley–Terry reward models (docs/algorithms.md §3, \"Bradley–Terry reward loss\"), one task per member, and the ensemble manifest `OUTPUT/ensemble.json`; `\"stage:NAME\"` of a reward_train stage names that manifest.",
    },
    Section {
        table: "reward_train.tiny",
        heading: "`[reward_train.tiny]`",
        about: "The shape of a fresh tiny backbone (`init = \"tiny\"`).",
    },
    Section {
        table: "score",
        heading: "`[score]`",
        about: "Scores a JSONL of completions or of chosen/rejected pairs with an ensemble, in shards across workers: `OUTPUT/scores/part-NNNNN.jsonl` and `OUTPUT/summary.json` (docs/algorithms.md §2).",
    },
    Section {
        table: "bon",
        heading: "`[bon]`",
        about: "Best-of-n with the unbiased estimator (docs/algorithms.md §4): `OUTPUT/bon.csv`, one row per (scorer, n).",
    },
    Section {
        table: "optimizer",
        heading: "`[sft.optimizer]`, `[selfplay.optimizer]`, `[reward_train.optimizer]`",
        about: "AdamW and its learning-rate schedule, for every training kind.",
    },
    Section {
        table: "sampling",
        heading: "`[sft.sampling]`, `[selfplay.sampling]`, `[reward_train.sampling]`, `[score.sampling]`, `[bon.sampling]`",
        about: "How completions are sampled (docs/algorithms.md §1): self-play's training samples, evaluation samples, and the samples normalisation statistics, LSC references and best-of-n draw.",
    },
];

// Keys both training kinds take (`training.rs`).
const COMPUTE_DTYPE: &str = "`f32` \\| `bf16` \\| `f16`: the forward/backward dtype; master weights and AdamW state stay f32 (bf16/f16 are meant for CUDA; on CPU they run, slowly).";
const WORLD_SIZE: &str = "Data-parallel ranks the job runs as (a gang); 0 = every worker registered when the job starts.";
const MIN_WORLD_SIZE: &str =
    "The fewest ranks a gang re-formed after a loss starts with (default: `world_size`).";
const COLLECTIVE_TIMEOUT_S: &str = "Seconds a collective call may make no progress before the rank's task fails and the gang is re-formed.";
const CHECKPOINT_EVERY: &str =
    "Also checkpoint every N steps (0: only at the end; docs/checkpoints.md).";
const KEEP_LAST: &str = "Keep the newest N checkpoints (0 = keep all).";
const KEEP_EVERY: &str = "Also keep every checkpoint whose step is a multiple of N (0 = none).";
const CHECKPOINT_TIMEOUT_S: &str =
    "A checkpoint write that has not committed after this many seconds fails the task, which is re-issued.";
const CHAT: &str = "Render prompts with the tokenizer's chat template.";
const MAX_PROMPT_TOKENS: &str = "Longer prompts keep their last N tokens (metric `prompt/truncated` counts them; 0 = no limit).";
const SAVE_DTYPE: &str = "The final model's dtype: `auto` (the dtype the model was loaded in; f32 for `\"tiny\"`) \\| `f32` \\| `bf16` \\| `f16`; checkpoints stay f32.";
const MAX_SHARD_SIZE: &str = "Bytes, or a size such as `\"5GB\"` or `\"512MiB\"`: larger models are written as `model-0000K-of-0000N.safetensors` + `model.safetensors.index.json`.";
const GRAD_ACCUM: &str = "Micro-batches per step; must divide the batch.";
const STEPS: &str = "Optimizer steps.";
const EVAL_PROMPTS: &str = "Held-out prompts evaluated at each evaluation.";
const ENSEMBLE: &str = "The ensemble: an `ensemble.json` manifest (path or URL), the directory holding one, or `\"stage:NAME\"` of a reward_train stage.";
const NORMALIZE_SCORING: &str = "Member scores minus the manifest's mean (`center`), also over its std (`zscore`), or raw (`none`); `center`/`zscore` need a manifest with statistics (`norm_policy`).";
const UWO_LAMBDA: &str = "λ of `uwo` (mean − λ·variance), ≥ 0.";
const LSC_SAMPLES: &str = "Reference samples per prompt whose member-score quantiles LSC subtracts (M_ref; 0 = no `lsc` scorer).";
const LSC_QUANTILE: &str = "The quantile q of those reference scores, in [0, 1] (0.85: an unverified choice from a reimplementation).";

const fn k(table: &'static str, key: &'static str, description: &'static str) -> KeyDoc {
    KeyDoc {
        table,
        key,
        description,
    }
}

/// Every key of every table, in the order the generated page lists them.
pub const KEYS: &[KeyDoc] = &[
    // mod.rs
    k("job", "kind", "The job's kind: `merge` \\| `pipeline` \\| `sft` \\| `selfplay` \\| `reward_train` \\| `score` \\| `bon`."),
    k("job", "name", "The job's name (default: the config file's name without its extension)."),
    k("job", "output", "Where the job writes: a path (relative to the directory the CLI runs in) or an object-store URL (`s3://bucket/prefix`, ...)."),
    k("job", "seed", "The job's seed: tiny models' weights, sampling, DARE's masks."),
    k("job", "workers", "Use at most this many workers at once; 0 = all available."),
    k("job", "overwrite", "Allow an output that already holds another job's outputs (refused by default)."),
    k("stage", "name", "The stage's name (letters, digits, `-`, `_`; unique): it writes under `OUTPUT/NAME/`, and `\"stage:NAME\"` names its model."),
    k("stage", "kind", "`merge` \\| `sft` \\| `selfplay` \\| `reward_train` \\| `score` \\| `bon`: the stage's table is `[stage.KIND]`."),
    k("stage", "seed", "The stage's seed (default: the job's `seed`)."),
    k("stage", "workers", "The stage's worker limit (default: the job's `workers`)."),
    // merge.rs
    k("merge", "method", "`task_arithmetic` \\| `pcb` \\| `ties` \\| `dare_linear` \\| `dare_ties`."),
    k("merge", "base", "The base model: an HF directory (single or sharded), a `.safetensors` file, a URL or `\"stage:NAME\"`."),
    k("merge", "models", "The models merged into the base (at least one; paths, URLs or `\"stage:NAME\"`)."),
    k("merge", "weights", "One weight per model (not for `pcb`, which weighs the models itself)."),
    k("merge", "lambda", "Scale of the merged task vector."),
    k("merge", "max_shard_size", MAX_SHARD_SIZE),
    k("merge", "keep_ratio", "PCB: the fraction of parameters kept, in (0, 1]."),
    k("merge", "clip_ratio", "PCB: the fraction clipped, in [0, 0.5) (the authors' standalone script used 0.0001)."),
    k("merge", "lambdas", "PCB: one scale per model."),
    k("merge", "inter", "PCB: inter-model balancing, `sum_raw` \\| `pairwise`."),
    k("merge", "scope", "PCB and TIES: `global` \\| `per_tensor` statistics."),
    k("merge", "density", "TIES, DARE: a number, or one per model (TIES: in (0, 1]; DARE: in [0, 1])."),
    k("merge", "normalize", "TIES and `dare_ties`: divide by the summed weights of the models agreeing with the elected sign (docs/algorithms.md §5, \"TIES\")."),
    k("merge", "rescale", "DARE: `inv_density` \\| `l1` \\| `none` (mergekit's DARE rescales with `l1`)."),
    k("merge", "seed", "DARE: the seed of the drop masks (default: the job's or stage's `seed`)."),
    // sft.rs
    k("sft", "init", "The initial model: `\"tiny\"` (a tiny Llama for `task`'s vocabulary, seeded by the job's seed), or a path, URL, `.gguf` file or `\"stage:NAME\"`."),
    k("sft", "task", "A built-in task (`goodhart_digits` \\| `exact_words`): its base sampler is the data when `data` is absent, its held-out prompts give `eval/gold`. Give `task`, `data` or both."),
    k("sft", "data", "Training data, JSONL (path or URL): `{\"prompt\", \"completion\"}` or `{\"messages\": [...]}` rows."),
    k("sft", "batch_size", "Examples per step (global)."),
    k("sft", "grad_accum", GRAD_ACCUM),
    k("sft", "steps", STEPS),
    k("sft", "eval_every", "Evaluate every N steps."),
    k("sft", "eval_prompts", EVAL_PROMPTS),
    k("sft", "compute_dtype", COMPUTE_DTYPE),
    k("sft", "world_size", WORLD_SIZE),
    k("sft", "min_world_size", MIN_WORLD_SIZE),
    k("sft", "collective_timeout_s", COLLECTIVE_TIMEOUT_S),
    k("sft", "checkpoint_every", CHECKPOINT_EVERY),
    k("sft", "keep_last", KEEP_LAST),
    k("sft", "keep_every", KEEP_EVERY),
    k("sft", "checkpoint_timeout_s", CHECKPOINT_TIMEOUT_S),
    k("sft", "chat", CHAT),
    k("sft", "max_prompt_tokens", MAX_PROMPT_TOKENS),
    k("sft", "save_dtype", SAVE_DTYPE),
    k("sft", "max_shard_size", MAX_SHARD_SIZE),
    // selfplay.rs
    k("selfplay", "algorithm", "`online_ipo` \\| `ipo_md` \\| `nash_md` \\| `online_dpo` \\| `slic` (docs/algorithms.md §3)."),
    k("selfplay", "kl_coef", "τ, the KL coefficient, > 0."),
    k("selfplay", "mixture_coef", "β, the weight of the reference in the geometric mixture (docs/algorithms.md §1)."),
    k("selfplay", "policy", "The trained policy's initial model: a path, URL, `.gguf` file, `\"stage:NAME\"` or `\"tiny\"`."),
    k("selfplay", "reference", "The frozen reference: likewise."),
    k("selfplay", "task", "The built-in task whose gold judge and held-out prompts are used: `goodhart_digits` (tiny models) \\| `exact_words` (text, real LMs); the default applies without `prompts`, none with it."),
    k("selfplay", "prompts", "Prompts, JSONL (path or URL) of `{\"prompt\"}` or `{\"messages\"}` rows; absent: the task's train prompts; without a task its last `eval_prompts` rows are held out."),
    k("selfplay", "batch_prompts", "Prompts per step (global)."),
    k("selfplay", "grad_accum", GRAD_ACCUM),
    k("selfplay", "steps", STEPS),
    k("selfplay", "eval_every", "Evaluate (`eval/gold`, `eval/win_rate` vs the reference) every N steps."),
    k("selfplay", "eval_prompts", EVAL_PROMPTS),
    k("selfplay", "nash_kl_grad", "`nash_md`: how the KL term's gradient is taken, `sequence` \\| `to_go` \\| `token`."),
    k("selfplay", "labels", "`online_dpo`, `slic`: `hard` \\| `soft` labels (docs/algorithms.md §3, \"Labels (DPO and SLiC)\")."),
    k("selfplay", "sft_coef", "The RPO term's coefficient (not for `nash_md`; docs/algorithms.md §3)."),
    k("selfplay", "chat", CHAT),
    k("selfplay", "max_prompt_tokens", MAX_PROMPT_TOKENS),
    k("selfplay", "compute_dtype", COMPUTE_DTYPE),
    k("selfplay", "world_size", WORLD_SIZE),
    k("selfplay", "min_world_size", MIN_WORLD_SIZE),
    k("selfplay", "collective_timeout_s", COLLECTIVE_TIMEOUT_S),
    k("selfplay", "checkpoint_every", CHECKPOINT_EVERY),
    k("selfplay", "keep_last", KEEP_LAST),
    k("selfplay", "keep_every", KEEP_EVERY),
    k("selfplay", "checkpoint_timeout_s", CHECKPOINT_TIMEOUT_S),
    k("selfplay", "save_dtype", SAVE_DTYPE),
    k("selfplay", "max_shard_size", MAX_SHARD_SIZE),
    k("selfplay.preference", "source", "`gold` (the task's gold judge; needs a `task`) \\| `reward_model` \\| `ensemble` (docs/algorithms.md §2)."),
    k("selfplay.preference", "model", "`reward_model` only: a one-label `*ForSequenceClassification` directory sharing the policy's tokenizer (path, URL or `\"stage:NAME\"`)."),
    k("selfplay.preference", "members", "`ensemble` only: ≥ 2 reward models, each like `model` (they must share one tokenizer); or give `ensemble`."),
    k("selfplay.preference", "ensemble", "`ensemble` only, instead of `members`: an ensemble manifest (like `[bon] ensemble`); its normalisation statistics are used when it has them, else fitted on initial-policy samples."),
    k("selfplay.preference", "aggregate", "`ensemble` only: `mean` \\| `wco` (min) \\| `uwo` (mean − λ·variance) \\| `member:N` (0-based)."),
    k("selfplay.preference", "uwo_lambda", "`ensemble` only: λ of `uwo`, ≥ 0."),
    k("selfplay.preference", "normalize", "`ensemble` only: member scores minus their mean (`center`), also over their std (`zscore`) on initial-policy samples, or raw (`none`)."),
    k("selfplay.preference", "norm_prompts", "`ensemble` only: train prompts whose initial-policy samples fit the normalisation."),
    k("selfplay.preference", "temperature", "p = sigmoid((s(y) − s(y′)) / temperature), > 0."),
    // reward_train.rs
    k("reward_train", "members", "K, the number of members (one task each)."),
    k("reward_train", "init", "The backbone: `\"tiny\"` (a fresh tiny model for `task`'s vocabulary), or a path, URL, `.gguf` file or `\"stage:NAME\"` of a causal LM (given a new one-label head) or of a one-label `*ForSequenceClassification` model."),
    k("reward_train", "task", "A built-in task (`goodhart_digits`): its proxy preference data (docs/algorithms.md §6) when `data` is absent."),
    k("reward_train", "data", "Preference pairs, JSONL (path or URL): `{\"prompt\", \"chosen\", \"rejected\"}` or `{\"chosen\": [messages], \"rejected\": [messages]}` rows."),
    k("reward_train", "label_noise", "Task data only: the expected fraction of flipped labels, in [0, 0.5] (Coste et al.: 0.25)."),
    k("reward_train", "train_pairs", "Task data: pairs generated for training; JSONL: the first N rows that are not held out (0 = all)."),
    k("reward_train", "eval_pairs", "Held-out pairs (task data: generated after the train pairs; JSONL: the file's last rows)."),
    k("reward_train", "bootstrap", "Each member trains on its own resample (with replacement) of the train pairs."),
    k("reward_train", "shared_backbone", "One frozen backbone for all members (a tiny one drawn from the job seed); each member trains only its `score` head, and score and best-of-n jobs read all K heads off one forward pass (docs/algorithms.md §3)."),
    k("reward_train", "batch_size", "Pairs per step."),
    k("reward_train", "steps", STEPS),
    k("reward_train", "eval_every", "Log held-out accuracy every N steps."),
    k("reward_train", "compute_dtype", COMPUTE_DTYPE),
    k("reward_train", "chat", CHAT),
    k("reward_train", "max_prompt_tokens", MAX_PROMPT_TOKENS),
    k("reward_train", "norm_policy", "A policy whose samples fit each member's normalisation statistics (mean, std) for the manifest (path, URL, `\"stage:NAME\"` or `\"tiny\"`); absent: none."),
    k("reward_train", "norm_prompts", "Prompts (the task's train prompts, or the data's) sampled for the statistics."),
    k("reward_train", "norm_samples", "Samples per prompt for the statistics."),
    k("reward_train.tiny", "hidden_size", "Hidden size."),
    k("reward_train.tiny", "num_layers", "Decoder layers."),
    k("reward_train.tiny", "num_heads", "Attention heads (divides `hidden_size`)."),
    k("reward_train.tiny", "num_kv_heads", "Key/value heads (divides `num_heads`)."),
    k("reward_train.tiny", "intermediate_size", "MLP width."),
    k("reward_train.tiny", "initializer_range", "The std of the normal init of every weight matrix (transformers' `initializer_range`); transformers' tiny Llama learns Goodhart-Digits' proxy pairs faster from 0.1 than from 0.02 (`scripts/proxy_learnability.py`, RESULTS.md)."),
    // scoring.rs
    k("score", "ensemble", ENSEMBLE),
    k("score", "data", "Rows to score, JSONL (path or URL), one form per file: single completions (`{\"prompt\", \"completion\"}` or `{\"messages\": [...]}` ending with the assistant's completion) or labelled pairs (`{\"prompt\", \"chosen\", \"rejected\"}` or `chosen`/`rejected` message lists), whose summary adds each scorer's accuracy."),
    k("score", "shard_rows", "Rows per shard task."),
    k("score", "normalize", NORMALIZE_SCORING),
    k("score", "uwo_lambda", UWO_LAMBDA),
    k("score", "reference", "The reference policy LSC samples (path, URL or `\"stage:NAME\"`); absent: no `lsc` scorer."),
    k("score", "lsc_samples", LSC_SAMPLES),
    k("score", "lsc_quantile", LSC_QUANTILE),
    k("score", "chat", CHAT),
    k("score", "max_prompt_tokens", MAX_PROMPT_TOKENS),
    k("bon", "ensemble", ENSEMBLE),
    k("bon", "policy", "The policy sampled (path, URL, `\"stage:NAME\"` or `\"tiny\"`); it is also LSC's reference."),
    k("bon", "task", "The built-in task whose held-out prompts are used and whose gold judge scores: `goodhart_digits` \\| `exact_words`."),
    k("bon", "prompts", "Held-out prompts."),
    k("bon", "samples", "N, samples per prompt the estimator draws best-of-n from."),
    k("bon", "max_n", "The largest n (≤ `samples`); n runs over 1, 2, 4, … and `max_n`."),
    k("bon", "prompts_per_shard", "Prompts per shard task."),
    k("bon", "normalize", NORMALIZE_SCORING),
    k("bon", "uwo_lambda", UWO_LAMBDA),
    k("bon", "lsc_samples", LSC_SAMPLES),
    k("bon", "lsc_quantile", LSC_QUANTILE),
    // training.rs
    k("optimizer", "lr", "Peak learning rate, in (0, 1]."),
    k("optimizer", "warmup_steps", "Linear warm-up steps."),
    k("optimizer", "decay", "`constant` \\| `linear` \\| `cosine` decay after warm-up."),
    k("optimizer", "beta1", "AdamW β₁."),
    k("optimizer", "beta2", "AdamW β₂."),
    k("optimizer", "eps", "AdamW ε."),
    k("optimizer", "weight_decay", "AdamW weight decay, in [0, 1]."),
    k("optimizer", "max_grad_norm", "Clip the gradient's global norm to this (0 = off)."),
    k("sampling", "max_new_tokens", "Tokens generated per completion at most, in [1, 4096]."),
    k("sampling", "min_new_tokens", "No EOS before this many new tokens, in [0, max_new_tokens] (0 = the rules' own minimum, 1; = max_new_tokens forces every completion to that length)."),
    k("sampling", "temperature", "Sampling temperature, in [0, 100]."),
    k("sampling", "top_k", "Sample among the k most likely tokens (0 = off)."),
    k("sampling", "top_p", "Nucleus sampling mass, in (0, 1] (1 = off)."),
];
