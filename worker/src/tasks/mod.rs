//! Built-in tasks with programmatic gold judges (docs/algorithms.md §6, §7): their prompts,
//! judges and data generators, and [`Task`] / [`TaskPrompt`], the one place that knows which
//! tasks exist, so that training code handles prompts and golds without naming a task. Pure
//! functions of a seed, an index and text; no models, no I/O. `vocab` builds the tiny models'
//! vocabularies (the one part that needs `crate::model` types).

pub mod exact_words;
pub mod goodhart_digits;
pub mod vocab;

/// A completion or request a task cannot judge; says what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("{task}: {reason}")]
    BadCompletion { task: &'static str, reason: String },
    #[error("{task}: {reason}")]
    BadArgument { task: &'static str, reason: String },
    #[error("unknown task `{0}` (known: goodhart_digits, exact_words)")]
    Unknown(String),
}

/// Train prompts and held-out prompts are disjoint sets, chosen by the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    HeldOut,
}

/// Which split a prompt with code `code` (an injective encoding of its content) of task `tag`
/// belongs to under `seed`: one in `one_in` is held out, by a hash of (seed, tag, code).
pub fn split_of(seed: u64, tag: u64, code: u64, one_in: u64) -> Split {
    let key = crate::rng::StreamKey::new(seed, 0, 0, tag, crate::rng::Purpose::Split).derive(code);
    if crate::rng::Stream::at(key, 0).is_multiple_of(one_in) {
        Split::HeldOut
    } else {
        Split::Train
    }
}

/// The built-in tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Token-level synthetic task of its own 20-token vocabulary (tiny models only).
    GoodhartDigits,
    /// Text task for real language models.
    ExactWords,
}

/// What a model reads for a task prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptContent {
    /// Token ids of the task's own vocabulary, fed as they are.
    Tokens(Vec<u32>),
    /// A user message, tokenised (and chat-templated) with the model's tokenizer.
    Text(String),
}

/// A prompt of a built-in task, carrying what its gold judge needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskPrompt {
    GoodhartDigits(goodhart_digits::Prompt),
    ExactWords(exact_words::Prompt),
}

/// A completion as a judge sees it: its tokens up to and including EOS, and its text (the
/// tokens before EOS decoded without special tokens) when the model has a tokenizer.
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    pub tokens: &'a [u32],
    pub text: Option<&'a str>,
}

