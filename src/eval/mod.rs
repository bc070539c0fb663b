//! Evaluation of edits exactly as the literature measures them (METRICS.md; MEMIT's
//! `eval_utils_counterfact.py`, `eval_utils_zsre.py`, `summarize.py`), plus exact
//! match of greedy generation.
//!
//! [`evaluate`] scores records in chunks (their prompts share packed forward passes)
//! and hands each [`RecordResult`] on as soon as it is done, so a report can be written
//! as it goes and an interrupted run resumed. [`Summary`] aggregates results: per
//! record first, then the mean over records, × 100, under METRICS.md's names.

pub mod chat;
pub mod check;
pub mod counterfact;
pub mod easyedit;
pub mod general;
pub mod generation;
pub mod health;
pub mod metrics;
pub mod run_dir;
pub mod scorer;
pub mod zsre;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::{EditRecord, Suite};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use counterfact::ProbScores;
use generation::{Attributes, ExactScores, GenScores};
use metrics::{harmonic_mean, mean};
use zsre::AccScores;

/// The teacher-forced scores of a record, by suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scores {
    CounterFact(ProbScores),
    Zsre(AccScores),
}

/// Everything measured for one record; one line of `records.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordResult {
    pub id: String,
    pub suite: Suite,
    pub subject: String,
    /// The edit prompt with the subject filled in.
    pub prompt: String,
    pub target_new: String,
    pub target_true: Option<String>,
    pub scores: Scores,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<ExactScores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenScores>,
    /// Mean NLL of the subject's own tokens in the rewrite prompt, after editing and
    /// (filled in by the protocol) before: their change is `subject_nll_delta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_nll: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_nll_before: Option<f64>,
    /// The question asked through the chat template (instruct models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<chat::ChatScores>,
    /// EasyEdit's portability per probe set (fractions; records with probes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub portability: BTreeMap<String, f64>,
    /// EasyEdit's locality: the neighbours' predictions after the edit, and (filled in
    /// by the protocol, which saw the model before) the share unchanged per set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<easyedit::Locality>,
}

/// What to measure beyond the teacher-forced scores.
pub struct EvalOptions {
    /// Greedy generation from the rewrite and paraphrase prompts.
    pub exact_match: bool,
    /// CounterFact fluency (GE): top-k samples from the generation prompts.
    pub generation: bool,
    /// Sample for GE only these records (by id), if set: GE dominates the cost.
    pub generation_ids: Option<std::collections::HashSet<String>>,
    /// Seed of the samplers (mixed with each record's id).
    pub seed: u64,
    /// Reference texts and IDF data for consistency (RS).
    pub attributes: Option<Attributes>,
    /// Records scored together in one round of forward passes.
    pub chunk: usize,
    /// Show a progress bar with ETA on the terminal.
    pub progress: bool,
    /// Measure the model's health (perplexity, known facts) before and after editing.
    pub health: Option<health::Probe>,
    /// Sequential runs: records a checkpoint of the curve scores at most (a fixed
    /// sample of the run, plus the first batch).
    pub curve_sample: usize,
    /// Ask each edit's question through the chat template ([`chat`]); needs a model
    /// with one.
    pub chat: bool,
    /// Record the neighbours' predictions for EasyEdit's locality ([`easyedit`]); the
    /// protocol compares them with the unedited model's.
    pub locality: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            exact_match: true,
            generation: true,
            generation_ids: None,
            seed: 0,
            attributes: None,
            chunk: 16,
            progress: false,
            health: None,
            curve_sample: 200,
            chat: false,
            locality: true,
        }
    }
}

