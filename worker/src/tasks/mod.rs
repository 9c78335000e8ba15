//! Built-in synthetic tasks with programmatic gold judges (DESIGN.md "Models and data"): their
//! vocabularies, prompts, judges and data generators. Pure functions of a seed and an index;
//! no models, no I/O.

pub mod goodhart_digits;

/// A completion or request a task cannot judge; says what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("{task}: {reason}")]
    BadCompletion { task: &'static str, reason: String },
    #[error("{task}: {reason}")]
    BadArgument { task: &'static str, reason: String },
}
