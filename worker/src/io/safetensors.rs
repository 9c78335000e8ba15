//! The safetensors format: an 8-byte little-endian header length, a JSON header
//! `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}}`, then the data.
//! Headers are read with ranged reads (never the whole file); data offsets are made absolute.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::dtype::Dtype;
use super::error::{IoError, Result};
use super::store::Location;

/// Headers larger than this are rejected (the format's own reference limit is 100 MB).
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// One tensor of a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Absolute byte offset of the first element in the file.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A parsed safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Tensors by name (sorted).
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
    /// Absolute offset of the data section.
    pub data_start: u64,
}

/// Parses a header's JSON. `data_start` is 8 + the header length; `file_size`, when known,
/// bounds the data offsets.
pub fn parse_header(
    url: &str,
    json: &[u8],
    data_start: u64,
    file_size: Option<u64>,
) -> Result<Header> {
    let bad = |reason: String| IoError::BadSafetensors {
        url: url.to_string(),
        reason,
    };
    let root: Map<String, Value> = serde_json::from_slice(json)
        .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    let mut spans = Vec::new();
    for (name, entry) in root {
        if name == "__metadata__" {
            let Value::Object(m) = entry else {
                return Err(bad("__metadata__ is not an object".into()));
            };
            for (k, v) in m {
                let Value::String(v) = v else {
                    return Err(bad(format!("__metadata__.{k} is not a string")));
                };
                metadata.insert(k, v);
            }
            continue;
        }
        let field = |key: &str| {
            entry
                .get(key)
                .ok_or_else(|| bad(format!("tensor `{name}` has no `{key}`")))
        };
        let dtype_name = field("dtype")?
            .as_str()
            .ok_or_else(|| bad(format!("tensor `{name}`: dtype is not a string")))?;
        let dtype = Dtype::parse(dtype_name)
            .ok_or_else(|| bad(format!("tensor `{name}`: unsupported dtype {dtype_name}")))?;
        let shape: Vec<u64> = field("shape")?
            .as_array()
            .and_then(|a| a.iter().map(Value::as_u64).collect())
            .ok_or_else(|| {
                bad(format!(
                    "tensor `{name}`: shape is not a list of non-negative integers"
                ))
            })?;
        let offsets: Vec<u64> = field("data_offsets")?
            .as_array()
            .and_then(|a| a.iter().map(Value::as_u64).collect())
            .filter(|v: &Vec<u64>| v.len() == 2)
            .ok_or_else(|| bad(format!("tensor `{name}`: data_offsets is not [begin, end]")))?;
        let (begin, end) = (offsets[0], offsets[1]);
        let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let expected = numel.and_then(|n| n.checked_mul(dtype.size() as u64));
        if end < begin || Some(end - begin) != expected {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets [{begin}, {end}] do not match shape {shape:?} of {dtype}"
            )));
        }
        if let Some(size) = file_size {
            if data_start + end > size {
                return Err(bad(format!(
                    "tensor `{name}` ends at byte {} but the file has {size} bytes",
                    data_start + end
                )));
            }
        }
        spans.push((begin, end, name.clone()));
        tensors.insert(
            name,
            TensorInfo {
                dtype,
                shape,
                start: data_start + begin,
                len: end - begin,
            },
        );
    }
    spans.sort();
    for pair in spans.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(bad(format!(
                "tensors `{}` and `{}` overlap",
                pair[0].2, pair[1].2
            )));
        }
    }
    Ok(Header {
        tensors,
        metadata,
        data_start,
    })
}

/// Reads and parses the header of the safetensors file at `loc` (two ranged reads).
pub async fn read_header(loc: &Location) -> Result<Header> {
    let size = loc.size().await?;
    let bad = |reason: String| IoError::BadSafetensors {
        url: loc.url().to_string(),
        reason,
    };
    if size < 8 {
        return Err(bad(format!(
            "file has {size} bytes, fewer than the 8-byte header length"
        )));
    }
    let prefix = loc.read_range(0..8).await?;
    let n = u64::from_le_bytes(prefix[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER_BYTES || 8 + n > size {
        return Err(bad(format!(
            "header length {n} is impossible for a file of {size} bytes"
        )));
    }
    let json = loc.read_range(8..8 + n).await?;
    parse_header(loc.url(), &json, 8 + n, Some(size))
}

/// A tensor to be written: its layout is known before any data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLayout {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
}

impl TensorLayout {
    pub fn byte_len(&self) -> u64 {
        self.shape.iter().product::<u64>() * self.dtype.size() as u64
    }
}

/// Encodes the header for tensors stored back to back in the given order. Returns the
/// 8-byte length prefix + JSON, padded with spaces to a multiple of 8 bytes (as the reference
/// implementation does), so the data section is aligned.
pub fn encode_header(tensors: &[TensorLayout], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut root = Map::new();
    if !metadata.is_empty() {
        let m: Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        root.insert("__metadata__".into(), Value::Object(m));
    }
    let mut offset = 0u64;
    for t in tensors {
        let len = t.byte_len();
        let mut entry = Map::new();
        entry.insert("dtype".into(), Value::String(t.dtype.name().into()));
        entry.insert(
            "shape".into(),
            Value::Array(t.shape.iter().map(|&d| Value::from(d)).collect()),
        );
        entry.insert(
            "data_offsets".into(),
            Value::Array(vec![Value::from(offset), Value::from(offset + len)]),
        );
        root.insert(t.name.clone(), Value::Object(entry));
        offset += len;
    }
    let mut json = serde_json::to_vec(&Value::Object(root)).expect("JSON of strings and numbers");
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// `{"format": "pt"}`, the metadata every file mirrorplay writes carries.
pub fn pt_metadata() -> BTreeMap<String, String> {
    BTreeMap::from([("format".to_string(), "pt".to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_parse() {
        let layout = vec![
            TensorLayout {
                name: "b".into(),
                dtype: Dtype::F32,
                shape: vec![2, 3],
            },
            TensorLayout {
                name: "a".into(),
                dtype: Dtype::BF16,
                shape: vec![5],
            },
        ];
        let bytes = encode_header(&layout, &pt_metadata());
        assert_eq!(bytes.len() % 8, 0);
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let h = parse_header("mem", &bytes[8..], 8 + n, Some(8 + n + 34)).unwrap();
        assert_eq!(h.metadata["format"], "pt");
        assert_eq!(
            h.tensors["b"],
            TensorInfo {
                dtype: Dtype::F32,
                shape: vec![2, 3],
                start: 8 + n,
                len: 24
            }
        );
        assert_eq!(h.tensors["a"].start, 8 + n + 24);
        assert_eq!(h.tensors["a"].len, 10);
    }

    #[test]
    fn rejects_bad_headers_with_the_tensor_name() {
        let cases = [
            (
                r#"{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}"#,
                "tensor `w`: data_offsets",
            ),
            (
                r#"{"w": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}"#,
                "unsupported dtype Q9",
            ),
            (
                r#"{"w": {"shape": [1], "data_offsets": [0, 4]}}"#,
                "tensor `w` has no `dtype`",
            ),
            (r#"[1]"#, "not a JSON object"),
            (
                r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#,
                "overlap",
            ),
        ];
        for (json, expected) in cases {
            let err = parse_header("f.safetensors", json.as_bytes(), 100, None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected) && err.contains("f.safetensors"),
                "{err}"
            );
        }
        let err = parse_header(
            "f",
            br#"{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}"#,
            8,
            Some(20),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ends at byte 24"), "{err}");
    }
}
