//! The sampled and the scored distribution are the same: on a tiny model over a vocabulary
//! small enough to enumerate every completion, the k1 mean over policy samples matches the
//! exact KL(π_A ‖ μ_A) within 3 standard errors, for plain and constrained rules; the
//! constrained scores of all completions sum to 1; generation records the scores that
//! `score_constrained` returns. The exact values come from the raw logits and the rules as
//! written in the `rules` module doc, independently of `Masks`.

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::model::{Model, ModelConfig};
use crate::objectives::{exact_kl, k1, Completions};

/// Content 0, 1, 2; 3 and 5 forbidden in the constrained case (BOS/PAD-like); 4 EOS.
const VOCAB: usize = 6;
const EOS: u32 = 4;
const SAMPLES: usize = 3000;

fn model(seed: u64) -> Model {
    super::tests::random_model(ModelConfig::tiny_with(VOCAB, 16, 1, 2, 1, 32), 0.6, seed)
}

fn plain() -> TokenRules {
    TokenRules {
        eos_token_ids: vec![EOS],
        forbidden_token_ids: vec![],
        min_new_tokens: 0,
        max_new_tokens: 3,
        eos_at_limit: false,
    }
}

/// Forbidden ids, no EOS first, and a length limit that forces EOS at the third token.
fn constrained() -> TokenRules {
    TokenRules {
        eos_token_ids: vec![EOS],
        forbidden_token_ids: vec![3, 5],
        min_new_tokens: 1,
        max_new_tokens: 3,
        eos_at_limit: true,
    }
}

const PROMPT: [u32; 3] = [3, 0, 1];

/// Whether `v` is allowed at completion position `t`, straight from the module doc.
fn allowed(r: &TokenRules, t: usize, v: u32) -> bool {
    let eos = r.eos_token_ids.contains(&v);
    if r.forbidden_token_ids.contains(&v) {
        false
    } else if r.eos_at_limit && t + 1 == r.max_new_tokens {
        eos
    } else {
        !(eos && t < r.min_new_tokens)
    }
}

/// log p_A(· | prompt, prefix): the model's last-position logits, softmaxed over the allowed
/// tokens, −∞ elsewhere.
fn next_logprobs(m: &Model, r: &TokenRules, prefix: &[u32]) -> Vec<f64> {
    let ids: Vec<u32> = PROMPT.iter().chain(prefix).copied().collect();
    let n = ids.len();
    let logits: Vec<f64> = m
        .logits(&[ids], &[vec![true; n]])
        .unwrap()
        .get(0)
        .unwrap()
        .get(n - 1)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    let ok = |v: usize| allowed(r, prefix.len(), v as u32);
    let lse = logits
        .iter()
        .enumerate()
        .filter(|(v, _)| ok(*v))
        .map(|(_, x)| x.exp())
        .sum::<f64>()
        .ln();
    (0..VOCAB)
        .map(|v| {
            if ok(v) {
                logits[v] - lse
            } else {
                f64::NEG_INFINITY
            }
        })
        .collect()
}

/// Every completion the rules allow, with its exact log π_A and log μ_A.
struct Enumeration {
    leaves: Vec<(Vec<u32>, f64, f64)>,
    /// KL(π_A ‖ μ_A) by the chain rule: Σ over unfinished prefixes of π_A(prefix) times the
    /// exact per-step KL (`objectives::exact_kl`).
    kl: f64,
}

fn enumerate(policy: &Model, reference: &Model, r: &TokenRules) -> Enumeration {
    let mut out = Enumeration {
        leaves: vec![],
        kl: 0.0,
    };
    walk(policy, reference, r, &mut vec![], 0.0, 0.0, &mut out);
    out
}

fn walk(
    policy: &Model,
    reference: &Model,
    r: &TokenRules,
    prefix: &mut Vec<u32>,
    lp: f64,
    lr: f64,
    out: &mut Enumeration,
) {
    if prefix.last() == Some(&EOS) || prefix.len() == r.max_new_tokens {
        out.leaves.push((prefix.clone(), lp, lr));
        return;
    }
    let (p, q) = (
        next_logprobs(policy, r, prefix),
        next_logprobs(reference, r, prefix),
    );
    let as_btv = |x: &[f64]| Tensor::from_slice(x, (1, 1, VOCAB), &Device::Cpu).unwrap();
    let step: f64 = exact_kl(&as_btv(&p), &as_btv(&q))
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    out.kl += lp.exp() * step;
    for v in 0..VOCAB {
        if p[v] > f64::NEG_INFINITY {
            prefix.push(v as u32);
            walk(policy, reference, r, prefix, lp + p[v], lr + q[v], out);
            prefix.pop();
        }
    }
}

