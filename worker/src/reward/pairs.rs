//! Preference pairs for training a Bradley–Terry reward model (docs/algorithms.md §3, §6): a
//! built-in task's proxy data (Goodhart-Digits: `goodhart_digits::proxy_pair` under the job
//! seed, train pairs `0..train_pairs`, held-out pairs after them) or a JSONL file of
//! `{"prompt", "chosen", "rejected"}` strings or `{"chosen": [messages], "rejected":
//! [messages]}` conversations identical but for their last, assistant, message (held out: the
//! file's last `eval_pairs` rows). Prompts are formatted as SFT prompts are
//! (`train::prompts::PromptFormat`); completions are tokenised without special tokens and end
//! with the model's EOS, as the sampler produces them. A malformed row is an error naming
//! file:line. Also each member's view of the train pairs: its bootstrap resample and its
//! epoch-by-epoch order, drawn from the member seed.

use mirrorplay_proto::v1::{pair_source, PairSource};
use serde_json::{Map, Value};

use super::RewardError;
use crate::io::jsonl::{bad, read_objects};
use crate::rng::{Purpose, StreamKey};
use crate::tasks::{goodhart_digits as gd, Task};
use crate::train::prompts::{messages, PromptFormat, PromptText};

/// One labelled pair: the prompt's ids and two completions (ending in EOS), `chosen` preferred
/// by the label trained on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    /// Whether the clean (gold) label agrees with the trained one; None when unknown (JSONL).
    pub clean_agrees: Option<bool>,
}

/// The train and held-out pairs of a job (the same for every member).
#[derive(Debug, Clone)]
pub struct Pairs {
    pub train: Vec<Pair>,
    pub eval: Vec<Pair>,
    /// The task that generated them (None: a JSONL file).
    pub task: Option<Task>,
}

/// What the pairs are read with: sizes, the label noise (task data), the job seed.
pub struct PairSpec<'a> {
    pub source: &'a PairSource,
    pub train_pairs: usize,
    pub eval_pairs: usize,
    pub label_noise: f64,
    pub seed: u64,
}

impl Pairs {
    /// Reads or generates the pairs; `format` and `eos` turn JSONL text into ids.
    pub async fn load(
        spec: &PairSpec<'_>,
        format: &PromptFormat,
        eos: Option<u32>,
    ) -> Result<Pairs, RewardError> {
        match &spec.source.source {
            Some(pair_source::Source::Task(name)) => {
                let task = Task::named(name)?;
                let pairs = |range: std::ops::Range<usize>| {
                    range
                        .map(|i| task_pair(task, spec.seed, i as u64, spec.label_noise))
                        .collect::<Result<Vec<_>, _>>()
                };
                Ok(Pairs {
                    train: pairs(0..spec.train_pairs)?,
                    eval: pairs(spec.train_pairs..spec.train_pairs + spec.eval_pairs)?,
                    task: Some(task),
                })
            }
            Some(pair_source::Source::JsonlUrl(url)) => {
                let rows = read_objects(url).await?;
                let mut pairs = Vec::with_capacity(rows.len());
                for (line, obj) in rows {
                    pairs.push(jsonl_pair(&obj, format, eos).map_err(|r| bad(url, line, r))?);
                }
                split_rows(url, pairs, spec.train_pairs, spec.eval_pairs)
            }
            None => Err(RewardError::Invalid("reward_train: no data source".into())),
        }
    }
}

/// Pair `index` of a task's proxy data as ids: the noisy label's winner is `chosen`.
pub fn task_pair(task: Task, seed: u64, index: u64, noise: f64) -> Result<Pair, RewardError> {
    match task {
        Task::GoodhartDigits => {
            let p = gd::proxy_pair(seed, index, noise)?;
            let (a, b) = (gd::completion_tokens(&p.a), gd::completion_tokens(&p.b));
            let (chosen, rejected) = if p.a_preferred { (a, b) } else { (b, a) };
            Ok(Pair {
                prompt: p.prompt.tokens().to_vec(),
                chosen,
                rejected,
                clean_agrees: Some(p.a_preferred == p.gold_a_preferred),
            })
        }
        Task::ExactWords => Err(RewardError::Invalid(format!(
            "task `{}` has no proxy preference data: give a JSONL `jsonl_url`",
            task.name()
        ))),
    }
}

/// Held out: the last `eval_pairs` rows; train: the rest, or its first `train_pairs` if nonzero.
fn split_rows(
    url: &str,
    mut rows: Vec<Pair>,
    train_pairs: usize,
    eval_pairs: usize,
) -> Result<Pairs, RewardError> {
    if rows.len() <= eval_pairs {
        return Err(bad(
            url,
            0,
            format!(
                "holds {} pairs; the last eval_pairs = {eval_pairs} are held out, so it needs more",
                rows.len()
            ),
        )
        .into());
    }
    let eval = rows.split_off(rows.len() - eval_pairs);
    if train_pairs > 0 {
        if train_pairs > rows.len() {
            return Err(bad(
                url,
                0,
                format!(
                    "train_pairs = {train_pairs} but only {} rows precede the held-out ones",
                    rows.len()
                ),
            )
            .into());
        }
        rows.truncate(train_pairs);
    }
    Ok(Pairs {
        train: rows,
        eval,
        task: None,
    })
}

