//! Best-of-n with the unbiased estimator (docs/algorithms.md §4, "Best-of-n estimator"; Gao et
//! al. 2022, arXiv 2210.10760, appendix; Coste et al. 2023, arXiv 2310.02743): from one prompt's
//! N samples with (proxy, gold) scores, the expected proxy and gold of the sample that the
//! highest proxy picks among n drawn without replacement, for every n ≤ N at once. Pure
//! functions; the job that samples and scores is `crate::reward`.

/// Why a best-of-n estimate cannot be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BonError {
    #[error("best-of-n needs n ≥ 1, got n = 0")]
    ZeroN,
    #[error("best-of-n with n = {n} needs at least n samples, got {samples}")]
    TooFewSamples { n: usize, samples: usize },
    #[error("{proxy} proxy scores but {gold} gold scores; each sample needs both")]
    Lengths { proxy: usize, gold: usize },
    #[error("{which} score of sample {index} is {value}; scores must be finite")]
    NonFinite {
        which: &'static str,
        index: usize,
        value: f64,
    },
}

/// The estimate for one n.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BonPoint {
    pub n: usize,
    /// E[proxy of the best of n].
    pub proxy: f64,
    /// E[gold of the best of n] (ties in proxy broken uniformly at random).
    pub gold: f64,
}

/// w_i, i = 1..=N (index i − 1): the probability that the highest of n samples drawn without
/// replacement from N distinct ones is the one of 1-based ascending rank i,
/// w_i = C(i−1, n−1) / C(N, n), zero below rank n.
///
/// Computed by the ratio w_N = n/N, w_{i−1} = w_i · (i − n)/(i − 1), not by log-factorials: ln N!
/// for N = 10 000 is ≈ 82 109, whose ulp (1.5e-11) alone would cap the weights' relative
/// accuracy near 1e-11, while the product keeps it near 1e-14 (checked against exact rationals
/// in `worker/tests/fixtures/ensemble/bon.json`). Weights too small for f64 underflow to 0.
pub fn bon_weights(samples: usize, n: usize) -> Result<Vec<f64>, BonError> {
    check_n(samples, n)?;
    let mut w = vec![0.0; samples];
    let mut wi = n as f64 / samples as f64;
    for i in (n..=samples).rev() {
        w[i - 1] = wi;
        if i > n {
            wi *= (i - n) as f64 / (i - 1) as f64;
        }
    }
    Ok(w)
}

/// Expected proxy and gold of best-of-n for every n of `ns`, from one prompt's samples
/// (`proxy[j]`, `gold[j]` the scores of sample j). Samples are sorted ascending by proxy,
/// carrying their gold; within a group of equal proxy scores the gold is replaced by the group's
/// mean (the estimator of Gao et al. 2022 breaking ties uniformly at random); then
/// E[s] = Σ_i w_i s_(i) with [`bon_weights`].
pub fn best_of_n(proxy: &[f64], gold: &[f64], ns: &[usize]) -> Result<Vec<BonPoint>, BonError> {
    if proxy.len() != gold.len() {
        return Err(BonError::Lengths {
            proxy: proxy.len(),
            gold: gold.len(),
        });
    }
    for (which, scores) in [("proxy", proxy), ("gold", gold)] {
        if let Some((index, &value)) = scores.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(BonError::NonFinite {
                which,
                index,
                value,
            });
        }
    }
    let samples = proxy.len();
    for &n in ns {
        check_n(samples, n)?;
    }
    let mut order: Vec<usize> = (0..samples).collect();
    order.sort_by(|&a, &b| proxy[a].total_cmp(&proxy[b]));
    let sorted_proxy: Vec<f64> = order.iter().map(|&j| proxy[j]).collect();
    let mut sorted_gold: Vec<f64> = order.iter().map(|&j| gold[j]).collect();
    let mut start = 0;
    while start < samples {
        let end = start
            + sorted_proxy[start..]
                .iter()
                .take_while(|&&p| p == sorted_proxy[start])
                .count();
        if end - start > 1 {
            let group = &mut sorted_gold[start..end];
            let mean = group.iter().sum::<f64>() / group.len() as f64;
            group.fill(mean);
        }
        start = end;
    }
    ns.iter()
        .map(|&n| {
            let w = bon_weights(samples, n)?;
            let dot = |s: &[f64]| (n - 1..samples).map(|i| w[i] * s[i]).sum::<f64>();
            Ok(BonPoint {
                n,
                proxy: dot(&sorted_proxy),
                gold: dot(&sorted_gold),
            })
        })
        .collect()
}

/// KL_bon(n) = ln n − (n − 1)/n, the upper bound on KL(best-of-n ‖ base) of Beirami et al. 2024
/// (arXiv 2401.01879; exact when the base policy's samples are all distinct). 0 for n = 1.
pub fn kl_bon(n: usize) -> f64 {
    let n = n as f64;
    n.ln() - (n - 1.0) / n
}

/// The n of a best-of-n curve: 1, 2, 4, … (powers of two ≤ `max_n`), then `max_n` itself when
/// it is not a power of two. Empty for `max_n` = 0.
pub fn n_grid(max_n: usize) -> Vec<usize> {
    let mut ns: Vec<usize> = std::iter::successors(Some(1usize), |n| n.checked_mul(2))
        .take_while(|&n| n <= max_n)
        .collect();
    if max_n > 0 && !max_n.is_power_of_two() {
        ns.push(max_n);
    }
    ns
}

fn check_n(samples: usize, n: usize) -> Result<(), BonError> {
    if n == 0 {
        Err(BonError::ZeroN)
    } else if n > samples {
        Err(BonError::TooFewSamples { n, samples })
    } else {
        Ok(())
    }
}

#[cfg(test)]
#[path = "bon_tests.rs"]
mod tests;
