//! A member on tiny models: it learns Goodhart-Digits preferences, saves a reward model that
//! loads and scores as in memory, fits its normalisation on the norm policy's samples, and
//! every parameter (the new head included) gets a gradient.

use std::sync::Mutex;

use candle_core::Device;
use mirrorplay_proto::v1::{
    model_source, pair_source, Decay, ModelSource, OptimizerSpec, PairSource, SamplingSpec,
    TinyModel,
};
use serde_json::Value;

use super::*;
use crate::model::Pretrained;
use crate::preference::reward_model::RewardModelJudge;
use crate::preference::{Judge, PromptRow};

pub(crate) fn tiny(hidden: u32, layers: u32) -> ModelSource {
    ModelSource {
        source: Some(model_source::Source::Tiny(TinyModel {
            task: "goodhart_digits".into(),
            hidden_size: hidden,
            num_layers: layers,
            num_heads: 2,
            num_kv_heads: 1,
            intermediate_size: 2 * hidden,
            initializer_range: 0.0,
        })),
    }
}

pub(crate) fn spec(steps: u64, lr: f64, train_pairs: u32, label_noise: f64) -> RewardTrainSpec {
    let mut optimizer = OptimizerSpec {
        lr,
        warmup_steps: 0,
        decay: 0,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
    };
    optimizer.set_decay(Decay::Constant);
    RewardTrainSpec {
        members: 2,
        init: Some(tiny(32, 1)),
        data: Some(PairSource {
            source: Some(pair_source::Source::Task("goodhart_digits".into())),
        }),
        label_noise,
        train_pairs,
        eval_pairs: 256,
        bootstrap: false,
        batch_size: 32,
        steps,
        optimizer: Some(optimizer),
        eval_every: 50,
        sampling: Some(SamplingSpec {
            max_new_tokens: 17,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_new_tokens: 0,
        }),
        ..Default::default()
    }
}

/// Trains member `member` under `dir`; returns the member, its result and its metric lines.
pub(crate) fn train_member(
    spec: RewardTrainSpec,
    member: u32,
    dir: &std::path::Path,
) -> (Loaded, RewardMemberResult, Vec<Value>) {
    let task = RewardMemberTask {
        spec: Some(spec),
        member,
        output: dir
            .join(format!("member-{member}"))
            .to_str()
            .unwrap()
            .into(),
        seed: 7,
    };
    let lines = Mutex::new(Vec::new());
    let sink = |l: String| lines.lock().unwrap().push(l);
    let (loaded, result) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(train(
            &task,
            &Device::Cpu,
            (&|_| {}, &sink),
            &AtomicBool::new(false),
        ))
        .unwrap();
    let lines = lines.into_inner().unwrap();
    let lines = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (loaded, result, lines)
}

fn scores(model: &Model, pairs: &[Pair]) -> Vec<f32> {
    let refs: Vec<&Pair> = pairs.iter().collect();
    let (w, l) = rewards(model, &refs).unwrap();
    [w.to_vec1::<f32>().unwrap(), l.to_vec1::<f32>().unwrap()].concat()
}

/// Without label noise a tiny member fits its train pairs (128 pairs, 200 steps: loss and
/// train accuracy far from chance; held-out accuracy on Goodhart gold stays near chance for
/// tiny models: see the `sweep` below), logs its lines, and its directory loads as a reward
/// model that scores bit for bit as in memory.
#[test]
fn a_tiny_member_fits_goodhart_preferences_and_saves_a_reward_model() {
    let dir = tempfile::tempdir().unwrap();
    let (member, r, lines) = train_member(spec(200, 3e-3, 128, 0.0), 0, dir.path());
    assert_eq!((r.member, r.steps), (0, 200));
    assert!(r.train_accuracy_clean >= 0.8, "{r:?}");
    assert_eq!(
        r.train_accuracy, r.train_accuracy_clean,
        "no noise: labels are clean"
    );
    assert!(r.final_loss < 0.45, "{r:?}");
    assert!((0.0..=1.0).contains(&r.eval_accuracy_clean), "{r:?}");
    assert!(!r.has_norm && r.norm_mean.is_nan() && r.norm_samples == 0);
    let train: Vec<&Value> = lines.iter().filter(|l| l["split"] == "train").collect();
    assert_eq!(train.len(), 200);
    for key in ["loss", "accuracy", "lr", "grad_norm"] {
        assert!(train[199][key].is_f64(), "{key}: {}", train[199]);
    }
    let first = train[0]["loss"].as_f64().unwrap();
    assert!(
        (first - std::f64::consts::LN_2).abs() < 0.05,
        "starts at ln 2: {first}"
    );
    let evals: Vec<u64> = lines
        .iter()
        .filter(|l| l["split"] == "eval")
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(evals, vec![50, 100, 150, 200]);
    let last = lines.iter().rfind(|l| l["split"] == "eval").unwrap();
    assert_eq!(
        last["eval/accuracy_clean"].as_f64(),
        Some(r.eval_accuracy_clean)
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let back = rt
        .block_on(Pretrained::load(&r.model_url, false, &Device::Cpu))
        .unwrap();
    let config: Value =
        serde_json::from_slice(&std::fs::read(format!("{}/config.json", r.model_url)).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "LlamaForSequenceClassification");
    assert_eq!(
        (
            config["num_labels"].as_u64(),
            config["pad_token_id"].as_u64()
        ),
        (Some(1), Some(19))
    );
    for file in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(
            std::path::Path::new(&r.model_url).join(file).exists(),
            "{file}"
        );
    }
    let pairs = (0..64)
        .map(|i| pairs::task_pair(crate::tasks::Task::GoodhartDigits, 7, 5000 + i, 0.0))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let mine = scores(&member.model.detached().unwrap(), &pairs);
    assert_eq!(
        mine,
        scores(&back.model, &pairs),
        "bitwise after save and load"
    );
    let judge = RewardModelJudge::new(back.model, back.tokenizer.as_ref(), 20, None, "m").unwrap();
    let row = crate::preference::PromptRow {
        ids: pairs[0].prompt.clone(),
        task: None,
        truncated: false,
    };
    let s = judge.scores(&[&row], &[pairs[0].chosen.clone()]).unwrap();
    assert!(
        (s[0] - f64::from(mine[0])).abs() < 1e-6,
        "{s:?} vs {}",
        mine[0]
    );
}

