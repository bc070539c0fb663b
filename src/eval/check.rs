//! What an edit changed, the way a user checks it: for every edit, the new (and the
//! old) target's probability after the rewrite prompt before and after editing, the
//! greedy continuation after, whether the edit took (the continuation starts with the
//! new target), and how well the model still spells the subject itself; for a few
//! neighbour prompts, the top-1 token before and after.
//!
//! [`Before::take`] reads the unedited model, [`Before::check`] the edited one.

use serde::{Deserialize, Serialize};

use super::generation::starts_with_target;
use super::scorer::{NllRequest, predictions, token_nlls};
use crate::data::EditRecord;
use crate::error::Result;
use crate::model::{GenerateOptions, Model, generate};
use crate::tokenizer::Tokenizer;

/// Tokens of the greedy continuation shown after each edit prompt.
const CONTINUATION_TOKENS: usize = 10;

/// One edit, before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditCheck {
    /// The rewrite prompt, subject filled in.
    pub prompt: String,
    pub target_new: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_true: Option<String>,
    /// P(new target | prompt), all its tokens.
    pub p_new_before: f64,
    pub p_new_after: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_old_before: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_old_after: Option<f64>,
    /// Greedy continuation of the prompt after editing.
    pub continuation: String,
    /// The continuation starts with the new target.
    pub took: bool,
    /// Mean NLL of the subject's own tokens in the prompt (each given what precedes
    /// it), before and after; `None` when no subject token can be scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_nll_before: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_nll_after: Option<f64>,
}

impl EditCheck {
    /// How much harder the subject's own tokens became to predict (nats per token).
    pub fn subject_nll_delta(&self) -> Option<f64> {
        Some(self.subject_nll_after? - self.subject_nll_before?)
    }
}

/// A neighbour prompt's top-1 token before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighbourCheck {
    pub prompt: String,
    pub before: String,
    pub after: String,
}

/// Everything [`Before::check`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub edits: Vec<EditCheck>,
    pub neighbours: Vec<NeighbourCheck>,
    /// Edits whose continuation does not start with the new target.
    pub not_taken: usize,
    /// Mean of the edits' `subject_nll_delta` (where defined).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_nll_delta: Option<f64>,
}

/// The token requests of one edit.
struct Requests {
    new: NllRequest,
    old: Option<NllRequest>,
    subject: Option<NllRequest>,
}

fn requests(tok: &Tokenizer, r: &EditRecord) -> Result<Requests> {
    let prompt = tok.encode(&r.rewrite_prompt(), true)?;
    let target = |t: &str| -> Result<NllRequest> {
        let tokens = tok.encode(&format!(" {}", t.trim()), false)?;
        Ok(NllRequest {
            ids: [prompt.as_slice(), &tokens].concat(),
            start: prompt.len(),
            tokens,
        })
    };
    // Scored from its second token when nothing precedes it (no BOS).
    let subject = r.subject_span(tok)?.and_then(|span| {
        let start = span.start.max(1);
        (span.ids.len() > start).then(|| NllRequest {
            tokens: span.ids[start..].to_vec(),
            ids: span.ids,
            start,
        })
    });
    Ok(Requests {
        new: target(&r.target_new)?,
        old: r.target_true.as_deref().map(target).transpose()?,
        subject,
    })
}

/// Mean NLL of each record's subject tokens in its rewrite prompt (each given what
/// precedes it); `None` where no subject token can be scored.
pub fn subject_nlls(
    model: &Model,
    tok: &Tokenizer,
    records: &[EditRecord],
) -> Result<Vec<Option<f64>>> {
    let reqs: Vec<Option<NllRequest>> = records
        .iter()
        .map(|r| requests(tok, r).map(|q| q.subject))
        .collect::<Result<_>>()?;
    mean_nlls(model, &reqs)
}

