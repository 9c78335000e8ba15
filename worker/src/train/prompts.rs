//! Self-play prompts as token ids: from a built-in task's generator or a JSONL file, formatted
//! with the model's tokenizer (and chat template with `chat = true`), cut from the left to
//! `max_prompt_tokens`. Row `g` of a step's global batch is a pure function of (seed, step,
//! g), so W ranks taking slices of the batch see exactly what one rank would.
//!
//! JSONL rows: `{"prompt": str}` or `{"messages": [{"role", "content"}, ...]}`; a malformed
//! row is an error naming its line. With a task, each row must be one of the task's prompts
//! (its gold judge reads it back). Held-out prompts for evaluation: the task's held-out split,
//! or, without a task, the last `eval_prompts` rows of the file (never trained on).

use std::ops::Range;

use mirrorplay_proto::v1::{data_source, DataSource};
use serde_json::{Map, Value};

use super::TrainError;
use crate::io::jsonl::{bad, read_objects};
use crate::model::{ChatMessage, Tokenizer};
use crate::preference::PromptRow;
use crate::tasks::{PromptContent, Split, Task};

/// How prompt text becomes token ids.
pub struct PromptFormat {
    pub tokenizer: Option<Tokenizer>,
    /// Render `messages` (and a task's user message) with the tokenizer's chat template.
    pub chat: bool,
    /// Longer prompts keep their last this many tokens (0 = no limit).
    pub max_prompt_tokens: usize,
}

/// One user turn or a whole conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptText {
    Plain(String),
    Messages(Vec<(String, String)>),
}

impl PromptFormat {
    /// Token ids of `text`, and whether they were cut to `max_prompt_tokens`.
    pub fn ids(&self, text: &PromptText) -> Result<(Vec<u32>, bool), String> {
        let tokenizer = self
            .tokenizer
            .as_ref()
            .ok_or("text prompts need a tokenizer, but the model has no tokenizer.json")?;
        let mut ids = if self.chat {
            let messages: Vec<ChatMessage> = match text {
                PromptText::Plain(s) => vec![ChatMessage::new("user", s)],
                PromptText::Messages(m) => m
                    .iter()
                    .map(|(role, content)| ChatMessage::new(role, content))
                    .collect(),
            };
            tokenizer
                .encode_chat(&messages, true)
                .map_err(|e| e.to_string())?
        } else {
            tokenizer
                .encode_with_special_tokens(&flat_text(text))
                .map_err(|e| e.to_string())?
        };
        if ids.is_empty() {
            return Err("the prompt has no tokens".into());
        }
        let cut = self.max_prompt_tokens > 0 && ids.len() > self.max_prompt_tokens;
        if cut {
            ids.drain(..ids.len() - self.max_prompt_tokens);
        }
        Ok((ids, cut))
    }
}

/// A job's prompts: where they come from and how they become ids.
pub struct Prompts {
    source: Source,
    format: PromptFormat,
    seed: u64,
}

enum Source {
    /// The task's train split under the job seed (its held-out split for evaluation).
    Task(Task),
    /// Rows of a JSONL file, cycled in order.
    Rows {
        rows: Vec<PromptRow>,
        held_out: HeldOut,
    },
}

/// Where a prompt file's evaluation prompts come from.
enum HeldOut {
    /// The job's task's held-out split.
    Task(Task),
    /// The file's last rows (no task to hold prompts out).
    Rows(Vec<PromptRow>),
}

impl Prompts {
    /// Reads the prompt source; `task` (the job's) judges and holds out prompts; without one,
    /// the last `eval_prompts` rows of a file are held out.
    pub async fn load(
        source: &DataSource,
        task: Option<Task>,
        seed: u64,
        format: PromptFormat,
        eval_prompts: usize,
    ) -> Result<Self, TrainError> {
        let source = match &source.source {
            Some(data_source::Source::Task(name)) => {
                let named = Task::named(name)?;
                if task != Some(named) {
                    return Err(TrainError::Invalid(format!(
                        "the prompts come from task `{name}` but the job's task is {}",
                        task.map_or("none".to_string(), |t| format!("`{}`", t.name()))
                    )));
                }
                // Task prompts are formatted as steps need them: format one now, so that a chat
                // template that fails to render stops the job before any work.
                task_row(named, seed, Split::Train, 0, &format)?;
                Source::Task(named)
            }
            Some(data_source::Source::JsonlUrl(url)) => {
                read_rows(url, task, &format, eval_prompts).await?
            }
            None => return Err(TrainError::Invalid("no prompt source".into())),
        };
        Ok(Prompts {
            source,
            format,
            seed,
        })
    }

    /// Prompt `g` of the global batch of step `step` (`batch` prompts per step).
    pub fn get(&self, step: u64, batch: u64, g: u64) -> Result<PromptRow, TrainError> {
        let index = step * batch + g;
        match &self.source {
            Source::Rows { rows, .. } => Ok(rows[(index % rows.len() as u64) as usize].clone()),
            Source::Task(task) => task_row(*task, self.seed, Split::Train, index, &self.format),
        }
    }

    /// Held-out prompts `range` (global indices) for evaluation: the task's held-out split,
    /// else the file's held-out rows; an error past their end.
    pub fn held_out(&self, range: Range<usize>) -> Result<Vec<PromptRow>, TrainError> {
        match &self.source {
            Source::Task(task)
            | Source::Rows {
                held_out: HeldOut::Task(task),
                ..
            } => range
                .map(|i| task_row(*task, self.seed, Split::HeldOut, i as u64, &self.format))
                .collect(),
            Source::Rows {
                held_out: HeldOut::Rows(held_out),
                ..
            } => held_out
                .get(range.clone())
                .map(<[PromptRow]>::to_vec)
                .ok_or_else(|| {
                    TrainError::Invalid(format!(
                        "held-out prompts {range:?} of {} held out",
                        held_out.len()
                    ))
                }),
        }
    }
}

