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
}

/// The aggregate names [`Aggregate::parse`] accepts (`N` a 0-based member index).
pub const VALID_AGGREGATES: &str = "mean, wco, uwo, member:N";
/// The normalisation names [`NormKind::parse`] accepts.
pub const VALID_NORMALISATIONS: &str = "center, zscore, none";
/// Floor of a member's fitted standard deviation (docs/algorithms.md §2).
pub const MIN_STD: f64 = 1e-6;

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
}

impl Aggregate {
    /// `mean` | `wco` | `uwo` (with `uwo_lambda`) | `member:N`.
    pub fn parse(name: &str, uwo_lambda: f64) -> Result<Self, AggregateError> {
        match name {
            "mean" => Ok(Aggregate::Mean),
            "wco" => Ok(Aggregate::Wco),
            "uwo" => Ok(Aggregate::Uwo { lambda: uwo_lambda }),
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

    /// R of one completion from its normalised member scores (`z` non-empty; a `Member`
    /// index was [`Aggregate::check`]ed).
    pub fn aggregate(&self, z: &[f64]) -> f64 {
        match *self {
            Aggregate::Mean => mean(z),
            Aggregate::Wco => z.iter().copied().fold(f64::INFINITY, f64::min),
            Aggregate::Uwo { lambda } => mean(z) - lambda * variance(z),
            Aggregate::Member(k) => z[k],
        }
    }
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
