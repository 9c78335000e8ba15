//! An ensemble loaded from its manifest for scoring (score and best-of-n jobs): every member
//! checked as a one-label reward model over one shared tokenizer (and, when a policy is given,
//! over the policy's vocabulary and tokenizer), with the manifest's normalisation statistics.

use candle_core::Device;
use mirrorplay_proto::v1::{model_source, ModelSource};

use super::shared_heads::{self, Checks, SharedHeads};
use super::RewardError;
use crate::model::Tokenizer;
use crate::preference::aggregate::{reference_quantiles, NormKind, Normalisation};
use crate::preference::ensemble::check_shared_tokenizer;
use crate::preference::manifest::Manifest;
use crate::preference::reward_model::RewardModelJudge;
use crate::preference::{Judge, PromptRow};
use crate::train::models::Loaded;

pub struct LoadedEnsemble {
    pub url: String,
    pub manifest: Manifest,
    members: Members,
    /// The members' shared tokenizer (the first member that has one).
    pub tokenizer: Option<Tokenizer>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

/// How the members score.
enum Members {
    /// One reward model per member, each its own forward pass.
    Separate(Vec<RewardModelJudge>),
    /// One backbone, K heads: one forward pass (docs/algorithms.md §3, "Shared backbone").
    Shared(Box<SharedHeads>),
}

/// The vocabulary (and tokenizer) the members must read: a policy's.
pub struct Reader<'a> {
    pub vocab_size: usize,
    pub tokenizer: Option<&'a Tokenizer>,
}

impl LoadedEnsemble {
    /// Loads the members the manifest at `url` names. Without a `reader`, the first member's
    /// vocabulary is the one every member must share.
    pub async fn load(
        url: &str,
        reader: Option<Reader<'_>>,
        device: &Device,
    ) -> Result<Self, RewardError> {
        let (manifest, urls) = Manifest::read(url).await.map_err(|e| match e {
            crate::preference::manifest::ManifestError::Io(e) => RewardError::from(e),
            e => RewardError::Invalid(e.to_string()),
        })?;
        let load_member = |member_url: &String| {
            let source = ModelSource {
                source: Some(model_source::Source::Url(member_url.clone())),
            };
            async move { crate::train::models::load(&source, false, 0, device).await }
        };
        let first = load_member(&urls[0]).await?;
        let (vocab_size, policy_tokenizer) = match &reader {
            Some(r) => (r.vocab_size, r.tokenizer),
            None => (first.model.config().vocab_size, None),
        };
        let (eos_token_ids, pad_token_id) = (first.eos_token_ids.clone(), first.pad_token_id);
        let source_of = |k: usize, l: &Loaded| format!("{url} member {k} ({})", l.source);
        // Members are loaded one at a time; with a shared backbone only the first one's stays.
        let mut tokenizers = vec![(source_of(0, &first), first.tokenizer.clone())];
        let members = if manifest.shared_backbone {
            let checks = Checks {
                vocab_size,
                policy_tokenizer,
            };
            let mut heads = shared_heads::Builder::new(first, tokenizers[0].0.clone(), &checks)?;
            for (k, member_url) in urls.iter().enumerate().skip(1) {
                let l = load_member(member_url).await?;
                let source = source_of(k, &l);
                tokenizers.push((source.clone(), l.tokenizer.clone()));
                heads.push(l, &source, &checks)?;
            }
            Members::Shared(Box::new(heads.build()?))
        } else {
            let mut judges = Vec::with_capacity(urls.len());
            let mut next = Some(first);
            for (k, member_url) in urls.iter().enumerate() {
                let l = match next.take() {
                    Some(l) => l,
                    None => load_member(member_url).await?,
                };
                let source = source_of(k, &l);
                if k > 0 {
                    tokenizers.push((source.clone(), l.tokenizer.clone()));
                }
                judges.push(RewardModelJudge::new(
                    l.model,
                    l.tokenizer.as_ref(),
                    vocab_size,
                    policy_tokenizer,
                    &source,
                )?);
            }
            Members::Separate(judges)
        };
        check_shared_tokenizer(tokenizers.iter().map(|(s, t)| (s.as_str(), t.as_ref())))?;
        let tokenizer = tokenizers.into_iter().find_map(|(_, t)| t);
        Ok(LoadedEnsemble {
            url: url.to_string(),
            manifest,
            members,
            tokenizer,
            eos_token_ids,
            pad_token_id,
        })
    }

    pub fn len(&self) -> usize {
        match &self.members {
            Members::Separate(judges) => judges.len(),
            Members::Shared(heads) => heads.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each member's raw scores, `[member][row]`.
    pub fn member_scores(
        &self,
        prompts: &[&PromptRow],
        completions: &[Vec<u32>],
    ) -> Result<Vec<Vec<f64>>, RewardError> {
        match &self.members {
            Members::Separate(judges) => judges
                .iter()
                .map(|m| Ok(m.scores(prompts, completions)?))
                .collect(),
            Members::Shared(heads) => heads.member_scores(prompts, completions),
        }
    }

    /// r_ref,k of one prompt: the `q`-quantile of each member's scores of `completions`
    /// (reference-policy samples of `prompt`; docs/algorithms.md §2, LSC). A non-finite score
    /// is an error naming the member, not a panic in the sort.
    pub fn reference_quantiles(
        &self,
        prompt: &PromptRow,
        completions: &[Vec<u32>],
        q: f64,
    ) -> Result<Vec<f64>, RewardError> {
        let scores = self.member_scores(&vec![prompt; completions.len()], completions)?;
        if let Some((k, v)) = scores
            .iter()
            .enumerate()
            .find_map(|(k, s)| s.iter().find(|v| !v.is_finite()).map(|v| (k, *v)))
        {
            return Err(RewardError::Invalid(format!(
                "{} member {k} scored a reference sample {v}",
                self.url
            )));
        }
        Ok(reference_quantiles(&scores, q))
    }

    /// The statistics `kind` normalises with: the manifest's (an error naming the manifest
    /// when it has none), or the identity for `none`.
    pub fn normalisation(&self, kind: NormKind) -> Result<Normalisation, RewardError> {
        match kind {
            NormKind::None => Ok(Normalisation::identity(self.len())),
            _ => self.manifest.normalisation().ok_or_else(|| {
                RewardError::Invalid(format!(
                    "{}: the manifest has no normalisation statistics (its reward_train job had \
                     no `norm_policy`); use normalize = \"none\" or retrain with a norm_policy",
                    self.url
                ))
            }),
        }
    }
}