/// Each request's mean token NLL, scored in one call of their own; `None` for none.
fn mean_nlls(model: &Model, reqs: &[Option<NllRequest>]) -> Result<Vec<Option<f64>>> {
    let flat: Vec<NllRequest> = reqs.iter().flatten().cloned().collect();
    let mut nlls = token_nlls(model, &flat)?.into_iter();
    Ok(reqs
        .iter()
        .map(|q| {
            q.as_ref()
                .and_then(|_| nlls.next())
                .map(|v| v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect())
}

/// The measurements taken on a model for every edit.
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    p_new: Vec<f64>,
    p_old: Vec<Option<f64>>,
    subject_nll: Vec<Option<f64>>,
    neighbours: Vec<String>,
}

fn read(
    model: &Model,
    tok: &Tokenizer,
    records: &[EditRecord],
    neighbours: &[String],
) -> Result<Reading> {
    let reqs = records
        .iter()
        .map(|r| requests(tok, r))
        .collect::<Result<Vec<_>>>()?;
    let mut flat = Vec::new();
    for r in &reqs {
        flat.push(r.new.clone());
        flat.extend(r.old.clone());
    }
    let mut nlls = token_nlls(model, &flat)?.into_iter();
    let (mut p_new, mut p_old) = (Vec::new(), Vec::new());
    let prob = |v: Vec<f64>| (-v.iter().sum::<f64>()).exp();
    for r in &reqs {
        p_new.push(nlls.next().map_or(0.0, prob));
        p_old.push(r.old.as_ref().and_then(|_| nlls.next().map(prob)));
    }
    // Apart from the targets: a read inside the prompt would share its sequence, and an
    // adapter (WISE, SERAC) routes a sequence on what precedes its first read.
    let subjects: Vec<Option<NllRequest>> = reqs.iter().map(|r| r.subject.clone()).collect();
    let subject_nll = mean_nlls(model, &subjects)?;
    let ids = neighbours
        .iter()
        .map(|p| tok.encode(p, true))
        .collect::<Result<Vec<_>>>()?;
    let tops = if ids.is_empty() {
        Vec::new()
    } else {
        predictions(model, &ids)?
    };
    Ok(Reading {
        p_new,
        p_old,
        subject_nll,
        neighbours: tops.iter().map(|p| tok.decode(&[p.argmax])).collect(),
    })
}

/// The unedited model's side of the check.
#[derive(Debug, Clone, PartialEq)]
pub struct Before {
    reading: Reading,
    neighbours: Vec<String>,
}

impl Before {
    /// Reads the unedited model: every edit's probabilities, and the top-1 of up to
    /// `neighbours` neighbour prompts (the first of each record's, in order).
    pub fn take(
        model: &Model,
        tok: &Tokenizer,
        records: &[EditRecord],
        neighbours: usize,
    ) -> Result<Self> {
        let prompts: Vec<String> = records
            .iter()
            .filter_map(|r| r.neighborhood.first().map(|n| n.prompt.clone()))
            .take(neighbours)
            .collect();
        Ok(Before {
            reading: read(model, tok, records, &prompts)?,
            neighbours: prompts,
        })
    }

    /// Reads the edited model and sets it beside the unedited one.
    pub fn check(&self, model: &Model, tok: &Tokenizer, records: &[EditRecord]) -> Result<Check> {
        let after = read(model, tok, records, &self.neighbours)?;
        let prompts = records
            .iter()
            .map(|r| tok.encode(&r.rewrite_prompt(), true))
            .collect::<Result<Vec<_>>>()?;
        let opts = GenerateOptions {
            max_new_tokens: CONTINUATION_TOKENS,
            stop: tok.eos_id.into_iter().collect(),
            ..GenerateOptions::default()
        };
        let mut continuations = Vec::with_capacity(records.len());
        // Chunks bound the KV cache of a batch of thousands of edits.
        for chunk in prompts.chunks(64) {
            continuations.extend(generate(model, chunk, &opts)?);
        }
        let b = &self.reading;
        let edits: Vec<EditCheck> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let continuation = tok.decode(&continuations[i]);
                EditCheck {
                    prompt: r.rewrite_prompt(),
                    target_new: r.target_new.clone(),
                    target_true: r.target_true.clone(),
                    p_new_before: b.p_new[i],
                    p_new_after: after.p_new[i],
                    p_old_before: b.p_old[i],
                    p_old_after: after.p_old[i],
                    took: starts_with_target(&continuation, &r.target_new),
                    continuation,
                    subject_nll_before: b.subject_nll[i],
                    subject_nll_after: after.subject_nll[i],
                }
            })
            .collect();
        let deltas: Vec<f64> = edits
            .iter()
            .filter_map(EditCheck::subject_nll_delta)
            .collect();
        Ok(Check {
            not_taken: edits.iter().filter(|e| !e.took).count(),
            subject_nll_delta: (!deltas.is_empty())
                .then(|| deltas.iter().sum::<f64>() / deltas.len() as f64),
            neighbours: self
                .neighbours
                .iter()
                .zip(&b.neighbours)
                .zip(&after.neighbours)
                .map(|((p, x), y)| NeighbourCheck {
                    prompt: p.clone(),
                    before: x.clone(),
                    after: y.clone(),
                })
                .collect(),
            edits,
        })
    }
}

