//! The training loops in-process on tiny models: metric schema, bitwise reproducibility with a
//! fixed seed, and golden files of the first self-play steps of IPO-MD and Nash-MD-PG
//! (torchtitan's rule: a change that should not affect numerics gives bitwise-identical losses).
//! Regenerate a golden file after a deliberate change with `MIRRORPLAY_BLESS=1 cargo test -p
//! mirrorplay-worker --lib selfplay_lines_have_the_schema_and_are_bitwise_reproducible` (IPO-MD)
//! or `.. --lib nash_md_lines_match_the_golden_file` (Nash-MD-PG).

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use mirrorplay_proto::v1::{
    data_source, model_source, train_task, DataSource, Decay, ModelSource, OptimizerSpec,
    PreferenceSpec, SamplingSpec, SelfplayAlgorithm, SelfplaySpec, SftSpec, TinyModel, TrainTask,
};
use serde_json::Value;

pub(super) fn tiny() -> ModelSource {
    ModelSource {
        source: Some(model_source::Source::Tiny(TinyModel {
            task: "goodhart_digits".into(),
            hidden_size: 32,
            num_layers: 1,
            num_heads: 2,
            num_kv_heads: 1,
            intermediate_size: 64,
            initializer_range: 0.0,
        })),
    }
}

fn optimizer() -> OptimizerSpec {
    let mut o = OptimizerSpec {
        lr: 3e-3,
        warmup_steps: 0,
        decay: 0,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
    };
    o.set_decay(Decay::Constant);
    o
}

fn sampling() -> SamplingSpec {
    SamplingSpec {
        max_new_tokens: 17,
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_new_tokens: 0,
    }
}

pub(super) fn selfplay() -> train_task::Spec {
    let mut s = SelfplaySpec {
        algorithm: 0,
        kl_coef: 0.05,
        mixture_coef: 0.125,
        policy: Some(tiny()),
        reference: Some(tiny()),
        sampling: Some(sampling()),
        compute_dtype: mirrorplay_proto::v1::ComputeDtype::F32 as i32,
        batch_prompts: 8,
        grad_accum: 2,
        steps: 3,
        optimizer: Some(optimizer()),
        eval_every: 2,
        eval_prompts: 8,
        nash_kl_grad: 0,
        labels: 0,
        sft_coef: 0.0,
        prompts: Some(DataSource {
            source: Some(data_source::Source::Task("goodhart_digits".into())),
        }),
        task: "goodhart_digits".into(),
        preference: Some(PreferenceSpec {
            source: "gold".into(),
            temperature: 1.0,
            model: None,
            ..PreferenceSpec::default()
        }),
        parallel: None,
        checkpoint: None,
        ..Default::default()
    };
    s.set_algorithm(SelfplayAlgorithm::IpoMd);
    train_task::Spec::Selfplay(s)
}

fn sft() -> train_task::Spec {
    train_task::Spec::Sft(SftSpec {
        init: Some(tiny()),
        data: Some(DataSource {
            source: Some(data_source::Source::Task("goodhart_digits".into())),
        }),
        eval_task: "goodhart_digits".into(),
        batch_size: 8,
        grad_accum: 1,
        steps: 3,
        optimizer: Some(optimizer()),
        eval_every: 3,
        eval_prompts: 8,
        sampling: Some(sampling()),
        compute_dtype: mirrorplay_proto::v1::ComputeDtype::F32 as i32,
        parallel: None,
        checkpoint: None,
        ..Default::default()
    })
}

/// Runs a task in-process as a single rank writing under `dir`; returns its result and the
/// metric lines it streamed.
pub(super) fn try_run(
    spec: train_task::Spec,
    dir: &std::path::Path,
) -> (
    Result<mirrorplay_proto::v1::TrainResult, super::TrainError>,
    Vec<String>,
) {
    let output = crate::io::store::absolute_url(dir.to_str().unwrap(), dir).unwrap();
    let task = TrainTask {
        output,
        seed: 7,
        spec: Some(spec),
    };
    let lines = Mutex::new(Vec::new());
    let sink = |l: String| lines.lock().unwrap().push(l);
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(super::run(
            &task,
            ("test-job", 1),
            &candle_core::Device::Cpu,
            (&|_| {}, &sink, &|_| {}),
            &AtomicBool::new(false),
            &mut crate::collective::Local,
        ));
    (result, lines.into_inner().unwrap())
}

