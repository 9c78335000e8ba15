//! The error type of the model and sampling modules: every variant says what was expected, what
//! was found and where (file, config key, tensor name).

use crate::io::IoError;

/// Errors from loading, running, sampling and saving models.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    #[error("{url}: config key `{key}`: {reason}")]
    Config {
        url: String,
        key: String,
        reason: String,
    },
    #[error("{url}: unsupported {what}: {found} (supported: {supported})")]
    Unsupported {
        url: String,
        what: String,
        found: String,
        supported: String,
    },
    #[error("{url}: tensor `{name}` is missing")]
    MissingTensor { url: String, name: String },
    #[error("{url}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        url: String,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{url}: tensor `{name}` has dtype {found}, expected a float type (F32, F16, BF16)")]
    Dtype {
        url: String,
        name: String,
        found: String,
    },
    #[error("{url}: not a readable GGUF file: {reason}")]
    Gguf { url: String, reason: String },
    #[error("{url}: the tokenizer has {tokenizer} tokens but the model's embedding has only {model} rows")]
    VocabTooLarge {
        url: String,
        tokenizer: usize,
        model: usize,
    },
    #[error("tokenizer {url}: {reason}")]
    Tokenizer { url: String, reason: String },
    /// A chat template that does not compile or fails to render; `origin` names the file (and
    /// key) it came from.
    #[error("chat template {origin}: {reason}")]
    ChatTemplate { origin: String, reason: String },
    #[error("invalid input: {0}")]
    Input(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    /// True for store I/O that failed on the way while reading or writing a model
    /// (`IoError::is_transient`).
    pub fn is_transient(&self) -> bool {
        matches!(self, ModelError::Io(e) if e.is_transient())
    }
}
