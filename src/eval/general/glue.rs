//! AlphaEdit's GLUE-style checks (`general/alphaedit_glue_eval/`), scored as AlphaEdit's
//! `glue_eval/<task>_eval.py` scores them (`../shared/data/general/LM_EVAL.md`, section 3),
//! so that numbers compare with its papers:
//! - items: records 10 on (0–9 are its few-shot pool), zero-shot, AlphaEdit takes 100;
//! - two predictions per item: the answer word found in 5 greedy tokens (the text after
//!   the prompt's last answer marker, case-insensitive, the positive word tried first; −1
//!   when neither is there), and the word with the higher `exp(−mean NLL)` of its own
//!   tokens (`" " + word` encoded alone, read after the prompt's tokens);
//! - `f1` (weighted F1 of the generated answers, −1 counting as wrong), `f1_new` (the same
//!   for the probability answers), `mcc` (generated answers), in percent.
//!
//! RTE keeps AlphaEdit's inverted gold: GLUE's label 1 (*not* entailed) is scored as
//! "True". The suffix tokens never include a BOS (AlphaEdit drops it only for model
//! names containing "llama"; for other tokenizers that add one it would score the BOS).

use std::path::Path;
use std::rc::Rc;

use super::TaskScore;
use crate::error::{Error, Result};
use crate::eval::scorer::{NllRequest, token_scores};
use crate::model::{GenerateOptions, Model, Sampling, generate};
use crate::tokenizer::Tokenizer;

/// The GLUE-style tasks, by their ftedit names (`--general-tasks glue` is all of them).
pub const GLUE_TASKS: &[&str] = &[
    "glue_sst2",
    "glue_mrpc",
    "glue_cola",
    "glue_rte",
    "glue_mmlu",
    "glue_nli",
];

/// Records before this index are AlphaEdit's few-shot pool, never scored.
const FEW_SHOT_POOL: usize = 10;
/// Greedy tokens generated per item (`GLUEEval.evaluate`'s `gen_len`).
const GEN_LEN: usize = 5;

/// How a task turns an item into a prompt and reads the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sst2,
    Mrpc,
    Cola,
    Rte,
    Mmlu,
    Nli,
}

impl Kind {
    fn of(name: &str) -> Option<Kind> {
        Some(match name {
            "glue_sst2" => Kind::Sst2,
            "glue_mrpc" => Kind::Mrpc,
            "glue_cola" => Kind::Cola,
            "glue_rte" => Kind::Rte,
            "glue_mmlu" => Kind::Mmlu,
            "glue_nli" => Kind::Nli,
            _ => return None,
        })
    }

    /// The task called `name`, or an error listing the tasks.
    fn named(name: &str) -> Result<Kind> {
        Kind::of(name).ok_or_else(|| {
            Error::Input(format!(
                "unknown GLUE task '{name}' (tasks: {})",
                GLUE_TASKS.join(", ")
            ))
        })
    }

