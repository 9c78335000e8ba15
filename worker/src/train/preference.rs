//! Preferences from the task's gold judge (`[preference] source = "gold"`):
//! p = P(y ≻ y′ | x) = σ((gold(y) − gold(y′)) / temperature) (ALGORITHMS.md §2 step 3 with the
//! gold score as R). Golds are compared as exact integers G, so equal completions give p = ½
//! exactly. The reward-ensemble source plugs in beside this one.

use super::TrainError;
use crate::tasks::goodhart_digits as gd;

/// Golds of completion tokens (content before EOS) of the given prompts.
pub fn golds(
    prompts: &[gd::Prompt],
    completions: &[Vec<u32>],
) -> Result<Vec<gd::Gold>, TrainError> {
    prompts
        .iter()
        .zip(completions)
        .map(|(p, c)| Ok(gd::gold(p, &gd::content(c)?)?))
        .collect()
}

/// p = σ((G(y) − G(y′)) / (GOLD_SCALE · temperature)) per row.
pub fn gold_preferences(
    gold_y: &[gd::Gold],
    gold_y_prime: &[gd::Gold],
    temperature: f64,
) -> Vec<f64> {
    gold_y
        .iter()
        .zip(gold_y_prime)
        .map(|(a, b)| {
            let diff = (a.0 - b.0) as f64 / gd::GOLD_SCALE as f64;
            1.0 / (1.0 + (-diff / temperature).exp())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_golds_give_one_half_and_the_logistic_otherwise() {
        let s = gd::GOLD_SCALE;
        let p = gold_preferences(
            &[gd::Gold(s), gd::Gold(0)],
            &[gd::Gold(s), gd::Gold(s)],
            0.5,
        );
        assert_eq!(p[0], 0.5);
        assert!((p[1] - 1.0 / (1.0 + 2f64.exp())).abs() < 1e-15);
    }
}
