//! URL/path → object store resolution. Every field that takes a URL also takes a local path;
//! paths are made absolute (against a given base directory) and become `file:///` URLs.
//! Stores come from `object_store::parse_url_opts` with the process environment, so S3/GCS/Azure
//! credentials are read from the usual variables (AWS_ACCESS_KEY_ID, AWS_ENDPOINT, ...).
//! One test hook: with `MIRRORPLAY_FAULT_STORE` set, every parsed store is wrapped in the
//! checkpoint fault injector (`crate::checkpoint::fault`); unset, stores are used as they are.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use url::Url;

use super::dtype::{decode_f32, Dtype};
use super::error::{IoError, Result};

/// Turns a user-supplied location into an absolute URL string. A string with a scheme
/// (`s3://`, `file:///`, ...) is kept as it is; anything else is a filesystem path, resolved
/// against `base_dir` when relative.
pub fn absolute_url(location: &str, base_dir: &FsPath) -> Result<String> {
    let bad = |reason: &str| IoError::BadLocation {
        location: location.to_string(),
        reason: reason.to_string(),
    };
    if location.is_empty() {
        return Err(bad("empty location"));
    }
    if has_scheme(location) {
        let url = Url::parse(location).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() == "file" && url.host_str().is_some_and(|h| !h.is_empty()) {
            return Err(bad("file URLs must be absolute (file:///path); use a plain path for relative locations"));
        }
        return Ok(url.to_string().trim_end_matches('/').to_string());
    }
    let path = FsPath::new(location);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    };
    let abs = normalize(&abs);
    let url = Url::from_file_path(&abs).map_err(|_| bad("not a valid absolute path"))?;
    Ok(url.to_string().trim_end_matches('/').to_string())
}

fn has_scheme(s: &str) -> bool {
    match s.find("://") {
        Some(i) => {
            i > 0
                && s[..i]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
        }
        None => false,
    }
}