/// Runs a task; returns the streamed lines and the written ones, without `time` and
/// `tokens_per_s` (wall-clock dependent).
fn run(spec: train_task::Spec) -> (Vec<Value>, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let (result, lines) = try_run(spec, dir.path());
    let result = result.unwrap();
    assert_eq!(result.steps, 3);
    assert!(dir.path().join("model/model.safetensors").exists());
    let clean = |l: &str| {
        let mut v: Value = serde_json::from_str(l).unwrap();
        let o = v.as_object_mut().unwrap();
        assert!(o.remove("time").unwrap().is_f64());
        o.remove("tokens_per_s");
        v
    };
    let streamed: Vec<Value> = lines.iter().map(|l| clean(l)).collect();
    let part = std::fs::read_to_string(dir.path().join(format!(
        "metrics/{}",
        crate::checkpoint::attempts::part_name(1, 0)
    )))
    .unwrap();
    let written: Vec<Value> = part.lines().map(clean).collect();
    (streamed, written)
}

#[test]
fn selfplay_lines_have_the_schema_and_are_bitwise_reproducible() {
    let (streamed, written) = run(selfplay());
    assert_eq!(
        streamed, written,
        "the part holds exactly the streamed lines"
    );
    let train: Vec<&Value> = streamed.iter().filter(|v| v["split"] == "train").collect();
    let eval: Vec<&Value> = streamed.iter().filter(|v| v["split"] == "eval").collect();
    assert_eq!(train.len(), 3);
    for v in &train {
        for k in ["loss", "kl/k1", "kl/k3", "pref/mean", "grad_norm", "lr"] {
            assert!(v[k].is_f64(), "{k} in {v}");
        }
        assert_eq!(v["attempt"], 1);
    }
    // Before training (step 0), at eval_every and at the end.
    let eval_steps: Vec<u64> = eval.iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(eval_steps, vec![0, 2, 3]);
    assert!(eval
        .iter()
        .all(|v| v["eval/win_rate"].is_f64() && v["eval/gold"].is_f64()));
    assert_eq!(
        run(selfplay()).0,
        streamed,
        "same seed, same lines, bit for bit"
    );

    assert_golden(&streamed, "selfplay-ipo-md.jsonl");
}

