//! Reward-ensemble arithmetic (docs/algorithms.md §2, "Ensembles"): each member's score is
//! normalised by statistics fitted on samples of the initial policy, then the K normalised
//! scores of one completion are combined into one reward R. Pure functions; the judge that
//! runs the members is `super::ensemble::EnsembleJudge`.

/// Why an ensemble setting is invalid.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AggregateError {
    #[error("unknown aggregate `{0}` (valid: {VALID_AGGREGATES})")]
    UnknownAggregate(String),
    #[error("aggregate `{name}` names member {index}, but there are {members} members (0-based)")]
    NoSuchMember {
        name: String,
        index: usize,
        members: usize,
    },
    #[error("unknown normalisation `{0}` (valid: {VALID_NORMALISATIONS})")]
    UnknownNormalisation(String),
    #[error("cannot fit a normalisation: {0}")]
    Fit(String),
    #[error(
        "aggregate `lsc` needs reference-policy samples of each prompt (its quantiles r_ref,k); \
         not supported in self-play yet"
    )]
    NeedsReference,
}

/// The aggregate names [`Aggregate::parse`] accepts (`N` a 0-based member index).
pub const VALID_AGGREGATES: &str = "mean, wco, uwo, lsc, member:N";
/// The normalisation names [`NormKind::parse`] accepts.
pub const VALID_NORMALISATIONS: &str = "center, zscore, none";
/// Floor of a member's fitted standard deviation (docs/algorithms.md §2).
pub const MIN_STD: f64 = 1e-6;
/// The quantile q of the reference scores that `lsc` subtracts (docs/algorithms.md §2; not in
/// Wang et al. 2024's text, taken from a reimplementation, unverified).
pub const LSC_QUANTILE: f64 = 0.85;
/// Reference-policy samples per prompt that `lsc`'s quantiles are taken over (M_ref,
/// docs/algorithms.md §2).
pub const LSC_REFERENCE_SAMPLES: usize = 16;

/// How a member's raw score r_k becomes z_k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// z_k = r_k − m_k.
    Center,
    /// z_k = (r_k − m_k) / s_k.
    Zscore,
    /// z_k = r_k.
    None,
}

impl NormKind {
    pub fn parse(name: &str) -> Result<Self, AggregateError> {
        match name {
            "center" => Ok(NormKind::Center),
            "zscore" => Ok(NormKind::Zscore),
            "none" => Ok(NormKind::None),
            other => Err(AggregateError::UnknownNormalisation(other.to_string())),
        }
    }
}

/// Per-member mean m_k and population standard deviation s_k (ddof 0, floored at [`MIN_STD`])
/// of the members' scores on samples of the initial policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalisation {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Normalisation {
    /// m_k = 0, s_k = 1 for `members` members: every kind then leaves scores as they are.
    pub fn identity(members: usize) -> Self {
        Normalisation {
            mean: vec![0.0; members],
            std: vec![1.0; members],
        }
    }

    /// Fits m_k, s_k from `scores[k][i]`, member k's score of sample i (every member scores
    /// the same samples).
    pub fn fit(scores: &[Vec<f64>]) -> Result<Self, AggregateError> {
        let n = scores.first().map_or(0, Vec::len);
        if n == 0 {
            return Err(AggregateError::Fit("no samples".into()));
        }
        if scores.iter().any(|s| s.len() != n) {
            return Err(AggregateError::Fit(
                "members scored different numbers of samples".into(),
            ));
        }
        Ok(Normalisation {
            mean: scores.iter().map(|s| mean(s)).collect(),
            std: scores
                .iter()
                .map(|s| variance(s).sqrt().max(MIN_STD))
                .collect(),
        })
    }

    /// z_k of one completion from its raw member scores `raw[k]` (Coste et al. 2023 §4
    /// normalise each member on the initial policy's samples; docs/algorithms.md §2).
    pub fn normalise(&self, kind: NormKind, raw: &[f64]) -> Vec<f64> {
        raw.iter()
            .enumerate()
            .map(|(k, &r)| match kind {
                NormKind::Center => r - self.mean[k],
                NormKind::Zscore => (r - self.mean[k]) / self.std[k],
                NormKind::None => r,
            })
            .collect()
    }
}

/// How the K normalised scores of one completion become R (Coste et al. 2023, arXiv
/// 2310.02743, §3: mean, worst-case and uncertainty-weighted optimisation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Aggregate {
    /// R = (1/K) Σ_k z_k.
    Mean,
    /// R = min_k z_k (worst-case optimisation).
    Wco,
    /// R = mean − λ·Var_k(z_k) (uncertainty-weighted optimisation, population variance).
    Uwo { lambda: f64 },
    /// R = z_k of one member (0-based), for ablations.
    Member(usize),
    /// R = Σ_k log σ(r_k − r_ref,k), [`lsc`] (Wang et al. 2024): needs each prompt's reference
    /// quantiles, so only [`Aggregate::aggregate_with_reference`] computes it.
    Lsc,
}

impl Aggregate {
    /// `mean` | `wco` | `uwo` (with `uwo_lambda`) | `lsc` | `member:N`.
    pub fn parse(name: &str, uwo_lambda: f64) -> Result<Self, AggregateError> {
        match name {
            "mean" => Ok(Aggregate::Mean),
            "wco" => Ok(Aggregate::Wco),
            "uwo" => Ok(Aggregate::Uwo { lambda: uwo_lambda }),
            "lsc" => Ok(Aggregate::Lsc),
            other => other
                .strip_prefix("member:")
                .and_then(|k| k.parse().ok())
                .map(Aggregate::Member)
                .ok_or_else(|| AggregateError::UnknownAggregate(other.to_string())),
        }
    }