    fn file(self) -> &'static str {
        match self {
            Kind::Sst2 => "sst2.jsonl",
            Kind::Mrpc => "mrpc.jsonl",
            Kind::Cola => "cola.jsonl",
            Kind::Rte => "rte.jsonl",
            Kind::Mmlu => "mmlu.jsonl",
            Kind::Nli => "nli.jsonl",
        }
    }

    /// The answer words with the class each stands for, in the order AlphaEdit scores
    /// them (the binary tasks: the word for 1 first).
    fn words(self) -> &'static [(&'static str, i64)] {
        match self {
            Kind::Sst2 => &[("positive", 1), ("negative", 0)],
            Kind::Mrpc | Kind::Cola => &[("Yes", 1), ("No", 0)],
            Kind::Rte | Kind::Nli => &[("True", 1), ("False", 0)],
            Kind::Mmlu => &[("A", 0), ("B", 1), ("C", 2), ("D", 3)],
        }
    }

    /// The prompt (`_create_prompt`, zero-shot) and the gold label of record `r`.
    fn prompt(self, r: &serde_json::Value, path: &Path, i: usize) -> Result<(String, i64)> {
        let s = |k: &str| {
            r[k].as_str()
                .ok_or_else(|| Error::data(path, format!("record {}: no string `{k}`", i + 1)))
        };
        let label = |k: &str| {
            r[k].as_i64()
                .ok_or_else(|| Error::data(path, format!("record {}: no integer `{k}`", i + 1)))
        };
        Ok(match self {
            Kind::Sst2 => (
                format!("Review :{}\nSentiment :", s("sentence")?),
                label("label")?,
            ),
            Kind::Mrpc => (
                format!(
                    "Are the sentences paraphrases of each other.\nSentence 1: {}\nSentence 2: {}\nAnswer:",
                    s("sentence1")?,
                    s("sentence2")?
                ),
                label("label")?,
            ),
            Kind::Cola => (
                format!(
                    "Is this sentence linguistically acceptable?\nSentence: {}\nAnswer: ",
                    s("sentence")?
                ),
                label("label")?,
            ),
            Kind::Rte => (
                format!(
                    "{}\nquestion: {} True or False?\nanswer:",
                    s("sentence1")?,
                    s("sentence2")?
                ),
                label("label")?,
            ),
            Kind::Nli => (
                format!(
                    "{} entails the {} True or False? Answer:",
                    s("sentence1")?,
                    s("sentence2")?
                ),
                i64::from(s("label")? == "entailment"),
            ),
            Kind::Mmlu => {
                let c = r["choices"]
                    .as_array()
                    .filter(|c| c.len() == 4)
                    .ok_or_else(|| {
                        Error::data(
                            path,
                            format!("record {}: `choices` is not four strings", i + 1),
                        )
                    })?;
                let c: Vec<&str> = c.iter().map(|x| x.as_str().unwrap_or_default()).collect();
                (
                    format!(
                        "Question: {}\n(A) {}\n(B) {}\n(C) {}\n(D) {}\nAnswer:",
                        s("question")?,
                        c[0],
                        c[1],
                        c[2],
                        c[3]
                    ),
                    label("answer")?,
                )
            }
        })
    }

    /// The generated answer (`_get_answer`): `full` is prompt + generation decoded,
    /// `prompt` the prompt decoded; −1 when no answer word is found.
    fn answer(self, full: &str, prompt: &str) -> i64 {
        let after = |marker: &str| {
            full.rsplit(marker)
                .next()
                .unwrap_or_default()
                .trim()
                .to_lowercase()
        };
        let first_of = |text: String, order: &[(&str, i64)]| {
            order
                .iter()
                .find(|(w, _)| text.contains(w))
                .map_or(-1, |&(_, c)| c)
        };
        match self {
            Kind::Sst2 => first_of(after("Sentiment :"), &[("positive", 1), ("negative", 0)]),
            Kind::Mrpc | Kind::Cola => first_of(after("Answer:"), &[("yes", 1), ("no", 0)]),
            // RTE tries "false" first, NLI "true".
            Kind::Rte => first_of(after("answer:"), &[("false", 0), ("true", 1)]),
            Kind::Nli => first_of(
                after("True or False? Answer:"),
                &[("true", 1), ("false", 0)],
            ),
            Kind::Mmlu => first_of(
                full.replace(prompt, "").to_lowercase(),
                &[("a\n", 0), ("b\n", 1), ("c\n", 2), ("d\n", 3)],
            ),
        }
    }
}

/// The prompt and gold label AlphaEdit builds from `record` of task `name` (zero-shot).
pub fn prompt(name: &str, record: &serde_json::Value) -> Result<(String, i64)> {
    let kind = Kind::named(name)?;
    kind.prompt(record, Path::new(kind.file()), 0)
}

/// One item: its prompt as a model input, one scoring request per answer word, the gold.
#[derive(Debug, Clone)]
struct Item {
    prompt: Vec<u32>,
    words: Vec<NllRequest>,
    label: i64,
}

