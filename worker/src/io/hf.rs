//! Hugging Face model locations: a single `.safetensors` file, or a directory holding
//! `model.safetensors` or a sharded `model.safetensors.index.json`, plus config and tokenizer
//! files. Only headers are read here; tensor bytes are read by range where they are used.

use std::collections::BTreeMap;

use futures::future::try_join_all;
use serde_json::Value;

use super::error::{IoError, Result};
use super::safetensors::{read_header, TensorInfo};
use super::store::Location;

pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";

/// Where one tensor's bytes live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Index into `ModelFiles::files`.
    pub file: usize,
    pub info: TensorInfo,
}

/// The weight files of a model and the tensors they hold.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The model directory (for a single-file input, the file's directory).
    pub root: Location,
    /// The location as given.
    pub source: String,
    pub files: Vec<Location>,
    pub tensors: BTreeMap<String, TensorEntry>,
    /// Other files of a model directory (config.json, tokenizer files, ...), relative names.
    /// Empty for a single-file input.
    pub extras: Vec<String>,
}

impl ModelFiles {
    pub fn file_of(&self, entry: &TensorEntry) -> &Location {
        &self.files[entry.file]
    }
}

/// Opens a model given as a file or directory URL/path.
pub async fn open_model(location: &str) -> Result<ModelFiles> {
    let loc = Location::parse(location)?;
    if loc.url().ends_with(".safetensors") {
        let header = read_header(&loc).await?;
        let tensors = header
            .tensors
            .into_iter()
            .map(|(n, info)| (n, TensorEntry { file: 0, info }))
            .collect();
        return Ok(ModelFiles {
            root: loc.parent(),
            source: loc.url().to_string(),
            files: vec![loc],
            tensors,
            extras: vec![],
        });
    }
    let listing = loc.list().await?;
    let top_level: Vec<String> = listing
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| !n.contains('/'))
        .collect();
    let names: Vec<String> = if top_level.iter().any(|n| n == INDEX_FILE) {
        let index_loc = loc.join(INDEX_FILE);
        let bytes = index_loc.read().await?;
        let json: Value = serde_json::from_slice(&bytes).map_err(|e| IoError::Json {
            url: index_loc.url().into(),
            source: e,
        })?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| IoError::BadModel {
                url: index_loc.url().into(),
                reason: "no `weight_map` object".into(),
            })?;
        let mut files: Vec<String> = Vec::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| IoError::BadModel {
                url: index_loc.url().into(),
                reason: format!("weight_map[`{tensor}`] is not a file name"),
            })?;
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
        }
        files.sort();
        files
    } else if top_level.iter().any(|n| n == SINGLE_FILE) {
        vec![SINGLE_FILE.to_string()]
    } else if listing.is_empty() {
        return Err(IoError::NotFound {
            url: loc.url().to_string(),
        });
    } else {
        return Err(IoError::BadModel {
            url: loc.url().to_string(),
            reason: format!("no {SINGLE_FILE} or {INDEX_FILE} in this directory"),
        });
    };
    let files: Vec<Location> = names.iter().map(|n| loc.join(n)).collect();
    let headers = try_join_all(files.iter().map(read_header)).await?;
    let mut tensors = BTreeMap::new();
    for (file, header) in headers.into_iter().enumerate() {
        for (name, info) in header.tensors {
            if let Some(prev) = tensors.insert(name.clone(), TensorEntry { file, info }) {
                return Err(IoError::BadModel {
                    url: loc.url().to_string(),
                    reason: format!(
                        "tensor `{name}` is in both {} and {}",
                        files[prev.file], files[file]
                    ),
                });
            }
        }
    }
    let extras = top_level
        .into_iter()
        .filter(|n| !n.ends_with(".safetensors") && n != INDEX_FILE)
        .collect();
    Ok(ModelFiles {
        root: loc.clone(),
        source: loc.url().to_string(),
        files,
        tensors,
        extras,
    })
}

/// Reads and parses a JSON file (config.json, tokenizer_config.json, ...).
pub async fn read_json(loc: &Location) -> Result<Value> {
    let bytes = loc.read().await?;
    serde_json::from_slice(&bytes).map_err(|e| IoError::Json {
        url: loc.url().into(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::example::write_example_models;

    #[tokio::test]
    async fn opens_directories_and_files() {
        let dir = tempfile::tempdir().unwrap();
        write_example_models(dir.path()).await.unwrap();
        let base = open_model(dir.path().join("base").to_str().unwrap())
            .await
            .unwrap();
        assert!(base.tensors.contains_key("model.embed_tokens.weight"));
        assert!(base.extras.contains(&"config.json".to_string()));
        assert!(base.extras.contains(&"tokenizer.json".to_string()));
        let single = open_model(dir.path().join("base/model.safetensors").to_str().unwrap())
            .await
            .unwrap();
        assert_eq!(single.tensors.len(), base.tensors.len());
        assert!(single.extras.is_empty());
        let err = open_model(dir.path().to_str().unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no model.safetensors"), "{err}");
        let err = open_model(dir.path().join("nope").to_str().unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not found"), "{err}");
    }
}
