//! Goodhart-Digits against hand-checked gold cases (worker/tests/fixtures/goodhart_digits/) and
//! the base sampler against statistics derived analytically from docs/algorithms.md §6.

use std::collections::HashSet;

use serde_json::Value;

use super::*;

const GOLD_CASES: &str = include_str!("../../tests/fixtures/goodhart_digits/gold_cases.json");

#[test]
fn gold_matches_hand_checked_cases_exactly() {
    let f: Value = serde_json::from_str(GOLD_CASES).unwrap();
    let t: Vec<u8> = f["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    let prompt = Prompt {
        targets: [t[0], t[1], t[2], t[3]],
    };
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() >= 16);
    for case in cases {
        let y: Vec<u8> = case["y"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u8)
            .collect();
        let g = gold(&prompt, &y).unwrap();
        assert_eq!(
            g,
            Gold(case["G"].as_i64().unwrap()),
            "y = {y:?}: {}",
            case["why"]
        );
        let expected = case["gold"].as_f64().unwrap();
        assert!(
            (g.value() - expected).abs() < 1e-12,
            "y = {y:?}: gold {} vs {expected}",
            g.value()
        );
    }
}

/// Over every completion of up to 5 symbols, the maximum 3.0 is reached only at `t1 t2 t3 t4`
/// (longer completions carry an off symbol or a repeated target, both penalised).
#[test]
fn the_maximum_is_unique() {
    let prompt = Prompt {
        targets: [9, 2, 14, 5],
    };
    let mut best = (Gold(i64::MIN), 0usize);
    let mut y = Vec::new();
    for len in 1..=5u32 {
        for code in 0..16u64.pow(len) {
            y.clear();
            y.extend((0..len).map(|i| (code >> (4 * i) & 15) as u8));
            let g = gold(&prompt, &y).unwrap();
            if g > best.0 {
                best = (g, 1);
                assert!(
                    g.0 < 3 * GOLD_SCALE || y == prompt.targets,
                    "{y:?} scores {}",
                    g.value()
                );
            } else if g == best.0 {
                best.1 += 1;
            }
        }
    }
    assert_eq!(best, (Gold(3 * GOLD_SCALE), 1));
}

#[test]
fn gold_rejects_what_it_cannot_judge() {
    let p = Prompt {
        targets: [0, 1, 2, 3],
    };
    assert!(gold(&p, &[]).unwrap_err().to_string().contains("found 0"));
    assert!(gold(&p, &[0; 17]).is_err());
    assert!(gold(&p, &[16])
        .unwrap_err()
        .to_string()
        .contains("symbol 16"));
}

#[test]
fn tokens_round_trip_and_the_sampler_mask_follows_the_spec() {
    let p = Prompt {
        targets: [4, 0, 15, 9],
    };
    assert_eq!(p.tokens(), [16, 4, 0, 15, 9, 17]);
    assert_eq!(Prompt::from_tokens(&p.tokens()).unwrap(), p);
    assert!(Prompt::from_tokens(&[16, 4, 4, 15, 9, 17]).is_err());
    assert_eq!(completion_tokens(&[3, 3]), vec![3, 3, EOS]);
    assert_eq!(content(&[3, 3, EOS, PAD, PAD]).unwrap(), vec![3, 3]);
    assert_eq!(content(&[5, 6]).unwrap(), vec![5, 6]);
    assert!(content(&[5, SEP, EOS]).is_err());
    let first = allowed_tokens(0);
    assert!(
        first[..16].iter().all(|&a| a)
            && !first[EOS as usize]
            && !first[BOS as usize]
            && !first[SEP as usize]
            && !first[PAD as usize]
    );
    let mid = allowed_tokens(7);
    assert!(mid[..16].iter().all(|&a| a) && mid[EOS as usize] && !mid[PAD as usize]);
    let last = allowed_tokens(MAX_SYMBOLS);
    assert_eq!(last.iter().filter(|&&a| a).count(), 1);
    assert!(last[EOS as usize]);
}

#[test]
fn prompts_are_distinct_targets_and_splits_are_disjoint_and_seeded() {
    let mut train = HashSet::new();
    let mut held_out = HashSet::new();
    for i in 0..2000 {
        let p = prompt(11, Split::Train, i);
        assert_eq!(p.targets.iter().collect::<HashSet<_>>().len(), 4, "{p:?}");
        assert_eq!(p.split(11), Split::Train);
        train.insert(p.targets);
        let q = prompt(11, Split::HeldOut, i);
        assert_eq!(q.split(11), Split::HeldOut);
        held_out.insert(q.targets);
    }
    assert!(train.is_disjoint(&held_out));
    assert_eq!(prompt(11, Split::Train, 5), prompt(11, Split::Train, 5));
    assert_ne!(prompt(11, Split::Train, 5), prompt(12, Split::Train, 5));
    // One tuple in 8 is held out: over all 43 680 tuples the fraction is within 3σ of 1/8.
    let mut n_held = 0;
    let mut n = 0;
    for a in 0..16u8 {
        for b in 0..16u8 {
            for c in 0..16u8 {
                for d in 0..16u8 {
                    let t = [a, b, c, d];
                    if (0..4).all(|i| !t[i + 1..].contains(&t[i])) {
                        n += 1;
                        n_held += u32::from(Prompt { targets: t }.split(11) == Split::HeldOut);
                    }
                }
            }
        }
    }
    assert_eq!(n, 16 * 15 * 14 * 13);
    let frac = n_held as f64 / n as f64;
    assert!(
        (frac - 0.125).abs() < 3.0 * (0.125 * 0.875 / n as f64).sqrt(),
        "held-out fraction {frac}"
    );
    // Every target appears in each position about equally often (4 distinct, random order).
    let mut first = [0u32; 16];
    for i in 0..16_000 {
        first[prompt(3, Split::Train, i).targets[0] as usize] += 1;
    }
    let sd = (16_000.0f64 / 16.0 * (15.0 / 16.0)).sqrt();
    assert!(
        first.iter().all(|&c| (c as f64 - 1000.0).abs() < 4.0 * sd),
        "{first:?}"
    );
}

