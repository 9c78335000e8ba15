//! The error type of the I/O module: every variant names the location it is about.

/// Errors from object stores, safetensors files and model directories.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("invalid location `{location}`: {reason}")]
    BadLocation { location: String, reason: String },
    #[error("{url}: not found")]
    NotFound { url: String },
    #[error("{url}: {source}")]
    Store {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{url}: invalid safetensors file: {reason}")]
    BadSafetensors { url: String, reason: String },
    #[error("{url}: {reason}")]
    BadModel { url: String, reason: String },
    /// A data file (JSONL) whose content is not what was expected; `url` carries `:LINE`.
    #[error("{url}: {reason}")]
    BadData { url: String, reason: String },
    #[error("{url}: invalid JSON: {source}")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Fs {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = IoError> = std::result::Result<T, E>;

impl IoError {
    /// True for store I/O that may succeed when tried again: a request the store failed or
    /// that timed out (object stores), an interrupted or timed-out file operation. A missing
    /// object, a refused permission or malformed content are not transient.
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind;
        match self {
            IoError::Store { source, .. } => matches!(
                source,
                object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
            ),
            IoError::Fs { source, .. } => matches!(
                source.kind(),
                ErrorKind::Interrupted
                    | ErrorKind::TimedOut
                    | ErrorKind::WouldBlock
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }

    pub(crate) fn store(url: &str, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => IoError::NotFound {
                url: url.to_string(),
            },
            source => IoError::Store {
                url: url.to_string(),
                source,
            },
        }
    }
}
