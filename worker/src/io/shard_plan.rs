//! The one shard planner of mirrorplay (merge output, `export`, saved models): tensors in name
//! order, packed greedily into files of at most `max_shard_size` bytes (a tensor larger than
//! that gets a file of its own), named `model-0000K-of-0000N.safetensors`, and the
//! `model.safetensors.index.json` that maps each tensor to its file. The plan depends only on
//! the tensor list and the size limit, never on the number of workers, so any number of workers
//! writes byte-identical files. Must not do I/O.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::json;

use super::hf::SINGLE_FILE;

/// transformers' default `max_shard_size` ("5GB").
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;

/// One output file and the indices (into the name-sorted tensor list) it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub file_name: String,
    pub tensors: Vec<usize>,
    pub bytes: u64,
}

/// `sizes` are the byte sizes of the name-sorted tensors.
pub fn plan_shards(sizes: &[u64], max_shard_size: u64) -> Vec<Shard> {
    let mut groups: Vec<(Vec<usize>, u64)> = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        match groups.last_mut() {
            Some((tensors, bytes)) if *bytes + size <= max_shard_size || tensors.is_empty() => {
                tensors.push(i);
                *bytes += size;
            }
            _ => groups.push((vec![i], size)),
        }
    }
    if groups.is_empty() {
        groups.push((vec![], 0));
    }
    let n = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(k, (tensors, bytes))| Shard {
            file_name: format!("model-{:05}-of-{:05}.safetensors", k + 1, n),
            tensors,
            bytes,
        })
        .collect()
}

/// [`plan_shards`] as transformers' `save_pretrained` names files: a plan of one file is
/// `model.safetensors` (and needs no index).
pub fn plan_model_files(sizes: &[u64], max_shard_size: u64) -> Vec<Shard> {
    let mut shards = plan_shards(sizes, max_shard_size);
    if let [only] = shards.as_mut_slice() {
        only.file_name = SINGLE_FILE.to_string();
    }
    shards
}

/// The `model.safetensors.index.json` of `shards` (pretty JSON, newline-terminated):
/// `metadata.total_size` (the tensor bytes of all shards) and `weight_map` (tensor name → file).
/// `names` is the name-sorted tensor list the shards index into.
pub fn index_json<S: AsRef<str>>(shards: &[Shard], names: &[S]) -> Bytes {
    let mut weight_map = BTreeMap::new();
    for shard in shards {
        for &i in &shard.tensors {
            weight_map.insert(names[i].as_ref(), shard.file_name.as_str());
        }
    }
    let total: u64 = shards.iter().map(|s| s.bytes).sum();
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let mut text = serde_json::to_string_pretty(&index).expect("JSON of strings and numbers");
    text.push('\n');
    Bytes::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_greedily_in_order() {
        let shards = plan_shards(&[4, 4, 4, 10, 1], 8);
        let got: Vec<(&str, Vec<usize>)> = shards
            .iter()
            .map(|s| (s.file_name.as_str(), s.tensors.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("model-00001-of-00004.safetensors", vec![0, 1]),
                ("model-00002-of-00004.safetensors", vec![2]),
                ("model-00003-of-00004.safetensors", vec![3]),
                ("model-00004-of-00004.safetensors", vec![4]),
            ]
        );
        assert_eq!(plan_shards(&[1, 2, 3], 100).len(), 1);
    }

    #[test]
    fn a_single_file_is_model_safetensors() {
        let one = plan_model_files(&[1, 2, 3], 100);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].file_name, "model.safetensors");
        assert_eq!((one[0].tensors.clone(), one[0].bytes), (vec![0, 1, 2], 6));
        let two = plan_model_files(&[60, 60], 100);
        assert_eq!(two[1].file_name, "model-00002-of-00002.safetensors");
        assert_eq!(plan_model_files(&[], 100)[0].file_name, "model.safetensors");
    }

    #[test]
    fn the_index_maps_every_tensor_to_its_file() {
        let shards = plan_shards(&[4, 4, 4], 8);
        let index: serde_json::Value =
            serde_json::from_slice(&index_json(&shards, &["a", "b", "c"])).unwrap();
        assert_eq!(
            index,
            json!({"metadata": {"total_size": 12}, "weight_map": {
                "a": "model-00001-of-00002.safetensors",
                "b": "model-00001-of-00002.safetensors",
                "c": "model-00002-of-00002.safetensors"}})
        );
    }
}
