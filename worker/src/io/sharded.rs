//! A model's weight files written as transformers' `save_pretrained` writes them: the tensors in
//! the order given (callers pass name order), split into files by
//! [`plan_model_files`](super::shard_plan::plan_model_files) (`model.safetensors` when one file
//! holds them all, else `model-0000K-of-0000N.safetensors` and `model.safetensors.index.json`),
//! each file streamed through [`SafetensorsWriter`] with `__metadata__ {"format": "pt"}`. Callers
//! hand over the encoded bytes in order, in pieces of any size; at most one file is open at a
//! time. Weight files of an earlier save in the same directory that this one does not overwrite
//! are removed, so the directory never mixes two saves. Must not convert values.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::error::{IoError, Result};
use super::hf::{INDEX_FILE, SINGLE_FILE};
use super::safetensors::{pt_metadata, TensorLayout};
use super::shard_plan::{index_json, plan_model_files, Shard};
use super::store::Location;
use super::writer::SafetensorsWriter;

/// One file written into a model directory (for manifests and reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedObject {
    /// Relative to the directory.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl SavedObject {
    /// The record of a file written whole from `bytes`.
    pub fn of_bytes(path: &str, bytes: &[u8]) -> Self {
        SavedObject {
            path: path.to_string(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }
}

pub struct ShardedWriter {
    dir: Location,
    layout: Vec<TensorLayout>,
    shards: Vec<Shard>,
    /// The shard being written (or next to open) and its bytes still to come.
    current: usize,
    remaining: u64,
    writer: Option<SafetensorsWriter>,
    written: Vec<SavedObject>,
}

impl ShardedWriter {
    /// Plans the files for `layout` under `dir`; nothing is written before the first bytes.
    pub fn new(dir: &Location, layout: Vec<TensorLayout>, max_shard_size: u64) -> Self {
        let sizes: Vec<u64> = layout.iter().map(TensorLayout::byte_len).collect();
        ShardedWriter {
            dir: dir.clone(),
            shards: plan_model_files(&sizes, max_shard_size),
            layout,
            current: 0,
            remaining: 0,
            writer: None,
            written: Vec::new(),
        }
    }

    /// The planned files.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Appends encoded tensor bytes in layout order; may span tensor and file boundaries.
    pub async fn write_owned(&mut self, mut bytes: Bytes) -> Result<()> {
        while !bytes.is_empty() {
            if self.writer.is_none() {
                self.open(bytes.len()).await?;
            }
            if self.remaining == 0 {
                self.close().await?;
                continue;
            }
            let take = self.remaining.min(bytes.len() as u64) as usize;
            let writer = self.writer.as_mut().expect("opened above");
            writer.write_owned(bytes.split_to(take)).await?;
            self.remaining -= take as u64;
            if self.remaining == 0 {
                self.close().await?;
            }
        }
        Ok(())
    }

    /// Completes the files (an incomplete tensor is an error naming it), writes the index when
    /// there are several, removes stale weight files, and returns what was written in order.
    pub async fn finish(mut self) -> Result<Vec<SavedObject>> {
        while self.current < self.shards.len() {
            if self.writer.is_none() {
                self.open(0).await?;
            }
            self.close().await?;
        }
        if self.shards.len() > 1 {
            let names: Vec<&str> = self.layout.iter().map(|l| l.name.as_str()).collect();
            let index = index_json(&self.shards, &names);
            self.dir.join(INDEX_FILE).put(index.clone()).await?;
            self.written.push(SavedObject::of_bytes(INDEX_FILE, &index));
        }
        self.remove_stale().await?;
        Ok(self.written)
    }

    async fn open(&mut self, pending: usize) -> Result<()> {
        let Some(shard) = self.shards.get(self.current) else {
            return Err(IoError::BadSafetensors {
                url: self.dir.url().to_string(),
                reason: format!("{pending} bytes written past the last tensor"),
            });
        };
        let layout = shard
            .tensors
            .iter()
            .map(|&i| self.layout[i].clone())
            .collect();
        let loc = self.dir.join(&shard.file_name);
        self.writer = Some(SafetensorsWriter::create(&loc, layout, &pt_metadata()).await?);
        self.remaining = shard.bytes;
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        let writer = self.writer.take().expect("close after open");
        let summary = writer.finish().await?;
        self.written.push(SavedObject {
            path: self.shards[self.current].file_name.clone(),
            size: summary.bytes,
            sha256: summary.sha256,
        });
        self.current += 1;
        Ok(())
    }

    /// Deletes `model.safetensors`, `model-*-of-*.safetensors` and the index left in the
    /// directory by an earlier save and not written by this one.
    async fn remove_stale(&self) -> Result<()> {
        for (name, _) in self.dir.list().await? {
            let weights = name == SINGLE_FILE
                || name == INDEX_FILE
                || (name.starts_with("model-")
                    && name.contains("-of-")
                    && name.ends_with(".safetensors")
                    && !name.contains('/'));
            if weights && !self.written.iter().any(|w| w.path == name) {
                tracing::info!(file = %self.dir.join(&name), "removing a stale weight file");
                self.dir.join(&name).delete().await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::dtype::Dtype;
    use crate::io::safetensors::read_header;

    fn layout(name: &str, n: u64) -> TensorLayout {
        TensorLayout {
            name: name.into(),
            dtype: Dtype::U8,
            shape: vec![n],
        }
    }

    fn dir_of(path: &std::path::Path) -> Location {
        Location::parse(path.to_str().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn pieces_of_any_size_land_in_their_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir_of(tmp.path());
        let tensors = vec![
            layout("a", 5),
            layout("b", 0),
            layout("c", 4),
            layout("d", 7),
        ];
        let mut w = ShardedWriter::new(&dir, tensors, 9);
        assert_eq!(w.shards().len(), 2);
        let data: Vec<u8> = (0..16).collect();
        // one piece crossing the a/c boundary and the file boundary, then the rest
        w.write_owned(Bytes::copy_from_slice(&data[..11]))
            .await
            .unwrap();
        w.write_owned(Bytes::copy_from_slice(&data[11..]))
            .await
            .unwrap();
        let written = w.finish().await.unwrap();
        let paths: Vec<&str> = written.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                INDEX_FILE
            ]
        );
        let second = dir.join("model-00002-of-00002.safetensors");
        let bytes = second.read().await.unwrap();
        assert_eq!(written[1].sha256, hex::encode(Sha256::digest(&bytes)));
        let header = read_header(&second).await.unwrap();
        let d = &header.tensors["d"];
        assert_eq!(
            &bytes[d.start as usize..(d.start + d.len) as usize],
            &data[9..]
        );
        let first = read_header(&dir.join("model-00001-of-00002.safetensors"))
            .await
            .unwrap();
        assert_eq!(
            first.tensors.keys().collect::<Vec<_>>(),
            ["a", "b", "c"].iter().collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn too_few_or_too_many_bytes_are_errors_naming_the_tensor() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir_of(tmp.path());
        let mut w = ShardedWriter::new(&dir, vec![layout("a", 4), layout("b", 4)], 4);
        w.write_owned(Bytes::from_static(&[1, 2, 3, 4, 5]))
            .await
            .unwrap();
        let err = w.finish().await.unwrap_err().to_string();
        assert!(err.contains("tensor `b` incomplete: 1 of 4 bytes"), "{err}");
        let mut w = ShardedWriter::new(&dir, vec![layout("a", 2)], 4);
        let err = w
            .write_owned(Bytes::from_static(&[1, 2, 3]))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1 bytes written past the last tensor"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_later_save_removes_the_weight_files_it_does_not_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir_of(tmp.path());
        std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
        let mut w = ShardedWriter::new(&dir, vec![layout("a", 4), layout("b", 4)], 4);
        w.write_owned(Bytes::from(vec![0u8; 8])).await.unwrap();
        w.finish().await.unwrap();
        assert!(tmp.path().join(INDEX_FILE).is_file());
        let mut w = ShardedWriter::new(&dir, vec![layout("a", 4), layout("b", 4)], 100);
        w.write_owned(Bytes::from(vec![0u8; 8])).await.unwrap();
        w.finish().await.unwrap();
        let mut names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["config.json", SINGLE_FILE]);
    }
}
