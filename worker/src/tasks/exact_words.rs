//! Exact-Words, the built-in text task for real language models (docs/algorithms.md §7): the
//! prompt asks to describe a topic in exactly N words, and the gold judge scores
//! −|words(y) − N|, an integer, so 0 is a perfect answer and every word too many or too few
//! costs 1. It is graded (not pass/fail), cheap, and something a small instruct model gets
//! measurably better at within a few dozen steps: such models answer at length, and learning
//! to stop on time is the first thing preference training teaches them.
//!
//! Prompts are (topic, N) pairs, N ∈ [`MIN_WORDS`]..=[`MAX_WORDS`], over [`TOPICS`]; a seeded
//! one-in-[`HELD_OUT_ONE_IN`] of the pairs is held out for evaluation, as Goodhart-Digits does.
//! Pure functions of (seed, index) and of text; no models, no tokenizers.

use crate::rng::{Purpose, StreamKey};

use super::{Split, TaskError};

const TASK: &str = "exact_words";

/// Fewest and most words a prompt asks for.
pub const MIN_WORDS: u32 = 3;
pub const MAX_WORDS: u32 = 8;
/// One (topic, N) pair in this many is held out (per seed).
pub const HELD_OUT_ONE_IN: u64 = 4;

/// What the prompts ask to describe.
pub const TOPICS: [&str; 48] = [
    "the ocean",
    "a cat",
    "winter",
    "a busy city",
    "the moon",
    "a forest",
    "coffee",
    "a thunderstorm",
    "a library",
    "the desert",
    "a train journey",
    "autumn leaves",
    "a mountain",
    "a birthday party",
    "the sun",
    "a garden",
    "a river",
    "snow",
    "a dog",
    "the night sky",
    "a market",
    "a bicycle",
    "rain",
    "a lighthouse",
    "bread",
    "a volcano",
    "the wind",
    "a castle",
    "music",
    "a beach",
    "a school",
    "friendship",
    "a kitchen",
    "a bridge",
    "spring",
    "an island",
    "a clock",
    "fire",
    "a museum",
    "the sea breeze",
    "a violin",
    "a farm",
    "chocolate",
    "a waterfall",
    "a robot",
    "a candle",
    "the stars",
    "a meadow",
];

/// A prompt: describe `TOPICS[topic]` in exactly `words` words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prompt {
    pub topic: u8,
    pub words: u32,
}

impl Prompt {
    /// The user message: `Describe {topic} in exactly {N} words.`
    pub fn text(&self) -> String {
        format!(
            "Describe {} in exactly {} words.",
            TOPICS[self.topic as usize], self.words
        )
    }

    /// Reads a prompt back from its text (the user message of [`Prompt::text`], possibly
    /// inside a longer rendered chat): the last `Describe <topic> in exactly <N> words.` in it.
    pub fn parse(text: &str) -> Result<Prompt, TaskError> {
        let bad = || TaskError::BadArgument {
            task: TASK,
            reason: format!(
                "expected `Describe <topic> in exactly <N> words.` with a known topic and N in \
                 {MIN_WORDS}..={MAX_WORDS}, found {text:?}"
            ),
        };
        let start = text.rfind("Describe ").ok_or_else(bad)?;
        let rest = &text[start + "Describe ".len()..];
        let (topic, rest) = rest.split_once(" in exactly ").ok_or_else(bad)?;
        let (n, _) = rest.split_once(" words.").ok_or_else(bad)?;
        let words: u32 = n.parse().map_err(|_| bad())?;
        let topic = TOPICS.iter().position(|t| *t == topic).ok_or_else(bad)?;
        if !(MIN_WORDS..=MAX_WORDS).contains(&words) {
            return Err(bad());
        }
        Ok(Prompt {
            topic: topic as u8,
            words,
        })
    }

    /// Which split this prompt belongs to under `seed`.
    pub fn split(&self, seed: u64) -> Split {
        let code = self.topic as u64 * 64 + self.words as u64;
        super::split_of(seed, 1, code, HELD_OUT_ONE_IN)
    }
}

/// Prompt number `index` of `split` under `seed`: a uniform (topic, N), redrawn until it
/// belongs to the split.
pub fn prompt(seed: u64, split: Split, index: u64) -> Prompt {
    let split_id = match split {
        Split::Train => 0,
        Split::HeldOut => 1,
    };
    let mut stream = StreamKey::new(seed, 0, index, 100 + split_id, Purpose::Prompt).stream();
    loop {
        let p = Prompt {
            topic: stream.below(TOPICS.len() as u64) as u8,
            words: MIN_WORDS + stream.below((MAX_WORDS - MIN_WORDS + 1) as u64) as u32,
        };
        if p.split(seed) == split {
            return p;
        }
    }
}

/// Words of a completion: whitespace-separated pieces holding at least one letter or digit
/// (so a lone dash or an emoji is not a word).
pub fn count_words(text: &str) -> u32 {
    text.split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .count() as u32
}

/// The gold judge: −|words(completion) − N|.
pub fn gold(prompt: &Prompt, completion: &str) -> i64 {
    -(count_words(completion) as i64 - prompt.words as i64).abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gold_counts_words_by_hand() {
        let p = Prompt { topic: 0, words: 4 };
        assert_eq!(p.text(), "Describe the ocean in exactly 4 words.");
        assert_eq!(gold(&p, "Vast, deep, blue, endless."), 0);
        assert_eq!(gold(&p, "  Vast  -  deep blue\nwater, endless. "), -1);
        assert_eq!(gold(&p, ""), -4);
        assert_eq!(gold(&p, "The ocean is a vast body of salt water."), -5);
    }

    #[test]
    fn prompts_parse_back_and_splits_are_disjoint() {
        let mut held = std::collections::HashSet::new();
        for i in 0..200 {
            let p = prompt(7, Split::HeldOut, i);
            assert_eq!(p.split(7), Split::HeldOut);
            assert_eq!(Prompt::parse(&p.text()).unwrap(), p);
            held.insert(p);
        }
        for i in 0..400 {
            let p = prompt(7, Split::Train, i);
            assert!(!held.contains(&p), "{p:?} is in both splits");
            assert!((MIN_WORDS..=MAX_WORDS).contains(&p.words));
        }
        // Inside a rendered chat, the last request counts.
        let chat = "<|im_start|>user\nDescribe a cat in exactly 3 words.<|im_end|>\n";
        assert_eq!(Prompt::parse(chat).unwrap(), Prompt { topic: 1, words: 3 });
        assert!(Prompt::parse("Describe a unicorn in exactly 3 words.").is_err());
        assert!(Prompt::parse("Describe a cat in exactly 30 words.").is_err());
        assert!(Prompt::parse("hello").is_err());
    }

    #[test]
    fn held_out_fraction_is_near_one_in_four() {
        let mut held = 0;
        let mut total = 0;
        for topic in 0..TOPICS.len() as u8 {
            for words in MIN_WORDS..=MAX_WORDS {
                total += 1;
                held += usize::from(Prompt { topic, words }.split(3) == Split::HeldOut);
            }
        }
        let frac = held as f64 / total as f64;
        assert!((0.15..0.35).contains(&frac), "{held} of {total}");
    }
}
