//! ftedit's own JSONL edit requests, one edit per line (EasyEdit's flat fields too).

use serde_json::Value as Json;

use super::easyedit::{easyedit_flat, easyedit_portability};
use super::fields::{Fields, template_and_subject};
use super::{EditRecord, Neighbor, Suite};
use crate::error::Result;

pub(super) fn jsonl(f: &Fields) -> Result<EditRecord> {
    let (prompt, subject) = template_and_subject(f, "prompt", "subject")?;
    let target_true = f.opt_str("target_true")?;
    let mut neighborhood: Vec<Neighbor> = match f.at("neighborhood") {
        None => Vec::new(),
        Some(Json::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let sub = Fields {
                    path: f.path,
                    index: f.index,
                    obj: n,
                };
                let field = |k: &str| format!("neighborhood/{i}/{k}");
                Ok(Neighbor {
                    prompt: sub
                        .str("prompt")
                        .map_err(|_| f.err(&field("prompt"), "missing or not a string"))?,
                    target: sub
                        .str("target")
                        .map_err(|_| f.err(&field("target"), "missing or not a string"))?,
                    set: sub.opt_str("set")?,
                })
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(f.err("neighborhood", "not a list of {prompt, target} objects")),
    };
    let (rephrased, localities) = easyedit_flat(f)?;
    neighborhood.extend(localities);
    let mut paraphrases = f.str_list("paraphrases", false)?;
    paraphrases.extend(rephrased);
    let target_new = f.non_empty("target_new", f.str("target_new")?)?;
    Ok(EditRecord {
        portability: easyedit_portability(f, &prompt, &subject, &target_new)?,
        id: f.id("id")?,
        suite: if target_true.is_some() {
            Suite::CounterFact
        } else {
            Suite::Zsre
        },
        prompt,
        subject,
        target_new,
        target_true,
        paraphrases,
        neighborhood,
        attribute_prompts: f.str_list("attribute_prompts", false)?,
        generation_prompts: f.str_list("generation_prompts", false)?,
        relation_id: f.opt_str("relation_id")?,
        target_new_id: f.opt_str("target_new_id")?,
    })
}
