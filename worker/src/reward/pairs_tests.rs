use mirrorplay_proto::v1::{pair_source, PairSource};

use super::*;
use crate::tasks::vocab::goodhart_tokenizer;

fn format(chat: bool) -> PromptFormat {
    PromptFormat {
        tokenizer: Some(goodhart_tokenizer().unwrap()),
        chat,
        max_prompt_tokens: 0,
    }
}

fn source(s: pair_source::Source) -> PairSource {
    PairSource { source: Some(s) }
}

async fn load_jsonl(text: &str, train_pairs: usize, eval_pairs: usize) -> Result<Pairs, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairs.jsonl");
    std::fs::write(&path, text).unwrap();
    let src = source(pair_source::Source::JsonlUrl(path.to_str().unwrap().into()));
    let spec = PairSpec {
        source: &src,
        train_pairs,
        eval_pairs,
        label_noise: 0.0,
        seed: 1,
    };
    Pairs::load(&spec, &format(false), Some(gd::EOS))
        .await
        .map_err(|e| e.to_string())
}

/// Both row forms give the same ids: the prompt as an SFT prompt is formatted, each completion
/// without special tokens plus EOS; the last rows are held out, `train_pairs` cuts the rest.
#[tokio::test]
async fn jsonl_pairs_in_both_forms_parse_and_split() {
    let plain = r#"{"prompt": "<s> 1 2 3 4 <sep>", "chosen": "1 2", "rejected": "9"}"#;
    let chat = r#"{"chosen": [{"role": "user", "content": "<s> 1 2 3 4 <sep>"}, {"role": "assistant", "content": "1 2"}], "rejected": [{"role": "user", "content": "<s> 1 2 3 4 <sep>"}, {"role": "assistant", "content": "9"}]}"#;
    let other = r#"{"prompt": "<s> 5 6 7 8 <sep>", "chosen": "5", "rejected": "5 5 5"}"#;
    let text = format!("{plain}\n\n{chat}\n{other}\n{other}\n");
    let pairs = load_jsonl(&text, 0, 1).await.unwrap();
    assert_eq!(pairs.task, None);
    assert_eq!((pairs.train.len(), pairs.eval.len()), (3, 1));
    let want = Pair {
        prompt: vec![gd::BOS, 1, 2, 3, 4, gd::SEP],
        chosen: vec![1, 2, gd::EOS],
        rejected: vec![9, gd::EOS],
        clean_agrees: None,
    };
    assert_eq!(pairs.train[0], want);
    assert_eq!(pairs.train[1], want, "the message form reads the same pair");
    assert_eq!(pairs.eval[0].rejected, vec![5, 5, 5, gd::EOS]);
    let first_two = load_jsonl(&text, 2, 1).await.unwrap();
    assert_eq!(first_two.train, pairs.train[..2].to_vec());
    let err = load_jsonl(&text, 4, 1).await.unwrap_err();
    assert!(err.contains("train_pairs = 4"), "{err}");
    let err = load_jsonl(&text, 0, 4).await.unwrap_err();
    assert!(err.contains("holds 4 pairs"), "{err}");
}

/// A malformed row stops the load with an error naming file:line.
#[tokio::test]
async fn a_malformed_row_names_its_file_and_line() {
    let ok = r#"{"prompt": "<s> 1 2 3 4 <sep>", "chosen": "1", "rejected": "2"}"#;
    let cases = [
        (
            r#"{"prompt": "<s> 1 2 3 4 <sep>", "chosen": 3, "rejected": "2"}"#,
            "`chosen` must be a string",
        ),
        (
            r#"{"prompt": "<s> 1 2 3 4 <sep>", "chosen": "1"}"#,
            "missing `rejected`",
        ),
        (
            r#"{"chosen": [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}], "rejected": [{"role": "user", "content": "3"}, {"role": "assistant", "content": "2"}]}"#,
            "share every message",
        ),
        (
            r#"{"chosen": [{"role": "user", "content": "1"}], "rejected": [{"role": "user", "content": "1"}]}"#,
            "must end with an assistant message",
        ),
        (
            r#"{"prompt": "<s> 1 2 3 4 <sep>", "chosen": "", "rejected": "2"}"#,
            "`chosen` has no tokens",
        ),
        ("[1]", "expected a JSON object"),
    ];
    for (row, reason) in cases {
        let err = load_jsonl(&format!("{ok}\n{ok}\n{row}\n{ok}\n"), 0, 1)
            .await
            .unwrap_err();
        assert!(err.contains("pairs.jsonl:3"), "{row}: {err}");
        assert!(err.contains(reason), "{row}: {err}");
    }
}

