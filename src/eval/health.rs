//! Model health: is the edited model still a working language model? (SCALE.md)
//!
//! Editing metrics say whether the edits took; they can stay high while the model
//! around them breaks (a faulty MEMIT run on Gemma 3 kept GE 609 and spoke word salad).
//! Two cheap, local signals catch that:
//! - **perplexity** of held-out plain text (a fixed slice, by default WikiText-2's
//!   validation text, which the key statistics do not read), before and after editing;
//!   it jumps by orders of magnitude when a model collapses;
//! - **known-fact retention**: of the facts the unedited model gets right (top-1 at the
//!   first target token; subjects being edited left out), the share it still gets right.
//!
//! - **general abilities** when asked ([`GeneralOptions`]): zero-shot downstream tasks
//!   scored as lm-evaluation-harness does ([`crate::eval::general`]), on the first
//!   items of each task.
//!
//! A run is flagged **collapsed** when `PPL / PPL_before` exceeds a factor (1.5), or the
//! general-ability mean drops by more than a threshold (5 points).
//!
//! [`Probe`] tokenises the text and the facts once; [`Probe::baseline`] measures the
//! unedited model, [`Probe::measure`] an edited one against it.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::general::{GeneralTask, TaskScore, expand_task_names, tasks};
use super::scorer::predictions;
use crate::error::{Error, Result};
use crate::model::{Input, LogitsAt, Model};
use crate::tokenizer::Tokenizer;

/// What the health check reads and when it raises the flag.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthOptions {
    /// Plain text for perplexity.
    pub text: PathBuf,
    /// Tokens of `text` scored (its first ones).
    pub tokens: usize,
    /// The slice is scored in windows of this many tokens, each from a fresh context.
    pub window: usize,
    /// Facts for retention: ROME's `known_1000.json` format (`prompt`, `subject`,
    /// `attribute`), or any edit-record file whose records have a true target.
    pub known: Option<PathBuf>,
    /// Use the first this many facts of `known`.
    pub known_n: usize,
    /// Flag a collapse when perplexity grows by more than this factor.
    pub collapse_factor: f64,
    /// Where the unedited model's numbers are cached (by weights and probe); `None`
    /// measures them every time.
    pub cache_dir: Option<PathBuf>,
    /// Downstream tasks; `None`: none.
    pub general: Option<GeneralOptions>,
}

/// Which downstream tasks a health check scores, and when their drop is a collapse.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneralOptions {
    /// The tasks' data folder (`general/` in the data folder).
    pub dir: PathBuf,
    /// The first this many items of each task; the default is the sample `ftedit eval`
    /// scores unless told otherwise (about 40 s on SmolLM2 with two threads).
    pub items: usize,
    /// Task names ([`tasks::TASKS`]).
    pub tasks: Vec<String>,
    /// Flag a collapse when the mean of the tasks' main metrics drops by more than this
    /// many points.
    pub drop_threshold: f64,
}

impl Default for GeneralOptions {
    fn default() -> Self {
        GeneralOptions {
            dir: crate::data::data_dir().join("general"),
            items: 10,
            tasks: tasks::TASKS.iter().map(|s| s.to_string()).collect(),
            drop_threshold: 5.0,
        }
    }
}

impl Default for HealthOptions {
    fn default() -> Self {
        let data = crate::data::data_dir();
        HealthOptions {
            text: data.join("aux/wikitext-2/valid.txt"),
            tokens: 1024,
            window: 256,
            known: Some(data.join("counterfact/known_1000.json")),
            known_n: 500,
            collapse_factor: 1.5,
            cache_dir: Some(crate::cache::dir()),
            general: None,
        }
    }
}

/// One fact to check: the prompt as a model input and the first token of its answer.
#[derive(Debug, Clone)]
struct Fact {
    subject: String,
    prompt_ids: Vec<u32>,
    answer: u32,
}

/// The tokenised text and facts of a health check, prepared once per run.
pub struct Probe {
    windows: Vec<Vec<u32>>,
    /// With a document-start token first, every window token is scored; without, all
    /// but the first.
    lead: bool,
    facts: Vec<Fact>,
    general: Vec<GeneralTask>,
    pub options: HealthOptions,
}

