//! `mirrorplay generate` as a person runs it, on tiny model directories the test writes: stdout
//! must be exactly the completion (greedy: the argmax of full forward passes without a cache,
//! computed here; sampled: the batched generator's tokens for the same seed and row key),
//! decoded without special tokens, and a newline; the chat prompt is the template's text with
//! no added BOS; bad input exits 2.

mod common;

use std::path::Path;

use candle_core::Device;
use common::*;
use mirrorplay_worker::model::{random_tensors_std, Model, ModelConfig, Pretrained, Tokenizer};
use mirrorplay_worker::sample::{generate, GenerateConfig, RowKey, SamplingParams, TokenRules};
use serde_json::{json, Value};

/// ids: <pad> 0, <s> 1, </s> 2, <unk> 3, then these from 4 on.
const SYMBOLS: [&str; 12] = [
    "user",
    "assistant",
    "system",
    "hello",
    "world",
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
];

const TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}{{ m.role }} {{ m.content }} \
                        {{ eos_token }} {% endfor %}{% if add_generation_prompt %}assistant \
                        {% endif %}";

/// The tiny word-level tokenizer with a post-processor that puts `<s>` in front (as Llama's
/// does) and, when `template`, a chat template in its tokenizer_config.json.
fn tokenizer(template: bool) -> Tokenizer {
    let tiny = Tokenizer::tiny(&SYMBOLS).unwrap();
    let mut j: Value = serde_json::from_str(&tiny.to_json().unwrap()).unwrap();
    j["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
    });
    let mut config = tiny.config().clone();
    if template {
        config["chat_template"] = json!(TEMPLATE);
    }
    Tokenizer::from_bytes(j.to_string().as_bytes(), config, "test").unwrap()
}

/// A frozen random model over the tokenizer's 16 ids with peaked distributions (EOS id 2).
fn model() -> Model {
    let config = ModelConfig::tiny_with(16, 32, 2, 4, 2, 64);
    let tensors = random_tensors_std(&config, 11, 0.5, &Device::Cpu).unwrap();
    Model::new(config, tensors, false).unwrap()
}

fn save(dir: &Path, template: bool) {
    let p = Pretrained::from_parts(model(), Some(tokenizer(template))).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(p.save(
            dir.to_str().unwrap(),
            &mirrorplay_worker::model::SaveOptions::default(),
        ))
        .unwrap();
}

/// Greedy completion by full forward passes (no cache), cut after the first EOS.
fn greedy(model: &Model, prompt: &[u32], max_new_tokens: usize) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < max_new_tokens {
        let logits = model
            .logits(&[ids.clone()], &[vec![true; ids.len()]])
            .unwrap();
        let row = logits
            .get(0)
            .unwrap()
            .get(ids.len() - 1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let best = (0..row.len())
            .max_by(|&x, &y| row[x].total_cmp(&row[y]))
            .unwrap() as u32;
        out.push(best);
        if best == 2 {
            break;
        }
        ids.push(best);
    }
    out
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn generate_prints_exactly_the_greedy_completion() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    save(&dir, true);
    let (m, t) = (model(), tokenizer(true));
    let d = dir.to_str().unwrap();

    // Chat: "<s>system a b </s> user hello world </s> assistant ", one BOS (the template's).
    let chat_prompt = [1, 6, 9, 10, 2, 4, 7, 8, 2, 5];
    let completion = greedy(&m, &chat_prompt, 12);
    let text = t.decode(&completion).unwrap();
    assert!(
        completion.iter().filter(|&&x| x > 3).count() >= 3,
        "pick a model seed with a longer completion: {completion:?}"
    );
    let o = run(&[
        "generate",
        "--model",
        d,
        "--chat",
        "--system",
        "a b",
        "--prompt",
        "hello world",
        "--greedy",
        "--max-new-tokens",
        "12",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{text}\n"), "tokens {completion:?}");

    // Plain: the post-processor's <s> in front, as transformers' tokenizer(text).
    let completion = greedy(&m, &[1, 7, 8], 5);
    let o = run(&[
        "generate",
        "--model",
        d,
        "--prompt",
        "hello world",
        "--greedy",
        "--max-new-tokens",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{}\n", t.decode(&completion).unwrap()));
    assert_ne!(
        greedy(&m, &[7, 8], 5),
        completion,
        "the BOS must matter for this check to mean anything"
    );
}

#[test]
fn sampled_text_is_the_batched_generators_for_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    save(&dir, true);
    let (m, t) = (model(), tokenizer(true));
    let args = [
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "a b c",
        "--temperature",
        "0.8",
        "--top-k",
        "6",
        "--top-p",
        "0.95",
        "--max-new-tokens",
        "20",
    ];
    let mut texts = Vec::new();
    for seed in ["5", "6"] {
        let o = run(&[&args[..], &["--seed", seed]].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        let config = GenerateConfig {
            params: SamplingParams {
                temperature: 0.8,
                top_k: 6,
                top_p: 0.95,
            },
            rules: TokenRules {
                eos_token_ids: vec![2],
                forbidden_token_ids: vec![],
                min_new_tokens: 0,
                max_new_tokens: 20,
                eos_at_limit: false,
            },
            seed: seed.parse().unwrap(),
            step: 0,
        };
        let key = RowKey {
            prompt: 0,
            sample: 0,
        };
        let g = generate(&m, &[vec![1, 9, 10, 11]], &[key], &config).unwrap();
        assert_eq!(
            stdout(&o),
            format!("{}\n", t.decode(&g.tokens[0]).unwrap()),
            "seed {seed}"
        );
        texts.push(stdout(&o));
    }
    assert_ne!(texts[0], texts[1], "another seed draws another text");
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plain");
    save(&dir, false);
    let d = dir.to_str().unwrap();
    let missing = tmp.path().join("nothing-here");
    let cases: [(&[&str], &str); 6] = [
        (
            &["--model", d, "--prompt", "hello", "--chat"],
            "has no chat template",
        ),
        (&["--model", d, "--prompt", " "], "--prompt is empty"),
        (
            &["--model", d, "--prompt", "hello", "--temperature", "-1"],
            "--temperature must be > 0",
        ),
        (
            &["--model", d, "--prompt", "hello", "--top-p", "0"],
            "--top-p must be in (0, 1]",
        ),
        (
            &["--model", missing.to_str().unwrap(), "--prompt", "hello"],
            "cannot load the model",
        ),
        (
            &["--model", d, "--prompt", "hello", "--system", "s"],
            "--chat",
        ),
    ];
    for (args, message) in cases {
        let o = run(&[&["generate"][..], args].concat());
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(message), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}: {}", stdout(&o));
    }
}