/// A per-record seed: the same record gets the same samples in any shard or order.
fn record_seed(seed: u64, id: &str) -> u64 {
    // FNV-1a.
    id.bytes().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Scores `records` and passes each result to `done` in order.
pub fn evaluate(
    model: &Model,
    tok: &Tokenizer,
    records: &[EditRecord],
    opts: &EvalOptions,
    done: &mut dyn FnMut(RecordResult) -> Result<()>,
) -> Result<()> {
    for chunk in records.chunks(opts.chunk.max(1)) {
        match evaluate_chunk(model, tok, chunk, opts, done) {
            // Find the record that does not fit, to name it.
            Err(Error::ContextOverflow { .. }) if chunk.len() > 1 => {
                for r in chunk {
                    evaluate_chunk(model, tok, std::slice::from_ref(r), opts, done)
                        .map_err(|e| e.at_record(&r.id))?;
                }
            }
            Err(e @ Error::ContextOverflow { .. }) => return Err(e.at_record(&chunk[0].id)),
            other => other?,
        }
    }
    Ok(())
}

/// [`evaluate`] on one chunk of records, scored together.
fn evaluate_chunk(
    model: &Model,
    tok: &Tokenizer,
    chunk: &[EditRecord],
    opts: &EvalOptions,
    done: &mut dyn FnMut(RecordResult) -> Result<()>,
) -> Result<()> {
    let cf: Vec<&EditRecord> = chunk
        .iter()
        .filter(|r| r.suite == Suite::CounterFact)
        .collect();
    let zs: Vec<&EditRecord> = chunk.iter().filter(|r| r.suite == Suite::Zsre).collect();
    let mut cf_scores = counterfact::score(model, tok, &cf)?.into_iter();
    let mut zs_scores = zsre::score(model, tok, &zs)?.into_iter();
    let exact = if opts.exact_match {
        exact_scores(model, tok, chunk)?
    } else {
        vec![None; chunk.len()]
    };
    let mut generations = if opts.generation {
        generations(model, tok, chunk, opts)?
    } else {
        vec![None; chunk.len()]
    }
    .into_iter();
    let mut subject = check::subject_nlls(model, tok, chunk)?.into_iter();
    let all: Vec<&EditRecord> = chunk.iter().collect();
    let mut portability = easyedit::portability(model, tok, &all)?.into_iter();
    let mut locality = if opts.locality {
        easyedit::neighbour_argmax(model, tok, &all)?
    } else {
        vec![None; chunk.len()]
    }
    .into_iter();
    let mut chats = if opts.chat {
        chat::chat_scores(model, tok, chunk)?
            .into_iter()
            .map(Some)
            .collect()
    } else {
        vec![None; chunk.len()]
    }
    .into_iter();
    for (r, exact) in chunk.iter().zip(exact) {
        let scores = match r.suite {
            Suite::CounterFact => {
                Scores::CounterFact(cf_scores.next().expect("one score per record"))
            }
            Suite::Zsre => Scores::Zsre(zs_scores.next().expect("one score per record")),
        };
        done(RecordResult {
            id: r.id.clone(),
            suite: r.suite,
            subject: r.subject.clone(),
            prompt: r.rewrite_prompt(),
            target_new: r.target_new.clone(),
            target_true: r.target_true.clone(),
            scores,
            exact,
            generation: generations.next().flatten(),
            chat: chats.next().flatten(),
            subject_nll: subject.next().flatten(),
            subject_nll_before: None,
            portability: portability.next().unwrap_or_default(),
            locality: locality.next().flatten(),
        })?;
    }
    Ok(())
}

/// Fluency (and consistency) of the CounterFact records of a chunk, all samples in one
/// batch; each prompt's seed comes from its record's id, so results do not depend on
/// chunking or sharding.
fn generations(
    model: &Model,
    tok: &Tokenizer,
    chunk: &[EditRecord],
    opts: &EvalOptions,
) -> Result<Vec<Option<GenScores>>> {
    let wanted = |r: &EditRecord| {
        r.suite == Suite::CounterFact
            && !r.generation_prompts.is_empty()
            && opts
                .generation_ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&r.id))
    };
    let mut prompts = Vec::new();
    let mut seeds = Vec::new();
    for r in chunk.iter().filter(|r| wanted(r)) {
        let base = record_seed(opts.seed, &r.id);
        for (i, p) in r.generation_prompts.iter().enumerate() {
            prompts.push(p.clone());
            seeds.push(base.wrapping_add(i as u64));
        }
    }
    let mut texts = generation::sample_texts(model, tok, &prompts, &seeds)?.into_iter();
    Ok(chunk
        .iter()
        .map(|r| {
            if !wanted(r) {
                return None;
            }
            let mine: Vec<String> = texts.by_ref().take(r.generation_prompts.len()).collect();
            let attrs = match (&opts.attributes, &r.relation_id, &r.target_new_id) {
                (Some(a), Some(rel), Some(t)) => Some((a, rel.as_str(), t.as_str())),
                _ => None,
            };
            Some(generation::gen_scores(mine, attrs))
        })
        .collect())
}

