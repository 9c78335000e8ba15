//! Aggregation against hand-computed numbers and against the independent numpy fixture
//! (`scripts/ensemble_fixtures.py`, worker/tests/fixtures/ensemble/aggregates.json).

use serde_json::Value;

use super::*;

const FIXTURE: &str = include_str!("../../tests/fixtures/ensemble/aggregates.json");

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

/// z = (1, 4, −2): mean 1, min −2, variance ((0)² + 3² + (−3)²)/3 = 6, uwo(0.5) = 1 − 3 = −2,
/// uwo(0.25) = 1 − 1.5 = −0.5, member:1 = 4.
#[test]
fn aggregates_of_three_scores_by_hand() {
    let z = [1.0, 4.0, -2.0];
    assert_eq!(variance(&z), 6.0);
    assert_eq!(Aggregate::Mean.aggregate(&z).unwrap(), 1.0);
    assert_eq!(Aggregate::Wco.aggregate(&z).unwrap(), -2.0);
    assert_eq!(Aggregate::Uwo { lambda: 0.5 }.aggregate(&z).unwrap(), -2.0);
    assert_eq!(Aggregate::Uwo { lambda: 0.25 }.aggregate(&z).unwrap(), -0.5);
    assert_eq!(Aggregate::Member(1).aggregate(&z).unwrap(), 4.0);
    // identical members: variance 0, so wco = uwo = mean
    let same = [0.3, 0.3];
    assert_eq!(variance(&same), 0.0);
    assert_eq!(Aggregate::Wco.aggregate(&same).unwrap(), 0.3);
    assert_eq!(
        Aggregate::Uwo { lambda: 0.5 }.aggregate(&same).unwrap(),
        0.3
    );
}

/// Member 0 scored (1, 3), member 1 (2, 2, …): m = (2, 2), s = (1, 0 → 1e-6). A completion with
/// raw (4, 2.5): center (2, 0.5), zscore (2, 0.5e6), none (4, 2.5).
#[test]
fn normalisation_by_hand() {
    let n = Normalisation::fit(&[vec![1.0, 3.0], vec![2.0, 2.0]]).unwrap();
    assert_eq!(n.mean, vec![2.0, 2.0]);
    assert_eq!(n.std, vec![1.0, MIN_STD]);
    assert_eq!(n.normalise(NormKind::Center, &[4.0, 2.5]), vec![2.0, 0.5]);
    let z = n.normalise(NormKind::Zscore, &[4.0, 2.5]);
    assert!(z[0] == 2.0 && close(z[1], 0.5e6, 1e-6), "{z:?}");
    assert_eq!(n.normalise(NormKind::None, &[4.0, 2.5]), vec![4.0, 2.5]);
    assert_eq!(
        Normalisation::identity(2).normalise(NormKind::Zscore, &[4.0, 2.5]),
        vec![4.0, 2.5]
    );
    assert!(Normalisation::fit(&[vec![], vec![]]).is_err());
    assert!(Normalisation::fit(&[vec![1.0], vec![1.0, 2.0]]).is_err());
}

#[test]
fn names_parse_and_unknown_ones_list_the_valid_ones() {
    assert_eq!(Aggregate::parse("mean", 0.5), Ok(Aggregate::Mean));
    assert_eq!(Aggregate::parse("wco", 0.5), Ok(Aggregate::Wco));
    assert_eq!(
        Aggregate::parse("uwo", 0.25),
        Ok(Aggregate::Uwo { lambda: 0.25 })
    );
    assert_eq!(Aggregate::parse("member:3", 0.5), Ok(Aggregate::Member(3)));
    for bad in ["median", "member:", "member:x", "member:-1", "LSC"] {
        let e = Aggregate::parse(bad, 0.5).unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains(VALID_AGGREGATES), "{e}");
    }
    assert!(Aggregate::Member(1).check(2).is_ok());
    let e = Aggregate::Member(2).check(2).unwrap_err().to_string();
    assert!(e.contains("member:2") && e.contains("2 members"), "{e}");
    assert_eq!(NormKind::parse("zscore"), Ok(NormKind::Zscore));
    let e = NormKind::parse("minmax").unwrap_err().to_string();
    assert!(e.contains(VALID_NORMALISATIONS), "{e}");
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(floats).collect()
}

/// The fitted statistics, every normalisation and every aggregate reproduce numpy's within
/// 1e-12.
#[test]
fn aggregates_match_the_numpy_fixture() {
    let f: Value = serde_json::from_str(FIXTURE).unwrap();
    let n = Normalisation::fit(&matrix(&f["fit"])).unwrap();
    for (a, b) in n.mean.iter().zip(floats(&f["mean"])) {
        assert!(close(*a, b, 1e-12), "mean {a} vs {b}");
    }
    for (a, b) in n.std.iter().zip(floats(&f["std"])) {
        assert!(close(*a, b, 1e-12), "std {a} vs {b}");
    }
    let raw = matrix(&f["raw"]);
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let kind = NormKind::parse(case["normalize"].as_str().unwrap()).unwrap();
        let want_z = matrix(&case["z"]);
        let want_var = floats(&case["variance"]);
        let z: Vec<Vec<f64>> = raw.iter().map(|r| n.normalise(kind, r)).collect();
        for (j, zj) in z.iter().enumerate() {
            for (a, b) in zj.iter().zip(&want_z[j]) {
                assert!(close(*a, *b, 1e-12), "{kind:?} z {a} vs {b}");
            }
            assert!(close(variance(zj), want_var[j], 1e-12), "{kind:?} var");
        }
        let aggregates = case["aggregates"].as_object().unwrap();
        assert_eq!(aggregates.len(), 6);
        for (name, want) in aggregates {
            let agg = match name.strip_prefix("uwo:") {
                Some(lambda) => Aggregate::Uwo {
                    lambda: lambda.parse().unwrap(),
                },
                None => Aggregate::parse(name, 0.5).unwrap(),
            };
            for (zj, b) in z.iter().zip(floats(want)) {
                let a = agg.aggregate(zj).unwrap();
                assert!(close(a, b, 1e-12), "{kind:?} {name}: {a} vs {b}");
            }
        }
    }
}

