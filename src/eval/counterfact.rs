//! CounterFact's probability comparisons, exactly as MEMIT's
//! `eval_utils_counterfact.py` computes them.
//!
//! For a prefix `x` and target `y`: `a = tokenize(" " + y)` (no special tokens),
//! `full = tokenize(x + " " + y)` and `P = len(tokenize(x))` as model inputs; token
//! `a[j]` is scored with the logits at position `P + j - 1` of `full`, and
//! `NLL(x, y)` is the mean over `j`. ES/PS count prompts where the new target is the
//! more likely (lower NLL), NS neighbourhood prompts where the true one is; EM/PM/NM
//! are the differences of `exp(-NLL)`.

use serde::{Deserialize, Serialize};

use super::scorer::{NllRequest, token_nlls};
use crate::data::EditRecord;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// One prompt's NLLs of the new and the true target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptNll {
    pub prompt: String,
    /// `tokenize(prompt)` as a model input.
    pub prefix_ids: Vec<u32>,
    pub nll_new: f64,
    pub nll_true: f64,
    pub token_nll_new: Vec<f64>,
    pub token_nll_true: Vec<f64>,
    /// `tokenize(prompt + " " + target)` did not end with the target's own tokens; the
    /// scores follow MEMIT's indexing anyway.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub boundary_mismatch: bool,
}

/// The probability metrics of one CounterFact record (fractions in [0, 1]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbScores {
    pub target_new_ids: Vec<u32>,
    pub target_true_ids: Vec<u32>,
    pub rewrite: Vec<PromptNll>,
    pub paraphrase: Vec<PromptNll>,
    pub neighborhood: Vec<PromptNll>,
    #[serde(rename = "ES")]
    pub es: Option<f64>,
    #[serde(rename = "PS")]
    pub ps: Option<f64>,
    #[serde(rename = "NS")]
    pub ns: Option<f64>,
    #[serde(rename = "EM")]
    pub em: Option<f64>,
    #[serde(rename = "PM")]
    pub pm: Option<f64>,
    #[serde(rename = "NM")]
    pub nm: Option<f64>,
}

/// What one prompt needs scored: two requests (new, true).
struct Pending {
    prompt: String,
    prefix_ids: Vec<u32>,
    mismatch: bool,
}

fn request(tok: &Tokenizer, prefix: &str, target: &str) -> Result<(NllRequest, bool)> {
    let prefix_ids = tok.encode(prefix, true)?;
    let a = tok.encode(&format!(" {target}"), false)?;
    if a.is_empty() {
        return Err(Error::Input(format!(
            "target {target:?} tokenizes to nothing"
        )));
    }
    let full = tok.encode(&format!("{prefix} {target}"), true)?;
    let p = prefix_ids.len();
    let aligned = full.len() >= p + a.len() && full[p..p + a.len()] == a[..];
    // MEMIT reads positions P + j - 1 of `full`; when the joined text tokenizes
    // shorter, those positions do not exist, so score the plain concatenation.
    let ids = if p + a.len() <= full.len() {
        full
    } else {
        [prefix_ids.as_slice(), a.as_slice()].concat()
    };
    Ok((
        NllRequest {
            ids,
            start: p,
            tokens: a,
        },
        !aligned,
    ))
}

/// Scores many records at once (their prompts share forward passes).
pub fn score(model: &Model, tok: &Tokenizer, records: &[&EditRecord]) -> Result<Vec<ProbScores>> {
    let mut reqs = Vec::new();
    let mut layout = Vec::with_capacity(records.len());
    for r in records {
        let target_true = r.target_true.as_deref().ok_or_else(|| {
            Error::Input(format!(
                "record {}: CounterFact metrics need target_true",
                r.id
            ))
        })?;
        let groups: [Vec<(String, &str)>; 3] = [
            vec![(r.rewrite_prompt(), target_true)],
            r.paraphrases
                .iter()
                .map(|p| (p.clone(), target_true))
                .collect(),
            r.neighborhood
                .iter()
                .map(|n| (n.prompt.clone(), n.target.as_str()))
                .collect(),
        ];
        let mut per_group = Vec::new();
        for group in groups {
            let mut pending = Vec::new();
            for (prompt, truth) in group {
                let (new_req, m1) = request(tok, &prompt, &r.target_new)?;
                let (true_req, m2) = request(tok, &prompt, truth)?;
                pending.push(Pending {
                    prefix_ids: tok.encode(&prompt, true)?,
                    prompt,
                    mismatch: m1 || m2,
                });
                reqs.push(new_req);
                reqs.push(true_req);
            }
            per_group.push(pending);
        }
        layout.push(per_group);
    }
    let nlls = token_nlls(model, &reqs)?;
    let mut it = nlls.into_iter();
    let mut out = Vec::with_capacity(records.len());
    for (r, groups) in records.iter().zip(layout) {
        let mut scored: Vec<Vec<PromptNll>> = Vec::new();
        for pending in groups {
            scored.push(
                pending
                    .into_iter()
                    .map(|p| {
                        let new = it.next().expect("one result per request");
                        let tru = it.next().expect("one result per request");
                        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
                        PromptNll {
                            prompt: p.prompt,
                            prefix_ids: p.prefix_ids,
                            nll_new: mean(&new),
                            nll_true: mean(&tru),
                            token_nll_new: new,
                            token_nll_true: tru,
                            boundary_mismatch: p.mismatch,
                        }
                    })
                    .collect(),
            );
        }
        let neighborhood = scored.pop().unwrap_or_default();
        let paraphrase = scored.pop().unwrap_or_default();
        let rewrite = scored.pop().unwrap_or_default();
        let frac = |v: &[PromptNll], f: fn(&PromptNll) -> f64| {
            (!v.is_empty()).then(|| v.iter().map(f).sum::<f64>() / v.len() as f64)
        };
        let new_wins = |p: &PromptNll| (p.nll_new < p.nll_true) as u8 as f64;
        let true_wins = |p: &PromptNll| (p.nll_true < p.nll_new) as u8 as f64;
        let new_margin = |p: &PromptNll| (-p.nll_new).exp() - (-p.nll_true).exp();
        let true_margin = |p: &PromptNll| (-p.nll_true).exp() - (-p.nll_new).exp();
        out.push(ProbScores {
            target_new_ids: tok.encode(&format!(" {}", r.target_new), false)?,
            target_true_ids: tok.encode(
                &format!(" {}", r.target_true.as_deref().unwrap_or_default()),
                false,
            )?,
            es: frac(&rewrite, new_wins),
            ps: frac(&paraphrase, new_wins),
            ns: frac(&neighborhood, true_wins),
            em: frac(&rewrite, new_margin),
            pm: frac(&paraphrase, new_margin),
            nm: frac(&neighborhood, true_margin),
            rewrite,
            paraphrase,
            neighborhood,
        });
    }
    Ok(out)
}
