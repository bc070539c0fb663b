//! CounterFact: ROME's schema (`requested_rewrite`, `paraphrase_prompts`,
//! `neighborhood_prompts`, …) and EasyEdit's reduced CounterFact (MEND-style fields).

use super::easyedit::{easyedit_flat, easyedit_portability};
use super::fields::{Fields, template_and_subject};
use super::{EditRecord, Neighbor, Suite};
use crate::error::Result;

pub(super) fn counterfact(f: &Fields) -> Result<EditRecord> {
    let (prompt, subject) =
        template_and_subject(f, "requested_rewrite/prompt", "requested_rewrite/subject")?;
    let target_true = f.non_empty(
        "requested_rewrite/target_true/str",
        f.str("requested_rewrite/target_true/str")?,
    )?;
    let target_new = f.non_empty(
        "requested_rewrite/target_new/str",
        f.str("requested_rewrite/target_new/str")?,
    )?;
    Ok(EditRecord {
        id: f.id("case_id")?,
        suite: Suite::CounterFact,
        portability: easyedit_portability(f, &prompt, &subject, &target_new)?,
        prompt,
        subject,
        target_new,
        paraphrases: f.str_list("paraphrase_prompts", true)?,
        neighborhood: f
            .str_list("neighborhood_prompts", true)?
            .into_iter()
            .map(|prompt| Neighbor {
                prompt,
                target: target_true.clone(),
                set: None,
            })
            .collect(),
        target_true: Some(target_true),
        attribute_prompts: f.str_list("attribute_prompts", false)?,
        generation_prompts: f.str_list("generation_prompts", false)?,
        relation_id: f.opt_str("requested_rewrite/relation_id")?,
        target_new_id: f.opt_str("requested_rewrite/target_new/id")?,
    })
}

pub(super) fn counterfact_mend(f: &Fields) -> Result<EditRecord> {
    let (prompt, subject) = template_and_subject(f, "prompt", "subject")?;
    let target_new = f.non_empty("target_new", f.str("target_new")?)?;
    let (paraphrases, neighborhood) = easyedit_flat(f)?;
    Ok(EditRecord {
        id: f.id("case_id")?,
        suite: Suite::CounterFact,
        portability: easyedit_portability(f, &prompt, &subject, &target_new)?,
        prompt,
        subject,
        target_new,
        target_true: Some(f.non_empty("ground_truth", f.first_str("ground_truth")?)?),
        paraphrases,
        neighborhood,
        attribute_prompts: Vec::new(),
        generation_prompts: Vec::new(),
        relation_id: None,
        target_new_id: None,
    })
}