impl Check {
    /// The terminal table: one row per edit (the first `max_rows`, then a count), then
    /// the neighbours.
    pub fn table(&self, max_rows: usize) -> String {
        let mut out = String::new();
        let mut rows = vec![[
            String::new(),
            "prompt".to_string(),
            "new: P before → after".to_string(),
            "old: P before → after".to_string(),
            "continues (after)".to_string(),
        ]];
        for e in self.edits.iter().take(max_rows) {
            let old = match (&e.target_true, e.p_old_before, e.p_old_after) {
                (Some(t), Some(a), Some(b)) => format!("{t} {} → {}", pct(a), pct(b)),
                _ => "-".to_string(),
            };
            rows.push([
                if e.took { "✓" } else { "✗" }.to_string(),
                clip(&e.prompt, 48),
                format!(
                    "{} {} → {}",
                    e.target_new,
                    pct(e.p_new_before),
                    pct(e.p_new_after)
                ),
                old,
                format!("{:?}", clip(e.continuation.trim_end(), 40)),
            ]);
        }
        out.push_str(&columns(&rows));
        if self.edits.len() > max_rows {
            out.push_str(&format!(
                "… and {} more edits (all of them in the report)\n",
                self.edits.len() - max_rows
            ));
        }
        if !self.neighbours.is_empty() {
            let mut rows = vec![[
                String::new(),
                "neighbour prompt".to_string(),
                "top-1 before → after".to_string(),
            ]];
            for n in &self.neighbours {
                rows.push([
                    if n.before == n.after { "=" } else { "≠" }.to_string(),
                    clip(&n.prompt, 48),
                    format!("{:?} → {:?}", n.before, n.after),
                ]);
            }
            out.push_str(&columns(&rows));
        }
        out
    }

    /// One line: how many edits took (and, when some did not, how many did not).
    pub fn line(&self) -> String {
        let n = self.edits.len();
        let mut s = format!("{} of {n} edits took", n - self.not_taken);
        if self.not_taken > 0 {
            s.push_str(&format!("; {} did not take", self.not_taken));
        }
        if let Some(d) = self.subject_nll_delta {
            s.push_str(&format!("; subject tokens' NLL {d:+.2} nats"));
        }
        s
    }
}

fn pct(p: f64) -> String {
    let v = 100.0 * p;
    if v >= 9.95 {
        format!("{v:.0} %")
    } else {
        format!("{v:.1} %")
    }
}

/// At most `n` characters, with an ellipsis when cut.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// Rows laid out in left-aligned columns, two spaces apart (widths in characters).
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut width = [0usize; N];
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_by_characters() {
        let rows = [
            ["✓".to_string(), "a".to_string(), "x".to_string()],
            ["".to_string(), "→→→".to_string(), "y".to_string()],
        ];
        assert_eq!(columns(&rows), "✓  a    x\n   →→→  y\n");
    }

    #[test]
    fn clip_and_percent() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
        assert_eq!(pct(0.5), "50 %");
        assert_eq!(pct(0.0123), "1.2 %");
    }
}