/// Compares metric lines with the golden file `name` (under `tests/fixtures/golden/`), or
/// writes it under `MIRRORPLAY_BLESS`.
fn assert_golden(lines: &[Value], name: &str) {
    let golden = format!(
        "{}/tests/fixtures/golden/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text: String = lines.iter().map(|v| format!("{v}\n")).collect();
    if std::env::var_os("MIRRORPLAY_BLESS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(&golden).parent().unwrap()).unwrap();
        std::fs::write(&golden, &text).unwrap();
    }
    let want =
        std::fs::read_to_string(&golden).expect("golden file (MIRRORPLAY_BLESS=1 writes it)");
    assert_eq!(text, want, "metrics differ from the golden file {golden}");
}

/// Nash-MD-PG's first steps, bit for bit: how y ~ π and y′ ~ π_mix^β are decoded (two passes
/// or one over both) must not move a bit. 12 prompts, so y and y′ together are 24 rows: more
/// than the 16 up to which `model::ops::linear` takes another matmul formulation.
#[test]
fn nash_md_lines_match_the_golden_file() {
    let mut spec = selfplay();
    if let train_task::Spec::Selfplay(s) = &mut spec {
        s.set_algorithm(SelfplayAlgorithm::NashMd);
        s.batch_prompts = 12;
    }
    let (streamed, _) = run(spec);
    assert_golden(&streamed, "selfplay-nash-md.jsonl");
}

#[test]
fn sft_lines_have_the_schema_and_no_self_play_keys() {
    let (streamed, _) = run(sft());
    let train: Vec<&Value> = streamed.iter().filter(|v| v["split"] == "train").collect();
    assert_eq!(train.len(), 3);
    assert!(train
        .iter()
        .all(|v| v["loss"].is_f64() && v.get("pref/mean").is_none()));
    let eval: Vec<&Value> = streamed.iter().filter(|v| v["split"] == "eval").collect();
    assert_eq!(eval.len(), 1);
    assert!(eval[0]["eval/gold"].is_f64() && eval[0].get("eval/win_rate").is_none());
}

#[test]
fn bf16_compute_trains_with_finite_metrics_close_to_f32() {
    // Mixed precision end to end on CPU (where it runs, slowly): a bf16 self-play job steps,
    // logs finite metrics, and its first loss is close to the f32 run's (the Vars stay f32:
    // `model::tests::half_precision_compute_trains_f32_master_weights`).
    let with_dtype = |d: mirrorplay_proto::v1::ComputeDtype| {
        let mut spec = selfplay();
        if let train_task::Spec::Selfplay(s) = &mut spec {
            s.set_compute_dtype(d);
        }
        spec
    };
    let (f32_lines, _) = run(with_dtype(mirrorplay_proto::v1::ComputeDtype::F32));
    let (bf16_lines, _) = run(with_dtype(mirrorplay_proto::v1::ComputeDtype::Bf16));
    let first = |lines: &[Value], k: &str| {
        lines
            .iter()
            .find(|v| v["split"] == "train")
            .and_then(|v| v[k].as_f64())
            .unwrap()
    };
    for v in bf16_lines.iter().filter(|v| v["split"] == "train") {
        for k in ["loss", "kl/k1", "kl/k3", "grad_norm"] {
            assert!(v[k].as_f64().is_some_and(f64::is_finite), "{k} in {v}");
        }
    }
    // Step 1 starts from the same weights and the same random draws; only bf16 rounding (of
    // the sampling distribution and of the scores) separates the two losses.
    let (a, b) = (first(&f32_lines, "loss"), first(&bf16_lines, "loss"));
    assert!(
        a != b && (a - b).abs() <= 0.05 * a.abs().max(1.0),
        "f32 {a} vs bf16 {b}"
    );
}

/// Writes a random tiny model over `tokenizer`'s vocabulary (`vocab` rows) as an HF directory
/// under `dir` and returns it as a model source.
fn write_model(
    dir: &std::path::Path,
    vocab: usize,
    tokenizer: crate::model::Tokenizer,
) -> ModelSource {
    use crate::model::{init_random, ModelConfig, Pretrained, SaveOptions};
    let config = ModelConfig::tiny_with(vocab, 32, 1, 2, 1, 64);
    let model = init_random(&config, 5, false, &candle_core::Device::Cpu).unwrap();
    let path = dir.join("policy");
    crate::test_support::block_on(
        Pretrained::from_parts(model, Some(tokenizer))
            .unwrap()
            .save(path.to_str().unwrap(), &SaveOptions::default()),
    )
    .unwrap();
    ModelSource {
        source: Some(model_source::Source::Url(path.to_str().unwrap().into())),
    }
}

/// Self-play driven by a learned reward model on a prompt file without a task: the policy (a
/// tiny random model with a word-level tokenizer, written as an HF directory) shares the
/// fixture reward model's 24-token vocabulary; the file's last eval_prompts rows are held out;
/// eval reports the reward model's mean and win rate (there is no gold), training logs finite
/// preferences, and the judge's preferences are the logistic of its score differences
/// (`preference::reward_model` tests check those against transformers' scores).
#[test]
fn reward_model_preferences_drive_selfplay_on_a_prompt_file() {
    let dir = tempfile::tempdir().unwrap();
    let spec = prompt_file_selfplay(
        dir.path(),
        PreferenceSpec {
            source: "reward_model".into(),
            temperature: 0.5,
            model: Some(url_source(reward_fixture())),
            ..PreferenceSpec::default()
        },
    );
    let (streamed, _) = run(spec);
    let eval: Vec<&Value> = streamed.iter().filter(|v| v["split"] == "eval").collect();
    assert_eq!(eval.len(), 3);
    for v in &eval {
        assert!(v["eval/reward"].as_f64().is_some_and(f64::is_finite), "{v}");
        assert!(
            v["eval/reward_win_rate"]
                .as_f64()
                .is_some_and(|w| (0.0..=1.0).contains(&w)),
            "{v}"
        );
        assert!(
            v.get("eval/gold").is_none() && v.get("eval/win_rate").is_none(),
            "{v}"
        );
    }
    for v in streamed.iter().filter(|v| v["split"] == "train") {
        let p = v["pref/mean"].as_f64().unwrap();
        assert!(
            p > 0.0 && p < 1.0 && v["score/mean"].as_f64().unwrap().is_finite(),
            "{v}"
        );
    }
}

fn reward_fixture() -> String {
    format!(
        "{}/tests/fixtures/models/llama_seqcls",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn url_source(u: String) -> ModelSource {
    ModelSource {
        source: Some(model_source::Source::Url(u)),
    }
}

/// A self-play spec without a task: a 24-token policy (tiny tokenizer over w0..w19, the fixture
/// reward model's vocabulary) as policy and reference, 12 prompts in a JSONL file of which the
/// last 4 are held out, 6 new tokens, and `preference`.
fn prompt_file_selfplay(dir: &std::path::Path, preference: PreferenceSpec) -> train_task::Spec {
    let symbols: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
    let refs: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let policy = write_model(dir, 24, crate::model::Tokenizer::tiny(&refs).unwrap());
    let prompts = dir.join("prompts.jsonl");
    let rows: String = (0..12)
        .map(|i| format!("{{\"prompt\": \"w{} w{} w{}\"}}\n", i, i + 3, i + 7))
        .collect();
    std::fs::write(&prompts, rows).unwrap();
    let mut spec = selfplay();
    if let train_task::Spec::Selfplay(s) = &mut spec {
        s.policy = Some(policy.clone());
        s.reference = Some(policy);
        s.task = String::new();
        s.prompts = Some(DataSource {
            source: Some(data_source::Source::JsonlUrl(
                prompts.to_str().unwrap().to_string(),
            )),
        });
        s.eval_prompts = 4;
        s.sampling = Some(SamplingSpec {
            max_new_tokens: 6,
            ..sampling()
        });
        s.preference = Some(preference);
    }
    spec
}

/// An ensemble of two copies of the fixture reward model drives self-play on a prompt file:
/// its normalisation is fitted on initial-policy samples, eval reports `eval/ensemble` and its
/// win rate, and training logs the members' mean normalised scores and their variance, which
/// is 0 for identical members (so both members' means agree).
#[test]
fn an_ensemble_of_reward_models_drives_selfplay_on_a_prompt_file() {
    let dir = tempfile::tempdir().unwrap();
    let spec = prompt_file_selfplay(
        dir.path(),
        PreferenceSpec {
            source: "ensemble".into(),
            temperature: 0.5,
            members: vec![url_source(reward_fixture()), url_source(reward_fixture())],
            aggregate: "uwo".into(),
            uwo_lambda: 0.5,
            normalize: "zscore".into(),
            norm_prompts: 5,
            ..PreferenceSpec::default()
        },
    );
    let (streamed, _) = run(spec);
    let eval: Vec<&Value> = streamed.iter().filter(|v| v["split"] == "eval").collect();
    assert_eq!(eval.len(), 3);
    for v in &eval {
        assert!(
            v["eval/ensemble"].as_f64().is_some_and(f64::is_finite),
            "{v}"
        );
        assert!(
            v["eval/ensemble_win_rate"]
                .as_f64()
                .is_some_and(|w| (0.0..=1.0).contains(&w)),
            "{v}"
        );
    }
    let train: Vec<&Value> = streamed.iter().filter(|v| v["split"] == "train").collect();
    assert!(!train.is_empty());
    for v in train {
        let p = v["pref/mean"].as_f64().unwrap();
        assert!(p > 0.0 && p < 1.0, "{v}");
        let (m0, m1) = (
            v["ensemble/member_0"].as_f64().unwrap(),
            v["ensemble/member_1"].as_f64().unwrap(),
        );
        assert!(m0.is_finite() && m0 == m1, "{v}");
        assert_eq!(v["ensemble/variance"].as_f64(), Some(0.0), "{v}");
        // Identical members: every z_k is the aggregate, so each member's mean over y and y′
        // is the step's score/mean.
        let score = v["score/mean"].as_f64().unwrap();
        assert!(
            (m0 - score).abs() <= 1e-9 * score.abs().max(1.0),
            "{m0} vs {score}: {v}"
        );
        assert!(v.get("ensemble/member_2").is_none(), "{v}");
    }
}

/// A chat template that fails to render stops the job before any step, naming the template.
#[test]
fn a_chat_template_that_raises_stops_the_job_before_any_step() {
    use crate::model::Tokenizer;

    let dir = tempfile::tempdir().unwrap();
    let tiny = Tokenizer::tiny(&["a", "b"]).unwrap();
    let mut config = tiny.config().clone();
    config["chat_template"] = "{{ raise_exception('no chat here') }}".into();
    let tokenizer = Tokenizer::from_bytes(tiny.to_json().unwrap().as_bytes(), config, "t").unwrap();
    let policy = write_model(dir.path(), 6, tokenizer);
    let mut spec = selfplay();
    if let train_task::Spec::Selfplay(s) = &mut spec {
        s.policy = Some(policy.clone());
        s.reference = Some(policy);
        s.task = "exact_words".into();
        s.prompts = Some(DataSource {
            source: Some(data_source::Source::Task("exact_words".into())),
        });
        s.chat = true;
    }
    let (result, lines) = try_run(spec, dir.path());
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("no chat here") && err.contains("exact_words prompt 0"),
        "{err}"
    );
    assert!(lines.is_empty(), "no step ran");
}