/// The unedited model's numbers, which edited ones are compared with.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub ppl: f64,
    /// Indices (into the probe's facts) of the facts the unedited model gets right,
    /// edited subjects left out.
    known: Vec<usize>,
    /// Per task of the probe, in order.
    general: Vec<TaskScore>,
}

/// The downstream tasks' scores after editing and before, and the mean of their main
/// metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneralHealth {
    pub tasks: BTreeMap<String, TaskScore>,
    pub before: BTreeMap<String, TaskScore>,
    pub mean: f64,
    pub mean_before: f64,
    /// `mean_before − mean`, in points.
    pub mean_drop: f64,
}

/// A model's health against its unedited self: `health` in `summary.json`, one per
/// checkpoint in `curve.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    #[serde(rename = "PPL_before")]
    pub ppl_before: f64,
    #[serde(rename = "PPL")]
    pub ppl: f64,
    /// Percent of `known_facts` still top-1; `None` without facts.
    pub known_retained: Option<f64>,
    /// Facts the unedited model knew (edited subjects left out).
    pub known_facts: usize,
    /// `PPL / PPL_before` is above the collapse factor (in a sequential run: at this
    /// checkpoint or an earlier one).
    pub collapsed: bool,
    /// Edits applied at the first checkpoint where the model had collapsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapsed_at: Option<usize>,
    /// General abilities, when the check scores downstream tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub general: Option<GeneralHealth>,
}

impl Health {
    pub fn ratio(&self) -> f64 {
        self.ppl / self.ppl_before
    }

    /// Its numbers as a run's metrics: `PPL_before`, `PPL`, `known_retained` and, with
    /// general abilities, `general.<task>.acc` / `.acc_norm` (and LAMBADA's `.perplexity`)
    /// and their `…_before`, `general.mean`, `general.mean_before`, `general.mean_drop`.
    pub fn metrics(&self) -> Vec<(String, Option<f64>)> {
        let mut out = vec![
            ("PPL_before".to_string(), Some(self.ppl_before)),
            ("PPL".to_string(), Some(self.ppl)),
            ("known_retained".to_string(), self.known_retained),
        ];
        if let Some(g) = &self.general {
            for (task, after) in &g.tasks {
                let before = g.before.get(task);
                out.push((format!("general.{task}.acc"), Some(after.acc)));
                out.push((format!("general.{task}.acc_before"), before.map(|b| b.acc)));
                for (metric, a, b) in [
                    ("f1", after.f1, before.and_then(|b| b.f1)),
                    ("f1_new", after.f1_new, before.and_then(|b| b.f1_new)),
                    ("mcc", after.mcc, before.and_then(|b| b.mcc)),
                    // LAMBADA's: harm on text the γ·LM data (WikiText) does not cover.
                    (
                        "perplexity",
                        after.perplexity,
                        before.and_then(|b| b.perplexity),
                    ),
                ] {
                    if a.is_some() {
                        out.push((format!("general.{task}.{metric}"), a));
                        out.push((format!("general.{task}.{metric}_before"), b));
                    }
                }
                if after.acc_norm.is_some() {
                    out.push((format!("general.{task}.acc_norm"), after.acc_norm));
                    out.push((
                        format!("general.{task}.acc_norm_before"),
                        before.and_then(|b| b.acc_norm),
                    ));
                }
            }
            out.push(("general.mean".into(), Some(g.mean)));
            out.push(("general.mean_before".into(), Some(g.mean_before)));
            out.push(("general.mean_drop".into(), Some(g.mean_drop)));
        }
        out
    }

    /// One line for a terminal: `PPL 15.2 → 15.9 (×1.05); known facts kept 97.1 % (66 of 68)`.
    pub fn line(&self) -> String {
        let mut s = format!(
            "PPL {:.2} → {:.2} (×{:.2})",
            self.ppl_before,
            self.ppl,
            self.ratio()
        );
        if let Some(k) = self.known_retained {
            let kept = (k / 100.0 * self.known_facts as f64).round() as usize;
            s.push_str(&format!(
                "; known facts kept {k:.1} % ({kept} of {})",
                self.known_facts
            ));
        }
        if let Some(g) = &self.general {
            s.push_str(&format!(
                "; general mean {:.1} → {:.1} ({:+.1})",
                g.mean_before,
                g.mean,
                g.mean - g.mean_before
            ));
        }
        s
    }
}