/// Members of one job share the pairs but not their weights, and a bootstrap member trains on
/// a resample; both runs are short.
#[test]
fn members_differ_by_seed_and_bootstrap_resamples() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(2, 3e-3, 64, 0.25);
    s.eval_pairs = 16;
    let (m0, r0, _) = train_member(s.clone(), 0, dir.path());
    let (m1, r1, _) = train_member(s.clone(), 1, dir.path());
    assert_ne!(r0.model_url, r1.model_url);
    let w = |m: &Loaded, name: &str| m.model.tensors()[name].to_vec2::<f32>().unwrap();
    for name in ["score.weight", "model.embed_tokens.weight"] {
        assert_ne!(w(&m0, name), w(&m1, name), "{name}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let format = PromptFormat {
        tokenizer: m0.tokenizer.clone(),
        chat: false,
        max_prompt_tokens: 0,
    };
    let pairs = rt.block_on(load_pairs(&s, 7, &m0, &format)).unwrap();
    assert_eq!(
        pairs.train,
        rt.block_on(load_pairs(&s, 7, &m1, &format)).unwrap().train
    );
    let (seed0, seed1) = (pairs::member_seed(7, 0), pairs::member_seed(7, 1));
    let plain = member_pairs(&pairs.train, false, seed0);
    assert_eq!(plain, pairs.train.iter().collect::<Vec<_>>());
    let (b0, b1) = (
        member_pairs(&pairs.train, true, seed0),
        member_pairs(&pairs.train, true, seed1),
    );
    assert_eq!(b0.len(), 64);
    assert_ne!(b0, b1);
    let distinct = |b: &[&Pair]| {
        b.iter()
            .map(|p| (p.prompt.clone(), p.chosen.clone(), p.rejected.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    assert!(distinct(&b0) < distinct(&plain), "a resample repeats pairs");
}

/// A member trains on a JSONL file with the backbone's tokenizer; clean labels are unknown.
#[test]
fn a_jsonl_member_has_no_clean_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairs.jsonl");
    let text = |ids: &[u32]| {
        let words: Vec<String> = ids[..ids.len() - 1].iter().map(u32::to_string).collect();
        words.join(" ")
    };
    let rows: Vec<String> = (0..40)
        .map(|i| {
            let p = pairs::task_pair(crate::tasks::Task::GoodhartDigits, 3, i, 0.0).unwrap();
            let t = p.prompt[1..5]
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>();
            serde_json::json!({
                "prompt": format!("<s> {} <sep>", t.join(" ")),
                "chosen": text(&p.chosen),
                "rejected": text(&p.rejected),
            })
            .to_string()
        })
        .collect();
    std::fs::write(&path, rows.join("\n")).unwrap();
    let mut s = spec(2, 3e-3, 0, 0.0);
    s.data = Some(PairSource {
        source: Some(pair_source::Source::JsonlUrl(path.to_str().unwrap().into())),
    });
    s.eval_pairs = 8;
    let (_, r, _) = train_member(s, 0, dir.path());
    assert!(
        r.eval_accuracy_clean.is_nan() && r.train_accuracy_clean.is_nan(),
        "{r:?}"
    );
    assert!((0.0..=1.0).contains(&r.train_accuracy) && (0.0..=1.0).contains(&r.eval_accuracy));
}

/// The result's statistics are `Normalisation::fit` of the saved member's scores of the norm
/// policy's samples, which are a function of the job seed (recomputed here and checked by
/// hand: mean and population std).
#[test]
fn normalisation_statistics_are_fitted_on_the_norm_policys_samples() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(3, 3e-3, 64, 0.0);
    s.eval_pairs = 16;
    s.norm_policy = Some(tiny(16, 1));
    (s.norm_prompts, s.norm_samples) = (6, 2);
    let (_, r, _) = train_member(s.clone(), 1, dir.path());
    assert!(r.has_norm && r.norm_samples == 12, "{r:?}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let back = rt
        .block_on(Pretrained::load(&r.model_url, false, &Device::Cpu))
        .unwrap();
    let format = PromptFormat {
        tokenizer: back.tokenizer.clone(),
        chat: false,
        max_prompt_tokens: 0,
    };
    let pairs = Pairs {
        train: vec![],
        eval: vec![],
        task: Some(crate::tasks::Task::GoodhartDigits),
    };
    let norm_spec = NormSpec {
        policy: s.norm_policy.as_ref().unwrap(),
        prompts: 6,
        samples: 2,
        sampling: s.sampling.as_ref().unwrap(),
        seed: 7,
        dtype: DType::F32,
    };
    let (_, rows, completions) = rt
        .block_on(norm::samples(&norm_spec, &pairs, &format, &Device::Cpu))
        .unwrap();
    assert_eq!(completions.len(), 12);
    assert_eq!(
        rows[0].ids, rows[1].ids,
        "prompt-major: two samples of prompt 0"
    );
    assert_ne!(rows[1].ids, rows[2].ids);
    assert!(completions
        .iter()
        .all(|c| c.last() == Some(&crate::tasks::goodhart_digits::EOS)));
    let judge = RewardModelJudge::new(back.model, None, 20, None, "m").unwrap();
    let refs: Vec<&PromptRow> = rows.iter().collect();
    let x = judge.scores(&refs, &completions).unwrap();
    let mean = x.iter().sum::<f64>() / 12.0;
    let std = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 12.0).sqrt();
    assert!(
        (r.norm_mean - mean).abs() < 1e-9,
        "{} vs {mean}",
        r.norm_mean
    );
    assert!((r.norm_std - std).abs() < 1e-9, "{} vs {std}", r.norm_std);
    assert!(std > 1e-4, "the samples score differently: {x:?}");
}

/// Every parameter of a member gets a gradient through the Bradley–Terry loss, the new head
/// included, for a tiny model and for a pretrained causal LM given a head; a one-label
/// classifier keeps its head.
#[tokio::test]
async fn every_parameter_gets_a_gradient_and_a_classifier_keeps_its_head() {
    let fixture = |name: &str| ModelSource {
        source: Some(model_source::Source::Url(format!(
            "{}/tests/fixtures/models/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))),
    };
    let pair = |prompt: Vec<u32>, w: Vec<u32>, l: Vec<u32>| Pair {
        prompt,
        chosen: w,
        rejected: l,
        clean_agrees: None,
    };
    for (source, pairs) in [
        (
            tiny(16, 1),
            vec![
                pair(vec![16, 1, 2, 3, 4, 17], vec![1, 2, 18], vec![9, 18]),
                pair(vec![16, 5, 6, 7, 8, 17], vec![5, 18], vec![5, 5, 5, 18]),
            ],
        ),
        (
            fixture("llama_gqa_tied"),
            vec![
                pair(vec![1, 5, 9], vec![13, 2], vec![7, 17, 2]),
                pair(vec![1], vec![3, 2], vec![4, 2]),
            ],
        ),
    ] {
        let m = backbone::load(&source, 42, 42, &Device::Cpu).await.unwrap();
        let params = m.model.vars().unwrap();
        assert!(params.contains_key("score.weight"));
        assert!(!params.contains_key("lm_head.weight"));
        let refs: Vec<&Pair> = pairs.iter().collect();
        let (w, l) = rewards(&m.model, &refs).unwrap();
        let loss = bradley_terry_loss(&w, &l).unwrap();
        let grads = Gradients::from_store(params, &loss.backward().unwrap()).unwrap();
        let head = grads.tensors()["score.weight"]
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert!(head.to_scalar::<f32>().unwrap() > 0.0);
        let again = backbone::load(&source, 42, 42, &Device::Cpu).await.unwrap();
        assert_eq!(
            again.model.tensors()["score.weight"]
                .to_vec2::<f32>()
                .unwrap(),
            m.model.tensors()["score.weight"].to_vec2::<f32>().unwrap(),
            "the head is a function of the member seed"
        );
    }
    let classifier = fixture("llama_seqcls");
    let m = backbone::load(&classifier, 42, 42, &Device::Cpu)
        .await
        .unwrap();
    let original = Pretrained::load(
        &format!(
            "{}/tests/fixtures/models/llama_seqcls",
            env!("CARGO_MANIFEST_DIR")
        ),
        false,
        &Device::Cpu,
    )
    .await
    .unwrap();
    assert!(m.model.vars().is_some());
    assert_eq!(
        m.model.tensors()["score.weight"].to_vec2::<f32>().unwrap(),
        original.model.tensors()["score.weight"]
            .to_vec2::<f32>()
            .unwrap()
    );
}
