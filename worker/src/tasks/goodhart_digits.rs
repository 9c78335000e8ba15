//! Goodhart-Digits, the built-in task in which learned proxies can be over-optimised
//! (docs/algorithms.md §6, implemented exactly as written there; the shape of the experiment
//! follows Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization", and Coste et al.
//! 2023, "Reward Model Ensembles Help Mitigate Overoptimization").
//!
//! Vocabulary (V = 20): content symbols 0..15 are token ids 0..15, then BOS 16, SEP 17, EOS 18,
//! PAD 19. Prompt `BOS t1 t2 t3 t4 SEP` with 4 distinct targets; completion 1–16 symbols then EOS.
//! Every random draw comes from [`crate::rng`] streams, so data are functions of (seed, index).

use crate::rng::{Purpose, Stream, StreamKey};

pub use super::Split;
use super::TaskError;

pub const NUM_SYMBOLS: u32 = 16;
pub const BOS: u32 = 16;
pub const SEP: u32 = 17;
pub const EOS: u32 = 18;
pub const PAD: u32 = 19;
pub const VOCAB_SIZE: usize = 20;
/// Most content symbols in a completion; the sampler forces EOS after this many.
pub const MAX_SYMBOLS: usize = 16;
/// G = GOLD_SCALE · gold is an integer for every completion (lcm of the denominators 2, 3, 32,
/// 10 and |y| ∈ 1..16).
pub const GOLD_SCALE: i64 = 1_441_440;
/// Fraction of the 16·15·14·13 ordered target tuples held out for evaluation (per seed).
pub const HELD_OUT_ONE_IN: u64 = 8;

const TASK: &str = "goodhart_digits";

/// The base policy's parameters (docs/algorithms.md §6, "Base policy data").
pub const BASE_MEAN_LEN: f64 = 5.0;
pub const BASE_P_TARGET: f64 = 0.55;
pub const BASE_P_REPEAT: f64 = 0.1;

/// A prompt: 4 distinct target symbols in order (t1, t2, t3, t4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prompt {
    pub targets: [u8; 4],
}

impl Prompt {
    /// `BOS t1 t2 t3 t4 SEP`.
    pub fn tokens(&self) -> [u32; 6] {
        let [a, b, c, d] = self.targets.map(u32::from);
        [BOS, a, b, c, d, SEP]
    }

    /// Reads a prompt back from its tokens.
    pub fn from_tokens(tokens: &[u32]) -> Result<Prompt, TaskError> {
        let bad = || TaskError::BadArgument {
            task: TASK,
            reason: format!(
                "expected BOS t1 t2 t3 t4 SEP with 4 distinct symbols, found {tokens:?}"
            ),
        };
        let [BOS, a, b, c, d, SEP] = *tokens else {
            return Err(bad());
        };
        let targets = [a, b, c, d];
        if targets.iter().any(|&t| t >= NUM_SYMBOLS)
            || (0..4).any(|i| targets[i + 1..].contains(&targets[i]))
        {
            return Err(bad());
        }
        Ok(Prompt {
            targets: targets.map(|t| t as u8),
        })
    }

    pub fn is_target(&self, symbol: u8) -> bool {
        self.targets.contains(&symbol)
    }

    /// The 12 non-target symbols, ascending.
    pub fn non_targets(&self) -> Vec<u8> {
        (0..NUM_SYMBOLS as u8)
            .filter(|&s| !self.is_target(s))
            .collect()
    }

    /// Which split this prompt belongs to under `seed`: one tuple in [`HELD_OUT_ONE_IN`] is held out.
    pub fn split(&self, seed: u64) -> Split {
        let code = self
            .targets
            .iter()
            .fold(0u64, |acc, &t| acc * 16 + t as u64);
        super::split_of(seed, 0, code, HELD_OUT_ONE_IN)
    }
}

