//! `manifest.json` (docs/checkpoints.md): `{"format_version":1,"step":N,"objects":[{"path",
//! "size","sha256"}]}`, paths relative to the step directory, sorted, not listing itself. It is
//! written last and create-only, so its presence commits the step; verification re-reads every
//! listed object (size, then streamed SHA-256). Must not write or delete anything.

use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Map, Value};

use super::{CheckpointError, Result, FORMAT_VERSION, MANIFEST};
use crate::io::{IoError, Location};

/// Objects hashed at once while verifying.
const VERIFY_CONCURRENCY: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestObject {
    /// Relative to the step directory.
    pub path: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub format_version: u32,
    pub step: u64,
    /// Sorted by path.
    pub objects: Vec<ManifestObject>,
}

impl Manifest {
    pub fn new(step: u64, mut objects: Vec<ManifestObject>) -> Self {
        objects.sort_by(|a, b| a.path.cmp(&b.path));
        Manifest {
            format_version: FORMAT_VERSION,
            step,
            objects,
        }
    }

    /// Total bytes of the listed objects.
    pub fn total_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }

    pub fn to_json(&self) -> Vec<u8> {
        let objects: Vec<Value> = self
            .objects
            .iter()
            .map(|o| json!({"path": o.path, "size": o.size, "sha256": o.sha256}))
            .collect();
        let v = json!({
            "format_version": self.format_version,
            "step": self.step,
            "objects": objects,
        });
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s.into_bytes()
    }

    /// Parses a manifest read from `url`; errors name the field (`objects[2].sha256`).
    pub fn parse(bytes: &[u8], url: &str) -> Result<Self> {
        let bad = |field: &str, reason: String| CheckpointError::BadFile {
            url: url.to_string(),
            field: field.to_string(),
            reason,
        };
        let root: Map<String, Value> = serde_json::from_slice(bytes)
            .map_err(|e| bad("(document)", format!("not a JSON object: {e}")))?;
        let uint = |obj: &Map<String, Value>, field: &str, name: &str| {
            obj.get(field)
                .ok_or_else(|| bad(name, "missing".into()))?
                .as_u64()
                .ok_or_else(|| bad(name, "not a non-negative integer".into()))
        };
        let version = uint(&root, "format_version", "format_version")?;
        if version != FORMAT_VERSION as u64 {
            return Err(bad(
                "format_version",
                format!("{version} is not the supported {FORMAT_VERSION}"),
            ));
        }
        let step = uint(&root, "step", "step")?;
        let list = root
            .get("objects")
            .ok_or_else(|| bad("objects", "missing".into()))?
            .as_array()
            .ok_or_else(|| bad("objects", "not a list".into()))?;
        let mut objects = Vec::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            let name = |f: &str| format!("objects[{i}].{f}");
            let obj = entry
                .as_object()
                .ok_or_else(|| bad(&format!("objects[{i}]"), "not an object".into()))?;
            let path = obj
                .get("path")
                .ok_or_else(|| bad(&name("path"), "missing".into()))?
                .as_str()
                .ok_or_else(|| bad(&name("path"), "not a string".into()))?;
            let unsafe_path = path.is_empty()
                || path.starts_with('/')
                || path
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..");
            if unsafe_path || path == MANIFEST {
                return Err(bad(
                    &name("path"),
                    format!("`{path}` is not a relative object path of the step directory"),
                ));
            }
            let size = uint(obj, "size", &name("size"))?;
            let sha256 = obj
                .get("sha256")
                .ok_or_else(|| bad(&name("sha256"), "missing".into()))?
                .as_str()
                .ok_or_else(|| bad(&name("sha256"), "not a string".into()))?;
            let is_hex = sha256.len() == 64
                && sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !is_hex {
                return Err(bad(&name("sha256"), "not 64 lower-case hex digits".into()));
            }
            objects.push(ManifestObject {
                path: path.to_string(),
                size,
                sha256: sha256.to_string(),
            });
        }
        let manifest = Manifest::new(step, objects);
        if let Some(w) = manifest.objects.windows(2).find(|w| w[0].path == w[1].path) {
            return Err(bad("objects", format!("`{}` is listed twice", w[0].path)));
        }
        Ok(manifest)
    }

    /// The manifest of step directory `dir`; `None` when there is none.
    pub async fn read(dir: &Location) -> Result<Option<Self>> {
        let loc = dir.join(MANIFEST);
        match loc.read().await {
            Ok(bytes) => Ok(Some(Self::parse(&bytes, loc.url())?)),
            Err(IoError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every listed object exists in `dir` with the listed size and SHA-256. A missing or
    /// different object is [`CheckpointError::Unverified`]; a store failure is an I/O error.
    pub async fn verify(&self, dir: &Location) -> Result<()> {
        let listed: std::collections::BTreeMap<String, u64> =
            dir.list().await?.into_iter().collect();
        for o in &self.objects {
            let url = dir.join(&o.path).url().to_string();
            match listed.get(&o.path) {
                None => {
                    return Err(CheckpointError::Unverified {
                        url,
                        reason: "listed in the manifest but missing".into(),
                    })
                }
                Some(&size) if size != o.size => {
                    return Err(CheckpointError::Unverified {
                        url,
                        reason: format!("{size} bytes, the manifest says {}", o.size),
                    })
                }
                Some(_) => {}
            }
        }
        futures::stream::iter(self.objects.iter().map(|o| async move {
            let loc = dir.join(&o.path);
            let (size, sha) = match loc.sha256().await {
                Ok(v) => v,
                Err(IoError::NotFound { url }) => {
                    return Err(CheckpointError::Unverified {
                        url,
                        reason: "listed in the manifest but missing".into(),
                    })
                }
                Err(e) => return Err(e.into()),
            };
            if size != o.size || sha != o.sha256 {
                return Err(CheckpointError::Unverified {
                    url: loc.url().to_string(),
                    reason: format!(
                        "{size} bytes with SHA-256 {sha}, the manifest says {} bytes with {}",
                        o.size, o.sha256
                    ),
                });
            }
            Ok(())
        }))
        .buffer_unordered(VERIFY_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }

    /// The manifest of the directory of step `step`, verified; absent, malformed, for another
    /// step or not matching the objects is [`CheckpointError::is_torn`].
    pub async fn read_verified(dir: &Location, step: u64) -> Result<Self> {
        let manifest = Self::read(dir)
            .await?
            .ok_or_else(|| CheckpointError::Unverified {
                url: dir.join(MANIFEST).url().to_string(),
                reason: "no manifest: the checkpoint was never committed".into(),
            })?;
        if manifest.step != step {
            return Err(CheckpointError::BadFile {
                url: dir.join(MANIFEST).url().to_string(),
                field: "step".into(),
                reason: format!("{} in the directory of step {step}", manifest.step),
            });
        }
        manifest.verify(dir).await?;
        Ok(manifest)
    }
}