/// Exact match for a chunk of records, all greedy generations in one batch.
fn exact_scores(
    model: &Model,
    tok: &Tokenizer,
    chunk: &[EditRecord],
) -> Result<Vec<Option<ExactScores>>> {
    let mut pairs = Vec::new();
    for r in chunk {
        pairs.push((r.rewrite_prompt(), r.target_new.clone()));
        pairs.extend(
            r.paraphrases
                .iter()
                .map(|p| (p.clone(), r.target_new.clone())),
        );
    }
    let mut items = generation::exact_items(model, tok, &pairs)?.into_iter();
    let rate = |v: &[generation::ExactItem]| mean(v.iter().map(|i| i.correct as u8 as f64));
    Ok(chunk
        .iter()
        .map(|r| {
            let rewrite: Vec<_> = items.by_ref().take(1).collect();
            let paraphrase: Vec<_> = items.by_ref().take(r.paraphrases.len()).collect();
            Some(ExactScores {
                efficacy: rate(&rewrite),
                paraphrase_rate: rate(&paraphrase),
                rewrite,
                paraphrase,
            })
        })
        .collect())
}

/// Aggregates over records (each metric the mean of the per-record values, × 100).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Records aggregated.
    pub n: usize,
    /// METRICS.md's names: `ES PS NS EM PM NM S GE RS EM_exact PS_exact` for
    /// CounterFact, `efficacy paraphrase specificity score efficacy_exact
    /// paraphrase_exact` for zsRE; `null` where not computed.
    pub metrics: BTreeMap<String, Option<f64>>,
    /// What was not computed, and why.
    pub notes: Vec<String>,
}