/// Reads the first `tokens` tokens of a text file, tokenising no more of it than needed.
fn first_tokens(tok: &Tokenizer, path: &Path, tokens: usize) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    // About four characters a token; double the prefix until it is enough.
    let mut chars = (tokens * 6).max(1024);
    loop {
        let end = text
            .char_indices()
            .nth(chars)
            .map_or(text.len(), |(i, _)| i);
        // Cut at a line end, so that no word is split into odd tokens.
        let end = if end < text.len() {
            text[..end].rfind('\n').map_or(end, |i| i + 1)
        } else {
            end
        };
        let ids = tok.encode(&text[..end], false)?;
        if ids.len() >= tokens {
            return Ok(ids[..tokens].to_vec());
        }
        if end == text.len() {
            return Err(Error::Input(format!(
                "{}: the perplexity text has {} tokens, fewer than the {tokens} the health \
                 check scores (a longer text, or fewer --health-tokens)",
                path.display(),
                ids.len()
            )));
        }
        chars *= 2;
    }
}

/// The facts of `path`: `known_1000.json`'s format or edit records with true targets.
fn read_facts(tok: &Tokenizer, path: &Path, n: usize) -> Result<Vec<Fact>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Format {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let known_format = json
        .as_array()
        .and_then(|a| a.first())
        .is_some_and(|r| r.get("attribute").is_some() && r.get("prompt").is_some());
    let pairs: Vec<(String, String, String)> = if known_format {
        let rows = json.as_array().expect("checked");
        let mut out = Vec::new();
        for (i, r) in rows.iter().take(n).enumerate() {
            let field = |f: &str| {
                r.get(f)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| Error::Record {
                        path: path.to_owned(),
                        index: i,
                        field: f.into(),
                        reason: "missing or not a string".into(),
                    })
            };
            out.push((field("subject")?, field("prompt")?, field("attribute")?));
        }
        out
    } else {
        crate::data::load(path, None)?
            .into_iter()
            .filter_map(|r| {
                let t = r.target_true.clone()?;
                Some((r.subject.clone(), r.rewrite_prompt(), t))
            })
            .take(n)
            .collect()
    };
    if pairs.is_empty() {
        return Err(Error::Input(format!(
            "{}: no facts with a true answer for the health check",
            path.display()
        )));
    }
    pairs
        .into_iter()
        .map(|(subject, prompt, answer)| {
            let a = tok.encode(&format!(" {}", answer.trim()), false)?;
            let answer = *a.first().ok_or_else(|| {
                Error::Input(format!(
                    "{}: answer {answer:?} has no tokens",
                    path.display()
                ))
            })?;
            Ok(Fact {
                subject,
                prompt_ids: tok.encode(&prompt, true)?,
                answer,
            })
        })
        .collect()
}