impl Task {
    pub const NAMES: [&'static str; 2] = ["goodhart_digits", "exact_words"];

    pub fn named(name: &str) -> Result<Task, TaskError> {
        match name {
            "goodhart_digits" => Ok(Task::GoodhartDigits),
            "exact_words" => Ok(Task::ExactWords),
            other => Err(TaskError::Unknown(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Task::GoodhartDigits => "goodhart_digits",
            Task::ExactWords => "exact_words",
        }
    }

    /// Prompt number `index` of `split` under `seed`.
    pub fn prompt(self, seed: u64, split: Split, index: u64) -> TaskPrompt {
        match self {
            Task::GoodhartDigits => {
                TaskPrompt::GoodhartDigits(goodhart_digits::prompt(seed, split, index))
            }
            Task::ExactWords => TaskPrompt::ExactWords(exact_words::prompt(seed, split, index)),
        }
    }

    /// Reads a prompt of this task back from a prompt file row: Goodhart-Digits from its
    /// token ids, Exact-Words from its text.
    pub fn parse_prompt(self, ids: &[u32], text: &str) -> Result<TaskPrompt, TaskError> {
        match self {
            Task::GoodhartDigits => Ok(TaskPrompt::GoodhartDigits(
                goodhart_digits::Prompt::from_tokens(ids)?,
            )),
            Task::ExactWords => Ok(TaskPrompt::ExactWords(exact_words::Prompt::parse(text)?)),
        }
    }

    /// Gold scores are integers G; the gold itself is G / `gold_unit`.
    pub fn gold_unit(self) -> f64 {
        match self {
            Task::GoodhartDigits => goodhart_digits::GOLD_SCALE as f64,
            Task::ExactWords => 1.0,
        }
    }

    /// SFT example `g` of step `step` (global example `index`): a train prompt and a
    /// completion of the task's base policy (Goodhart-Digits, docs/algorithms.md §6), as
    /// token ids ending in EOS; None for a task without a base policy.
    pub fn sft_example(
        self,
        seed: u64,
        step: u64,
        g: u64,
        index: u64,
    ) -> Option<(Vec<u32>, Vec<u32>)> {
        match self {
            Task::GoodhartDigits => {
                let prompt = goodhart_digits::prompt(seed, Split::Train, index);
                let mut stream =
                    crate::rng::StreamKey::new(seed, step, g, 0, crate::rng::Purpose::SftExample)
                        .stream();
                let y = goodhart_digits::base_sample(&prompt, &mut stream);
                Some((
                    prompt.tokens().to_vec(),
                    goodhart_digits::completion_tokens(&y),
                ))
            }
            Task::ExactWords => None,
        }
    }

    /// Whether prompts are token ids of the task's own vocabulary (so the model must use it).
    pub fn own_vocabulary(self) -> Option<usize> {
        match self {
            Task::GoodhartDigits => Some(goodhart_digits::VOCAB_SIZE),
            Task::ExactWords => None,
        }
    }
}

impl TaskPrompt {
    pub fn task(&self) -> Task {
        match self {
            TaskPrompt::GoodhartDigits(_) => Task::GoodhartDigits,
            TaskPrompt::ExactWords(_) => Task::ExactWords,
        }
    }

    pub fn content(&self) -> PromptContent {
        match self {
            TaskPrompt::GoodhartDigits(p) => PromptContent::Tokens(p.tokens().to_vec()),
            TaskPrompt::ExactWords(p) => PromptContent::Text(p.text()),
        }
    }

    /// The gold score G of `completion` (an exact integer; see [`Task::gold_unit`]).
    pub fn gold(&self, completion: Completion) -> Result<i64, TaskError> {
        match self {
            TaskPrompt::GoodhartDigits(p) => {
                let y = goodhart_digits::content(completion.tokens)?;
                Ok(goodhart_digits::gold(p, &y)?.0)
            }
            TaskPrompt::ExactWords(p) => {
                let text = completion.text.ok_or_else(|| TaskError::BadCompletion {
                    task: "exact_words",
                    reason: "the completion has no text (the model has no tokenizer)".into(),
                })?;
                Ok(exact_words::gold(p, text))
            }
        }
    }
}

/// Win rate against the reference (docs/algorithms.md §4): P(s(y) > s(y_ref)) +
/// ½·P(s(y) = s(y_ref)) over (policy, reference) score pairs of the same prompts; None without
/// pairs. Gold scores are exact integers G, so ties are exact.
pub fn win_rate(pairs: &[(f64, f64)]) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    Some(win_score(pairs) as f64 / (2 * pairs.len()) as f64)
}

/// The win rate's numerator in half-wins: 2 per win, 1 per tie (sums exactly across shards).
pub fn win_score(pairs: &[(f64, f64)]) -> u64 {
    pairs
        .iter()
        .map(|(p, r)| 2 * u64::from(p > r) + u64::from(p == r))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn win_rate_counts_ties_as_half() {
        assert_eq!(win_rate(&[]), None);
        assert_eq!(
            win_rate(&[(3.0, 1.0), (1.0, 1.0), (0.0, 2.0), (5.0, 4.0)]),
            Some(0.625)
        );
        // Golds one unit of G apart are not a tie.
        assert_eq!(win_rate(&[(4_324_320.0, 4_324_319.0)]), Some(1.0));
    }

    #[test]
    fn tasks_by_name_and_their_prompts_judge_their_completions() {
        assert_eq!(Task::named("exact_words").unwrap(), Task::ExactWords);
        assert!(matches!(Task::named("chess"), Err(TaskError::Unknown(_))));
        for name in Task::NAMES {
            assert_eq!(Task::named(name).unwrap().name(), name);
        }
        let p = Task::ExactWords.prompt(1, Split::Train, 0);
        let PromptContent::Text(text) = p.content() else {
            panic!("exact_words prompts are text")
        };
        assert_eq!(Task::ExactWords.parse_prompt(&[], &text).unwrap(), p);
        let TaskPrompt::ExactWords(w) = p else {
            panic!()
        };
        let answer = vec!["word"; w.words as usize].join(" ");
        let done = Completion {
            tokens: &[],
            text: Some(&answer),
        };
        assert_eq!(p.gold(done).unwrap(), 0);
        assert!(p
            .gold(Completion {
                tokens: &[],
                text: None
            })
            .is_err());

        let d = Task::GoodhartDigits.prompt(1, Split::Train, 0);
        let PromptContent::Tokens(ids) = d.content() else {
            panic!("goodhart_digits prompts are tokens")
        };
        assert_eq!(Task::GoodhartDigits.parse_prompt(&ids, "").unwrap(), d);
        let TaskPrompt::GoodhartDigits(g) = d else {
            panic!()
        };
        let best: Vec<u32> = g
            .targets
            .iter()
            .map(|&t| t as u32)
            .chain([goodhart_digits::EOS])
            .collect();
        let gold = d
            .gold(Completion {
                tokens: &best,
                text: None,
            })
            .unwrap();
        assert_eq!(gold as f64 / Task::GoodhartDigits.gold_unit(), 3.0);
    }
}
