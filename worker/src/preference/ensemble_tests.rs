//! The ensemble judge on two copies of the committed reward-model fixture
//! (worker/tests/fixtures/models/llama_seqcls, whose scores transformers computed:
//! `scripts/make_model_fixtures.py`), with R checked by hand from the members' raw scores.

use candle_core::Device;

use super::*;
use crate::model::Pretrained;
use crate::preference::aggregate::AggregateError;
use crate::preference::preferences;

async fn member<'t>(tokenizer: Option<&'t Tokenizer>, source: &str) -> Member<'t> {
    let dir = format!(
        "{}/tests/fixtures/models/llama_seqcls",
        env!("CARGO_MANIFEST_DIR")
    );
    let rm = Pretrained::load(&dir, false, &Device::Cpu).await.unwrap();
    Member {
        source: source.into(),
        judge: RewardModelJudge::new(rm.model, None, 24, None, source).unwrap(),
        tokenizer,
    }
}

fn row(ids: Vec<u32>) -> PromptRow {
    PromptRow {
        ids,
        task: None,
        truncated: false,
    }
}

/// Two identical members: each scores the fixture's two sequences −1.0058849 and 0.1794128
/// (transformers). Fitted on those two rows, m = −0.41323605, s = 0.59264885, so centred
/// z = ∓0.59264885 for both members, zscore z = ∓1; variance 0, so mean = wco = uwo = z, and
/// p = σ(z(y) − z(y′)).
#[tokio::test]
async fn two_identical_members_aggregate_by_hand() {
    let (a, b) = (row(vec![1, 5, 9]), row(vec![1, 7]));
    let prompts = [&a, &b];
    let completions = [vec![13, 17, 21, 3, 8], vec![11, 19, 2]];
    let raw_want = [-1.0058849, 0.1794128];
    let (m, s) = (
        (raw_want[0] + raw_want[1]) / 2.0,
        (raw_want[1] - raw_want[0]) / 2.0,
    );
    for (name, kind, want) in [
        ("mean", NormKind::Center, [-s, s]),
        ("wco", NormKind::Center, [-s, s]),
        ("uwo", NormKind::Zscore, [-1.0, 1.0]),
        ("member:1", NormKind::None, raw_want),
    ] {
        let members = vec![member(None, "a").await, member(None, "b").await];
        let aggregate = Aggregate::parse(name, 0.5).unwrap();
        let mut judge = EnsembleJudge::new(members, aggregate, kind).unwrap();
        assert_eq!((judge.name(), judge.unit()), ("ensemble", 1.0));
        let raw = judge.member_scores(&prompts, &completions).unwrap();
        for scores in &raw {
            for (got, want) in scores.iter().zip(raw_want) {
                assert!((got - want).abs() < 1e-4, "{raw:?}");
            }
        }
        let n = judge.fit_normalisation(&prompts, &completions).unwrap();
        assert!(
            (n.mean[0] - m).abs() < 1e-4 && (n.std[1] - s).abs() < 1e-4,
            "{n:?}"
        );
        let (r, stats) = judge.scores_with_stats(&prompts, &completions).unwrap();
        for (got, want) in r.iter().zip(want) {
            assert!((got - want).abs() < 1e-4, "{name}: {r:?} vs {want:?}");
        }
        assert_eq!(
            judge.stat_names(),
            [
                "ensemble/variance",
                "ensemble/member_0",
                "ensemble/member_1"
            ]
        );
        // Σ over the rows: variance 0; each member's z sums to 0 when fitted on these rows.
        assert_eq!(stats[0], 0.0);
        let z_sum = if kind == NormKind::None {
            raw_want[0] + raw_want[1]
        } else {
            0.0
        };
        assert!(
            stats[1..].iter().all(|v| (v - z_sum).abs() < 1e-4),
            "{stats:?}"
        );
        let p = preferences(&[r[0]], &[r[1]], judge.unit(), 1.0)[0];
        let by_hand = 1.0 / (1.0 + (want[1] - want[0]).exp());
        assert!((p - by_hand).abs() < 1e-4, "{p} vs {by_hand}");
    }
}

#[tokio::test]
async fn too_few_members_a_missing_member_lsc_or_another_tokenizer_is_refused() {
    let e = EnsembleJudge::new(
        vec![member(None, "a").await],
        Aggregate::Mean,
        NormKind::Center,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("at least 2 members, found 1"), "{e}");
    let two = vec![member(None, "a").await, member(None, "b").await];
    let e = EnsembleJudge::new(two, Aggregate::Member(2), NormKind::Center)
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            JudgeError::Aggregate(AggregateError::NoSuchMember { .. })
        ),
        "{e}"
    );
    let two = vec![member(None, "a").await, member(None, "b").await];
    let e = EnsembleJudge::new(two, Aggregate::Lsc, NormKind::Center)
        .err()
        .unwrap();
    assert!(
        matches!(e, JudgeError::Aggregate(AggregateError::NeedsReference)),
        "{e}"
    );
    let (t1, t2) = (
        Tokenizer::tiny(&["a", "b"]).unwrap(),
        Tokenizer::tiny(&["c"]).unwrap(),
    );
    let members = vec![
        member(Some(&t1), "first").await,
        member(None, "second").await,
        member(Some(&t2), "third").await,
    ];
    let e = EnsembleJudge::new(members, Aggregate::Mean, NormKind::Center)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("ensemble member third") && e.contains("member first's"),
        "{e}"
    );
}