    /// A `member:N` aggregate needs N < `members`.
    pub fn check(&self, members: usize) -> Result<(), AggregateError> {
        match *self {
            Aggregate::Member(index) if index >= members => Err(AggregateError::NoSuchMember {
                name: format!("member:{index}"),
                index,
                members,
            }),
            _ => Ok(()),
        }
    }

    /// The name [`Aggregate::parse`] reads back (`uwo` without its λ).
    pub fn name(&self) -> String {
        match self {
            Aggregate::Mean => "mean".into(),
            Aggregate::Wco => "wco".into(),
            Aggregate::Uwo { .. } => "uwo".into(),
            Aggregate::Lsc => "lsc".into(),
            Aggregate::Member(k) => format!("member:{k}"),
        }
    }

    /// Whether R depends on reference-policy samples of the prompt (`lsc`), not only on the
    /// completion's own member scores.
    pub fn needs_reference(&self) -> bool {
        matches!(self, Aggregate::Lsc)
    }

    /// [`AggregateError::NeedsReference`] for an aggregate that [`Aggregate::aggregate`] cannot
    /// compute: what a judge without reference-policy samples (self-play's ensemble) checks when
    /// it is built.
    pub fn check_without_reference(&self) -> Result<(), AggregateError> {
        if self.needs_reference() {
            Err(AggregateError::NeedsReference)
        } else {
            Ok(())
        }
    }

    /// R of one completion from its normalised member scores (`z` non-empty; a `Member`
    /// index was [`Aggregate::check`]ed); [`AggregateError::NeedsReference`] for `lsc`.
    pub fn aggregate(&self, z: &[f64]) -> Result<f64, AggregateError> {
        Ok(match *self {
            Aggregate::Mean => mean(z),
            Aggregate::Wco => z.iter().copied().fold(f64::INFINITY, f64::min),
            Aggregate::Uwo { lambda } => mean(z) - lambda * variance(z),
            Aggregate::Member(k) => z[k],
            Aggregate::Lsc => return Err(AggregateError::NeedsReference),
        })
    }

    /// R of one completion for every aggregate: `lsc` from the raw member scores `raw[k]` and
    /// the prompt's reference quantiles `reference[k]` ([`reference_quantiles`]), the others
    /// from the normalised scores `z` as [`Aggregate::aggregate`].
    pub fn aggregate_with_reference(&self, raw: &[f64], z: &[f64], reference: &[f64]) -> f64 {
        match self {
            Aggregate::Lsc => lsc(raw, reference),
            _ => self
                .aggregate(z)
                .expect("only lsc needs the reference, and it has it"),
        }
    }
}

/// The q-quantile of `values` with numpy's default (`linear`) rule: sorted x_0 ≤ … ≤ x_{M−1},
/// h = (M − 1)·q, x_⌊h⌋ + (h − ⌊h⌋)·(x_⌊h⌋+1 − x_⌊h⌋).
///
/// # Panics
/// If `values` is empty, holds a NaN, or q is outside [0, 1].
pub fn quantile(values: &[f64], q: f64) -> f64 {
    assert!(!values.is_empty(), "quantile of no values");
    assert!((0.0..=1.0).contains(&q), "quantile q = {q} outside [0, 1]");
    let mut x = values.to_vec();
    x.sort_by(|a, b| a.partial_cmp(b).expect("quantile of a NaN"));
    let h = (x.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    match x.get(lo + 1) {
        Some(&hi) => x[lo] + (h - lo as f64) * (hi - x[lo]),
        None => x[lo],
    }
}

/// r_ref,k = the q-quantile ([`quantile`]) of member k's raw scores `scores[k]` of the
/// reference-policy samples of one prompt (q = [`LSC_QUANTILE`] by default).
pub fn reference_quantiles(scores: &[Vec<f64>], q: f64) -> Vec<f64> {
    scores.iter().map(|s| quantile(s, q)).collect()
}

/// LSC, the "logistic of sum of centred" rewards of Wang et al. 2024 (arXiv 2402.00742, §3, the
/// log-sigmoid transform; docs/algorithms.md §2): R = Σ_k log σ(r_k − r_ref,k), with `raw[k]`
/// member k's raw score of the completion and `reference[k]` = r_ref,k the prompt's reference
/// quantile ([`reference_quantiles`]). A centring z_k = r_k − m_k applied alike to the completion
/// and the reference samples cancels in the difference r_k − r_ref,k, so raw scores suffice and
/// `normalize` does not change lsc. log σ(x) = −softplus(−x) = min(x, 0) − ln(1 + e^{−|x|}), finite for all
/// finite x.
pub fn lsc(raw: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(
        raw.len(),
        reference.len(),
        "one reference quantile per member"
    );
    raw.iter()
        .zip(reference)
        .map(|(r, q)| log_sigmoid(r - q))
        .sum()
}

/// log σ(x), stably.
fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

/// (1/K) Σ z_k.
pub fn mean(z: &[f64]) -> f64 {
    z.iter().sum::<f64>() / z.len() as f64
}

/// Population variance (1/K) Σ (z_k − mean)² (ddof 0).
pub fn variance(z: &[f64]) -> f64 {
    let m = mean(z);
    z.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / z.len() as f64
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;