/// One JSONL row as ids (the reason on error; the caller names file:line).
fn jsonl_pair(
    obj: &Map<String, Value>,
    format: &PromptFormat,
    eos: Option<u32>,
) -> Result<Pair, String> {
    let tokenizer = format
        .tokenizer
        .as_ref()
        .ok_or("text pairs need a tokenizer, but the model has no tokenizer.json")?;
    let (prompt, chosen, rejected) = pair_text(obj)?;
    let (prompt, _) = format.ids(&prompt)?;
    let completion = |text: &str, key: &str| {
        let mut ids = tokenizer.encode(text).map_err(|e| e.to_string())?;
        if ids.is_empty() {
            return Err(format!("`{key}` has no tokens"));
        }
        ids.extend(eos);
        Ok(ids)
    };
    Ok(Pair {
        prompt,
        chosen: completion(&chosen, "chosen")?,
        rejected: completion(&rejected, "rejected")?,
        clean_agrees: None,
    })
}

/// (prompt, chosen completion, rejected completion) of a row in either form.
pub fn pair_text(obj: &Map<String, Value>) -> Result<(PromptText, String, String), String> {
    let string = |key: &str| match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("`{key}` must be a string, found `{other}`")),
        None => Err(format!("missing `{key}`")),
    };
    if obj.contains_key("prompt") {
        return Ok((
            PromptText::Plain(string("prompt")?),
            string("chosen")?,
            string("rejected")?,
        ));
    }
    let conversation = |key: &str| {
        let Some(list) = obj.get(key) else {
            return Err(format!(
                "expected `prompt`, `chosen`, `rejected` strings or `chosen`, `rejected` \
                 message lists; missing `{key}`"
            ));
        };
        let mut wrapped = Map::new();
        wrapped.insert("messages".into(), list.clone());
        let mut msgs = messages(&wrapped).map_err(|e| format!("`{key}`: {e}"))?;
        match msgs.pop() {
            Some((role, last)) if role == "assistant" && !msgs.is_empty() => Ok((msgs, last)),
            _ => Err(format!(
                "`{key}` must end with an assistant message after at least one other"
            )),
        }
    };
    let (context, chosen) = conversation("chosen")?;
    let (other, rejected) = conversation("rejected")?;
    if context != other {
        return Err(
            "`chosen` and `rejected` must share every message but the last (assistant) one".into(),
        );
    }
    Ok((PromptText::Messages(context), chosen, rejected))
}

/// The seed of member `member` of a job with seed `seed`: its head (or tiny model) init, its
/// bootstrap resample and its data order derive from it.
pub fn member_seed(seed: u64, member: u32) -> u64 {
    StreamKey::new(seed, 0, u64::from(member), 0, Purpose::RewardMember)
        .stream()
        .next_u64()
}

/// `n` indices into `n` train pairs drawn uniformly with replacement from the member seed.
pub fn bootstrap(n: usize, member_seed: u64) -> Vec<usize> {
    let mut s = StreamKey::new(member_seed, 0, 0, 1, Purpose::DataOrder).stream();
    (0..n).map(|_| s.below(n as u64) as usize).collect()
}

/// A member's order over its train pairs: epoch e is a Fisher–Yates shuffle keyed by (member
/// seed, e); step s takes positions s·B .. s·B + B of the concatenated epochs.
pub struct Order {
    n: usize,
    member_seed: u64,
    epoch: Option<(u64, Vec<usize>)>,
}

impl Order {
    pub fn new(n: usize, member_seed: u64) -> Self {
        Order {
            n,
            member_seed,
            epoch: None,
        }
    }

    /// Epoch `e`'s permutation of 0..n.
    pub fn permutation(n: usize, member_seed: u64, e: u64) -> Vec<usize> {
        let mut s = StreamKey::new(member_seed, e, 0, 0, Purpose::DataOrder).stream();
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, s.below(i as u64 + 1) as usize);
        }
        p
    }

    /// The indices (into the member's train pairs) of step `step`'s `batch` pairs.
    pub fn batch(&mut self, step: u64, batch: usize) -> Vec<usize> {
        let n = self.n as u64;
        (0..batch as u64)
            .map(|g| {
                let pos = step * batch as u64 + g;
                let e = pos / n;
                if self.epoch.as_ref().map(|(k, _)| *k) != Some(e) {
                    self.epoch = Some((e, Self::permutation(self.n, self.member_seed, e)));
                }
                let (_, perm) = self.epoch.as_ref().expect("set above");
                perm[(pos % n) as usize]
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "pairs_tests.rs"]
mod tests;
