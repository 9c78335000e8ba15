//! A Nash-MD-PG self-play step (BENCHMARKS.md#self-play-step-vs-trl-nashmdtrainer): the real
//! training loop (`train::run` → `train::selfplay::run`, in process, one rank) on a random
//! SmolLM2-135M-shaped policy, its copy as the reference, and a random SmolLM2-135M-shaped
//! one-label sequence classifier as the preference source (`[preference] source =
//! "reward_model"`), all f32 on the CPU.
//!
//! One step: B prompts of 16 tokens; y ~ π and y′ ~ π_mix^β (β = 0.5), each at most
//! NEW tokens (`min_new_tokens` = NEW: 63 drawn tokens and a forced EOS; the bench also checks
//! from the step's token count that every completion reached the limit); the reward model scores
//! y and y′, p = σ(r(y) − r(y′)); scoring under π (graph) and μ, the Nash-MD-PG loss
//! (τ = 0.1, TRL's per-token KL term: `nash_kl_grad = "token"`), backward; clip at 1.0 and AdamW. One untimed warm-up step, then STEPS timed
//! steps; the per-phase seconds come from the loop's own `step phases` debug event (sampling,
//! judge, forward+backward, optimizer).
//!
//! `bench/selfplay_step_peer.py` runs the same workload in TRL 1.12.0's `NashMDTrainer`;
//! `bench/selfplay_step.sh` runs both interleaved.
//!
//!   cargo bench -p mirrorplay-worker --bench selfplay_step
//!
//! Env: B (4), NEW (64), STEPS (3). Threads: candle's CPU backend reads RAYON_NUM_THREADS.
//! Prompt row r, position i → token id 4 + (r·131 + i·7) mod 49000 (the peer uses the same).

#[allow(dead_code)] // this bench uses only the shape helper
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use candle_core::Device;
use common::smollm2_135m_shape;
use mirrorplay_proto::v1::{
    data_source, model_source, train_task, ComputeDtype, DataSource, Decay, ModelSource,
    NashKlGrad, OptimizerSpec, PreferenceSpec, SamplingSpec, SelfplayAlgorithm, SelfplaySpec,
    TrainTask,
};
use mirrorplay_worker::io::Dtype;
use mirrorplay_worker::model::{init_random, Pretrained, SaveOptions, Tokenizer};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

const PHASES: [&str; 6] = [
    "tokens",
    "sample_s",
    "judge_s",
    "train_s",
    "optimizer_s",
    "step_s",
];

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Collects the fields of the loop's `step phases` debug events, one map per step.
struct Capture(&'static Mutex<Vec<BTreeMap<String, f64>>>);

struct Fields(BTreeMap<String, f64>);

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value as f64);
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        metadata.target() == "mirrorplay_worker::train::selfplay"
    }
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields(BTreeMap::new());
        event.record(&mut fields);
        if fields.0.contains_key("step_s") {
            self.0.lock().unwrap().push(fields.0);
        }
    }
}

