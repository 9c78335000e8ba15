//! The minimal configs `docs/configuration.md` is generated from: one per variant of every kind
//! (each merge method, SFT from a task and from data, self-play with each algorithm and gold
//! preferences, with `prompts` and a reward model or an ensemble, a pipeline). Between them they give every
//! optional key that has no default, so every key the reader knows appears in some resolved
//! config; a required key is one whose removal makes the config fail to parse.

use super::super::merge::METHODS;
use super::super::selfplay::ALGORITHMS;

const JOB: &str = "[job]\nkind = \"KIND\"\noutput = \"out\"\n";

fn job(kind: &str) -> String {
    JOB.replace("KIND", kind)
}

fn merge(method: &str) -> String {
    let density = if matches!(method, "ties" | "dare_linear" | "dare_ties") {
        "density = 0.5\n"
    } else {
        ""
    };
    format!(
        "method = \"{method}\"\nbase = \"models/base\"\nmodels = [\"models/a\", \"models/b\"]\n{density}"
    )
}

/// Every variant's config text, in a fixed order.
pub fn samples() -> Vec<String> {
    let mut out = Vec::new();
    for method in METHODS {
        out.push(format!("{}\n[merge]\n{}", job("merge"), merge(method)));
    }
    out.push(format!(
        "{}\n[sft]\ninit = \"tiny\"\ntask = \"goodhart_digits\"\n",
        job("sft")
    ));
    out.push(format!(
        "{}\n[sft]\ninit = \"models/init\"\ntask = \"exact_words\"\ndata = \"data/train.jsonl\"\n",
        job("sft")
    ));
    for algorithm in ALGORITHMS {
        out.push(format!(
                "{}\n[selfplay]\nalgorithm = \"{algorithm}\"\npolicy = \"tiny\"\nreference = \"tiny\"\n",
                job("selfplay")
            ));
    }
    out.push(format!(
        "{}\n[selfplay]\nalgorithm = \"ipo_md\"\npolicy = \"models/policy\"\n\
             reference = \"models/reference\"\nprompts = \"data/prompts.jsonl\"\n\
             [selfplay.preference]\nsource = \"reward_model\"\nmodel = \"models/reward\"\n",
        job("selfplay")
    ));
    out.push(format!(
        "{}\n[selfplay]\nalgorithm = \"online_ipo\"\npolicy = \"models/policy\"\n\
             reference = \"models/reference\"\nprompts = \"data/prompts.jsonl\"\n\
             [selfplay.preference]\nsource = \"ensemble\"\n\
             members = [\"models/reward_a\", \"models/reward_b\"]\n",
        job("selfplay")
    ));
    out.push(format!(
        "{}\n[selfplay]\nalgorithm = \"online_ipo\"\npolicy = \"tiny\"\nreference = \"tiny\"\n\
             [selfplay.preference]\nsource = \"ensemble\"\nensemble = \"models/ensemble.json\"\n",
        job("selfplay")
    ));
    out.push(format!(
        "{}\n[reward_train]\ninit = \"tiny\"\ntask = \"goodhart_digits\"\nnorm_policy = \"tiny\"\n",
        job("reward_train")
    ));
    out.push(format!(
        "{}\n[reward_train]\ninit = \"models/lm\"\ndata = \"data/pairs.jsonl\"\n",
        job("reward_train")
    ));
    out.push(format!(
        "{}\n[score]\nensemble = \"models/ensemble.json\"\ndata = \"data/rows.jsonl\"\n\
             reference = \"models/reference\"\n",
        job("score")
    ));
    out.push(format!(
        "{}\n[bon]\nensemble = \"models/ensemble.json\"\npolicy = \"models/policy\"\n",
        job("bon")
    ));
    out.push(format!(
        "{}\n[[stage]]\nname = \"merged\"\nkind = \"merge\"\n[stage.merge]\n{}\n\
             [[stage]]\nname = \"tuned\"\nkind = \"sft\"\n[stage.sft]\ninit = \"stage:merged\"\n\
             task = \"exact_words\"\n",
        job("pipeline"),
        merge("task_arithmetic")
    ));
    out
}
