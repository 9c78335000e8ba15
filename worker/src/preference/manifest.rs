//! The ensemble manifest `OUTPUT/ensemble.json` of a reward_train job (docs/algorithms.md §2
//! "Ensembles"): its members (HF `*ForSequenceClassification` directories, relative to the
//! manifest), each member's train and held-out accuracy, and each member's normalisation
//! statistics over samples of a given policy when the job fitted them. Written by the
//! coordinator's reward_train driver; read by score, best-of-n and self-play jobs.

use serde::{Deserialize, Serialize};

use crate::io::Location;
use crate::preference::aggregate::Normalisation;

/// The `format` value of this version of the manifest.
pub const FORMAT: &str = "mirrorplay-ensemble/1";
/// The manifest's file name in a reward_train job's output.
pub const FILE_NAME: &str = "ensemble.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub members: Vec<MemberEntry>,
    /// Where the members' training pairs came from (a task name or a JSONL URL).
    pub data: String,
    /// Task data: the expected fraction of flipped labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_noise: Option<f64>,
    #[serde(default)]
    pub bootstrap: bool,
    /// The members share one frozen backbone and differ only in their `score` heads, so one
    /// forward pass scores all of them (checked when the ensemble is loaded for scoring).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_backbone: bool,
    /// The policy whose samples fitted the normalisation statistics, when they were fitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_policy: Option<String>,
}

/// One member; accuracies are absent when unknown (no held-out pairs, no clean labels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// The member's directory, relative to the manifest (or an absolute path or URL).
    pub path: String,
    pub steps: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_accuracy_clean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_accuracy_clean: Option<f64>,
    /// Mean and population std of the member's scores of the norm policy's samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<MemberNorm>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MemberNorm {
    pub mean: f64,
    pub std: f64,
    pub samples: u64,
}

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
    #[error("{url}: {reason}")]
    Invalid { url: String, reason: String },
}

impl Manifest {
    /// Reads and checks the manifest at `url`: its format, ≥ 1 member, and that every member
    /// directory holds a `config.json` (a manifest naming a missing member fails here, before
    /// any work).
    pub async fn read(url: &str) -> Result<(Manifest, Vec<String>), ManifestError> {
        let invalid = |reason: String| ManifestError::Invalid {
            url: url.to_string(),
            reason,
        };
        let location = Location::parse(url)?;
        let bytes = location.read().await?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("not an ensemble manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(invalid(format!(
                "format `{}`, expected `{FORMAT}`",
                manifest.format
            )));
        }
        if manifest.members.is_empty() {
            return Err(invalid("lists no members".into()));
        }
        let dir = location.parent();
        let mut urls = Vec::with_capacity(manifest.members.len());
        for (k, m) in manifest.members.iter().enumerate() {
            let member = if m.path.contains("://") || m.path.starts_with('/') {
                Location::parse(&m.path)?
            } else {
                dir.join(&m.path)
            };
            if !member.join("config.json").exists().await? {
                return Err(invalid(format!(
                    "member {k} (`{}`): no config.json at {}",
                    m.path,
                    member.url()
                )));
            }
            urls.push(member.url().to_string());
        }
        Ok((manifest, urls))
    }

    /// The members' normalisation statistics when every member has them.
    pub fn normalisation(&self) -> Option<Normalisation> {
        let norms: Option<Vec<MemberNorm>> = self.members.iter().map(|m| m.norm).collect();
        norms.map(|n| Normalisation {
            mean: n.iter().map(|m| m.mean).collect(),
            std: n.iter().map(|m| m.std).collect(),
        })
    }

    /// The manifest as pretty JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest serialises") + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, norm: Option<MemberNorm>) -> MemberEntry {
        MemberEntry {
            path: path.into(),
            steps: 10,
            train_accuracy: Some(0.75),
            eval_accuracy: None,
            train_accuracy_clean: None,
            eval_accuracy_clean: Some(0.7),
            norm,
        }
    }

    fn manifest(members: Vec<MemberEntry>) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            members,
            data: "goodhart_digits".into(),
            label_noise: Some(0.25),
            bootstrap: false,
            shared_backbone: false,
            norm_policy: None,
        }
    }

    #[tokio::test]
    async fn a_manifest_round_trips_and_names_a_missing_member() {
        let dir = tempfile::tempdir().unwrap();
        let norm = |mean| {
            Some(MemberNorm {
                mean,
                std: 2.0,
                samples: 8,
            })
        };
        let m = manifest(vec![
            entry("member-0", norm(1.0)),
            entry("member-1", norm(-1.0)),
        ]);
        for k in 0..2 {
            let d = dir.path().join(format!("member-{k}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("config.json"), "{}").unwrap();
        }
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, m.to_json()).unwrap();
        let url = format!("file://{}", path.display());
        let (back, urls) = Manifest::read(&url).await.unwrap();
        assert_eq!(back, m);
        assert!(urls[1].ends_with("/member-1"), "{urls:?}");
        assert_eq!(
            back.normalisation().unwrap(),
            Normalisation {
                mean: vec![1.0, -1.0],
                std: vec![2.0, 2.0]
            }
        );

        std::fs::remove_dir_all(dir.path().join("member-1")).unwrap();
        let e = Manifest::read(&url).await.unwrap_err().to_string();
        assert!(e.contains("member 1 (`member-1`): no config.json"), "{e}");
    }

    #[test]
    fn normalisation_needs_every_member() {
        let m = manifest(vec![
            entry(
                "a",
                Some(MemberNorm {
                    mean: 0.0,
                    std: 1.0,
                    samples: 1,
                }),
            ),
            entry("b", None),
        ]);
        assert!(m.normalisation().is_none());
    }
}