impl Summary {
    pub fn new(results: &[RecordResult]) -> Self {
        let pct = |v: Option<f64>| v.map(|x| x * 100.0);
        let mut metrics = BTreeMap::new();
        let mut notes = Vec::new();
        let cf: Vec<&ProbScores> = results
            .iter()
            .filter_map(|r| match &r.scores {
                Scores::CounterFact(s) => Some(s),
                _ => None,
            })
            .collect();
        let zs: Vec<&AccScores> = results
            .iter()
            .filter_map(|r| match &r.scores {
                Scores::Zsre(s) => Some(s),
                _ => None,
            })
            .collect();
        let exact = |suite: Suite, f: fn(&ExactScores) -> Option<f64>| {
            pct(mean(
                results
                    .iter()
                    .filter(|r| r.suite == suite)
                    .filter_map(|r| r.exact.as_ref().and_then(f)),
            ))
        };
        if !cf.is_empty() {
            let m = |f: fn(&ProbScores) -> Option<f64>| pct(mean(cf.iter().filter_map(|s| f(s))));
            let (es, ps, ns) = (m(|s| s.es), m(|s| s.ps), m(|s| s.ns));
            metrics.insert("ES".into(), es);
            metrics.insert("PS".into(), ps);
            metrics.insert("NS".into(), ns);
            metrics.insert("EM".into(), m(|s| s.em));
            metrics.insert("PM".into(), m(|s| s.pm));
            metrics.insert("NM".into(), m(|s| s.nm));
            let parts: Vec<f64> = [es, ps, ns].into_iter().flatten().collect();
            metrics.insert(
                "S".into(),
                (parts.len() == 3).then(|| harmonic_mean(&parts)),
            );
            let gens: Vec<&GenScores> = results
                .iter()
                .filter_map(|r| r.generation.as_ref())
                .collect();
            metrics.insert("GE".into(), pct(mean(gens.iter().filter_map(|g| g.ge))));
            let rs = pct(mean(gens.iter().filter_map(|g| g.rs)));
            metrics.insert("RS".into(), rs);
            if !gens.is_empty() && gens.len() < cf.len() {
                notes.push(format!(
                    "GE over the first {} of {} records",
                    gens.len(),
                    cf.len()
                ));
            }
            if gens.is_empty() {
                notes.push("GE and RS not computed: generation was off or the records have no generation prompts".into());
            } else if rs.is_none() {
                notes.push(
                    "RS not computed: it needs MEMIT's attribute snippets and IDF data (--attributes DIR with \
                     attribute_snippets.json, idf.npy, tfidf_vocab.json) and records with relation and object ids"
                        .into(),
                );
            }
            metrics.insert("EM_exact".into(), exact(Suite::CounterFact, |e| e.efficacy));
            metrics.insert(
                "PS_exact".into(),
                exact(Suite::CounterFact, |e| e.paraphrase_rate),
            );
        }
        if !zs.is_empty() {
            let m = |f: fn(&AccScores) -> Option<f64>| pct(mean(zs.iter().filter_map(|s| f(s))));
            let (e, p, s) = (m(|s| s.efficacy), m(|s| s.paraphrase), m(|s| s.specificity));
            metrics.insert("efficacy".into(), e);
            metrics.insert("paraphrase".into(), p);
            metrics.insert("specificity".into(), s);
            let parts: Vec<f64> = [e, p, s].into_iter().flatten().collect();
            metrics.insert(
                "score".into(),
                (parts.len() == 3).then(|| harmonic_mean(&parts)),
            );
            metrics.insert("efficacy_exact".into(), exact(Suite::Zsre, |e| e.efficacy));
            metrics.insert(
                "paraphrase_exact".into(),
                exact(Suite::Zsre, |e| e.paraphrase_rate),
            );
        }
        // EasyEdit's probe metrics, over the records of any suite that have them.
        let portability =
            easyedit::summarize("portability", results.iter().map(|r| &r.portability));
        let locality = easyedit::summarize(
            "locality",
            results
                .iter()
                .filter_map(|r| r.locality.as_ref().map(|l| &l.sets)),
        );
        for (k, v) in portability.into_iter().chain(locality) {
            metrics.insert(k, Some(v));
        }
        let deltas = results
            .iter()
            .filter_map(|r| Some(r.subject_nll? - r.subject_nll_before?));
        if let Some(d) = mean(deltas) {
            metrics.insert("subject_nll_delta".into(), Some(d));
        }
        let chats: Vec<&chat::ChatScores> =
            results.iter().filter_map(|r| r.chat.as_ref()).collect();
        if !chats.is_empty() {
            let rate = |f: fn(&chat::ChatScores) -> bool| {
                pct(mean(chats.iter().map(|c| f(c) as u8 as f64)))
            };
            metrics.insert("chat_exact".into(), rate(|c| c.exact));
            metrics.insert("chat_clean".into(), rate(|c| c.clean));
        }
        if results.iter().all(|r| r.exact.is_none()) && !results.is_empty() {
            notes.push("exact match not computed (turned off)".into());
        }
        Summary {
            n: results.len(),
            metrics,
            notes,
        }
    }

    /// A markdown table of the metrics.
    pub fn markdown(&self) -> String {
        let mut s = format!("| metric | value (n = {}) |\n|---|---:|\n", self.n);
        for (k, v) in &self.metrics {
            match v {
                Some(v) => s.push_str(&format!("| {k} | {v:.2} |\n")),
                None => s.push_str(&format!("| {k} | — |\n")),
            }
        }
        for note in &self.notes {
            s.push_str(&format!("\n{note}\n"));
        }
        s
    }
}