async fn read_rows(
    url: &str,
    task: Option<Task>,
    format: &PromptFormat,
    eval_prompts: usize,
) -> Result<Source, TrainError> {
    let mut rows = Vec::new();
    for (line, obj) in read_objects(url).await? {
        let text = prompt_text(&obj).map_err(|r| bad(url, line, r))?;
        let (ids, truncated) = format.ids(&text).map_err(|r| bad(url, line, r))?;
        let task_prompt = match task {
            Some(t) => Some(
                t.parse_prompt(&ids, &flat_text(&text))
                    .map_err(|e| bad(url, line, format!("not a task prompt: {e}")))?,
            ),
            None => None,
        };
        rows.push(PromptRow {
            ids,
            task: task_prompt,
            truncated,
        });
    }
    let cut = rows.iter().filter(|r| r.truncated).count();
    if cut > 0 {
        tracing::warn!(
            url = %url,
            rows = cut,
            max_prompt_tokens = format.max_prompt_tokens,
            "prompts cut from the left"
        );
    }
    let held_out = match task {
        Some(task) => HeldOut::Task(task),
        None if rows.len() <= eval_prompts => {
            return Err(bad(
                url,
                0,
                format!(
                    "holds {} prompts; without a task the last eval_prompts = {eval_prompts} \
                     are held out for evaluation, so it needs more",
                    rows.len()
                ),
            )
            .into())
        }
        None => HeldOut::Rows(rows.split_off(rows.len() - eval_prompts)),
    };
    if rows.is_empty() {
        return Err(bad(url, 0, "holds no prompts".into()).into());
    }
    Ok(Source::Rows { rows, held_out })
}

/// Prompt `index` of a task's `split`, as token ids.
pub fn task_row(
    task: Task,
    seed: u64,
    split: Split,
    index: u64,
    format: &PromptFormat,
) -> Result<PromptRow, TrainError> {
    let prompt = task.prompt(seed, split, index);
    let (ids, truncated) = match prompt.content() {
        PromptContent::Tokens(ids) => (ids, false),
        PromptContent::Text(text) => format
            .ids(&PromptText::Plain(text))
            .map_err(|r| TrainError::Invalid(format!("{} prompt {index}: {r}", task.name())))?,
    };
    Ok(PromptRow {
        ids,
        task: Some(prompt),
        truncated,
    })
}

fn flat_text(text: &PromptText) -> String {
    match text {
        PromptText::Plain(s) => s.clone(),
        PromptText::Messages(m) => m
            .iter()
            .map(|(_, c)| c.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn str_field(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("`{key}` must be a string, found `{other}`")),
        None => Err(format!("missing `{key}`")),
    }
}

/// (role, content) of each message of a `messages` row.
pub fn messages(obj: &Map<String, Value>) -> Result<Vec<(String, String)>, String> {
    let Some(Value::Array(items)) = obj.get("messages") else {
        return Err("expected `prompt` or a `messages` list".into());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, m)| match m {
            Value::Object(m) => Ok((
                str_field(m, "role").map_err(|e| format!("messages[{i}]: {e}"))?,
                str_field(m, "content").map_err(|e| format!("messages[{i}]: {e}"))?,
            )),
            other => Err(format!("messages[{i}] must be an object, found `{other}`")),
        })
        .collect()
}

/// A self-play prompt: `prompt`, or the `messages` (non-empty).
pub fn prompt_text(obj: &Map<String, Value>) -> Result<PromptText, String> {
    if obj.contains_key("prompt") {
        return str_field(obj, "prompt").map(PromptText::Plain);
    }
    let msgs = messages(obj)?;
    if msgs.is_empty() {
        return Err("`messages` is empty".into());
    }
    Ok(PromptText::Messages(msgs))
}

/// An SFT example's (prompt, completion): `{prompt, completion}`, or `messages` ending with an
/// assistant message after at least one other (the prompt is the messages before it).
pub fn example_text(obj: &Map<String, Value>) -> Result<(PromptText, String), String> {
    if obj.contains_key("prompt") || obj.contains_key("completion") {
        return Ok((
            PromptText::Plain(str_field(obj, "prompt")?),
            str_field(obj, "completion")?,
        ));
    }
    let mut msgs = messages(obj)?;
    let Some((role, completion)) = msgs.pop() else {
        return Err("`messages` is empty".into());
    };
    if role != "assistant" || msgs.is_empty() {
        return Err(
            "`messages` must end with an assistant message after at least one other".into(),
        );
    }
    Ok((PromptText::Messages(msgs), completion))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn rows_of_both_formats_and_their_errors() {
        let plain = |s: &str| PromptText::Plain(s.into());
        assert_eq!(
            example_text(&obj(r#"{"prompt": "a", "completion": "b"}"#)).unwrap(),
            (plain("a"), "b".into())
        );
        let m = r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#;
        let user = PromptText::Messages(vec![("user".into(), "a".into())]);
        assert_eq!(example_text(&obj(m)).unwrap(), (user, "b".into()));
        assert!(example_text(&obj(r#"{"prompt": "a"}"#)).is_err());
        assert!(example_text(&obj(r#"{"messages": [{"role": "user", "content": "a"}]}"#)).is_err());
        assert_eq!(flat_text(&prompt_text(&obj(m)).unwrap()), "a\nb");
        assert!(prompt_text(&obj(r#"{"text": "a"}"#)).is_err());
        assert!(prompt_text(&obj(r#"{"messages": [{"role": "user"}]}"#))
            .unwrap_err()
            .contains("messages[0]: missing `content`"));
    }
}
