//! Edit data sets: CounterFact (ROME schema and EasyEdit's reduced format), zsRE (MEND
//! format), EasyEdit's KnowEdit, and JSONL edit requests (also EasyEdit's flat fields
//! as WikiBigEdit writes them), read into one [`EditRecord`] type, with the portability
//! probes of EasyEdit's releases wherever a file carries them.
//!
//! One file per format (`counterfact.rs`, `zsre.rs`, `knowedit.rs`, `easyedit.rs`,
//! `jsonl.rs`), each reading records through `fields.rs`. The format is detected from
//! the file or named. A malformed record is an error that
//! names the file, the record's index and the field at fault; nothing is dropped.

mod counterfact;
mod easyedit;
mod fields;
mod jsonl;
mod knowedit;
mod zsre;

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use fields::Fields;

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Which metric suite scores a record (see `eval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Suite {
    /// Probability comparisons of the new and the true target (CounterFact).
    CounterFact,
    /// Teacher-forced top-1 token accuracy (zsRE).
    Zsre,
}

/// A prompt with the answer that should follow it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Neighbor {
    pub prompt: String,
    pub target: String,
    /// The named locality sub-set it comes from (KnowEdit's `Relation_Specificity`,
    /// `Forgetfulness`); `None` for a data set's own neighbourhood.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
}

/// A prompt of a named sub-set with its answer (portability probes: KnowEdit's sets, and
/// EasyEdit's `one_hop`, `subject_replace` and `inverse_relation` in its CounterFact and
/// zsRE releases).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    /// The sub-set, e.g. `Reasoning`, `Subject_Aliasing`, `Logical_Generalization`.
    pub set: String,
    pub prompt: String,
    pub target: String,
}

/// One edit request with everything needed to judge it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EditRecord {
    /// `case_id` (CounterFact), the record's index (zsRE), or the JSONL `id`.
    pub id: String,
    pub suite: Suite,
    /// The edit prompt with `{}` where the subject goes.
    pub prompt: String,
    pub subject: String,
    pub target_new: String,
    /// The fact being replaced (CounterFact); zsRE records have none.
    pub target_true: Option<String>,
    /// Paraphrases of the edit prompt (subject filled in): generalisation tests.
    pub paraphrases: Vec<String>,
    /// Prompts the edit must not change. CounterFact: other subjects whose true answer
    /// is `target_true`. zsRE: the NQ question (with MEMIT's "?") and its gold answer.
    pub neighborhood: Vec<Neighbor>,
    /// Prompts about other subjects whose true answer is `target_new` (CounterFact).
    pub attribute_prompts: Vec<String>,
    /// Prompts for free generation (CounterFact fluency and consistency).
    pub generation_prompts: Vec<String>,
    /// Wikidata relation and new-object ids (CounterFact), which consistency (RS) needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_new_id: Option<String>,
    /// Questions whose answer should follow from the edit (KnowEdit's portability),
    /// scored on the edited model against their answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub portability: Vec<Probe>,
}

/// The rewrite prompt's tokens through the end of the subject ([`EditRecord::subject_span`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectSpan {
    /// The prompt's tokens (BOS included) up to and including the subject's last token.
    pub ids: Vec<u32>,
    /// Where the subject's first token is in `ids`.
    pub start: usize,
}

impl EditRecord {
    /// The edit prompt with the subject filled in.
    pub fn rewrite_prompt(&self) -> String {
        self.prompt.replacen("{}", &self.subject, 1)
    }

    /// The subject's tokens in the rewrite prompt: `None` when the prompt has no place
    /// for the subject, or the subject does not start on a token boundary (its first
    /// token would merge with the text before it).
    pub fn subject_span(&self, tok: &Tokenizer) -> Result<Option<SubjectSpan>> {
        let Some((head, _)) = self.prompt.split_once("{}") else {
            return Ok(None);
        };
        let ids = tok.encode(&format!("{head}{}", self.subject), true)?;
        let before = tok.encode(head.trim_end(), true)?;
        let start = before.len();
        Ok((ids.len() > start && ids.starts_with(&before)).then_some(SubjectSpan { ids, start }))
    }
}

/// The file formats we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// ROME's CounterFact schema (`counterfact.json`, `multi_counterfact.json`, dev split).
    CounterFact,
    /// EasyEdit/MEND's reduced CounterFact (`counterfact-{train,val,edit}.json`).
    CounterFactMend,
    /// zsRE in the MEND format (`zsre_mend_eval.json`, `zsre_mend_train*.json`).
    Zsre,
    /// EasyEdit's KnowEdit (`wiki_counterfact`, `wiki_recent`, `zsre`, …): `prompt`,
    /// `subject`, `target_new`, `ground_truth` (a string or list), optional
    /// `rephrase_prompt`, and `locality` / `portability` objects of named sub-sets of
    /// `{prompt, ground_truth}` (strings or lists paired by position).
    KnowEdit,
    /// One JSON object per line (or a JSON list of them): `prompt` (with `{}` for the
    /// subject, or the subject written in it verbatim), `subject`, `target_new`, and
    /// optionally `id`, `target_true`, `paraphrases`, `neighborhood` (`[{prompt, target}]`),
    /// `attribute_prompts`, `generation_prompts`, and EasyEdit's flat fields as
    /// WikiBigEdit writes them (`rephrase_prompt`, `locality_prompt` /
    /// `locality_ground_truth`, `portability`, `personas`). With `target_true` it is
    /// scored like CounterFact, without like zsRE.
    Jsonl,
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "counterfact" | "rome" => Ok(Format::CounterFact),
            "counterfact-mend" | "easyedit" => Ok(Format::CounterFactMend),
            "zsre" | "mend" => Ok(Format::Zsre),
            "knowedit" => Ok(Format::KnowEdit),
            "jsonl" => Ok(Format::Jsonl),
            other => Err(Error::Input(format!(
                "unknown data format '{other}' (counterfact, counterfact-mend, zsre, knowedit, jsonl)"
            ))),
        }
    }
}

/// Guesses the format from the file name and the first record's fields.
pub fn detect(path: &Path, first: Option<&Json>) -> Result<Format> {
    if path.extension().is_some_and(|e| e == "jsonl") {
        return Ok(Format::Jsonl);
    }
    let has = |k: &str| first.is_some_and(|r| r.get(k).is_some());
    if has("requested_rewrite") {
        Ok(Format::CounterFact)
    } else if has("src") && has("loc") {
        Ok(Format::Zsre)
    } else if has("target_new")
        && has("prompt")
        && !has("locality_prompt")
        && (has("locality") || (has("portability") && has("ground_truth")))
    {
        Ok(Format::KnowEdit)
    } else if has("ground_truth") && has("prompt") {
        Ok(Format::CounterFactMend)
    } else if has("prompt") && has("target_new") {
        Ok(Format::Jsonl)
    } else {
        Err(Error::data(
            path,
            "not a data set we recognise (CounterFact, EasyEdit CounterFact, zsRE MEND, \
             KnowEdit, or JSONL edit requests); name the format with --format",
        ))
    }
}

/// Loads every record of a data file; `format` `None` detects it.
pub fn load(path: impl AsRef<Path>, format: Option<Format>) -> Result<Vec<EditRecord>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    // Editors on Windows often begin UTF-8 files with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let bad_json = |line: Option<usize>, e: serde_json::Error| {
        Error::data(
            path,
            match line {
                Some(l) => format!("line {}: invalid JSON: {e}", l + 1),
                None => format!("invalid JSON: {e}"),
            },
        )
    };
    let is_jsonl = format == Some(Format::Jsonl)
        || (format.is_none() && path.extension().is_some_and(|e| e == "jsonl"));
    let items: Vec<Json> = if is_jsonl {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| bad_json(Some(i), e)))
            .collect::<Result<_>>()?
    } else {
        match serde_json::from_str(text).map_err(|e| bad_json(None, e))? {
            Json::Array(items) => items,
            _ => {
                return Err(Error::data(
                    path,
                    "expected a JSON list of records (or one record per line in a .jsonl file)",
                ));
            }
        }
    };
    let format = match format {
        Some(f) => f,
        None => detect(path, items.first())?,
    };
    parse(&items, format, path)
}

/// Reads records already parsed from JSON (one object per record, as a file of
/// `format` holds them); `origin` names them in errors (a file, or `<python>`).
pub fn parse(items: &[Json], format: Format, origin: &Path) -> Result<Vec<EditRecord>> {
    let path = origin;
    let parse = match format {
        Format::CounterFact => counterfact::counterfact,
        Format::CounterFactMend => counterfact::counterfact_mend,
        Format::Zsre => zsre::zsre,
        Format::KnowEdit => knowedit::knowedit,
        Format::Jsonl => jsonl::jsonl,
    };
    items
        .iter()
        .enumerate()
        .map(|(index, obj)| {
            let f = Fields { path, index, obj };
            let r = parse(&f)?;
            // One slot: the subject goes in once; a second `{}` would be trained literally.
            let slots = r.prompt.matches("{}").count();
            if slots > 1 {
                return Err(f.err(
                    "prompt",
                    format!(
                        "{:?} has {slots} {{}} slots; the subject goes in exactly one",
                        r.prompt
                    ),
                ));
            }
            Ok(r)
        })
        .collect()
}

/// Why a set of edits cannot be made together: two edits of one fact (the same subject
/// and prompt) with different new targets, or an edit whose new target is its true one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditProblem {
    Contradicts {
        first: String,
        second: String,
        prompt: String,
        targets: [String; 2],
    },
    Unchanged {
        id: String,
        target: String,
    },
}

impl std::fmt::Display for EditProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EditProblem::Contradicts {
                first,
                second,
                prompt,
                targets,
            } => write!(
                f,
                "records {first} and {second} edit the same fact ({prompt:?}) to different \
                 targets ({:?} and {:?})",
                targets[0], targets[1]
            ),
            EditProblem::Unchanged { id, target } => write!(
                f,
                "record {id}: target_new {target:?} is its true target; there is nothing to edit"
            ),
        }
    }
}

/// The problems of making `records`' edits together ([`EditProblem`]), in record order.
pub fn edit_problems(records: &[EditRecord]) -> Vec<EditProblem> {
    let mut out = Vec::new();
    let mut seen: std::collections::HashMap<String, &EditRecord> = Default::default();
    for r in records {
        if r.target_true.as_deref().map(str::trim) == Some(r.target_new.trim()) {
            out.push(EditProblem::Unchanged {
                id: r.id.clone(),
                target: r.target_new.clone(),
            });
        }
        let fact = r.rewrite_prompt();
        match seen.get(&fact) {
            Some(first) if first.target_new.trim() != r.target_new.trim() => {
                out.push(EditProblem::Contradicts {
                    first: first.id.clone(),
                    second: r.id.clone(),
                    prompt: fact,
                    targets: [first.target_new.clone(), r.target_new.clone()],
                })
            }
            Some(_) => {}
            None => {
                seen.insert(fact, r);
            }
        }
    }
    out
}

/// Which records to take: all, the first `n`, or a range; then every `of`-th from
/// `shard` (for spreading one evaluation over machines).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub first: Option<usize>,
    pub range: Option<(usize, usize)>,
    pub shard: Option<(usize, usize)>,
}

impl Selection {
    /// Parses `A..B`.
    pub fn parse_range(s: &str) -> Result<(usize, usize)> {
        let bad = || Error::Input(format!("bad range '{s}' (expected A..B, e.g. 0..100)"));
        let (a, b) = s.split_once("..").ok_or_else(bad)?;
        let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if a >= b {
            return Err(Error::Input(format!(
                "range '{s}' selects no record: A..B takes records A to B-1, so A must be \
                 below B"
            )));
        }
        Ok((a, b))
    }

    /// Parses `i/N`.
    pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
        let bad = || Error::Input(format!("bad shard '{s}' (expected i/N with i < N)"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (i, n): (usize, usize) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if n == 0 || i >= n {
            return Err(bad());
        }
        Ok((i, n))
    }

    /// The selected records, in file order.
    pub fn apply(&self, records: Vec<EditRecord>) -> Vec<EditRecord> {
        let mut iter: Box<dyn Iterator<Item = EditRecord>> = Box::new(records.into_iter());
        if let Some((a, b)) = self.range {
            iter = Box::new(iter.skip(a).take(b - a));
        }
        if let Some(n) = self.first {
            iter = Box::new(iter.take(n));
        }
        if let Some((i, n)) = self.shard {
            iter = Box::new(
                iter.enumerate()
                    .filter(move |(k, _)| k % n == i)
                    .map(|(_, r)| r),
            );
        }
        iter.collect()
    }
}

/// The data folder shipped beside the repository (`../shared/data`), or `$FTEDIT_DATA`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("FTEDIT_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

/// The plain text used when a method needs some and none is named (γ·LM, ROME/MEMIT key
/// statistics): the WikiText sample in the data folder.
pub fn default_text() -> PathBuf {
    data_dir().join("aux/wikitext-2-raw/wiki.test.raw")
}

/// The default pool of unedited facts for edits of `suite`: its train split in the data
/// folder.
pub fn default_fact_pool(suite: Suite) -> PathBuf {
    match suite {
        Suite::Zsre => data_dir().join("zsre/zsre_mend_train-1k.json"),
        Suite::CounterFact => {
            data_dir().join("counterfact/easyedit_mend_format/counterfact-train.json")
        }
    }
}
