//! The one place where mirrorplay touches bytes outside the process: URL/path → object store
//! resolution (credentials from the environment), safetensors headers and ranged tensor reads,
//! the streaming safetensors writer and its sharded form, the shard planner, Hugging Face model
//! directories and the example-model generator. Everything else calls into this module; it
//! knows nothing about what tensors mean.

pub mod dtype;
pub mod error;
pub mod example;
pub mod hf;
pub mod jsonl;
pub mod safetensors;
pub mod shard_plan;
pub mod sharded;
pub mod store;
pub mod writer;

pub use dtype::Dtype;
pub use error::{IoError, Result};
pub use store::Location;
