//! zsRE's teacher-forced top-1 token accuracy, as MEMIT's `eval_utils_zsre.py`.
//!
//! With `t = tokenize(" " + target)`, input `i` of a prompt `p` is the string
//! `p + decode(t[:i])` tokenized as a model input; it is correct when the argmax of
//! the next-token logits equals the first token of `tokenize(decode(t[i]))`.
//! Specificity uses the neighbourhood prompt (the NQ question and "?") and its gold
//! answer `a`, correct when the argmax equals `a[i]` itself (METRICS.md).

use serde::{Deserialize, Serialize};

use super::scorer::predictions;
use crate::data::EditRecord;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// One teacher-forced position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub input: String,
    pub input_ids: Vec<u32>,
    /// The token that counts as correct.
    #[serde(alias = "gold_id")]
    pub answer_id: u32,
    pub argmax_id: u32,
    pub top2_margin: f64,
    pub correct: bool,
}

/// The token-accuracy metrics of one zsRE record (fractions in [0, 1]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccScores {
    pub target_ids: Vec<u32>,
    pub rewrite_positions: Vec<Position>,
    pub paraphrase_positions: Vec<Position>,
    pub specificity_positions: Vec<Position>,
    pub efficacy: Option<f64>,
    pub paraphrase: Option<f64>,
    pub specificity: Option<f64>,
}

/// One teacher-forced input and the token that counts as correct after it.
pub(crate) struct Query {
    pub input: String,
    pub input_ids: Vec<u32>,
    pub answer_id: u32,
}

/// Teacher-forced inputs of `prompt` continued by `target` token by token; `gold`
/// scores against the target's own tokens, otherwise against the re-tokenized decode
/// of each (MEMIT's `tok(decode(t[i]))[0]`).
pub(crate) fn queries(
    tok: &Tokenizer,
    prompt: &str,
    target: &str,
    gold: bool,
) -> Result<Vec<Query>> {
    let t = tok.encode(&format!(" {target}"), false)?;
    if t.is_empty() {
        return Err(Error::Input(format!(
            "target {target:?} tokenizes to nothing"
        )));
    }
    (0..t.len())
        .map(|i| {
            let input = format!("{prompt}{}", tok.decode(&t[..i]));
            let answer_id = if gold {
                t[i]
            } else {
                tok.encode(&tok.decode(&t[i..=i]), false)?
                    .first()
                    .copied()
                    .unwrap_or(t[i])
            };
            Ok(Query {
                input_ids: tok.encode(&input, true)?,
                input,
                answer_id,
            })
        })
        .collect()
}

/// Scores many records at once.
pub fn score(model: &Model, tok: &Tokenizer, records: &[&EditRecord]) -> Result<Vec<AccScores>> {
    let mut all: Vec<[Vec<Query>; 3]> = Vec::with_capacity(records.len());
    for r in records {
        let rewrite = queries(tok, &r.rewrite_prompt(), &r.target_new, false)?;
        let mut paraphrase = Vec::new();
        for p in &r.paraphrases {
            paraphrase.extend(queries(tok, p, &r.target_new, false)?);
        }
        let mut specificity = Vec::new();
        for n in &r.neighborhood {
            specificity.extend(queries(tok, &n.prompt, &n.target, true)?);
        }
        all.push([rewrite, paraphrase, specificity]);
    }
    let inputs: Vec<Vec<u32>> = all
        .iter()
        .flatten()
        .flatten()
        .map(|q| q.input_ids.clone())
        .collect();
    let mut preds = predictions(model, &inputs)?.into_iter();
    let mut out = Vec::with_capacity(records.len());
    for (r, groups) in records.iter().zip(all) {
        let [rewrite, paraphrase, specificity] = groups.map(|g| {
            g.into_iter()
                .map(|q| {
                    let p = preds.next().expect("one prediction per input");
                    Position {
                        correct: p.argmax == q.answer_id,
                        input: q.input,
                        input_ids: q.input_ids,
                        answer_id: q.answer_id,
                        argmax_id: p.argmax,
                        top2_margin: p.margin,
                    }
                })
                .collect::<Vec<_>>()
        });
        let acc = |v: &[Position]| {
            (!v.is_empty()).then(|| v.iter().filter(|p| p.correct).count() as f64 / v.len() as f64)
        };
        out.push(AccScores {
            target_ids: tok.encode(&format!(" {}", r.target_new), false)?,
            efficacy: acc(&rewrite),
            paraphrase: acc(&paraphrase),
            specificity: acc(&specificity),
            rewrite_positions: rewrite,
            paraphrase_positions: paraphrase,
            specificity_positions: specificity,
        });
    }
    Ok(out)
}
