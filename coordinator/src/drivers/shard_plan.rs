//! The output shard plan of a merge: tensors in name order, packed greedily into files of at
//! most `max_shard_size` bytes (a tensor larger than that gets a file of its own). It depends
//! only on the tensor list and the size limit, never on the number of workers, so any number of
//! workers writes byte-identical files.

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
}