/// A GLUE-style task tokenised for a model, ready to score.
#[derive(Clone)]
pub struct GlueTask {
    pub name: String,
    kind: Kind,
    items: Vec<Item>,
    tok: Rc<Tokenizer>,
}

impl GlueTask {
    /// Task `name` from the `general/` data folder `dir`: the first `limit` items from
    /// record 10 on (all of them when `None`); items longer than `max_positions` with
    /// their answer are left out.
    pub fn load(
        name: &str,
        dir: &Path,
        limit: Option<usize>,
        tok: &Tokenizer,
        max_positions: usize,
    ) -> Result<Self> {
        let kind = Kind::named(name)?;
        let path = dir.join("alphaedit_glue_eval").join(kind.file());
        let records = super::tasks::jsonl(&path)?;
        let limit = limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        for (i, r) in records.iter().enumerate().skip(FEW_SHOT_POOL).take(limit) {
            let (prompt, label) = kind.prompt(r, &path, i)?;
            let ids = tok.encode(&prompt, true)?;
            let words = kind
                .words()
                .iter()
                .map(|(w, _)| {
                    let tokens = tok.encode(&format!(" {w}"), false)?;
                    let mut joint = tok.encode(&format!("{prompt} {w}"), true)?;
                    // The word's tokens are read after the prompt's, wherever the joint
                    // encoding put its boundary (AlphaEdit's reading, not lm-eval's).
                    // Where the joint encoding is too short for that (AlphaEdit's code
                    // would fail), the word's own last tokens fill it in.
                    let need = ids.len() + tokens.len() - 1;
                    if joint.len() < need {
                        joint.extend(&tokens[tokens.len() - (need - joint.len())..]);
                    }
                    Ok(NllRequest {
                        ids: joint,
                        start: ids.len(),
                        tokens,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let longest = words.iter().map(|r| r.ids.len()).max().unwrap_or(0);
            if longest.max(ids.len() + GEN_LEN) <= max_positions {
                items.push(Item {
                    prompt: ids,
                    words,
                    label,
                });
            }
        }
        Ok(GlueTask {
            name: name.to_owned(),
            kind,
            items,
            tok: Rc::new(tok.clone()),
        })
    }

    /// What identifies the task's items, for the health cache.
    pub fn hash_into(&self, h: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        self.name.hash(h);
        for it in &self.items {
            (&it.prompt, it.label).hash(h);
        }
    }

    /// Each item's answers on `model`: generated and by probability, with the gold.
    pub fn answers(&self, model: &Model) -> Result<Answers> {
        let opts = GenerateOptions {
            max_new_tokens: GEN_LEN,
            sampling: Sampling::Greedy,
            stop: self.tok.eos_id.into_iter().collect(),
            ..Default::default()
        };
        let mut texts = Vec::with_capacity(self.items.len());
        for chunk in self.items.chunks(16) {
            let prompts: Vec<Vec<u32>> = chunk.iter().map(|it| it.prompt.clone()).collect();
            texts.extend(generate(model, &prompts, &opts)?);
        }
        let reqs: Vec<NllRequest> = self
            .items
            .iter()
            .flat_map(|it| it.words.iter().cloned())
            .collect();
        let mut scores = token_scores(model, &reqs)?.into_iter();
        let mut out = Answers::default();
        for (it, g) in self.items.iter().zip(&texts) {
            let prompt = self.tok.decode_text(&it.prompt);
            let full = self.tok.decode_text(&[it.prompt.as_slice(), g].concat());
            out.generated.push(self.kind.answer(&full, &prompt));
            let p: Vec<f64> = it
                .words
                .iter()
                .map(|_| {
                    let s = scores.next().expect("one score per request");
                    (-s.iter().map(|t| t.0).sum::<f64>() / s.len().max(1) as f64).exp()
                })
                .collect();
            out.probable.push(probability_answer(self.kind, &p));
            out.labels.push(it.label);
        }
        Ok(out)
    }

    /// Scores the task on `model`: `acc` is the share of generated answers that are
    /// right, `main` their weighted F1 (`f1`).
    pub fn score(&self, model: &Model) -> Result<TaskScore> {
        let Answers {
            labels,
            generated: generated_answers,
            probable: new,
        } = self.answers(model)?;
        let n = labels.len();
        let correct = generated_answers
            .iter()
            .zip(&labels)
            .filter(|(p, l)| p == l)
            .count();
        let f1 = 100.0 * weighted_f1(&labels, &generated_answers);
        Ok(TaskScore {
            n,
            acc: 100.0 * correct as f64 / n.max(1) as f64,
            acc_norm: None,
            perplexity: None,
            main: f1,
            f1: Some(f1),
            f1_new: Some(100.0 * weighted_f1(&labels, &new)),
            mcc: Some(100.0 * mcc(&labels, &generated_answers)),
            invalid: Some(generated_answers.iter().filter(|&&p| p == -1).count()),
        })
    }
}

/// A task's answers, item by item (−1: none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answers {
    pub labels: Vec<i64>,
    /// Read from the greedy generation.
    pub generated: Vec<i64>,
    /// The most probable answer word.
    pub probable: Vec<i64>,
}

/// The probability answer: binary tasks 1 iff the word for 1 is strictly more likely
/// (ties to 0); MMLU the strictly most likely letter, else −1.
fn probability_answer(kind: Kind, p: &[f64]) -> i64 {
    if kind != Kind::Mmlu {
        return i64::from(p[0] > p[1]);
    }
    (0..p.len())
        .find(|&i| (0..p.len()).all(|j| j == i || p[i] > p[j]))
        .map_or(-1, |i| kind.words()[i].1)
}

/// The classes sklearn sees: every label of the gold and the predictions, sorted.
fn classes(labels: &[i64], preds: &[i64]) -> Vec<i64> {
    let mut c: Vec<i64> = labels.iter().chain(preds).copied().collect();
    c.sort_unstable();
    c.dedup();
    c
}

/// sklearn's `f1_score(labels, preds, average='weighted')`: each class's F1 weighted by
/// its share of the gold (a class never gold, such as −1, weighs nothing); an undefined
/// precision or recall counts as 0.
pub fn weighted_f1(labels: &[i64], preds: &[i64]) -> f64 {
    let n = labels.len();
    if n == 0 {
        return 0.0;
    }
    classes(labels, preds)
        .into_iter()
        .map(|c| {
            let tp = labels
                .iter()
                .zip(preds)
                .filter(|&(&l, &p)| l == c && p == c)
                .count();
            let gold = labels.iter().filter(|&&l| l == c).count();
            let pred = preds.iter().filter(|&&p| p == c).count();
            let f1 = if gold + pred == 0 {
                0.0
            } else {
                2.0 * tp as f64 / (gold + pred) as f64
            };
            f1 * gold as f64 / n as f64
        })
        .sum()
}

/// sklearn's `matthews_corrcoef(labels, preds)`, the multiclass form over every class
/// of either list; 0 when undefined.
pub fn mcc(labels: &[i64], preds: &[i64]) -> f64 {
    let s = labels.len() as f64;
    let c = labels.iter().zip(preds).filter(|(l, p)| l == p).count() as f64;
    let (mut pt, mut pp, mut tt) = (0.0, 0.0, 0.0);
    for k in classes(labels, preds) {
        let t = labels.iter().filter(|&&l| l == k).count() as f64;
        let p = preds.iter().filter(|&&x| x == k).count() as f64;
        pt += p * t;
        pp += p * p;
        tt += t * t;
    }
    let den = ((s * s - pp) * (s * s - tt)).sqrt();
    if den == 0.0 { 0.0 } else { (c * s - pt) / den }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values worked by hand from the definitions; sklearn 1.9.1 gives the same (checked
    /// to 1e-15), and the MMLU-like case is sklearn's own output.
    #[test]
    fn weighted_f1_and_mcc_follow_sklearn() {
        // Gold 1,1,0,0; predicted 1,0,0,0: class 1 F1 = 2/3, class 0 F1 = 0.8.
        let (l, p) = ([1, 1, 0, 0], [1, 0, 0, 0]);
        assert!((weighted_f1(&l, &p) - (0.5 * 2.0 / 3.0 + 0.5 * 0.8)).abs() < 1e-12);
        // Confusion tp 1, fn 1, tn 2, fp 0: (tp·tn − fp·fn)/sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn))
        // = 2/sqrt(1·2·2·3).
        assert!((mcc(&l, &p) - 2.0 / 12f64.sqrt()).abs() < 1e-12);
        // An invalid answer (−1) is wrong for its gold class and weighs nothing itself:
        // class 1 F1 = 2·1/(2+1) = 2/3, class 0 F1 = 2·2/(2+2) = 1.
        let (l, p) = ([1, 1, 0, 0], [1, -1, 0, 0]);
        assert!((weighted_f1(&l, &p) - (0.5 * 2.0 / 3.0 + 0.5)).abs() < 1e-12);
        // Multiclass MCC with −1 as a class: c = 3, s = 4, Σ p·t = 1·0 + 2·2 + 1·2 = 6,
        // Σ p² = 1 + 4 + 1 = 6, Σ t² = 0 + 4 + 4 = 8: (12 − 6)/sqrt((16 − 6)(16 − 8)).
        assert!((mcc(&l, &p) - 6.0 / 80f64.sqrt()).abs() < 1e-12);
        assert_eq!(mcc(&[1, 1], &[1, 1]), 0.0);
        let (l, p) = ([0, 1, 2, 3, 1], [0, -1, 2, 2, 1]);
        assert!((weighted_f1(&l, &p) - 0.5999999999999999).abs() < 1e-12);
        assert!((mcc(&l, &p) - 0.5555555555555556).abs() < 1e-12);
        assert_eq!(weighted_f1(&[1, 0], &[1, 0]), 1.0);
    }

    #[test]
    fn answers_are_read_after_the_last_marker_in_alphaedits_order() {
        let p = "Review :fine\nSentiment :";
        assert_eq!(Kind::Sst2.answer(&format!("{p} Positive, or"), p), 1);
        assert_eq!(Kind::Sst2.answer(&format!("{p} negative"), p), 0);
        assert_eq!(Kind::Sst2.answer(&format!("{p} good"), p), -1);
        // Both words: the word for 1 is tried first.
        assert_eq!(
            Kind::Sst2.answer(&format!("{p} negative not positive"), p),
            1
        );
        // RTE tries "false" first; "no" inside "not" counts for CoLA as it does in Python.
        let r = "a\nquestion: b True or False?\nanswer:";
        assert_eq!(Kind::Rte.answer(&format!("{r} True, not false"), r), 0);
        let c = "Is this sentence linguistically acceptable?\nSentence: x\nAnswer: ";
        assert_eq!(Kind::Cola.answer(&format!("{c}It is not"), c), 0);
        // A marker in the generation moves the reading after it.
        let m = "x\nAnswer:";
        assert_eq!(Kind::Mrpc.answer(&format!("{m} no\nAnswer: yes"), m), 1);
        // MMLU: the generation alone, `a\n` … `d\n` in turn.
        let q = "Question: q\n(A) x\n(B) y\n(C) z\n(D) w\nAnswer:";
        assert_eq!(Kind::Mmlu.answer(&format!("{q} C\n"), q), 2);
        assert_eq!(Kind::Mmlu.answer(&format!("{q} C"), q), -1);
    }

    #[test]
    fn probability_answers_break_ties_as_alphaedit_does() {
        assert_eq!(probability_answer(Kind::Sst2, &[0.6, 0.4]), 1);
        assert_eq!(probability_answer(Kind::Sst2, &[0.5, 0.5]), 0);
        assert_eq!(probability_answer(Kind::Mmlu, &[0.1, 0.4, 0.2, 0.3]), 1);
        assert_eq!(probability_answer(Kind::Mmlu, &[0.4, 0.4, 0.1, 0.1]), -1);
    }
}
