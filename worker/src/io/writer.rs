//! Streaming safetensors writer: the header is written first from the known layout, then tensor
//! bytes are appended in layout order through a multipart upload, so memory stays bounded
//! whatever the file size. The object appears only when `finish` completes the upload
//! (local files are staged and renamed), so a crash never leaves a partial file under the name.

use std::collections::BTreeMap;

use bytes::Bytes;
use object_store::WriteMultipart;
use sha2::{Digest, Sha256};

use super::error::{IoError, Result};
use super::safetensors::{encode_header, TensorLayout};
use super::store::Location;

/// Parts in flight before `write` waits (bounds memory to about this × the part size).
const MAX_PARTS_IN_FLIGHT: usize = 4;
const PART_BYTES: usize = 16 * 1024 * 1024;

/// What a finished file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    pub bytes: u64,
    pub sha256: String,
}

pub struct SafetensorsWriter {
    upload: Option<WriteMultipart>,
    url: String,
    layout: Vec<TensorLayout>,
    /// Index of the tensor being written and bytes of it written so far.
    current: usize,
    written_in_current: u64,
    hasher: Sha256,
    total: u64,
}

impl SafetensorsWriter {
    /// Starts the file at `loc` and writes its header.
    pub async fn create(
        loc: &Location,
        layout: Vec<TensorLayout>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let upload = loc.put_multipart().await?;
        let mut writer = SafetensorsWriter {
            upload: Some(WriteMultipart::new_with_chunk_size(upload, PART_BYTES)),
            url: loc.url().to_string(),
            layout,
            current: 0,
            written_in_current: 0,
            hasher: Sha256::new(),
            total: 0,
        };
        let header = encode_header(&writer.layout, metadata);
        writer.append(Bytes::from(header)).await?;
        writer.skip_empty_tensors();
        Ok(writer)
    }

    /// The tensor the next bytes belong to, or None when all are complete.
    pub fn current_tensor(&self) -> Option<&TensorLayout> {
        self.layout.get(self.current)
    }

    /// Appends bytes of the tensors in layout order; may span tensor boundaries.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_owned(Bytes::copy_from_slice(bytes)).await
    }

    /// [`SafetensorsWriter::write`] for bytes the caller hands over: they are uploaded without
    /// another copy.
    pub async fn write_owned(&mut self, mut bytes: Bytes) -> Result<()> {
        while !bytes.is_empty() {
            let Some(tensor) = self.layout.get(self.current) else {
                return Err(self.error(format!(
                    "{} bytes written past the last tensor",
                    bytes.len()
                )));
            };
            let tensor_len = tensor.byte_len();
            let room = tensor_len - self.written_in_current;
            let take = room.min(bytes.len() as u64) as usize;
            self.append(bytes.split_to(take)).await?;
            self.written_in_current += take as u64;
            if self.written_in_current == tensor_len {
                self.current += 1;
                self.written_in_current = 0;
                self.skip_empty_tensors();
            }
        }
        Ok(())
    }

    /// Completes the upload; fails (and aborts) if any tensor is incomplete.
    pub async fn finish(mut self) -> Result<WriteSummary> {
        if let Some(t) = self.layout.get(self.current) {
            let msg = format!(
                "tensor `{}` incomplete: {} of {} bytes written",
                t.name,
                self.written_in_current,
                t.byte_len()
            );
            self.abort().await;
            return Err(self.error(msg));
        }
        let upload = self.upload.take().expect("upload present until finish");
        upload
            .finish()
            .await
            .map_err(|e| IoError::store(&self.url, e))?;
        Ok(WriteSummary {
            bytes: self.total,
            sha256: hex::encode(self.hasher.clone().finalize()),
        })
    }

    /// Abandons the file; nothing appears under its name.
    pub async fn abort(&mut self) {
        if let Some(upload) = self.upload.take() {
            if let Err(e) = upload.abort().await {
                tracing::warn!(url = %self.url, error = %e, "aborting an upload failed");
            }
        }
    }

    fn skip_empty_tensors(&mut self) {
        while self
            .layout
            .get(self.current)
            .is_some_and(|t| t.byte_len() == 0)
        {
            self.current += 1;
        }
    }

    async fn append(&mut self, bytes: Bytes) -> Result<()> {
        let url = self.url.clone();
        let Some(upload) = self.upload.as_mut() else {
            return Err(IoError::BadSafetensors {
                url,
                reason: "writer already finished or aborted".into(),
            });
        };
        upload
            .wait_for_capacity(MAX_PARTS_IN_FLIGHT)
            .await
            .map_err(|e| IoError::store(&url, e))?;
        self.hasher.update(&bytes);
        self.total += bytes.len() as u64;
        upload.put(bytes);
        Ok(())
    }

    fn error(&self, reason: String) -> IoError {
        IoError::BadSafetensors {
            url: self.url.clone(),
            reason,
        }
    }
}