const BON_FIXTURE: &str = include_str!("../../tests/fixtures/ensemble/bon.json");

/// Quantiles of (4, 1, 3, 2) (sorted 1, 2, 3, 4; h = 3q): q = 0.5 → 2.5, q = 0.85 → h = 2.55 →
/// 3.55, q = 0 → 1, q = 1 → 4; one value is every quantile.
#[test]
fn quantiles_by_hand() {
    let x = [4.0, 1.0, 3.0, 2.0];
    assert_eq!(quantile(&x, 0.5), 2.5);
    assert!(close(quantile(&x, 0.85), 3.55, 1e-15));
    assert_eq!((quantile(&x, 0.0), quantile(&x, 1.0)), (1.0, 4.0));
    assert_eq!(quantile(&[-7.5], 0.85), -7.5);
    assert_eq!(
        reference_quantiles(&[x.to_vec(), vec![0.0, 10.0]], 0.5),
        vec![2.5, 5.0]
    );
}

/// log σ(0) = −ln 2 per member; far above its reference a member adds ≈ 0, far below ≈ its
/// difference; both stay finite for differences of ±1000.
#[test]
fn lsc_by_hand() {
    let ln2 = 2f64.ln();
    assert!(close(lsc(&[1.0, -3.0], &[1.0, -3.0]), -2.0 * ln2, 1e-15));
    assert_eq!(lsc(&[1000.0], &[0.0]), 0.0);
    assert_eq!(lsc(&[-1000.0], &[0.0]), -1000.0);
    let one = lsc(&[2.0], &[0.5]);
    assert!(close(one, -(1.0 + (-1.5f64).exp()).ln(), 1e-15), "{one}");
}

/// `lsc` parses, needs the reference, and only `aggregate_with_reference` computes it; the other
/// aggregates give the same R through both methods.
#[test]
fn lsc_needs_the_reference() {
    let a = Aggregate::parse("lsc", 0.5).unwrap();
    assert_eq!(a, Aggregate::Lsc);
    assert!(a.needs_reference() && a.check(3).is_ok());
    let e = a.check_without_reference().unwrap_err();
    assert_eq!(e, AggregateError::NeedsReference);
    assert!(e.to_string().contains("not supported in self-play"), "{e}");
    assert_eq!(
        a.aggregate(&[1.0, 2.0]),
        Err(AggregateError::NeedsReference)
    );
    assert_eq!(
        a.aggregate_with_reference(&[1.0, 1.0], &[9.0, 9.0], &[1.0, 1.0]),
        -2.0 * 2f64.ln()
    );
    for name in ["mean", "wco", "uwo", "member:1"] {
        let b = Aggregate::parse(name, 0.5).unwrap();
        assert!(!b.needs_reference() && b.check_without_reference().is_ok());
        let z = [1.0, 4.0, -2.0];
        assert_eq!(
            b.aggregate_with_reference(&[0.0; 3], &z, &[0.0; 3]),
            b.aggregate(&z).unwrap()
        );
    }
}

/// numpy-rule quantiles and lsc reproduce the exact (rational / 50-digit decimal) fixture within
/// 1e-12 relative.
#[test]
fn quantile_and_lsc_match_the_exact_fixture() {
    let f: Value = serde_json::from_str(BON_FIXTURE).unwrap();
    let rel = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1e-300);
    for case in f["quantiles"].as_array().unwrap() {
        let values = floats(&case["values"]);
        for (q, want) in floats(&case["q"])
            .into_iter()
            .zip(floats(&case["quantile"]))
        {
            let got = quantile(&values, q);
            assert!(rel(got, want), "{values:?} q {q}: {got} vs {want}");
        }
    }
    let cases = f["lsc"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let q = case["q"].as_f64().unwrap();
        assert_eq!(q, LSC_QUANTILE);
        let reference = reference_quantiles(&matrix(&case["reference"]), q);
        for (got, want) in reference.iter().zip(floats(&case["reference_quantiles"])) {
            assert!(rel(*got, want), "reference quantile {got} vs {want}");
        }
        let (got, want) = (
            Aggregate::Lsc.aggregate_with_reference(&floats(&case["raw"]), &[], &reference),
            case["lsc"].as_f64().unwrap(),
        );
        assert!(rel(got, want), "lsc {got} vs {want}");
    }
}
