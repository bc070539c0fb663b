//! zsRE in the MEND format (`src`, `answers`, `rephrase`, `loc`, `loc_ans`).

use super::easyedit::easyedit_portability;
use super::fields::{Fields, template};
use super::{EditRecord, Neighbor, Suite};
use crate::error::Result;

pub(super) fn zsre(f: &Fields) -> Result<EditRecord> {
    let subject = f.non_empty("subject", f.str("subject")?)?;
    let src = f.non_empty("src", f.str("src")?)?;
    let loc = f.str("loc")?;
    let prompt = template(&src, &subject);
    let target_new = f.non_empty("answers", f.first_str("answers")?)?;
    Ok(EditRecord {
        id: f.index.to_string(),
        suite: Suite::Zsre,
        portability: easyedit_portability(f, &prompt, &subject, &target_new)?,
        prompt,
        subject,
        target_new,
        target_true: None,
        paraphrases: vec![f.non_empty("rephrase", f.str("rephrase")?)?],
        // MEMIT's zsRE specificity prompt is the NQ question with "?" appended.
        neighborhood: vec![Neighbor {
            prompt: format!("{loc}?"),
            target: f.non_empty("loc_ans", f.str("loc_ans")?)?,
            set: None,
        }],
        attribute_prompts: Vec::new(),
        generation_prompts: Vec::new(),
        relation_id: None,
        target_new_id: None,
    })
}
