//! General abilities: zero-shot downstream tasks scored as lm-evaluation-harness scores
//! them (`../shared/data/general/LM_EVAL.md`): per choice the log-likelihood of the
//! continuation given the context, the continuation's tokens being the tail of the
//! joint encoding; `acc` (highest log-likelihood is the gold choice), `acc_norm` (the
//! same divided by the choice's length in characters), LAMBADA's `acc` (every target
//! token greedy) and perplexity. Ties go to the lowest index, as `np.argmax` has it.

pub mod glue;
pub mod tasks;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::eval::scorer::{NllRequest, token_scores};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// One item: a request `(context, continuation)` per choice, the gold choice and each
/// choice's length in characters (without the leading space).
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub requests: Vec<(String, String)>,
    pub gold: usize,
    pub choice_chars: Vec<usize>,
}

/// The metric a task is quoted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Acc,
    AccNorm,
}

/// A task's docs and how they are scored.
#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub docs: Vec<Doc>,
    /// The metric `general.mean` takes from it.
    pub main: Metric,
    /// Whether `acc_norm` is reported.
    pub norm: bool,
    /// One request per doc, `acc` = every continuation token greedy, and perplexity
    /// (LAMBADA).
    pub greedy: bool,
}

/// A task's scores, in percent (perplexity as is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    pub n: usize,
    pub acc: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// The metric `general.mean` uses, its value.
    pub main: f64,
    /// AlphaEdit's GLUE-style tasks ([`glue`]): weighted F1 of the generated answers
    /// (the task's `main`), of the probability answers, and their MCC, in percent; the
    /// items whose generation named no answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1_new: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<usize>,
}

/// lm-eval's pair encoding: trailing whitespace of the context moves to the
/// continuation; the continuation's tokens are the joint encoding's tail after as many
/// tokens as the context alone encodes to.
pub fn encode_pair(
    tok: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end();
    let moved = &context[trimmed.len()..];
    let cont = format!("{moved}{continuation}");
    let whole = tok.encode(&format!("{trimmed}{cont}"), true)?;
    let ctx = tok.encode(trimmed, true)?;
    let n = ctx.len().min(whole.len());
    Ok((whole[..n].to_vec(), whole[n..].to_vec()))
}

/// Index of the largest value, the lowest index on ties.
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// A doc with its requests tokenised ([`encode_pair`]): `(context, continuation)` ids.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedDoc {
    pub requests: Vec<(Vec<u32>, Vec<u32>)>,
    pub gold: usize,
    pub choice_chars: Vec<usize>,
}

/// A task tokenised once for a model's tokenizer, docs longer than the model's context
/// left out.
#[derive(Debug, Clone)]
pub struct PreparedTask {
    pub name: String,
    pub docs: Vec<PreparedDoc>,
    pub main: Metric,
    pub norm: bool,
    pub greedy: bool,
}

impl PreparedTask {
    /// Tokenises `task`'s requests; a doc with a request over `max_positions` tokens is
    /// left out (only tiny models have such short contexts).
    pub fn new(tok: &Tokenizer, task: &Task, max_positions: usize) -> Result<Self> {
        let mut docs = Vec::with_capacity(task.docs.len());
        for d in &task.docs {
            let requests = d
                .requests
                .iter()
                .map(|(c, x)| {
                    let (ctx, cont) = encode_pair(tok, c, x)?;
                    if ctx.is_empty() || cont.is_empty() {
                        return Err(crate::Error::Input(format!(
                            "{}: a request with an empty context or continuation: {c:?} + {x:?}",
                            task.name
                        )));
                    }
                    Ok((ctx, cont))
                })
                .collect::<Result<Vec<_>>>()?;
            if requests
                .iter()
                .all(|(c, x)| c.len() + x.len() <= max_positions)
            {
                docs.push(PreparedDoc {
                    requests,
                    gold: d.gold,
                    choice_chars: d.choice_chars.clone(),
                });
            }
        }
        Ok(PreparedTask {
            name: task.name.clone(),
            docs,
            main: task.main,
            norm: task.norm,
            greedy: task.greedy,
        })
    }
}

/// Per doc: each request's log-likelihood and whether every token was the argmax.
pub fn loglikelihoods(model: &Model, docs: &[PreparedDoc]) -> Result<Vec<Vec<(f64, bool)>>> {
    let reqs: Vec<NllRequest> = docs
        .iter()
        .flat_map(|d| &d.requests)
        .map(|(ctx, cont)| NllRequest {
            ids: [ctx.as_slice(), cont].concat(),
            start: ctx.len(),
            tokens: cont.clone(),
        })
        .collect();
    let scores = token_scores(model, &reqs)?;
    let mut it = scores.into_iter();
    Ok(docs
        .iter()
        .map(|d| {
            d.requests
                .iter()
                .map(|_| {
                    let s = it.next().expect("one score per request");
                    (-s.iter().map(|t| t.0).sum::<f64>(), s.iter().all(|t| t.1))
                })
                .collect()
        })
        .collect())
}

