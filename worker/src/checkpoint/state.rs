//! `state.json` of a checkpoint (docs/checkpoints.md): what the training loop needs besides
//! tensors to continue exactly — the step, the data cursor (= step: prompts are keyed by
//! (seed, step, index), so no RNG state is saved), the hash of the run's config, the world size
//! and the format version — plus the dtype the model was loaded in (the export default).
//! Must not hold secrets or anything that differs between two runs of the same config.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{CheckpointError, Result, FORMAT_VERSION};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainState {
    pub format_version: u32,
    /// Optimizer steps taken when the checkpoint was taken.
    pub step: u64,
    /// The next step's data position; equal to `step` for counter-keyed data.
    pub data_cursor: u64,
    /// [`config_hash`] of the run's resolved spec.
    pub config_hash: String,
    pub world_size: u32,
    /// The model's dtype before training (config.json's `torch_dtype`/`dtype`), if it said.
    pub model_dtype: Option<String>,
}

/// Hex SHA-256 of a run's resolved spec bytes (e.g. the protobuf encoding of the task spec).
pub fn config_hash(spec_bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(spec_bytes))
}

impl TrainState {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = json!({
            "format_version": self.format_version,
            "step": self.step,
            "data_cursor": self.data_cursor,
            "config_hash": self.config_hash,
            "world_size": self.world_size,
        });
        if let (Some(d), Some(obj)) = (&self.model_dtype, v.as_object_mut()) {
            obj.insert("model_dtype".into(), json!(d));
        }
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s.into_bytes()
    }

    /// Parses `state.json` read from `url`; errors name the field.
    pub fn parse(bytes: &[u8], url: &str) -> Result<Self> {
        let bad = |field: &str, reason: &str| CheckpointError::BadFile {
            url: url.to_string(),
            field: field.to_string(),
            reason: reason.to_string(),
        };
        let root: Map<String, Value> = serde_json::from_slice(bytes)
            .map_err(|e| bad("(document)", &format!("not a JSON object: {e}")))?;
        let uint = |field: &str| {
            root.get(field)
                .ok_or_else(|| bad(field, "missing"))?
                .as_u64()
                .ok_or_else(|| bad(field, "not a non-negative integer"))
        };
        let format_version = uint("format_version")?;
        if format_version != FORMAT_VERSION as u64 {
            return Err(bad(
                "format_version",
                &format!("{format_version} is not the supported {FORMAT_VERSION}"),
            ));
        }
        let world_size = u32::try_from(uint("world_size")?)
            .map_err(|_| bad("world_size", "larger than a u32"))?;
        let config_hash = root
            .get("config_hash")
            .ok_or_else(|| bad("config_hash", "missing"))?
            .as_str()
            .ok_or_else(|| bad("config_hash", "not a string"))?
            .to_string();
        let model_dtype = match root.get("model_dtype") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad("model_dtype", "not a string")),
        };
        Ok(TrainState {
            format_version: FORMAT_VERSION,
            step: uint("step")?,
            data_cursor: uint("data_cursor")?,
            config_hash,
            world_size,
            model_dtype,
        })
    }
}