/// Task pairs are `proxy_pair(seed, index, noise)` as ids (held-out pairs follow the train
/// pairs), the noisy winner chosen, the clean label kept beside it.
#[tokio::test]
async fn goodhart_pairs_are_the_tasks_proxy_pairs() {
    let src = source(pair_source::Source::Task("goodhart_digits".into()));
    let spec = PairSpec {
        source: &src,
        train_pairs: 40,
        eval_pairs: 10,
        label_noise: 0.25,
        seed: 11,
    };
    let pairs = Pairs::load(&spec, &format(false), None).await.unwrap();
    assert_eq!(pairs.task, Some(Task::GoodhartDigits));
    let all: Vec<&Pair> = pairs.train.iter().chain(&pairs.eval).collect();
    assert_eq!(all.len(), 50);
    let mut flipped = 0;
    for (i, pair) in all.iter().enumerate() {
        let p = gd::proxy_pair(11, i as u64, 0.25).unwrap();
        let (w, l) = if p.a_preferred {
            (&p.a, &p.b)
        } else {
            (&p.b, &p.a)
        };
        assert_eq!(pair.prompt, p.prompt.tokens().to_vec());
        assert_eq!(pair.chosen, gd::completion_tokens(w), "pair {i}");
        assert_eq!(pair.rejected, gd::completion_tokens(l), "pair {i}");
        assert_eq!(pair.clean_agrees, Some(p.a_preferred == p.gold_a_preferred));
        flipped += usize::from(pair.clean_agrees == Some(false));
    }
    assert!(
        (3..=25).contains(&flipped),
        "{flipped} of 50 flipped at 0.25"
    );
    let exact = Pairs::load(
        &PairSpec {
            label_noise: 0.0,
            ..spec
        },
        &format(false),
        None,
    )
    .await
    .unwrap();
    assert!(exact.train.iter().all(|p| p.clean_agrees == Some(true)));
    let words = source(pair_source::Source::Task("exact_words".into()));
    let err = Pairs::load(
        &PairSpec {
            source: &words,
            ..spec
        },
        &format(false),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("no proxy preference data"),
        "{err}"
    );
}

/// Members get distinct seeds; an epoch is a permutation; a bootstrap resample keeps the size
/// but changes the multiset, and differs between members.
#[test]
fn member_seeds_orders_and_bootstraps() {
    let (s0, s1) = (member_seed(5, 0), member_seed(5, 1));
    assert_ne!(s0, s1);
    assert_eq!(s0, member_seed(5, 0));
    assert_ne!(s0, member_seed(6, 0));
    let mut order = Order::new(10, s0);
    let epochs: Vec<usize> = (0..5).flat_map(|s| order.batch(s, 4)).collect();
    for e in epochs.chunks(10) {
        let mut sorted = e.to_vec();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }
    assert_ne!(epochs[..10], epochs[10..20], "each epoch reshuffles");
    assert_ne!(Order::permutation(10, s0, 0), Order::permutation(10, s1, 0));
    let (b0, b1) = (bootstrap(100, s0), bootstrap(100, s1));
    assert_eq!(b0.len(), 100);
    assert_ne!(b0, b1);
    let distinct: std::collections::BTreeSet<_> = b0.iter().collect();
    // E[distinct] = 100·(1 − (1 − 1/100)^100) ≈ 63.4
    assert!((50..=75).contains(&distinct.len()), "{}", distinct.len());
}
