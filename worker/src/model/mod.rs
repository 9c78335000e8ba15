//! The Llama-family causal LM (and its sequence-classification variant for reward models) that
//! self-play, reward models and merging run on: config, train-safe ops, decoder, KV cache,
//! tokenizer, random init, Hugging Face directories in and out and GGUF files in (through
//! `crate::io`).
//!
//! Trainable models hold `candle_core::Var`s (name-sorted, see [`Model::vars`]); frozen ones
//! plain tensors. Every op here has a backward pass. This module must not sample (see
//! `crate::sample`), define losses or optimise.

pub mod cache;
pub mod chat;
pub mod config;
pub mod decoder;
pub mod error;
pub mod gguf;
pub mod gguf_config;
mod gguf_header;
pub mod gguf_tensors;
pub mod gguf_tokenizer;
pub mod hf;
pub mod init;
pub mod ops;
pub mod rope;
pub mod save;
pub mod tokenizer;
pub mod word_level;

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod chat_tests;
#[cfg(test)]
mod gguf_tests;
#[cfg(test)]
mod save_tests;
#[cfg(test)]
mod tests;

pub use crate::io::sharded::SavedObject;
pub use cache::KvCache;
pub use chat::{ChatMessage, ChatTemplate, SpecialTokens};
pub use config::{Head, ModelConfig, ModelType, RopeScaling};
pub use decoder::{gather_last, log_softmax, Model};
pub use error::{ModelError, Result};
pub use gguf::load_gguf;
pub use hf::Pretrained;
pub use init::{init_random, random_matrix, random_tensors, random_tensors_std};
pub use save::{save_model, SaveOptions};
pub use tokenizer::Tokenizer;