/// Prompt number `index` of `split` under `seed`: 4 targets drawn without replacement, in
/// random order, redrawn until the tuple belongs to the split.
pub fn prompt(seed: u64, split: Split, index: u64) -> Prompt {
    let split_id = match split {
        Split::Train => 0,
        Split::HeldOut => 1,
    };
    let mut stream = StreamKey::new(seed, 0, index, split_id, Purpose::Prompt).stream();
    loop {
        let mut symbols: Vec<u8> = (0..NUM_SYMBOLS as u8).collect();
        let mut targets = [0u8; 4];
        for (i, t) in targets.iter_mut().enumerate() {
            let j = i + stream.below((symbols.len() - i) as u64) as usize;
            symbols.swap(i, j);
            *t = symbols[i];
        }
        let p = Prompt { targets };
        if p.split(seed) == split {
            return p;
        }
    }
}

/// Which tokens may come next after `num_symbols` content symbols (docs/algorithms.md §6): BOS, SEP
/// and PAD never; EOS not first; only EOS after [`MAX_SYMBOLS`].
pub fn allowed_tokens(num_symbols: usize) -> [bool; VOCAB_SIZE] {
    let mut allowed = [false; VOCAB_SIZE];
    if num_symbols < MAX_SYMBOLS {
        allowed[..NUM_SYMBOLS as usize].fill(true);
    }
    allowed[EOS as usize] = num_symbols > 0;
    allowed
}

/// The content symbols y of completion tokens: everything before the first EOS (a completion
/// without EOS is all content). Errors on BOS, SEP, PAD or ids ≥ V before the EOS.
pub fn content(completion: &[u32]) -> Result<Vec<u8>, TaskError> {
    let end = completion
        .iter()
        .position(|&t| t == EOS)
        .unwrap_or(completion.len());
    completion[..end]
        .iter()
        .map(|&t| {
            if t < NUM_SYMBOLS {
                Ok(t as u8)
            } else {
                Err(TaskError::BadCompletion {
                    task: TASK,
                    reason: format!("token {t} at a content position of {completion:?}"),
                })
            }
        })
        .collect()
}

/// Completion tokens of content symbols: y then EOS.
pub fn completion_tokens(y: &[u8]) -> Vec<u32> {
    y.iter().map(|&s| u32::from(s)).chain([EOS]).collect()
}

/// A gold score, held exactly as G = [`GOLD_SCALE`]·gold. Compare and decide on G.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gold(pub i64);

impl Gold {
    /// gold as f64, for logging only.
    pub fn value(self) -> f64 {
        self.0 as f64 / GOLD_SCALE as f64
    }
}

/// The gold judge (docs/algorithms.md §6) on content symbols y, 1 ≤ |y| ≤ 16:
/// gold = 2·cover + order − 0.5·len_pen − 0.3·rep − off, with
/// cover = |T ∩ set(y)|/4; order = #{j ∈ 1..3: t_j, t_{j+1} ∈ y, first(t_j) < first(t_{j+1})}/3;
/// len_pen = max(0, |y| − 8)²/16; rep = #{i ≥ 2: y_i = y_{i−1}} + Σ_{t∈T} max(0, count(t) − 1);
/// off = #{i: y_i ∉ T}/|y|. Computed in integers: G = 720720·|T∩y| + 480480·#order
/// − 45045·max(0, |y|−8)² − 432432·rep − (1441440/|y|)·#off. The unique maximum is 3.0 at
/// `t1 t2 t3 t4`.
pub fn gold(prompt: &Prompt, y: &[u8]) -> Result<Gold, TaskError> {
    let n = y.len();
    if n == 0 || n > MAX_SYMBOLS {
        return Err(TaskError::BadCompletion {
            task: TASK,
            reason: format!("expected 1..={MAX_SYMBOLS} content symbols, found {n}"),
        });
    }
    if let Some(s) = y.iter().find(|&&s| u32::from(s) >= NUM_SYMBOLS) {
        return Err(TaskError::BadCompletion {
            task: TASK,
            reason: format!("symbol {s} is not a content symbol 0..15"),
        });
    }
    let first = |t: u8| y.iter().position(|&s| s == t);
    let count = |t: u8| y.iter().filter(|&&s| s == t).count() as i64;
    let cover = prompt
        .targets
        .iter()
        .filter(|&&t| first(t).is_some())
        .count() as i64;
    let order = prompt
        .targets
        .windows(2)
        .filter(|w| matches!((first(w[0]), first(w[1])), (Some(a), Some(b)) if a < b))
        .count() as i64;
    let over = n.saturating_sub(8) as i64;
    let adjacent = y.windows(2).filter(|w| w[0] == w[1]).count() as i64;
    let rep = adjacent
        + prompt
            .targets
            .iter()
            .map(|&t| (count(t) - 1).max(0))
            .sum::<i64>();
    let off = y.iter().filter(|&&s| !prompt.is_target(s)).count() as i64;
    let g = 720_720 * cover + 480_480 * order
        - 45_045 * over * over
        - 432_432 * rep
        - (GOLD_SCALE / n as i64) * off;
    Ok(Gold(g))
}