impl Drop for SafetensorsWriter {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            // Dropping an unfinished WriteMultipart leaves no object under the name; abort
            // explicitly where a runtime is available so staging files are removed too.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = upload.abort().await;
                });
            }
        }
    }
}

/// Writes a whole small file at once (example models, saved models): tensors in the given
/// order with their bytes.
pub async fn write_safetensors(
    loc: &Location,
    tensors: &[(TensorLayout, Vec<u8>)],
    metadata: &BTreeMap<String, String>,
) -> Result<WriteSummary> {
    let layout = tensors.iter().map(|(l, _)| l.clone()).collect();
    let mut writer = SafetensorsWriter::create(loc, layout, metadata).await?;
    for (layout, bytes) in tensors {
        if bytes.len() as u64 != layout.byte_len() {
            let reason = format!(
                "tensor `{}` has {} bytes, its shape needs {}",
                layout.name,
                bytes.len(),
                layout.byte_len()
            );
            writer.abort().await;
            return Err(IoError::BadSafetensors {
                url: loc.url().to_string(),
                reason,
            });
        }
        writer.write(bytes).await?;
    }
    writer.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::dtype::Dtype;
    use crate::io::safetensors::{pt_metadata, read_header};

    #[tokio::test]
    async fn streamed_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::parse(dir.path().join("m.safetensors").to_str().unwrap()).unwrap();
        let a: Vec<u8> = (0..24u8).collect();
        let b: Vec<u8> = vec![7; 4];
        let tensors = vec![
            (
                TensorLayout {
                    name: "a".into(),
                    dtype: Dtype::F32,
                    shape: vec![2, 3],
                },
                a.clone(),
            ),
            (
                TensorLayout {
                    name: "empty".into(),
                    dtype: Dtype::F32,
                    shape: vec![0],
                },
                vec![],
            ),
            (
                TensorLayout {
                    name: "b".into(),
                    dtype: Dtype::BF16,
                    shape: vec![2],
                },
                b.clone(),
            ),
        ];
        let summary = write_safetensors(&loc, &tensors, &pt_metadata())
            .await
            .unwrap();
        let bytes = loc.read().await.unwrap();
        assert_eq!(summary.bytes, bytes.len() as u64);
        assert_eq!(summary.sha256, hex::encode(Sha256::digest(&bytes)));
        let header = read_header(&loc).await.unwrap();
        let ta = &header.tensors["a"];
        assert_eq!(
            &bytes[ta.start as usize..(ta.start + ta.len) as usize],
            &a[..]
        );
        let tb = &header.tensors["b"];
        assert_eq!(
            &bytes[tb.start as usize..(tb.start + tb.len) as usize],
            &b[..]
        );
    }

    #[tokio::test]
    async fn incomplete_file_is_an_error_and_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::parse(dir.path().join("m.safetensors").to_str().unwrap()).unwrap();
        let layout = vec![TensorLayout {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![4],
        }];
        let mut w = SafetensorsWriter::create(&loc, layout, &pt_metadata())
            .await
            .unwrap();
        w.write(&[0u8; 8]).await.unwrap();
        let err = w.finish().await.unwrap_err().to_string();
        assert!(
            err.contains("tensor `w` incomplete: 8 of 16 bytes"),
            "{err}"
        );
        assert!(!loc.exists().await.unwrap());
    }
}