/// Mean length, target fraction and repeat rate of the base sampler lie within 3σ of the values
/// docs/algorithms.md §6 implies:
/// E[L] with L = min(max(Poisson(5), 1), 16); every position is a target with probability
/// exactly 0.55 (position 1 by definition; later ones 0.1·0.55 + 0.9·0.55 by induction); and
/// P(y_i = y_{i−1}) = 0.1 + 0.9·(0.55·0.55/4 + 0.45·0.45/12) = 0.18325.
/// σ: the analytic variance for E[L]; the delta method for the two pooled ratios.
#[test]
fn base_sampler_statistics_match_the_spec() {
    let lambda = BASE_MEAN_LEN;
    let mut pmf = vec![(-lambda).exp()];
    for k in 1..MAX_SYMBOLS {
        let prev = pmf[k - 1];
        pmf.push(prev * lambda / k as f64);
    }
    let p_tail = 1.0 - pmf.iter().sum::<f64>(); // P(X ≥ 16)
    let dist: Vec<(f64, f64)> = (1..=MAX_SYMBOLS)
        .map(|l| {
            let p = match l {
                1 => pmf[0] + pmf[1],
                16 => p_tail,
                l => pmf[l],
            };
            (l as f64, p)
        })
        .collect();
    let mean_len: f64 = dist.iter().map(|(l, p)| l * p).sum();
    let var_len: f64 = dist.iter().map(|(l, p)| (l - mean_len).powi(2) * p).sum();
    let p_target = BASE_P_TARGET;
    let p_repeat = BASE_P_REPEAT
        + (1.0 - BASE_P_REPEAT) * (p_target * p_target / 4.0 + (1.0 - p_target).powi(2) / 12.0);
    assert!((p_repeat - 0.18325).abs() < 1e-12);

    let n = 20_000;
    let (mut lens, mut targets, mut repeats) = (vec![], vec![], vec![]);
    for i in 0..n {
        let p = prompt(5, Split::Train, i);
        let y = base_sample(
            &p,
            &mut StreamKey::new(5, 0, i, 0, Purpose::Sample).stream(),
        );
        assert!((1..=MAX_SYMBOLS).contains(&y.len()));
        lens.push(y.len() as f64);
        targets.push(y.iter().filter(|&&s| p.is_target(s)).count() as f64);
        repeats.push(y.windows(2).filter(|w| w[0] == w[1]).count() as f64);
    }
    let nf = n as f64;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let found_len = mean(&lens);
    let sd_len = (var_len / nf).sqrt();
    assert!(
        (found_len - mean_len).abs() < 3.0 * sd_len,
        "mean length {found_len} vs {mean_len} ± {sd_len}"
    );

    // Pooled ratio R = Σ num / Σ den; Var(R) ≈ Var(num − R·den) / (n·E[den]²).
    let ratio_check = |num: &[f64], den: &[f64], expected: f64, what: &str| {
        let r = num.iter().sum::<f64>() / den.iter().sum::<f64>();
        let resid: Vec<f64> = num.iter().zip(den).map(|(a, b)| a - r * b).collect();
        let m = mean(&resid);
        let var = resid.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (nf - 1.0);
        let sd = (var / nf).sqrt() / mean(den);
        assert!(
            (r - expected).abs() < 3.0 * sd,
            "{what}: {r} vs {expected} ± {sd}"
        );
    };
    ratio_check(&targets, &lens, p_target, "target fraction");
    let pairs: Vec<f64> = lens.iter().map(|l| l - 1.0).collect();
    ratio_check(&repeats, &pairs, p_repeat, "repeat rate");
}

#[test]
fn proxy_pairs_flip_a_quarter_of_labels_and_prefer_gold() {
    let n = 20_000u64;
    let mut agree = 0u64;
    for i in 0..n {
        let pair = proxy_pair(9, i, 0.25).unwrap();
        assert_eq!(pair, proxy_pair(9, i, 0.25).unwrap());
        let (ga, gb) = (
            gold(&pair.prompt, &pair.a).unwrap(),
            gold(&pair.prompt, &pair.b).unwrap(),
        );
        if ga != gb {
            assert_eq!(pair.gold_a_preferred, ga > gb);
        }
        agree += u64::from(pair.a_preferred == pair.gold_a_preferred);
        let clean = proxy_pair(9, i, 0.0).unwrap();
        assert_eq!(clean.a_preferred, clean.gold_a_preferred);
    }
    // A label is replaced with probability 0.5 and the replacement disagrees half the time.
    let frac = agree as f64 / n as f64;
    assert!(
        (frac - 0.75).abs() < 3.0 * (0.75 * 0.25 / n as f64).sqrt(),
        "agreement {frac}"
    );
    assert!(proxy_pair(9, 0, 0.6).is_err());
}
