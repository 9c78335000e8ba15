//! Shared-backbone ensembles: members train only their heads over the job seed's frozen
//! backbone, one forward pass scores every member exactly as each member scores alone, and a
//! manifest that claims sharing over different backbones is refused.

use crate::test_support::block_on;
use std::path::Path;

use candle_core::Device;

use crate::preference::manifest::{Manifest, MemberEntry, FILE_NAME, FORMAT};
use crate::preference::reward_model::RewardModelJudge;
use crate::preference::{Judge, PromptRow};
use crate::reward::backbone;
use crate::reward::ensemble::LoadedEnsemble;
use crate::reward::member::tests::{spec, tiny, train_member};
use crate::reward::pairs::{Pair, PairSpec, Pairs};
use crate::tasks::goodhart_digits as gd;

/// Writes a manifest over `members` (directories under `dir`).
fn write_manifest(dir: &Path, members: &[&str], shared_backbone: bool) -> String {
    let m = Manifest {
        format: FORMAT.into(),
        members: members
            .iter()
            .map(|p| MemberEntry {
                path: (*p).into(),
                steps: 0,
                train_accuracy: None,
                eval_accuracy: None,
                train_accuracy_clean: None,
                eval_accuracy_clean: None,
                norm: None,
            })
            .collect(),
        data: "goodhart_digits".into(),
        label_noise: None,
        bootstrap: false,
        shared_backbone,
        norm_policy: None,
    };
    let path = dir.join(FILE_NAME);
    std::fs::write(&path, m.to_json()).unwrap();
    format!("file://{}", path.display())
}

/// Some held-out Goodhart pairs as (prompt rows, completions), both sides of each pair.
fn rows() -> (Vec<PromptRow>, Vec<Vec<u32>>) {
    let source = mirrorplay_proto::v1::PairSource {
        source: Some(mirrorplay_proto::v1::pair_source::Source::Task(
            "goodhart_digits".into(),
        )),
    };
    let format = crate::train::prompts::PromptFormat {
        tokenizer: None,
        chat: false,
        max_prompt_tokens: 1024,
    };
    let pairs = block_on(Pairs::load(
        &PairSpec {
            source: &source,
            train_pairs: 1,
            eval_pairs: 20,
            label_noise: 0.0,
            seed: 3,
        },
        &format,
        Some(gd::EOS),
    ))
    .unwrap();
    let both = |p: &Pair| [p.chosen.clone(), p.rejected.clone()];
    let prompts = pairs
        .eval
        .iter()
        .flat_map(|p| {
            let row = PromptRow {
                ids: p.prompt.clone(),
                task: None,
                truncated: false,
            };
            [row.clone(), row]
        })
        .collect();
    (prompts, pairs.eval.iter().flat_map(both).collect())
}

#[test]
fn shared_members_train_only_their_heads_and_one_pass_scores_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(60, 3e-2, 128, 0.0);
    s.shared_backbone = true;
    let (m0, r0, _) = train_member(s.clone(), 0, dir.path());
    let (m1, r1, _) = train_member(s.clone(), 1, dir.path());
    // The job seed's (7) backbone, untouched; the heads moved away from their seeds' draws.
    let init = block_on(backbone::load(&tiny(32, 1), 7, 99, &Device::Cpu)).unwrap();
    let (t0, t1, ti) = (m0.model.tensors(), m1.model.tensors(), init.model.tensors());
    let bits = |t: &candle_core::Tensor| {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect::<Vec<_>>()
    };
    for name in ti.keys().filter(|n| *n != "score.weight") {
        assert_eq!(bits(&t0[name]), bits(&ti[name]), "{name} of member 0 moved");
        assert_eq!(bits(&t1[name]), bits(&ti[name]), "{name} of member 1 moved");
    }
    assert_ne!(bits(&t0["score.weight"]), bits(&t1["score.weight"]));
    // An untrained head (std 0.02) leaves the loss at ln 2 ± 0.001; a linear head over a random
    // frozen tiny backbone fits a little of 128 clean pairs (0.670 and 0.635 here).
    assert!(
        r0.final_loss < 0.68 && r1.final_loss < 0.68,
        "{r0:?} {r1:?}"
    );

    let url = write_manifest(dir.path(), &["member-0", "member-1"], true);
    let ensemble = block_on(LoadedEnsemble::load(&url, None, &Device::Cpu)).unwrap();
    assert_eq!(ensemble.len(), 2);
    let (prompts, completions) = rows();
    let refs: Vec<&PromptRow> = prompts.iter().collect();
    let together = ensemble.member_scores(&refs, &completions).unwrap();
    for (k, member) in [m0, m1].into_iter().enumerate() {
        let alone = RewardModelJudge::new(member.model, None, gd::VOCAB_SIZE, None, "m")
            .unwrap()
            .scores(&refs, &completions)
            .unwrap();
        assert_eq!(together[k].len(), alone.len());
        for (a, b) in together[k].iter().zip(&alone) {
            assert!((a - b).abs() < 1e-5, "member {k}: {a} together, {b} alone");
        }
    }
}

#[test]
fn a_manifest_claiming_a_shared_backbone_over_different_backbones_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, backbone_seed) in [("a", 1), ("b", 2)] {
        let m = block_on(backbone::load(&tiny(16, 1), backbone_seed, 5, &Device::Cpu)).unwrap();
        let out = dir.path().join(name);
        block_on(m.save(out.to_str().unwrap(), None)).unwrap();
    }
    let url = write_manifest(dir.path(), &["a", "b"], true);
    let e = block_on(LoadedEnsemble::load(&url, None, &Device::Cpu))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("member 1") && e.contains("share one backbone") && e.contains("differs"),
        "{e}"
    );
    // Without the claim the same members load as separate reward models.
    let url = write_manifest(dir.path(), &["a", "b"], false);
    let ensemble = block_on(LoadedEnsemble::load(&url, None, &Device::Cpu)).unwrap();
    assert_eq!(ensemble.len(), 2);
}