/// Removes `.` and `..` components without touching the filesystem.
fn normalize(path: &FsPath) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// One object (or prefix) in a store, with the URL it was named by.
#[derive(Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    path: StorePath,
    url: String,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Location {
    /// Parses a URL or a path (relative paths resolve against the current directory).
    pub fn parse(location: &str) -> Result<Self> {
        let cwd = std::env::current_dir().map_err(|e| IoError::Fs {
            path: ".".into(),
            source: e,
        })?;
        let url_string = absolute_url(location, &cwd)?;
        let url = Url::parse(&url_string).map_err(|e| IoError::BadLocation {
            location: location.to_string(),
            reason: e.to_string(),
        })?;
        let (store, path) = object_store::parse_url_opts(&url, std::env::vars()).map_err(|e| {
            IoError::BadLocation {
                location: location.to_string(),
                reason: e.to_string(),
            }
        })?;
        // Fault-injection hook for crash tests (off unless MIRRORPLAY_FAULT_STORE is set):
        // checkpoint writes through this store may error, stall or be delayed
        // (`crate::checkpoint::fault`).
        let store = crate::checkpoint::fault::wrap_from_env(Arc::from(store)).map_err(|e| {
            IoError::BadLocation {
                location: location.to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(Location {
            store,
            path,
            url: url_string,
        })
    }

    /// A location in a store built in code (tests wrap stores, e.g. to inject failures):
    /// `path` inside `store`, shown as `url`.
    pub fn from_store(store: Arc<dyn ObjectStore>, path: &str, url: &str) -> Self {
        Location {
            store,
            path: StorePath::from(path.trim_matches('/')),
            url: url.trim_end_matches('/').to_string(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The store's own description (e.g. `AmazonS3(bucket)`), for logs and tests; it never
    /// holds credentials.
    pub fn store_name(&self) -> String {
        self.store.to_string()
    }

    /// The filesystem path of a `file://` location; `None` for other stores.
    pub fn local_path(&self) -> Option<std::path::PathBuf> {
        let url = Url::parse(&self.url).ok()?;
        (url.scheme() == "file").then(|| url.to_file_path().ok())?
    }

    /// The last path segment ("" for a store root).
    pub fn file_name(&self) -> &str {
        self.path.filename().unwrap_or("")
    }

    /// A location below this one; `name` may contain `/`.
    pub fn join(&self, name: &str) -> Location {
        let name = name.trim_matches('/');
        let path = if self.path.as_ref().is_empty() {
            StorePath::from(name)
        } else {
            StorePath::from(format!("{}/{}", self.path, name))
        };
        Location {
            store: self.store.clone(),
            path,
            url: format!("{}/{}", self.url, name),
        }
    }

    /// The parent location (same store).
    pub fn parent(&self) -> Location {
        let parts: Vec<_> = self.path.parts().collect();
        let path: StorePath = parts[..parts.len().saturating_sub(1)]
            .iter()
            .cloned()
            .collect();
        let url = match self.url.rfind('/') {
            Some(i) if !self.path.as_ref().is_empty() => self.url[..i].to_string(),
            _ => self.url.clone(),
        };
        Location {
            store: self.store.clone(),
            path,
            url,
        }
    }

    pub async fn read(&self) -> Result<Bytes> {
        let got = self.store.get_opts(&self.path, Default::default()).await;
        let got = got.map_err(|e| IoError::store(&self.url, e))?;
        got.bytes().await.map_err(|e| IoError::store(&self.url, e))
    }

    pub async fn read_range(&self, range: Range<u64>) -> Result<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        self.store
            .get_range(&self.path, range)
            .await
            .map_err(|e| IoError::store(&self.url, e))
    }

    /// Reads the float elements (of `dtype`) stored at byte range `bytes` as f32 into `out`, a
    /// buffer the caller may reuse (its contents are replaced). f32 data in a local file is read
    /// with positioned reads straight into `out`: no zero-filled staging buffer, no decode copy.
    /// Other stores and dtypes go through the object store and are decoded. A file shorter than
    /// the range is an error naming the file and the byte range.
    pub async fn read_range_f32(
        &self,
        bytes: Range<u64>,
        dtype: Dtype,
        mut out: Vec<f32>,
    ) -> Result<Vec<f32>> {
        #[cfg(all(unix, target_endian = "little"))]
        if dtype == Dtype::F32 {
            if let Some(path) = self.local_path() {
                return tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    out.resize((bytes.end - bytes.start) as usize / 4, 0.0);
                    std::fs::File::open(&path)
                        .and_then(|f| {
                            f.read_exact_at(bytemuck::cast_slice_mut(&mut out), bytes.start)
                        })
                        .map_err(|e| IoError::Fs {
                            path: format!(
                                "{} (bytes {}..{})",
                                path.display(),
                                bytes.start,
                                bytes.end
                            ),
                            source: e,
                        })?;
                    Ok(out)
                })
                .await
                .map_err(|e| IoError::Fs {
                    path: self.url.clone(),
                    source: std::io::Error::other(format!("read task failed: {e}")),
                })?;
            }
        }
        let raw = self.read_range(bytes).await?;
        out.clear();
        decode_f32(dtype, &raw, &mut out);
        Ok(out)
    }

    /// Size in bytes.
    pub async fn size(&self) -> Result<u64> {
        let meta = self
            .store
            .head(&self.path)
            .await
            .map_err(|e| IoError::store(&self.url, e))?;
        Ok(meta.size)
    }

    /// Size and ETag (for provenance).
    pub async fn head(&self) -> Result<(u64, Option<String>)> {
        let meta = self
            .store
            .head(&self.path)
            .await
            .map_err(|e| IoError::store(&self.url, e))?;
        Ok((meta.size, meta.e_tag))
    }

    pub async fn exists(&self) -> Result<bool> {
        match self.store.head(&self.path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(IoError::store(&self.url, e)),
        }
    }

    /// Atomic overwrite.
    pub async fn put(&self, bytes: impl Into<PutPayload>) -> Result<()> {
        self.store
            .put(&self.path, bytes.into())
            .await
            .map_err(|e| IoError::store(&self.url, e))?;
        Ok(())
    }

    /// Atomic create: `Ok(false)` when the object already exists.
    pub async fn put_create(&self, bytes: impl Into<PutPayload>) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.store.put_opts(&self.path, bytes.into(), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(IoError::store(&self.url, e)),
        }
    }

    pub async fn delete(&self) -> Result<()> {
        match self.store.delete(&self.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(IoError::store(&self.url, e)),
        }
    }

    /// Every object below this prefix: (path relative to it, size), sorted by path.
    pub async fn list(&self) -> Result<Vec<(String, u64)>> {
        let prefix = if self.path.as_ref().is_empty() {
            None
        } else {
            Some(&self.path)
        };
        let metas: Vec<_> = self
            .store
            .list(prefix)
            .try_collect()
            .await
            .map_err(|e| IoError::store(&self.url, e))?;
        let base = self.path.as_ref();
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .filter_map(|m| {
                let full = m.location.as_ref().to_string();
                let rel = if base.is_empty() {
                    full
                } else {
                    full.strip_prefix(base)?.trim_start_matches('/').to_string()
                };
                (!rel.is_empty()).then_some((rel, m.size))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Size and SHA-256 (hex) of the object, streamed: memory stays bounded whatever its size.
    pub async fn sha256(&self) -> Result<(u64, String)> {
        use sha2::{Digest, Sha256};
        let got = self.store.get_opts(&self.path, Default::default()).await;
        let mut stream = got.map_err(|e| IoError::store(&self.url, e))?.into_stream();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| IoError::store(&self.url, e))?
        {
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((size, hex::encode(hasher.finalize())))
    }

    /// Makes a `file://` object (or directory) durable with `fsync`; other stores make an
    /// object durable when its put completes, so this does nothing for them. A missing local
    /// file is not an error (nothing to make durable).
    pub async fn sync_local(&self) -> Result<()> {
        let Some(path) = self.local_path() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || match std::fs::File::open(&path) {
            Ok(f) => f.sync_all().map_err(|e| IoError::Fs {
                path: path.display().to_string(),
                source: e,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(IoError::Fs {
                path: path.display().to_string(),
                source: e,
            }),
        })
        .await
        .map_err(|e| IoError::Fs {
            path: self.url.clone(),
            source: std::io::Error::other(format!("fsync task failed: {e}")),
        })?
    }

    /// Deletes every object below this prefix; returns how many there were.
    pub async fn delete_all(&self) -> Result<usize> {
        let listed = self.list().await?;
        for (rel, _) in &listed {
            self.join(rel).delete().await?;
        }
        Ok(listed.len())
    }

    /// Starts a multipart upload; the object appears atomically when it is completed.
    pub async fn put_multipart(&self) -> Result<Box<dyn object_store::MultipartUpload>> {
        self.store
            .put_multipart(&self.path)
            .await
            .map_err(|e| IoError::store(&self.url, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_urls() {
        let base = FsPath::new("/work/here");
        assert_eq!(
            absolute_url("examples/base", base).unwrap(),
            "file:///work/here/examples/base"
        );
        assert_eq!(
            absolute_url("./a/../b/", base).unwrap(),
            "file:///work/here/b"
        );
        assert_eq!(
            absolute_url("/abs/x.safetensors", base).unwrap(),
            "file:///abs/x.safetensors"
        );
        assert_eq!(
            absolute_url("s3://bucket/key/", base).unwrap(),
            "s3://bucket/key"
        );
        assert!(absolute_url("file://./rel", base).is_err());
        assert!(absolute_url("", base).is_err());
    }

    /// Both read paths of `read_range_f32` (positioned reads of local f32, the object store +
    /// decode otherwise) return the same values into a reused buffer, and a range past the end
    /// of a local file is an error naming the file and the byte range.
    #[tokio::test]
    async fn ranged_f32_reads_agree_and_a_short_file_is_named() {
        use crate::io::dtype::encode_f32;
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..10).map(|i| i as f32 * 0.5 - 1.0).collect();
        let mut bytes = vec![0xAAu8; 3]; // tensor data at an unaligned offset
        encode_f32(Dtype::F32, &values, &mut bytes);
        let path = dir.path().join("t.bin");
        std::fs::write(&path, &bytes).unwrap();
        let local = Location::parse(path.to_str().unwrap()).unwrap();
        assert!(local.local_path().is_some());

        let buffer = vec![7.0f32; 100]; // a reused buffer, longer than the range
        let got = local
            .read_range_f32(11..27, Dtype::F32, buffer)
            .await
            .unwrap();
        assert_eq!(got, values[2..6]);

        // The same range as bf16 goes through the object store and decodes.
        let mut half = Vec::new();
        encode_f32(Dtype::BF16, &values, &mut half);
        let half_path = dir.path().join("h.bin");
        std::fs::write(&half_path, &half).unwrap();
        let half_loc = Location::parse(half_path.to_str().unwrap()).unwrap();
        let got = half_loc
            .read_range_f32(4..12, Dtype::BF16, got)
            .await
            .unwrap();
        assert_eq!(got, values[2..6]); // exactly representable in bf16

        let err = local
            .read_range_f32(35..51, Dtype::F32, Vec::new())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.bin") && err.contains("bytes 35..51"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn put_read_list_create() {
        let dir = tempfile::tempdir().unwrap();
        let root = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let a = root.join("sub/a.bin");
        a.put(b"hello world".to_vec()).await.unwrap();
        assert_eq!(&a.read().await.unwrap()[..], b"hello world");
        assert_eq!(&a.read_range(6..11).await.unwrap()[..], b"world");
        assert_eq!(a.size().await.unwrap(), 11);
        assert!(!root
            .join("sub/a.bin")
            .put_create(b"x".to_vec())
            .await
            .unwrap());
        assert!(root.join("b").put_create(b"x".to_vec()).await.unwrap());
        let listed = root.list().await.unwrap();
        assert_eq!(
            listed,
            vec![("b".to_string(), 1), ("sub/a.bin".to_string(), 11)]
        );
        assert_eq!(a.parent().url(), root.join("sub").url());
        assert!(matches!(
            root.join("missing").read().await,
            Err(IoError::NotFound { .. })
        ));
    }
}
