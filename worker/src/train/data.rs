//! SFT examples: from a JSONL file (path or URL) or from a built-in task's base policy.
//! Example `g` of a step's global batch is a pure function of (seed, step, g), so W ranks
//! taking slices of the batch see exactly what one rank would.
//!
//! JSONL rows: `{"prompt": str, "completion": str}` or `{"messages": [{"role", "content"}...]}`
//! (the last message is the completion and must be the assistant's). The prompt is formatted
//! like a self-play prompt (`prompts::PromptFormat`: chat template with `chat = true`); the
//! completion is tokenised without special tokens and ends with the model's EOS. A malformed
//! row is an error naming its line.

use mirrorplay_proto::v1::{data_source, DataSource};

use super::prompts::{example_text, PromptFormat};
use super::TrainError;
use crate::io::jsonl::{bad, read_objects};
use crate::tasks::Task;

/// SFT examples: (prompt tokens, completion tokens ending in EOS).
pub enum Examples {
    /// The task's base policy on its train prompts.
    Task {
        task: Task,
        seed: u64,
    },
    Rows(Vec<(Vec<u32>, Vec<u32>)>),
}

impl Examples {
    pub async fn load(
        source: &DataSource,
        seed: u64,
        format: &PromptFormat,
        eos: Option<u32>,
    ) -> Result<Self, TrainError> {
        match &source.source {
            Some(data_source::Source::Task(name)) => {
                let task = Task::named(name)?;
                if task.sft_example(seed, 0, 0, 0).is_none() {
                    return Err(TrainError::Invalid(format!(
                        "task `{name}` has no base policy to make SFT data from: give `data`"
                    )));
                }
                Ok(Examples::Task { task, seed })
            }
            Some(data_source::Source::JsonlUrl(url)) => {
                let tokenizer = format.tokenizer.as_ref().ok_or_else(|| {
                    TrainError::Invalid(format!(
                        "{url}: text data needs a tokenizer, but the model has no tokenizer.json"
                    ))
                })?;
                let mut rows = Vec::new();
                for (line, obj) in read_objects(url).await? {
                    let (prompt, completion) = example_text(&obj).map_err(|r| bad(url, line, r))?;
                    let (p, _) = format.ids(&prompt).map_err(|r| bad(url, line, r))?;
                    let mut c = tokenizer
                        .encode(&completion)
                        .map_err(|e| bad(url, line, e.to_string()))?;
                    if c.is_empty() {
                        return Err(bad(url, line, "empty completion".into()).into());
                    }
                    c.extend(eos);
                    rows.push((p, c));
                }
                if rows.is_empty() {
                    return Err(bad(url, 0, "holds no examples".into()).into());
                }
                Ok(Examples::Rows(rows))
            }
            None => Err(TrainError::Invalid("no data source".into())),
        }
    }

    /// Example `g` of the global batch of step `step`.
    pub fn get(&self, step: u64, batch: u64, g: u64) -> (Vec<u32>, Vec<u32>) {
        let index = step * batch + g;
        match self {
            Examples::Task { task, seed } => {
                task.sft_example(*seed, step, g, index).unwrap_or_default()
            }
            Examples::Rows(rows) => rows[(index % rows.len() as u64) as usize].clone(),
        }
    }
}