fn main() {
    // candle's element-wise pool as the worker binary sizes it (kernels::pools).
    mirrorplay_worker::kernels::pools::settle_at_start();
    let (b, new, steps) = (env_or("B", 4), env_or("NEW", 64), env_or("STEPS", 3));
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    let events: &'static Mutex<Vec<BTreeMap<String, f64>>> = Box::leak(Box::default());
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture(events)))
        .unwrap();

    // Files: a word-level tokenizer over the whole vocabulary ("w4" → 4, …; <pad> 0, <s> 1,
    // </s> 2 = EOS, <unk> 3), the policy (also the reference) and the reward model as
    // Hugging Face directories, and the prompts as JSONL.
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let config = smollm2_135m_shape();
    let words: Vec<String> = (4..config.vocab_size).map(|i| format!("w{i}")).collect();
    let symbols: Vec<&str> = words.iter().map(String::as_str).collect();
    let tokenizer = Tokenizer::tiny(&symbols).unwrap();
    assert_eq!(tokenizer.token_to_id("w4"), Some(4));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let save = |config: &mirrorplay_worker::model::ModelConfig, seed: u64, name: &str| {
        let model = init_random(config, seed, false, &Device::Cpu).unwrap();
        let p = Pretrained::from_parts(model, Some(tokenizer.clone())).unwrap();
        runtime
            .block_on(p.save(&path(name), &SaveOptions::new(Dtype::F32)))
            .unwrap();
    };
    save(&config, 1, "policy");
    save(&config.with_classification_head(1), 2, "reward");
    let prompts: String = (0..b)
        .map(|r| {
            let words: Vec<String> = (0..16)
                .map(|i| format!("w{}", 4 + (r * 131 + i * 7) % 49000))
                .collect();
            format!("{}\n", serde_json::json!({ "prompt": words.join(" ") }))
        })
        .collect();
    std::fs::write(path("prompts.jsonl"), prompts).unwrap();

    let url = |name: &str| ModelSource {
        source: Some(model_source::Source::Url(path(name))),
    };
    let mut optimizer = OptimizerSpec {
        lr: 5e-7,
        warmup_steps: 0,
        decay: 0,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
    };
    optimizer.set_decay(Decay::Constant);
    let mut spec = SelfplaySpec {
        kl_coef: 0.1,
        mixture_coef: 0.5,
        policy: Some(url("policy")),
        reference: Some(url("policy")),
        sampling: Some(SamplingSpec {
            max_new_tokens: new as u32,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            // Forced length, as TRL's min_new_tokens = NEW: 63 drawn tokens and the forced EOS.
            min_new_tokens: new as u32,
        }),
        batch_prompts: b as u32,
        grad_accum: 1,
        steps: 1 + steps as u64,
        optimizer: Some(optimizer),
        eval_every: 1_000_000,
        eval_prompts: 0,
        prompts: Some(DataSource {
            source: Some(data_source::Source::JsonlUrl(path("prompts.jsonl"))),
        }),
        preference: Some(PreferenceSpec {
            source: "reward_model".into(),
            temperature: 1.0,
            model: Some(url("reward")),
            ..PreferenceSpec::default()
        }),
        ..Default::default()
    };
    spec.set_algorithm(SelfplayAlgorithm::NashMd);
    // TRL's per-token KL term, τ·Σ_t sg(ℓ_t − ℓ_t^ref)·ℓ_t (the same cost as the others).
    spec.set_nash_kl_grad(NashKlGrad::Token);
    spec.set_compute_dtype(ComputeDtype::F32);
    let task = TrainTask {
        output: path("out"),
        seed: 7,
        spec: Some(train_task::Spec::Selfplay(spec)),
    };
    let sink = |_: String| {};
    runtime
        .block_on(mirrorplay_worker::train::run(
            &task,
            ("selfplay-step-bench", 1),
            &Device::Cpu,
            (&|_| {}, &sink, &|_| {}),
            &AtomicBool::new(false),
            &mut mirrorplay_worker::collective::Local,
        ))
        .unwrap();

    let events = events.lock().unwrap();
    assert_eq!(events.len(), 1 + steps, "one `step phases` event per step");
    for (i, e) in events.iter().enumerate() {
        // Every completion reached the limit: no EOS was drawn before the forced one.
        assert_eq!(
            e["tokens"] as usize,
            2 * b * new,
            "step {}: an EOS was drawn before the limit",
            i + 1
        );
        let what = if i == 0 { "warm-up" } else { "timed" };
        println!(
            "mirrorplay step {} ({what}): {:.3} s (sample {:.3}, judge {:.3}, forward+backward {:.3}, optimizer {:.3})",
            i + 1,
            e["step_s"],
            e["sample_s"],
            e["judge_s"],
            e["train_s"],
            e["optimizer_s"]
        );
    }
    let mean = |key: &str| events[1..].iter().map(|e| e[key]).sum::<f64>() / steps as f64;
    let m: Vec<f64> = PHASES[1..].iter().map(|k| mean(k)).collect();
    println!(
        "mirrorplay nash-md step: B={b} prompt=16 new={new} steps={steps} threads={threads}: {:.3} s/step \
         (sample {:.3}, judge {:.3}, forward+backward {:.3}, optimizer {:.3})",
        m[4], m[0], m[1], m[2], m[3]
    );
}
