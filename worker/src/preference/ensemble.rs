//! An ensemble of reward models as the preference source (`[preference] source = "ensemble"`,
//! docs/algorithms.md §2 "Ensembles"): K [`RewardModelJudge`]s score each completion, each
//! member's score is normalised by statistics fitted once on samples of the initial policy
//! ([`EnsembleJudge::fit_normalisation`]), and an [`Aggregate`] combines the K normalised scores
//! into R (`super::aggregate`). Unit 1, so p = σ((R(y) − R(y′))/T).

use super::aggregate::{variance, Aggregate, NormKind, Normalisation};
use super::reward_model::RewardModelJudge;
use super::{Judge, JudgeError, PromptRow};
use crate::model::Tokenizer;

/// One member as loaded: where it came from (for errors), its judge (which checked it against
/// the policy) and its tokenizer, when it has one.
pub struct Member<'t> {
    pub source: String,
    pub judge: RewardModelJudge,
    pub tokenizer: Option<&'t Tokenizer>,
}

pub struct EnsembleJudge {
    members: Vec<RewardModelJudge>,
    normalisation: Normalisation,
    kind: NormKind,
    aggregate: Aggregate,
}

impl EnsembleJudge {
    /// Needs ≥ 2 members sharing one tokenizer (each member's `tokenizer.json`, when it has one,
    /// must equal the first such member's) and an aggregate whose `member:N` names one of them
    /// and that needs no reference-policy samples (not `lsc`).
    /// The normalisation starts as the identity; [`EnsembleJudge::fit_normalisation`] fits it.
    pub fn new(
        members: Vec<Member<'_>>,
        aggregate: Aggregate,
        kind: NormKind,
    ) -> Result<Self, JudgeError> {
        if members.len() < 2 {
            return Err(JudgeError::Invalid(format!(
                "an ensemble needs at least 2 members, found {}",
                members.len()
            )));
        }
        aggregate.check(members.len())?;
        aggregate.check_without_reference()?;
        check_shared_tokenizer(members.iter().map(|m| (m.source.as_str(), m.tokenizer)))?;
        let k = members.len();
        Ok(EnsembleJudge {
            members: members.into_iter().map(|m| m.judge).collect(),
            normalisation: Normalisation::identity(k),
            kind,
            aggregate,
        })
    }

    /// Each member's raw scores, `[member][row]`.
    pub fn member_scores(
        &self,
        prompts: &[&PromptRow],
        completions: &[Vec<u32>],
    ) -> Result<Vec<Vec<f64>>, JudgeError> {
        self.members
            .iter()
            .map(|m| m.scores(prompts, completions))
            .collect()
    }

    /// Fits m_k, s_k on the members' scores of these completions (samples of the initial
    /// policy, docs/algorithms.md §2) and keeps them.
    pub fn fit_normalisation(
        &mut self,
        prompts: &[&PromptRow],
        completions: &[Vec<u32>],
    ) -> Result<&Normalisation, JudgeError> {
        self.normalisation = Normalisation::fit(&self.member_scores(prompts, completions)?)?;
        Ok(&self.normalisation)
    }

    /// Uses statistics fitted elsewhere (an ensemble manifest's), one per member.
    pub fn set_normalisation(&mut self, normalisation: Normalisation) -> Result<(), JudgeError> {
        if normalisation.mean.len() != self.members.len() {
            return Err(JudgeError::Invalid(format!(
                "normalisation statistics for {} members, the ensemble has {}",
                normalisation.mean.len(),
                self.members.len()
            )));
        }
        self.normalisation = normalisation;
        Ok(())
    }

    pub fn normalisation(&self) -> &Normalisation {
        &self.normalisation
    }
}

/// Each member's `tokenizer.json`, when it has one, must equal the first such member's;
/// members are (source, tokenizer).
pub fn check_shared_tokenizer<'t>(
    members: impl IntoIterator<Item = (&'t str, Option<&'t Tokenizer>)>,
) -> Result<(), JudgeError> {
    let mut first: Option<(&str, String)> = None;
    for (member, tokenizer) in members {
        let Some(tokenizer) = tokenizer else {
            continue;
        };
        let json = tokenizer.to_json()?;
        match &first {
            None => first = Some((member, json)),
            Some((source, want)) if *want != json => {
                return Err(JudgeError::Invalid(format!(
                    "ensemble member {member}: tokenizer.json differs from member {source}'s; \
                     all members must share one tokenizer"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

impl Judge for EnsembleJudge {
    fn name(&self) -> &'static str {
        "ensemble"
    }

    fn unit(&self) -> f64 {
        1.0
    }

    fn scores(
        &self,
        prompts: &[&PromptRow],
        completions: &[Vec<u32>],
    ) -> Result<Vec<f64>, JudgeError> {
        Ok(self.scores_with_stats(prompts, completions)?.0)
    }

    /// `ensemble/variance` (Var_k z_k) and `ensemble/member_K` (z_K).
    fn stat_names(&self) -> Vec<String> {
        std::iter::once("ensemble/variance".to_string())
            .chain((0..self.members.len()).map(|k| format!("ensemble/member_{k}")))
            .collect()
    }

    fn scores_with_stats(
        &self,
        prompts: &[&PromptRow],
        completions: &[Vec<u32>],
    ) -> Result<(Vec<f64>, Vec<f64>), JudgeError> {
        let raw = self.member_scores(prompts, completions)?;
        let mut sums = vec![0.0; 1 + self.members.len()];
        let mut r = Vec::with_capacity(completions.len());
        for row in 0..completions.len() {
            let per_member: Vec<f64> = raw.iter().map(|s| s[row]).collect();
            let z = self.normalisation.normalise(self.kind, &per_member);
            sums[0] += variance(&z);
            for (k, zk) in z.iter().enumerate() {
                sums[1 + k] += zk;
            }
            r.push(self.aggregate.aggregate(&z)?);
        }
        Ok((r, sums))
    }
}

#[cfg(test)]
#[path = "ensemble_tests.rs"]
mod tests;
