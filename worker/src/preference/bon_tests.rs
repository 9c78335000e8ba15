//! Best-of-n against hand-computed numbers and against the independent exact-arithmetic fixture
//! (`scripts/bon_fixtures.py`, worker/tests/fixtures/ensemble/bon.json).

use serde_json::Value;

use super::*;

const FIXTURE: &str = include_str!("../../tests/fixtures/ensemble/bon.json");

/// |a − b| ≤ tol · max(|b|, 1e-300): relative, and exact for b = 0.
fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1e-300)
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// N = 3, n = 2: the best of a pair is rank 2 in 1 of the 3 pairs, rank 3 in 2 of them.
/// n = 1 is uniform, n = N always the top.
#[test]
fn weights_by_hand() {
    let w = bon_weights(3, 2).unwrap();
    assert_eq!(w[0], 0.0);
    assert!(
        close(w[1], 1.0 / 3.0, 1e-15) && close(w[2], 2.0 / 3.0, 1e-15),
        "{w:?}"
    );
    assert_eq!(bon_weights(4, 1).unwrap(), vec![0.25; 4]);
    assert_eq!(bon_weights(5, 5).unwrap(), vec![0.0, 0.0, 0.0, 0.0, 1.0]);
    assert_eq!(bon_weights(1, 1).unwrap(), vec![1.0]);
}

/// proxy (3, 1, 3, 2), gold (10, 0, 20, 5): sorted proxy 1, 2, 3, 3 with gold 0, 5, then the tie
/// group {10, 20} averaged to 15. n = 2: weights (0, 1/6, 2/6, 3/6), so proxy = 2/6 + 15/6 =
/// 17/6 and gold = 5/6 + 75/6 = 80/6. Breaking the tie either way gives another gold (10 or 20 on
/// rank 4), which is why the group is averaged.
#[test]
fn ties_average_the_gold() {
    let p = best_of_n(&[3.0, 1.0, 3.0, 2.0], &[10.0, 0.0, 20.0, 5.0], &[1, 2, 4]).unwrap();
    assert_eq!(p.len(), 3);
    assert_eq!(p[0].n, 1);
    assert!(close(p[0].proxy, 9.0 / 4.0, 1e-15) && close(p[0].gold, 35.0 / 4.0, 1e-15));
    assert_eq!(p[1].n, 2);
    assert!(close(p[1].proxy, 17.0 / 6.0, 1e-15), "{p:?}");
    assert!(close(p[1].gold, 80.0 / 6.0, 1e-15), "{p:?}");
    assert_eq!(
        p[2],
        BonPoint {
            n: 4,
            proxy: 3.0,
            gold: 15.0
        }
    );
}

#[test]
fn errors_name_the_problem() {
    assert_eq!(bon_weights(3, 0), Err(BonError::ZeroN));
    assert_eq!(
        bon_weights(3, 4),
        Err(BonError::TooFewSamples { n: 4, samples: 3 })
    );
    assert_eq!(
        best_of_n(&[1.0, 2.0], &[1.0], &[1]),
        Err(BonError::Lengths { proxy: 2, gold: 1 })
    );
    let e = best_of_n(&[1.0, 2.0], &[1.0, f64::NAN], &[1]).unwrap_err();
    assert!(matches!(
        e,
        BonError::NonFinite {
            which: "gold",
            index: 1,
            ..
        }
    ));
    assert!(
        e.to_string().contains("gold score of sample 1 is NaN"),
        "{e}"
    );
    let e = best_of_n(&[f64::INFINITY], &[0.0], &[1]).unwrap_err();
    assert!(
        e.to_string().contains("proxy score of sample 0 is inf"),
        "{e}"
    );
    assert_eq!(
        best_of_n(&[1.0, 2.0], &[1.0, 2.0], &[1, 3]),
        Err(BonError::TooFewSamples { n: 3, samples: 2 })
    );
    assert!(best_of_n(&[], &[], &[0]).is_err());
    assert_eq!(best_of_n(&[], &[], &[]), Ok(vec![]));
}

#[test]
fn kl_and_grid_by_hand() {
    assert_eq!(kl_bon(1), 0.0);
    assert!(close(kl_bon(2), 2f64.ln() - 0.5, 1e-15));
    assert_eq!(n_grid(0), Vec::<usize>::new());
    assert_eq!(n_grid(1), vec![1]);
    assert_eq!(n_grid(8), vec![1, 2, 4, 8]);
    assert_eq!(n_grid(12), vec![1, 2, 4, 8, 12]);
}

/// For N = 10 000 the weights of every n sum to 1: log-sum-exp of ln w_i within 1e-9 of 0.
#[test]
fn weights_of_ten_thousand_samples_sum_to_one() {
    for n in [1, 10, 1000, 10_000] {
        let w = bon_weights(10_000, n).unwrap();
        assert!(w[..n - 1].iter().all(|&x| x == 0.0));
        let logs: Vec<f64> = w.iter().filter(|&&x| x > 0.0).map(|x| x.ln()).collect();
        let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logs.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        assert!(lse.abs() < 1e-9, "n = {n}: log-sum-exp {lse}");
    }
}

/// The weights (exact rationals, N = 3, 7, 10 000), the estimator (brute force over all subsets
/// of N = 7 with ties, closed form for N = 200 and 1000), KL_bon and the grid reproduce the
/// script's within 1e-12 relative.
#[test]
fn bon_matches_the_exact_fixture() {
    let f: Value = serde_json::from_str(FIXTURE).unwrap();
    let weights = f["weights"].as_array().unwrap();
    assert_eq!(weights.len(), 14);
    for case in weights {
        let (samples, n) = (
            case["samples"].as_u64().unwrap() as usize,
            case["n"].as_u64().unwrap() as usize,
        );
        let w = bon_weights(samples, n).unwrap();
        for pair in case["ranks"].as_array().unwrap() {
            let (rank, want) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap(),
            );
            let got = w[rank - 1];
            assert!(
                close(got, want, 1e-12),
                "N {samples} n {n} rank {rank}: {got} vs {want}"
            );
        }
    }
    let estimates = f["estimates"].as_array().unwrap();
    assert_eq!(estimates.len(), 3);
    for case in estimates {
        let name = case["name"].as_str().unwrap();
        let want = case["points"].as_array().unwrap();
        let ns: Vec<usize> = want
            .iter()
            .map(|p| p["n"].as_u64().unwrap() as usize)
            .collect();
        let got = best_of_n(&floats(&case["proxy"]), &floats(&case["gold"]), &ns).unwrap();
        for (g, w) in got.iter().zip(want) {
            let (proxy, gold) = (w["proxy"].as_f64().unwrap(), w["gold"].as_f64().unwrap());
            assert!(
                close(g.proxy, proxy, 1e-12),
                "{name} n {}: {g:?} vs {w}",
                g.n
            );
            assert!(close(g.gold, gold, 1e-12), "{name} n {}: {g:?} vs {w}", g.n);
        }
    }
    for case in f["kl_bon"].as_array().unwrap() {
        let n = case["n"].as_u64().unwrap() as usize;
        let want = case["kl"].as_f64().unwrap();
        assert!(
            close(kl_bon(n), want, 1e-12),
            "n {n}: {} vs {want}",
            kl_bon(n)
        );
    }
    for (max_n, want) in f["n_grid"].as_object().unwrap() {
        let want: Vec<usize> = floats(want).into_iter().map(|x| x as usize).collect();
        assert_eq!(n_grid(max_n.parse().unwrap()), want, "max_n {max_n}");
    }
}
