//! EasyEdit's KnowEdit files: `locality` and `portability` objects of named probe sets.

use serde_json::Value as Json;

use super::easyedit::easyedit_portability;
use super::fields::{Fields, one_or_many, template_and_subject};
use super::{EditRecord, Neighbor, Probe, Suite};
use crate::error::Result;

/// A KnowEdit `locality` / `portability` object: sub-set name → `{prompt, ground_truth}`
/// items (one object or a list of them), each field a string or a list paired by position.
pub(super) fn probe_sets(f: &Fields, field: &str) -> Result<Vec<Probe>> {
    let Some(v) = f.at(field) else {
        return Ok(Vec::new());
    };
    let Json::Object(sets) = v else {
        return Err(f.err(field, "not an object of named sub-sets"));
    };
    let mut out = Vec::new();
    for (set, items) in sets {
        let items: Vec<&Json> = match items {
            Json::Array(a) => a.iter().collect(),
            Json::Object(_) => vec![items],
            _ => {
                return Err(f.err(
                    &format!("{field}/{set}"),
                    "not a list of {prompt, ground_truth}",
                ));
            }
        };
        for (i, item) in items.into_iter().enumerate() {
            let at = |k: &str| format!("{field}/{set}/{i}/{k}");
            let strings = |k: &str| -> Result<Vec<String>> {
                match item.get(k) {
                    Some(Json::String(s)) => Ok(vec![s.clone()]),
                    // Nested lists (several answers per prompt): the first answer.
                    Some(Json::Array(a)) => a
                        .iter()
                        .map(|x| match x {
                            Json::String(s) => Ok(s.clone()),
                            Json::Array(inner) => inner
                                .first()
                                .and_then(Json::as_str)
                                .map(str::to_owned)
                                .ok_or_else(|| f.err(&at(k), "an empty or non-string answer list")),
                            _ => Err(f.err(&at(k), "not a string or list of strings")),
                        })
                        .collect(),
                    _ => Err(f.err(&at(k), "missing or not a string or list of strings")),
                }
            };
            let (prompts, answers) = (strings("prompt")?, strings("ground_truth")?);
            if prompts.len() != answers.len() {
                return Err(f.err(
                    &at("ground_truth"),
                    format!("{} prompts but {} answers", prompts.len(), answers.len()),
                ));
            }
            for (prompt, target) in prompts.into_iter().zip(answers) {
                if !prompt.trim().is_empty() && !target.trim().is_empty() {
                    out.push(Probe {
                        set: set.clone(),
                        prompt,
                        target,
                    });
                }
            }
        }
    }
    Ok(out)
}

pub(super) fn knowedit(f: &Fields) -> Result<EditRecord> {
    let (prompt, subject) = template_and_subject(f, "prompt", "subject")?;
    // Some KnowEdit records have an empty ground truth: the old fact is then unknown.
    let truth = Some(f.first_str("ground_truth")?).filter(|t| !t.trim().is_empty());
    let paraphrases = one_or_many(f, "rephrase_prompt")?;
    let neighborhood = probe_sets(f, "locality")?
        .into_iter()
        .map(|p| Neighbor {
            prompt: p.prompt,
            target: p.target,
            set: Some(p.set),
        })
        .collect();
    let target_new = f.non_empty("target_new", f.str("target_new")?)?;
    Ok(EditRecord {
        portability: easyedit_portability(f, &prompt, &subject, &target_new)?,
        id: f.id(if f.at("case_id").is_some() {
            "case_id"
        } else {
            "id"
        })?,
        // EasyEdit scores every KnowEdit set by teacher-forced token accuracy.
        suite: Suite::Zsre,
        prompt,
        subject,
        target_new,
        target_true: truth,
        paraphrases,
        neighborhood,
        attribute_prompts: Vec::new(),
        generation_prompts: Vec::new(),
        relation_id: None,
        target_new_id: None,
    })
}
