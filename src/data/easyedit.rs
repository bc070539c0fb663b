//! EasyEdit's flat fields (its CounterFact release, WikiBigEdit) and the portability
//! probes of its releases, in any of their layouts.

use serde_json::Value as Json;

use super::fields::{Fields, one_or_many};
use super::knowedit::probe_sets;
use super::{Neighbor, Probe};
use crate::error::Result;

/// EasyEdit's flat fields (its CounterFact release, WikiBigEdit): `rephrase_prompt` (one
/// or a list) as paraphrases, and `locality_prompt` / `locality_ground_truth` (strings
/// or lists paired by position) as the neighbourhood.
pub(super) fn easyedit_flat(f: &Fields) -> Result<(Vec<String>, Vec<Neighbor>)> {
    let paraphrases = one_or_many(f, "rephrase_prompt")?;
    let prompts = one_or_many(f, "locality_prompt")?;
    let answers = one_or_many(f, "locality_ground_truth")?;
    if prompts.len() != answers.len() {
        return Err(f.err(
            "locality_ground_truth",
            format!(
                "{} locality prompts but {} answers",
                prompts.len(),
                answers.len()
            ),
        ));
    }
    let neighborhood = prompts
        .into_iter()
        .zip(answers)
        .map(|(prompt, target)| Neighbor {
            prompt,
            target,
            set: None,
        })
        .collect();
    Ok((paraphrases, neighborhood))
}

/// Portability probes in any of EasyEdit's layouts:
/// - a `portability` object of named sub-sets of `{prompt, ground_truth}` (KnowEdit), or
///   one one-hop question `{"New Question", "New Answer"}` (its zsRE and CounterFact
///   releases; set `one_hop`);
/// - `alternative_subject` (another name of the subject, put into the rewrite prompt)
///   and `alter_subject_question` (the edit asked with that name), both answered by the
///   new target (set `subject_replace`);
/// - `inverse question` (the question about the new object whose answer is the subject;
///   set `inverse_relation`);
/// - `personas` (WikiBigEdit: the question as other people would ask it, a list or an
///   object of persona → question), answered by the new target (set `personas`).
pub(super) fn easyedit_portability(
    f: &Fields,
    template: &str,
    subject: &str,
    target_new: &str,
) -> Result<Vec<Probe>> {
    let mut out = match f.at("portability") {
        Some(Json::Object(o)) if o.contains_key("New Question") => vec![Probe {
            set: "one_hop".into(),
            prompt: f.non_empty(
                "portability/New Question",
                f.str("portability/New Question")?,
            )?,
            target: f.non_empty(
                "portability/New Answer",
                f.first_str("portability/New Answer")?,
            )?,
        }],
        _ => probe_sets(f, "portability")?,
    };
    let probe = |set: &str, prompt: String, target: &str| Probe {
        set: set.into(),
        prompt,
        target: target.into(),
    };
    for alias in one_or_many(f, "alternative_subject")? {
        if !template.contains("{}") {
            return Err(f.err(
                "alternative_subject",
                "the prompt has no place for the subject to put the other name in",
            ));
        }
        out.push(probe(
            "subject_replace",
            template.replacen("{}", &alias, 1),
            target_new,
        ));
    }
    for q in one_or_many(f, "alter_subject_question")? {
        out.push(probe("subject_replace", q, target_new));
    }
    for field in ["inverse question", "inverse_question"] {
        for q in one_or_many(f, field)? {
            out.push(probe("inverse_relation", q, subject));
        }
    }
    let personas = match f.at("personas") {
        Some(Json::Object(o)) => o
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| f.err(&format!("personas/{k}"), "not a string"))
            })
            .collect::<Result<Vec<_>>>()?,
        _ => one_or_many(f, "personas")?,
    };
    for q in personas {
        out.push(probe("personas", q, target_new));
    }
    out.retain(|p| !p.prompt.trim().is_empty() && !p.target.trim().is_empty());
    Ok(out)
}
