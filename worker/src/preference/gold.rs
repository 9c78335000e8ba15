//! The gold judge of a built-in task (`[preference] source = "gold"`): the task's own
//! programmatic score of each completion (docs/algorithms.md §6, §7). Text tasks judge the
//! completion's text: its tokens before the first EOS, decoded without special tokens.

use super::{Judge, JudgeError, PromptRow};
use crate::model::Tokenizer;
use crate::tasks::{Completion, Task};

pub struct GoldJudge {
    task: Task,
    /// Decodes completions for tasks that judge text.
    tokenizer: Option<Tokenizer>,
    eos_token_ids: Vec<u32>,
}

impl GoldJudge {
    /// The gold judge of `task` for completions of a model with this tokenizer and EOS ids.
    pub fn new(task: Task, tokenizer: Option<Tokenizer>, eos_token_ids: Vec<u32>) -> Self {
        GoldJudge {
            task,
            tokenizer,
            eos_token_ids,
        }
    }
}

impl Judge for GoldJudge {
    fn name(&self) -> &'static str {
        "gold"
    }

    fn unit(&self) -> f64 {
        self.task.gold_unit()
    }

    fn scores(
        &self,
        prompts: &[&PromptRow],
        completions: &[Vec<u32>],
    ) -> Result<Vec<f64>, JudgeError> {
        prompts
            .iter()
            .zip(completions)
            .enumerate()
            .map(|(i, (row, tokens))| {
                let prompt = row
                    .task
                    .as_ref()
                    .filter(|p| p.task() == self.task)
                    .ok_or_else(|| {
                        JudgeError::Invalid(format!(
                        "prompt {i} is not a `{}` prompt: the gold judge needs the task's prompts",
                        self.task.name()
                    ))
                    })?;
                let text = match (&self.tokenizer, self.task.own_vocabulary()) {
                    (Some(t), None) => {
                        let end = tokens
                            .iter()
                            .position(|id| self.eos_token_ids.contains(id))
                            .unwrap_or(tokens.len());
                        Some(t.decode(&tokens[..end])?)
                    }
                    _ => None,
                };
                let g = prompt.gold(Completion {
                    tokens,
                    text: text.as_deref(),
                })?;
                Ok(g as f64)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::tasks::{exact_words, TaskPrompt};

    #[test]
    fn exact_words_gold_reads_the_text_before_eos() {
        let tok = Tokenizer::word_level(
            &[("one", 0), ("two", 1), ("three", 2)],
            &[("<unk>", 3), ("</s>", 4)],
            "<unk>",
            Value::Null,
            "t",
        )
        .unwrap();
        let judge = GoldJudge::new(Task::ExactWords, Some(tok), vec![4]);
        let row = PromptRow {
            ids: vec![0],
            task: Some(TaskPrompt::ExactWords(exact_words::Prompt {
                topic: 0,
                words: 3,
            })),
            truncated: false,
        };
        let s = judge
            .scores(
                &[&row, &row, &row],
                &[vec![0, 1, 2, 4], vec![0, 4, 1, 2], vec![0, 1, 2, 0, 1]],
            )
            .unwrap();
        // three words; one word (the rest is after EOS); five words, no EOS
        assert_eq!(s, vec![0.0, -2.0, -2.0]);
        let plain = PromptRow { task: None, ..row };
        assert!(judge.scores(&[&plain], &[vec![0]]).is_err());
    }
}
