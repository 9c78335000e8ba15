//! Training data: self-play prompts and SFT examples, from a JSONL file (path or URL) or from a
//! built-in task. Row `g` of a step's global batch is a pure function of (seed, step, g), so W
//! ranks taking slices of the batch see exactly what one rank would.
//!
//! JSONL rows: `{"prompt": str, "completion": str}` or `{"messages": [{"role", "content"}...]}`
//! (SFT: the last message is the completion and must be the assistant's; prompts: every
//! message). Text is tokenized with the model's tokenizer; message contents are joined by a
//! space (no chat template yet). A malformed row is an error naming its line.

use mirrorplay_proto::v1::{data_source, DataSource};
use serde_json::{Map, Value};

use super::TrainError;
use crate::io::jsonl::{bad, read_objects};
use crate::model::Tokenizer;
use crate::rng::{Purpose, StreamKey};
use crate::tasks::goodhart_digits as gd;

/// Self-play prompts (Goodhart-Digits prompts: the gold judge needs their targets).
pub enum Prompts {
    /// The task's train split under the job seed.
    Task { seed: u64 },
    /// Rows of a JSONL file, cycled in order.
    Rows(Vec<gd::Prompt>),
}

impl Prompts {
    pub async fn load(
        source: &DataSource,
        seed: u64,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<Self, TrainError> {
        match &source.source {
            Some(data_source::Source::Task(task)) => {
                check_task(task)?;
                Ok(Prompts::Task { seed })
            }
            Some(data_source::Source::JsonlUrl(url)) => {
                let tokenizer = need_tokenizer(tokenizer, url)?;
                let mut rows = Vec::new();
                for (line, obj) in read_objects(url).await? {
                    let text = prompt_text(&obj).map_err(|r| bad(url, line, r))?;
                    let ids = tokenizer
                        .encode(&text)
                        .map_err(|e| bad(url, line, e.to_string()))?;
                    let prompt = gd::Prompt::from_tokens(&ids)
                        .map_err(|e| bad(url, line, format!("not a task prompt: {e}")))?;
                    rows.push(prompt);
                }
                if rows.is_empty() {
                    return Err(bad(url, 0, "holds no prompts".into()).into());
                }
                Ok(Prompts::Rows(rows))
            }
            None => Err(TrainError::Invalid("no prompt source".into())),
        }
    }

    /// Prompt `g` of the global batch of step `step` (`batch` prompts per step).
    pub fn get(&self, step: u64, batch: u64, g: u64) -> gd::Prompt {
        let index = step * batch + g;
        match self {
            Prompts::Task { seed } => gd::prompt(*seed, gd::Split::Train, index),
            Prompts::Rows(rows) => rows[(index % rows.len() as u64) as usize],
        }
    }
}

/// SFT examples: (prompt tokens, completion tokens ending in EOS).
pub enum Examples {
    /// The task's base sampler on its train prompts.
    Task {
        seed: u64,
    },
    Rows(Vec<(Vec<u32>, Vec<u32>)>),
}

impl Examples {
    pub async fn load(
        source: &DataSource,
        seed: u64,
        tokenizer: Option<&Tokenizer>,
        eos: Option<u32>,
    ) -> Result<Self, TrainError> {
        match &source.source {
            Some(data_source::Source::Task(task)) => {
                check_task(task)?;
                Ok(Examples::Task { seed })
            }
            Some(data_source::Source::JsonlUrl(url)) => {
                let tokenizer = need_tokenizer(tokenizer, url)?;
                let mut rows = Vec::new();
                for (line, obj) in read_objects(url).await? {
                    let (prompt, completion) = example_text(&obj).map_err(|r| bad(url, line, r))?;
                    let encode = |t: &str| {
                        tokenizer
                            .encode(t)
                            .map_err(|e| bad(url, line, e.to_string()))
                    };
                    let (p, mut c) = (encode(&prompt)?, encode(&completion)?);
                    if p.is_empty() || c.is_empty() {
                        return Err(bad(url, line, "empty prompt or completion".into()).into());
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
            Examples::Task { seed } => {
                let prompt = gd::prompt(*seed, gd::Split::Train, index);
                let mut stream = StreamKey::new(*seed, step, g, 0, Purpose::Sample).stream();
                let y = gd::base_sample(&prompt, &mut stream);
                (prompt.tokens().to_vec(), gd::completion_tokens(&y))
            }
            Examples::Rows(rows) => rows[(index % rows.len() as u64) as usize].clone(),
        }
    }
}

fn check_task(task: &str) -> Result<(), TrainError> {
    if task == "goodhart_digits" {
        Ok(())
    } else {
        Err(TrainError::Invalid(format!(
            "unknown task `{task}` (known: goodhart_digits)"
        )))
    }
}

fn need_tokenizer<'a>(t: Option<&'a Tokenizer>, url: &str) -> Result<&'a Tokenizer, TrainError> {
    t.ok_or_else(|| {
        TrainError::Invalid(format!(
            "{url}: text data needs a tokenizer, but the model has no tokenizer.json"
        ))
    })
}

fn str_field(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("`{key}` must be a string, found `{other}`")),
        None => Err(format!("missing `{key}`")),
    }
}

/// (role, content) of each message of a `messages` row.
fn messages(obj: &Map<String, Value>) -> Result<Vec<(String, String)>, String> {
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

/// A self-play prompt's text: `prompt`, or every message's content joined by a space.
pub fn prompt_text(obj: &Map<String, Value>) -> Result<String, String> {
    if obj.contains_key("prompt") {
        return str_field(obj, "prompt");
    }
    let msgs = messages(obj)?;
    if msgs.is_empty() {
        return Err("`messages` is empty".into());
    }
    Ok(msgs
        .into_iter()
        .map(|(_, c)| c)
        .collect::<Vec<_>>()
        .join(" "))
}

/// An SFT example's (prompt, completion) text.
pub fn example_text(obj: &Map<String, Value>) -> Result<(String, String), String> {
    if obj.contains_key("prompt") || obj.contains_key("completion") {
        return Ok((str_field(obj, "prompt")?, str_field(obj, "completion")?));
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
    let prompt = msgs
        .into_iter()
        .map(|(_, c)| c)
        .collect::<Vec<_>>()
        .join(" ");
    Ok((prompt, completion))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn rows_of_both_formats_and_their_errors() {
        assert_eq!(
            example_text(&obj(r#"{"prompt": "a", "completion": "b"}"#)).unwrap(),
            ("a".into(), "b".into())
        );
        let m = r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#;
        assert_eq!(example_text(&obj(m)).unwrap(), ("a".into(), "b".into()));
        assert!(example_text(&obj(r#"{"prompt": "a"}"#)).is_err());
        assert!(example_text(&obj(r#"{"messages": [{"role": "user", "content": "a"}]}"#)).is_err());
        assert_eq!(prompt_text(&obj(m)).unwrap(), "a b");
        assert!(prompt_text(&obj(r#"{"text": "a"}"#)).is_err());
    }
}