impl Probe {
    /// Tokenises the text slice and the facts. Fails, before any editing, when the text
    /// is shorter than the slice or a file cannot be read.
    pub fn new(tok: &Tokenizer, options: HealthOptions, max_positions: usize) -> Result<Self> {
        if options.tokens < 2 || options.window < 2 {
            return Err(Error::Input(format!(
                "the health check needs at least 2 tokens and a window of 2 (got {} and {})",
                options.tokens, options.window
            )));
        }
        if options.collapse_factor.is_nan() || options.collapse_factor <= 1.0 {
            return Err(Error::Input(format!(
                "--collapse-factor {} must be above 1",
                options.collapse_factor
            )));
        }
        let start = tok.document_start();
        let lead = start.is_some();
        let window = options.window.min(max_positions - lead as usize);
        let ids = first_tokens(tok, &options.text, options.tokens)?;
        let windows = ids
            .chunks(window)
            .filter(|w| w.len() >= 2)
            .map(|w| start.into_iter().chain(w.iter().copied()).collect())
            .collect();
        // A prompt longer than the model's context cannot be asked (tiny models).
        let facts = match &options.known {
            Some(p) => read_facts(tok, p, options.known_n)?
                .into_iter()
                .filter(|f| f.prompt_ids.len() <= max_positions)
                .collect(),
            None => Vec::new(),
        };
        let general = match &options.general {
            Some(g) => expand_task_names(&g.tasks)
                .iter()
                .map(|name| GeneralTask::load(name, &g.dir, g.items, tok, max_positions))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        Ok(Probe {
            windows,
            lead,
            facts,
            general,
            options,
        })
    }

    /// Tokens whose NLL the perplexity averages.
    pub fn scored_tokens(&self) -> usize {
        self.windows
            .iter()
            .map(|w| w.len() - (!self.lead) as usize)
            .sum()
    }

    /// Perplexity of the text slice: `exp` of the mean next-token NLL over the windows.
    pub fn perplexity(&self, model: &Model) -> Result<f64> {
        let _g = tch::no_grad_guard();
        let vocab = model.config().vocab_size().max(1) as usize;
        let longest = self.windows.iter().map(Vec::len).max().unwrap_or(1);
        // Windows per pass: about 256 MiB of f32 logits.
        let per_pass = ((256usize << 20) / (4 * vocab * longest)).max(1);
        let (mut total, mut count) = (0f64, 0usize);
        for group in self.windows.chunks(per_pass) {
            let input = Input::right_padded(group, model.device())?;
            let logits = model.forward(&input, &LogitsAt::All)?;
            for (row, w) in group.iter().enumerate() {
                let t = w.len() as i64;
                // Logits at 0..t-1 predict tokens 1..t; the document-start token is
                // never a target, so every text token is scored when it leads.
                let lp = logits
                    .get(row as i64)
                    .narrow(0, 0, t - 1)
                    .to_kind(Kind::Float)
                    .log_softmax(-1, Kind::Float);
                let labels: Vec<i64> = w[1..].iter().map(|&x| x as i64).collect();
                let labels = Tensor::from_slice(&labels)
                    .to_device(lp.device())
                    .unsqueeze(1);
                let nll = lp.gather(1, &labels, false).neg().to_kind(Kind::Double);
                total += nll.sum(Kind::Double).double_value(&[]);
                count += (t - 1) as usize;
            }
        }
        Ok((total / count.max(1) as f64).exp())
    }

    /// Which facts the model gets right (top-1 at the first answer token).
    fn correct(&self, model: &Model, which: &[usize]) -> Result<Vec<bool>> {
        if which.is_empty() {
            return Ok(Vec::new());
        }
        let inputs: Vec<Vec<u32>> = which
            .iter()
            .map(|&i| self.facts[i].prompt_ids.clone())
            .collect();
        Ok(predictions(model, &inputs)?
            .iter()
            .zip(which)
            .map(|(p, &i)| p.argmax == self.facts[i].answer)
            .collect())
    }

    /// The unedited model's perplexity and known facts, leaving out facts about
    /// `edited` subjects. Cached per weights and probe: a model measured once (a sweep,
    /// repeated runs) costs nothing the next time.
    pub fn baseline(&self, model: &Model, edited: &HashSet<String>) -> Result<Baseline> {
        let path = match &self.options.cache_dir {
            Some(dir) => Some(dir.join(format!(
                "health-{:016x}.json",
                model.params.fingerprint(&self.fingerprint())?
            ))),
            None => None,
        };
        let cached: Option<Cached> = path
            .as_ref()
            .filter(|p| p.exists())
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .filter(|c: &Cached| {
                c.correct.len() == self.facts.len() && c.general.len() == self.general.len()
            });
        let cached = match cached {
            Some(c) => c,
            None => {
                let all: Vec<usize> = (0..self.facts.len()).collect();
                let c = Cached {
                    ppl: self.perplexity(model)?,
                    correct: self.correct(model, &all)?,
                    general: self.general_scores(model)?,
                };
                if let Some(p) = &path {
                    crate::cache::write_text(p, &serde_json::to_string(&c).expect("serialisable"))?;
                }
                c
            }
        };
        let known = (0..self.facts.len())
            .filter(|&i| cached.correct[i] && !edited.contains(&self.facts[i].subject))
            .collect();
        Ok(Baseline {
            ppl: cached.ppl,
            known,
            general: cached.general,
        })
    }

    /// Each task's scores on `model`.
    fn general_scores(&self, model: &Model) -> Result<Vec<TaskScore>> {
        self.general.iter().map(|t| t.score(model)).collect()
    }

    /// The general-ability part of a health report: `after` against the baseline's.
    fn general_health(&self, base: &Baseline, after: Vec<TaskScore>) -> Option<GeneralHealth> {
        if self.general.is_empty() {
            return None;
        }
        // A task none of whose items fits the model's context (tiny models) has no say.
        let mean = |s: &[TaskScore]| {
            let scored: Vec<f64> = s.iter().filter(|x| x.n > 0).map(|x| x.main).collect();
            scored.iter().sum::<f64>() / scored.len().max(1) as f64
        };
        let named = |s: &[TaskScore]| -> BTreeMap<String, TaskScore> {
            self.general
                .iter()
                .zip(s)
                .map(|(t, x)| (t.name().to_owned(), x.clone()))
                .collect()
        };
        let (m, mb) = (mean(&after), mean(&base.general));
        Some(GeneralHealth {
            tasks: named(&after),
            before: named(&base.general),
            mean: m,
            mean_before: mb,
            mean_drop: mb - m,
        })
    }

    /// Whether `h` is a collapse: perplexity over the factor, or the general mean down
    /// by more than its threshold.
    fn is_collapse(&self, ppl_ratio: f64, general: Option<&GeneralHealth>) -> bool {
        let drop = match (general, &self.options.general) {
            (Some(g), Some(o)) => g.mean_drop > o.drop_threshold,
            _ => false,
        };
        ppl_ratio > self.options.collapse_factor || drop
    }

    /// What the probe measures, as text for the cache's fingerprint.
    fn fingerprint(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ("health-v1", &self.windows, self.lead).hash(&mut h);
        for f in &self.facts {
            (&f.prompt_ids, f.answer).hash(&mut h);
        }
        for t in &self.general {
            t.hash_into(&mut h);
        }
        format!("{:016x}", h.finish())
    }

    /// `model`'s health against `base`.
    pub fn measure(&self, model: &Model, base: &Baseline) -> Result<Health> {
        let ppl = self.perplexity(model)?;
        let kept = self.correct(model, &base.known)?;
        let known_retained = (!self.facts.is_empty() && !kept.is_empty())
            .then(|| 100.0 * kept.iter().filter(|&&k| k).count() as f64 / kept.len() as f64);
        let general = self.general_health(base, self.general_scores(model)?);
        Ok(Health {
            ppl_before: base.ppl,
            ppl,
            known_retained,
            known_facts: base.known.len(),
            collapsed: self.is_collapse(ppl / base.ppl, general.as_ref()),
            collapsed_at: None,
            general,
        })
    }

    /// [`Probe::measure`] after `edits` edits, a collapse marked with that count and
    /// said on stderr in one line.
    pub fn measure_after(&self, model: &Model, base: &Baseline, edits: usize) -> Result<Health> {
        let mut h = self.measure(model, base)?;
        if h.collapsed {
            h.collapsed_at = Some(edits);
            eprintln!(
                "{}",
                collapse_warning(&h, edits, self.options.collapse_factor)
            );
        }
        Ok(h)
    }

    /// The unedited model's health: the baseline against itself.
    pub fn unedited(&self, base: &Baseline) -> Health {
        Health {
            ppl_before: base.ppl,
            ppl: base.ppl,
            known_retained: (!base.known.is_empty()).then_some(100.0),
            known_facts: base.known.len(),
            collapsed: false,
            collapsed_at: None,
            general: self.general_health(base, base.general.clone()),
        }
    }
}

/// The unedited model's numbers as cached: every fact's verdict (before subjects are
/// left out) and the perplexity.
#[derive(Serialize, Deserialize)]
struct Cached {
    ppl: f64,
    correct: Vec<bool>,
    #[serde(default)]
    general: Vec<TaskScore>,
}

/// The plain line stderr gets when a model collapses.
pub fn collapse_warning(h: &Health, edits: usize, factor: f64) -> String {
    let mut line = format!(
        "warning: the model collapsed after {edits} edits: perplexity {:.2} → {:.2} (×{:.1}, \
         {} the ×{factor} threshold)",
        h.ppl_before,
        h.ppl,
        h.ratio(),
        if h.ratio() > factor { "over" } else { "within" }
    );
    if let Some(g) = &h.general {
        line.push_str(&format!(
            "; general mean {:.1} → {:.1} ({:+.1} points)",
            g.mean_before, g.mean, -g.mean_drop
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::scorer::{NllRequest, token_nlls};
    use crate::model::ArchConfig;

    fn tiny() -> Model {
        let config = ArchConfig::from_hf(&serde_json::json!({
            "model_type": "llama", "vocab_size": 50, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64,
        }))
        .unwrap();
        Model::random(config, 7, 0.3, Kind::Float, tch::Device::Cpu).unwrap()
    }

    fn options() -> HealthOptions {
        HealthOptions {
            text: PathBuf::new(),
            tokens: 0,
            window: 0,
            known: None,
            known_n: 0,
            collapse_factor: 1.5,
            cache_dir: None,
            general: None,
        }
    }

    /// A probe over token windows and facts given directly (no tokenizer).
    fn probe(model: &Model, lead: bool) -> Probe {
        let windows: Vec<Vec<u32>> = (0..3u32)
            .map(|w| (0..9).map(|j| (w * 7 + j * 3 + 1) % 50).collect())
            .collect();
        let prompts: Vec<Vec<u32>> = (0..6u32).map(|i| vec![1, 2 + i, 10 + i]).collect();
        let right = predictions(model, &prompts).unwrap();
        // Even facts are answered as the model answers them, odd ones wrongly.
        let facts = prompts
            .into_iter()
            .zip(right)
            .enumerate()
            .map(|(i, (prompt_ids, p))| Fact {
                subject: format!("s{i}"),
                prompt_ids,
                answer: if i % 2 == 0 {
                    p.argmax
                } else {
                    (p.argmax + 1) % 50
                },
            })
            .collect();
        Probe {
            windows,
            lead,
            facts,
            general: Vec::new(),
            options: options(),
        }
    }

    #[test]
    fn perplexity_is_the_exp_of_the_mean_next_token_nll() {
        // Reference: the evaluator's own teacher-forced scorer (packed passes, f64
        // log-softmax), an independent path; agreement within 1e-5 relative.
        let model = tiny();
        for lead in [true, false] {
            let p = probe(&model, lead);
            let reqs: Vec<NllRequest> = p
                .windows
                .iter()
                .map(|w| NllRequest {
                    ids: w.clone(),
                    start: 1,
                    tokens: w[1..].to_vec(),
                })
                .collect();
            let nlls: Vec<f64> = token_nlls(&model, &reqs).unwrap().concat();
            let want = (nlls.iter().sum::<f64>() / nlls.len() as f64).exp();
            let got = p.perplexity(&model).unwrap();
            assert!((got / want - 1.0).abs() < 1e-5, "{got} vs {want}");
            assert_eq!(p.scored_tokens(), 3 * 8 + if lead { 3 } else { 0 });
        }
    }

    #[test]
    fn retention_counts_known_facts_and_a_broken_model_is_flagged() {
        let model = tiny();
        let p = probe(&model, true);
        // Facts 0, 2, 4 are known; the subject of fact 2 is being edited.
        let base = p.baseline(&model, &["s2".to_string()].into()).unwrap();
        assert_eq!(base.known, vec![0, 4]);
        let same = p.measure(&model, &base).unwrap();
        assert_eq!(same.known_retained, Some(100.0));
        assert_eq!(same.known_facts, 2);
        assert!((same.ratio() - 1.0).abs() < 1e-9 && !same.collapsed);
        assert_eq!(same, p.unedited(&base));
        // Scrambled weights: perplexity jumps, facts are lost, the flag goes up.
        let _g = tch::no_grad_guard();
        for (_, t) in model.params.iter() {
            let _ = t.shallow_clone().g_add_(&(t.randn_like() * 2.0));
        }
        let broken = p.measure(&model, &base).unwrap();
        assert!(broken.ratio() > 1.5, "{broken:?}");
        assert!(broken.collapsed);
        assert!(broken.known_retained.unwrap() < 100.0, "{broken:?}");
        let line = collapse_warning(&broken, 10, 1.5);
        assert!(line.contains("after 10 edits"), "{line}");
    }

    #[test]
    fn the_baseline_is_read_back_from_the_cache() {
        let model = tiny();
        let mut p = probe(&model, true);
        let dir = std::env::temp_dir().join(format!("ftedit-health-{}", std::process::id()));
        p.options.cache_dir = Some(dir.clone());
        let first = p.baseline(&model, &HashSet::new()).unwrap();
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(files.len(), 1);
        // A planted value proves the second call reads the file.
        let path = files[0].path();
        let mut c: Cached = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!((c.ppl - first.ppl).abs() < 1e-12);
        c.ppl = 123.0;
        std::fs::write(&path, serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(p.baseline(&model, &HashSet::new()).unwrap().ppl, 123.0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