/// Scores `task` on `model`.
pub fn score(model: &Model, tok: &Tokenizer, task: &Task) -> Result<TaskScore> {
    score_prepared(model, &PreparedTask::new(tok, task, usize::MAX)?)
}

/// Scores a tokenised task on `model`.
pub fn score_prepared(model: &Model, task: &PreparedTask) -> Result<TaskScore> {
    let lls = loglikelihoods(model, &task.docs)?;
    let n = task.docs.len().max(1) as f64;
    let (mut acc, mut acc_norm, mut ll_sum) = (0.0, 0.0, 0.0);
    for (d, ll) in task.docs.iter().zip(&lls) {
        if task.greedy {
            acc += f64::from(u8::from(ll[0].1));
            ll_sum += ll[0].0;
            continue;
        }
        let raw: Vec<f64> = ll.iter().map(|x| x.0).collect();
        acc += f64::from(u8::from(argmax(&raw) == d.gold));
        let normed: Vec<f64> = raw
            .iter()
            .zip(&d.choice_chars)
            .map(|(l, &c)| l / c.max(1) as f64)
            .collect();
        acc_norm += f64::from(u8::from(argmax(&normed) == d.gold));
    }
    let acc = 100.0 * acc / n;
    let acc_norm = task.norm.then_some(100.0 * acc_norm / n);
    Ok(TaskScore {
        n: task.docs.len(),
        acc,
        acc_norm,
        perplexity: task.greedy.then(|| (-ll_sum / n).exp()),
        main: match task.main {
            Metric::AccNorm => acc_norm.unwrap_or(acc),
            Metric::Acc => acc,
        },
        f1: None,
        f1_new: None,
        mcc: None,
        invalid: None,
    })
}

/// A downstream task prepared for one model: lm-evaluation-harness's log-likelihood
/// tasks, or AlphaEdit's GLUE-style ones.
#[derive(Clone)]
pub enum GeneralTask {
    Harness(PreparedTask),
    Glue(glue::GlueTask),
}

impl GeneralTask {
    /// Task `name` ([`tasks::TASKS`] or [`glue::GLUE_TASKS`]) from the `general/` folder
    /// `dir`, its first `items` items, tokenised for `tok`.
    pub fn load(
        name: &str,
        dir: &std::path::Path,
        items: usize,
        tok: &Tokenizer,
        max_positions: usize,
    ) -> Result<Self> {
        if glue::GLUE_TASKS.contains(&name) {
            return Ok(GeneralTask::Glue(glue::GlueTask::load(
                name,
                dir,
                Some(items),
                tok,
                max_positions,
            )?));
        }
        let task = tasks::load(name, dir, Some(items))?;
        Ok(GeneralTask::Harness(PreparedTask::new(
            tok,
            &task,
            max_positions,
        )?))
    }

    pub fn name(&self) -> &str {
        match self {
            GeneralTask::Harness(t) => &t.name,
            GeneralTask::Glue(t) => &t.name,
        }
    }

    /// The task's scores on `model`.
    pub fn score(&self, model: &Model) -> Result<TaskScore> {
        match self {
            GeneralTask::Harness(t) => score_prepared(model, t),
            GeneralTask::Glue(t) => t.score(model),
        }
    }

    /// What identifies the task's items, for caches of the scores.
    pub fn hash_into(&self, h: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        match self {
            GeneralTask::Harness(t) => {
                t.name.hash(h);
                for d in &t.docs {
                    (&d.requests, d.gold).hash(h);
                }
            }
            GeneralTask::Glue(t) => t.hash_into(h),
        }
    }
}

/// Task names as a user lists them, with `glue` standing for every GLUE-style task.
pub fn expand_task_names(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let group: Vec<String> = if n == "glue" {
            glue::GLUE_TASKS.iter().map(|s| s.to_string()).collect()
        } else {
            vec![n.clone()]
        };
        for t in group {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::tasks::{csv_rows, hellaswag_preprocess};
    use super::*;

    #[test]
    fn argmax_takes_the_lowest_index_on_ties() {
        assert_eq!(argmax(&[-1.0, -0.5, -0.5]), 1);
        assert_eq!(argmax(&[-2.0]), 0);
    }

    #[test]
    fn csv_follows_rfc_4180() {
        let rows = csv_rows("q,a\n\"x, \"\"y\"\"\nz\",0\nplain,1\n");
        assert_eq!(
            rows,
            vec![
                vec!["q".to_string(), "a".into()],
                vec!["x, \"y\"\nz".into(), "0".into()],
                vec!["plain".into(), "1".into()],
            ]
        );
    }

    /// LM_EVAL.md's rules: strip, `[title]`, tags removed, one pass of double spaces.
    #[test]
    fn hellaswag_preprocessing() {
        assert_eq!(
            hellaswag_preprocess("  A man [title] runs. [step] He  "),
            "A man. runs. He"
        );
        assert_eq!(hellaswag_preprocess("a   b"), "a  b");
    }
}