fn scored_rows(s: &Scored) -> Vec<f64> {
    s.sequence_logprobs()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn config(rules: TokenRules) -> GenerateConfig {
    GenerateConfig {
        params: SamplingParams::default(),
        rules,
        seed: 11,
        step: 0,
    }
}

/// Mean and standard error of k1 over `SAMPLES` policy samples scored under `rules`.
fn k1_mean(policy: &Model, reference: &Model, rules: &TokenRules) -> (f64, f64) {
    let prompts = vec![PROMPT.to_vec(); SAMPLES];
    let keys: Vec<RowKey> = (0..SAMPLES as u64)
        .map(|prompt| RowKey { prompt, sample: 0 })
        .collect();
    let gen = generate(policy, &prompts, &keys, &config(rules.clone())).unwrap();
    let p = score_constrained(policy, &prompts, &gen.tokens, rules).unwrap();
    let q = score_constrained(reference, &prompts, &gen.tokens, rules).unwrap();
    // generation recorded the same constrained log-probs the scoring pass gives
    let scored = p.logprobs.to_vec2::<f32>().unwrap();
    for (row, recorded) in scored.iter().zip(&gen.logprobs) {
        for (s, g) in row.iter().zip(recorded) {
            assert!((s - g).abs() < 1e-5, "{row:?} vs {recorded:?}");
        }
    }
    let y = Completions {
        policy: p.logprobs,
        reference: q.logprobs,
        mask: p.mask,
    };
    let values: Vec<f64> = k1(&y)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// The checks of the module doc for one rule set.
fn check_rules(rules: TokenRules) {
    let (policy, reference) = (model(21), model(22));
    let e = enumerate(&policy, &reference, &rules);
    // the constrained scores of every allowed completion form a distribution, and agree with
    // the independent enumeration
    let ys: Vec<Vec<u32>> = e.leaves.iter().map(|l| l.0.clone()).collect();
    let prompts = vec![PROMPT.to_vec(); ys.len()];
    let lp = scored_rows(&score_constrained(&policy, &prompts, &ys, &rules).unwrap());
    let lr = scored_rows(&score_constrained(&reference, &prompts, &ys, &rules).unwrap());
    let total: f64 = lp.iter().map(|x| x.exp()).sum();
    assert!((total - 1.0).abs() < 1e-5, "Σ π_A(y) = {total}");
    assert!((lr.iter().map(|x| x.exp()).sum::<f64>() - 1.0).abs() < 1e-5);
    for (i, (y, elp, elr)) in e.leaves.iter().enumerate() {
        assert!((lp[i] - elp).abs() < 1e-4, "{y:?}: {} vs {elp}", lp[i]);
        assert!((lr[i] - elr).abs() < 1e-4, "{y:?}: {} vs {elr}", lr[i]);
    }
    // the chain-rule KL equals the KL of the enumerated sequence distributions
    let direct: f64 = e.leaves.iter().map(|(_, p, q)| p.exp() * (p - q)).sum();
    assert!((direct - e.kl).abs() < 1e-6, "{direct} vs {}", e.kl);
    assert!(e.kl > 0.05, "the two models should differ (KL {})", e.kl);
    let (mean, se) = k1_mean(&policy, &reference, &rules);
    eprintln!("k1 mean {mean} ± {se}, exact KL {}", e.kl);
    assert!(
        (mean - e.kl).abs() < 3.0 * se,
        "k1 mean {mean} ± {se} vs exact KL {}",
        e.kl
    );
}

#[test]
fn k1_matches_exact_kl_with_plain_rules() {
    check_rules(plain());
}

#[test]
fn k1_matches_exact_kl_with_forbidden_tokens_min_tokens_and_forced_eos() {
    let rules = constrained();
    check_rules(rules.clone());
    // the forced EOS is drawn with probability 1 and scores 0
    let (policy, prompts) = (model(21), vec![PROMPT.to_vec(); 64]);
    let keys: Vec<RowKey> = (0..64).map(|prompt| RowKey { prompt, sample: 1 }).collect();
    let gen = generate(&policy, &prompts, &keys, &config(rules)).unwrap();
    assert!(gen.finished.iter().all(|&f| f));
    let full: Vec<_> = (0..64).filter(|&r| gen.tokens[r].len() == 3).collect();
    assert!(!full.is_empty(), "some rows should reach the limit");
    for r in full {
        assert_eq!(gen.tokens[r][2], EOS);
        assert_eq!(gen.logprobs[r][2], 0.0);
    }
}

/// The estimate before the fix, for the record: samples drawn with masks and cut rows given an
/// appended EOS, scored unconstrained. Its k1 mean misses the exact KL of what was sampled.
#[test]
fn unconstrained_scoring_of_masked_samples_is_biased() {
    let (policy, reference) = (model(21), model(22));
    let rules = TokenRules {
        eos_at_limit: false,
        ..constrained()
    };
    let prompts = vec![PROMPT.to_vec(); SAMPLES];
    let keys: Vec<RowKey> = (0..SAMPLES as u64)
        .map(|prompt| RowKey { prompt, sample: 0 })
        .collect();
    let gen = generate(&policy, &prompts, &keys, &config(rules)).unwrap();
    let ys: Vec<Vec<u32>> = gen
        .tokens
        .into_iter()
        .map(|mut t| {
            if t.last() != Some(&EOS) {
                t.truncate(2);
                t.push(EOS);
            }
            t
        })
        .collect();
    let lp = scored_rows(&score_completions(&policy, &prompts, &ys).unwrap());
    let lr = scored_rows(&score_completions(&reference, &prompts, &ys).unwrap());
    let k1: Vec<f64> = lp.iter().zip(&lr).map(|(p, q)| p - q).collect();
    let n = k1.len() as f64;
    let mean = k1.iter().sum::<f64>() / n;
    let se = (k1.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt();
    let exact = enumerate(&policy, &reference, &constrained()).kl;
    eprintln!("old pipeline: k1 mean {mean} ± {se}; exact KL of the constrained policy {exact}");
    assert!((mean - exact).abs() > 3.0 * se);
}

#[test]
fn rules_refuse_contradictions_and_completions_outside_their_support() {
    let nothing_at_limit = TokenRules {
        max_new_tokens: 1,
        ..constrained()
    };
    assert!(matches!(
        nothing_at_limit.masks(VOCAB),
        Err(RulesError::NothingAllowed { position: 0, .. })
    ));
    let all_forbidden = TokenRules {
        forbidden_token_ids: (0..VOCAB as u32).filter(|&v| v != EOS).collect(),
        ..constrained()
    };
    assert!(matches!(
        all_forbidden.masks(VOCAB),
        Err(RulesError::NothingAllowed { position: 0, .. })
    ));
    let masks = constrained().masks(VOCAB).unwrap();
    assert_eq!(masks.check(0, &[0, 1, EOS]), Ok(()));
    assert_eq!(masks.check(0, &[0, EOS]), Ok(()));
    let refused = [
        (
            vec![EOS],
            RulesError::Forbidden {
                row: 1,
                position: 0,
                token: EOS,
            },
        ),
        (
            vec![0, 5, EOS],
            RulesError::Forbidden {
                row: 1,
                position: 1,
                token: 5,
            },
        ),
        (
            vec![0, 1, 2],
            RulesError::Forbidden {
                row: 1,
                position: 2,
                token: 2,
            },
        ),
        (
            vec![0, 1, 2, EOS],
            RulesError::TooLong {
                row: 1,
                len: 4,
                max: 3,
            },
        ),
    ];
    for (y, err) in refused {
        assert_eq!(masks.check(1, &y), Err(err));
    }
    let loose = TokenRules {
        max_new_tokens: 5,
        ..plain()
    };
    assert_eq!(
        loose.masks(VOCAB).unwrap().check(2, &[0, EOS, 1]),
        Err(RulesError::AfterEos {
            row: 2,
            position: 1
        })
    );
    // scoring refuses them too, without panicking
    let m = model(21);
    let err = score_constrained(&m, &[PROMPT.to_vec()], &[vec![EOS]], &constrained());
    assert!(err.is_err());
}
