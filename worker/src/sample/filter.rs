//! From one row of next-token logits to a token: the geometric mixture (docs/algorithms.md §1),
//! token masks, temperature, top-k, top-p (in that order, as transformers' logits warpers) and
//! the draw from a single uniform by inverse CDF in vocabulary order. Pure functions on host
//! vectors; must not run models or hold random state.

/// Temperature, top-k and top-p. Defaults are the unfiltered T = 1 the estimators assume.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax after masks).
    pub temperature: f64,
    /// 0 means off.
    pub top_k: usize,
    /// 1 means off.
    pub top_p: f64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

/// log_softmax of a row, in f64.
pub fn log_softmax_row(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&x| x as f64 - lse).collect()
}

/// The geometric mixture's logits (Munos et al. 2023, "Nash Learning from Human Feedback", §6;
/// docs/algorithms.md §1): (1 − β)·log_softmax(policy) + β·log_softmax(reference). β = 0 returns
/// the policy logits and β = 1 the reference logits unchanged (so those cases equal plain sampling
/// exactly). Both rows are finite, so no 0·(−∞) arises; masks come after this.
pub fn mixed_logits(policy: &[f32], reference: &[f32], mixture_coef: f64) -> Vec<f64> {
    if mixture_coef == 0.0 {
        return policy.iter().map(|&x| x as f64).collect();
    }
    if mixture_coef == 1.0 {
        return reference.iter().map(|&x| x as f64).collect();
    }
    mix_logprobs(
        &log_softmax_row(policy),
        &log_softmax_row(reference),
        mixture_coef,
    )
}

/// (1 − β)·lp + β·lr for log-softmaxed rows (the general case of [`mixed_logits`]).
pub fn mix_logprobs(policy_logprobs: &[f64], ref_logprobs: &[f64], mixture_coef: f64) -> Vec<f64> {
    policy_logprobs
        .iter()
        .zip(ref_logprobs)
        .map(|(p, r)| (1.0 - mixture_coef) * p + mixture_coef * r)
        .collect()
}

/// Sets forbidden tokens to −∞ (`forbidden[v] == true`).
pub fn apply_mask(logits: &mut [f64], forbidden: &[bool]) {
    for (x, &f) in logits.iter_mut().zip(forbidden) {
        if f {
            *x = f64::NEG_INFINITY;
        }
    }
}

/// The probabilities a token is drawn with, given masked logits: softmax(logits / T), then
/// top-k (tokens below the k-th largest value dropped, ties kept), then top-p (Holtzman et al.
/// 2020, "The Curious Case of Neural Text Degeneration", §3.1: the highest-probability tokens
/// whose mass before them is < p are kept), renormalised. Greedy (T = 0) puts mass 1 on the
/// first maximum. Masked tokens get probability 0.
pub fn token_distribution(logits: &[f64], params: &SamplingParams) -> Vec<f64> {
    let n = logits.len();
    if params.temperature <= 0.0 {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        let mut p = vec![0.0; n];
        p[best] = 1.0;
        return p;
    }
    let mut scaled: Vec<f64> = logits.iter().map(|&x| x / params.temperature).collect();
    if params.top_k > 0 && params.top_k < n {
        let mut sorted = scaled.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[params.top_k - 1];
        scaled
            .iter_mut()
            .filter(|x| **x < kth)
            .for_each(|x| *x = f64::NEG_INFINITY);
    }
    let max = scaled.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
    let mut probs: Vec<f64> = scaled.iter().map(|&x| (x - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if params.top_p < 1.0 {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let mut above = 0.0;
        let mut keep = vec![false; n];
        for (rank, &i) in order.iter().enumerate() {
            if rank > 0 && above >= params.top_p {
                break;
            }
            keep[i] = true;
            above += probs[i];
        }
        let kept: f64 = probs
            .iter()
            .zip(&keep)
            .filter(|(_, &k)| k)
            .map(|(p, _)| p)
            .sum();
        for (p, k) in probs.iter_mut().zip(&keep) {
            *p = if *k { *p / kept } else { 0.0 };
        }
    }
    probs
}

/// The token whose cumulative probability (in vocabulary order) first exceeds `u` ∈ [0, 1).
pub fn draw(probs: &[f64], u: f64) -> usize {
    let mut cum = 0.0;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cum += p;
            last = i;
            if u < cum {
                return i;
            }
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_hand_computation() {
        let logits = [2f64.ln(), 1f64.ln(), 4f64.ln(), 1f64.ln()]; // probs 0.25 0.125 0.5 0.125
        let p = token_distribution(&logits, &SamplingParams::default());
        assert!((p[0] - 0.25).abs() < 1e-12 && (p[2] - 0.5).abs() < 1e-12);
        // temperature 0.5 squares the odds: 4, 1, 16, 1 over 22
        let p = token_distribution(
            &logits,
            &SamplingParams {
                temperature: 0.5,
                ..Default::default()
            },
        );
        assert!((p[2] - 16.0 / 22.0).abs() < 1e-12);
        // top-k 2 keeps tokens 2 and 0: 2/3, 1/3
        let p = token_distribution(
            &logits,
            &SamplingParams {
                top_k: 2,
                ..Default::default()
            },
        );
        assert!((p[2] - 2.0 / 3.0).abs() < 1e-12 && p[1] == 0.0 && p[3] == 0.0);
        // top-p 0.6: token 2 (0.5, mass before 0) and token 0 (mass before 0.5 < 0.6) kept
        let p = token_distribution(
            &logits,
            &SamplingParams {
                top_p: 0.6,
                ..Default::default()
            },
        );
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-12 && p[1] == 0.0);
        // top-p 0.5: only token 2
        let p = token_distribution(
            &logits,
            &SamplingParams {
                top_p: 0.5,
                ..Default::default()
            },
        );
        assert_eq!(p, vec![0.0, 0.0, 1.0, 0.0]);
        let p = token_distribution(
            &logits,
            &SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
        );
        assert_eq!(p, vec![0.0, 0.0, 1.0, 0.0]);
        let mut masked = logits.to_vec();
        apply_mask(&mut masked, &[false, false, true, false]);
        let p = token_distribution(&masked, &SamplingParams::default());
        assert!((p[0] - 0.5).abs() < 1e-12 && p[2] == 0.0);
        assert_eq!(draw(&[0.25, 0.0, 0.75], 0.1), 0);
        assert_eq!(draw(&[0.25, 0.0, 0.75], 0.25), 2);
        assert_eq!(draw(&[0.25, 0.0, 0.75], 0.999_999_999_999), 2);
    }

    #[test]
    fn mixture_special_cases_and_formula() {
        let (p, r) = ([1.0f32, 2.0, 0.5], [0.0f32, -1.0, 3.0]);
        assert_eq!(mixed_logits(&p, &r, 0.0), vec![1.0, 2.0, 0.5]);
        assert_eq!(mixed_logits(&p, &r, 1.0), vec![0.0, -1.0, 3.0]);
        let m = mixed_logits(&p, &r, 0.25);
        let (lp, lr) = (log_softmax_row(&p), log_softmax_row(&r));
        assert!((m[1] - (0.75 * lp[1] + 0.25 * lr[1])).abs() < 1e-12);
    }
}