/// One completion of the base policy used for SFT data (docs/algorithms.md §6):
/// L = min(max(Poisson(5), 1), 16); position 1 is a target with p = 0.55, else a non-target;
/// each later position repeats the previous symbol with p = 0.1, otherwise is a target with
/// p = 0.55, else a non-target; targets uniform over the 4, non-targets over the other 12.
/// Draws come from `stream` (key it by (seed, step, prompt, sample, `Purpose::Sample`)).
pub fn base_sample(prompt: &Prompt, stream: &mut Stream) -> Vec<u8> {
    let len = (stream.poisson(BASE_MEAN_LEN) as usize).clamp(1, MAX_SYMBOLS);
    let non_targets = prompt.non_targets();
    let mut y: Vec<u8> = Vec::with_capacity(len);
    for _ in 0..len {
        if let Some(&prev) = y.last() {
            if stream.bernoulli(BASE_P_REPEAT) {
                y.push(prev);
                continue;
            }
        }
        let symbol = if stream.bernoulli(BASE_P_TARGET) {
            prompt.targets[stream.below(4) as usize]
        } else {
            non_targets[stream.below(non_targets.len() as u64) as usize]
        };
        y.push(symbol);
    }
    y
}

/// One pair of synthetic preference data for training proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPair {
    pub prompt: Prompt,
    pub a: Vec<u8>,
    pub b: Vec<u8>,
    /// The (possibly noisy) label a proxy trains on: a ≻ b.
    pub a_preferred: bool,
    /// The clean gold label (G ties broken by the same coin as always); check proxy accuracy
    /// against this one.
    pub gold_a_preferred: bool,
}

/// Proxy preference pair number `index` (docs/algorithms.md §6, "Proxy preference data"): two base
/// samples of train prompt `index`, labelled by gold (G ties by a fair coin), then with
/// probability 2·`flip_rate` the label is replaced by a fair coin (so `flip_rate` of labels end
/// up flipped in expectation; Coste et al. use 0.25). `flip_rate` must lie in [0, 0.5].
pub fn proxy_pair(seed: u64, index: u64, flip_rate: f64) -> Result<ProxyPair, TaskError> {
    if !(0.0..=0.5).contains(&flip_rate) {
        return Err(TaskError::BadArgument {
            task: TASK,
            reason: format!("flip_rate must lie in [0, 0.5], found {flip_rate}"),
        });
    }
    let prompt = prompt(seed, Split::Train, index);
    let sample = |i| {
        base_sample(
            &prompt,
            &mut StreamKey::new(seed, 0, index, i, Purpose::ProxyData).stream(),
        )
    };
    let (a, b) = (sample(0), sample(1));
    let (ga, gb) = (gold(&prompt, &a)?, gold(&prompt, &b)?);
    let mut coin = StreamKey::new(seed, 0, index, 0, Purpose::Label).stream();
    let tie_break = coin.bernoulli(0.5);
    let gold_a_preferred = if ga == gb { tie_break } else { ga > gb };
    let replace = coin.bernoulli(2.0 * flip_rate);
    let replacement = coin.bernoulli(0.5);
    let a_preferred = if replace {
        replacement
    } else {
        gold_a_preferred
    };
    Ok(ProxyPair {
        prompt,
        a,
        b,
        a_preferred,
        gold_a_preferred,
    })
}

#[cfg(test)]
#[path = "goodhart_digits_tests.rs"]
mod tests;
