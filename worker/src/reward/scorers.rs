//! The scorers of a score or best-of-n job (docs/algorithms.md §2 "Ensembles"): every
//! aggregate of the normalised member scores z (mean, wco, uwo with its λ, lsc when reference
//! quantiles exist) and each single member's z, in one fixed order that names the columns of
//! scores, summaries and `bon.csv`.

use crate::preference::aggregate::{variance, Aggregate, NormKind, Normalisation};

pub struct Scorers {
    names: Vec<String>,
    aggregates: Vec<Aggregate>,
    kind: NormKind,
    normalisation: Normalisation,
}

/// One completion's values under every scorer.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// In the order of [`Scorers::names`].
    pub values: Vec<f64>,
    /// The normalised member scores z_k.
    pub z: Vec<f64>,
    /// Var_k z_k (population).
    pub variance: f64,
}

impl Scorers {
    /// `members` members normalised by `kind` with `normalisation`; `lsc` adds the LSC column
    /// (its rows then need reference quantiles).
    pub fn new(
        members: usize,
        kind: NormKind,
        normalisation: Normalisation,
        uwo_lambda: f64,
        lsc: bool,
    ) -> Self {
        let mut aggregates = vec![
            Aggregate::Mean,
            Aggregate::Wco,
            Aggregate::Uwo { lambda: uwo_lambda },
        ];
        if lsc {
            aggregates.push(Aggregate::Lsc);
        }
        aggregates.extend((0..members).map(Aggregate::Member));
        Scorers {
            names: aggregates.iter().map(Aggregate::name).collect(),
            aggregates,
            kind,
            normalisation,
        }
    }

    /// `mean`, `wco`, `uwo`, [`lsc`], `member:0` … `member:K−1`.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Every scorer's value for one completion from its raw member scores, and the members'
    /// reference quantiles r_ref,k(x) of its prompt (empty without the LSC scorer).
    pub fn score(&self, raw: &[f64], reference: &[f64]) -> Scored {
        let z = self.normalisation.normalise(self.kind, raw);
        let values = self
            .aggregates
            .iter()
            .map(|a| a.aggregate_with_reference(raw, &z, reference))
            .collect();
        Scored {
            values,
            variance: variance(&z),
            z,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preference::aggregate::{lsc, Aggregate};

    /// Two members normalised by z-score: the columns, by hand.
    #[test]
    fn every_scorer_by_hand_and_names_that_parse_back() {
        let norm = Normalisation {
            mean: vec![1.0, -1.0],
            std: vec![2.0, 0.5],
        };
        let s = Scorers::new(2, NormKind::Zscore, norm, 0.5, true);
        assert_eq!(
            s.names(),
            ["mean", "wco", "uwo", "lsc", "member:0", "member:1"]
        );
        for n in s.names() {
            assert!(Aggregate::parse(n, 0.5).is_ok(), "{n}");
        }
        // z = ((3 − 1)/2, (−1.5 + 1)/0.5) = (1, −1): mean 0, min −1, var 1, uwo −0.5.
        let out = s.score(&[3.0, -1.5], &[2.0, -2.0]);
        assert_eq!(out.z, vec![1.0, -1.0]);
        assert_eq!(out.variance, 1.0);
        let want_lsc = lsc(&[3.0, -1.5], &[2.0, -2.0]);
        assert_eq!(out.values, vec![0.0, -1.0, -0.5, want_lsc, 1.0, -1.0]);
        // log σ(1) + log σ(0.5), by hand
        let by_hand = -(1.0 + (-1f64).exp()).ln() - (1.0 + (-0.5f64).exp()).ln();
        assert!((want_lsc - by_hand).abs() < 1e-15);
    }
}
