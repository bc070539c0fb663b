//! Edit data sets: CounterFact (ROME schema and EasyEdit's reduced format), zsRE (MEND
//! format), EasyEdit's KnowEdit, and JSONL edit requests (also EasyEdit's flat fields
//! as WikiBigEdit writes them), read into one [`EditRecord`] type, with the portability
//! probes of EasyEdit's releases wherever a file carries them.
//!
//! The format is detected from the file or named. A malformed record is an error that
//! names the file, the record's index and the field at fault; nothing is dropped.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

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

/// Reads one record's fields, naming the file, index and field in every error.
struct Fields<'a> {
    path: &'a Path,
    index: usize,
    obj: &'a Json,
}

impl<'a> Fields<'a> {
    fn err(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::Record {
            path: self.path.to_path_buf(),
            index: self.index,
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The value at a `/`-separated path.
    fn at(&self, field: &str) -> Option<&'a Json> {
        field
            .split('/')
            .try_fold(self.obj, |v, k| v.get(k))
            .filter(|v| !v.is_null())
    }

    fn str(&self, field: &str) -> Result<String> {
        match self.at(field) {
            Some(Json::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.err(field, "not a string")),
            None => Err(self.err(field, "missing")),
        }
    }

    fn opt_str(&self, field: &str) -> Result<Option<String>> {
        match self.at(field) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(field, "not a string")),
        }
    }

    /// A string, or the first string of a list (zsRE's `answers`).
    fn first_str(&self, field: &str) -> Result<String> {
        match self.at(field) {
            Some(Json::String(s)) => Ok(s.clone()),
            Some(Json::Array(a)) => match a.first() {
                Some(Json::String(s)) => Ok(s.clone()),
                _ => Err(self.err(field, "not a non-empty list of strings")),
            },
            Some(_) => Err(self.err(field, "not a string or list of strings")),
            None => Err(self.err(field, "missing")),
        }
    }

    fn str_list(&self, field: &str, required: bool) -> Result<Vec<String>> {
        match self.at(field) {
            None if !required => Ok(Vec::new()),
            None => Err(self.err(field, "missing")),
            Some(Json::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Json::String(s) => Ok(s.clone()),
                    _ => Err(self.err(&format!("{field}/{i}"), "not a string")),
                })
                .collect(),
            Some(_) => Err(self.err(field, "not a list of strings")),
        }
    }

    fn id(&self, field: &str) -> Result<String> {
        match self.at(field) {
            Some(Json::Number(n)) => Ok(n.to_string()),
            Some(Json::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.err(field, "not a number or string")),
            None => Ok(self.index.to_string()),
        }
    }

    fn non_empty(&self, field: &str, value: String) -> Result<String> {
        if value.trim().is_empty() {
            return Err(self.err(field, "empty"));
        }
        Ok(value)
    }
}

/// `text` with the first occurrence of `subject` replaced by `{}` (zsRE and EasyEdit
/// store filled prompts).
fn template(text: &str, subject: &str) -> String {
    if subject.is_empty() || !text.contains(subject) {
        return text.to_owned();
    }
    text.replacen(subject, "{}", 1)
}

/// The prompt's template and the subject: the prompt as given when it has `{}`, else
/// with the subject (written verbatim, as in question-style edit files) replaced by
/// `{}`.
fn template_and_subject(
    f: &Fields,
    prompt_field: &str,
    subject_field: &str,
) -> Result<(String, String)> {
    let prompt = f.non_empty(prompt_field, f.str(prompt_field)?)?;
    let subject = f.non_empty(subject_field, f.str(subject_field)?)?;
    let template = if prompt.contains("{}") {
        prompt
    } else if prompt.contains(&subject) {
        prompt.replacen(&subject, "{}", 1)
    } else {
        return Err(f.err(
            prompt_field,
            format!("has no {{}} for the subject and does not contain the subject {subject:?}"),
        ));
    };
    Ok((template, subject))
}

fn counterfact(f: &Fields) -> Result<EditRecord> {
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

fn counterfact_mend(f: &Fields) -> Result<EditRecord> {
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

/// A string, or each string of a list.
fn one_or_many(f: &Fields, field: &str) -> Result<Vec<String>> {
    match f.at(field) {
        None => Ok(Vec::new()),
        Some(Json::String(s)) => Ok(vec![s.clone()]),
        Some(_) => f.str_list(field, false),
    }
}

/// EasyEdit's flat fields (its CounterFact release, WikiBigEdit): `rephrase_prompt` (one
/// or a list) as paraphrases, and `locality_prompt` / `locality_ground_truth` (strings
/// or lists paired by position) as the neighbourhood.
fn easyedit_flat(f: &Fields) -> Result<(Vec<String>, Vec<Neighbor>)> {
    let paraphrases = one_or_many(f, "rephrase_prompt")?;
    let prompts = one_or_many(f, "locality_prompt")?;
    let answers = one_or_many(f, "locality_ground_truth")?;
    if prompts.len() != answers.len() {
        return Err(f.err(
            "locality_ground_truth",
            format!(
                "{} locality prompts but {} answers",
                prompts.len(),
                answers.len()
            ),
        ));
    }
    let neighborhood = prompts
        .into_iter()
        .zip(answers)
        .map(|(prompt, target)| Neighbor {
            prompt,
            target,
            set: None,
        })
        .collect();
    Ok((paraphrases, neighborhood))
}

/// Portability probes in any of EasyEdit's layouts:
/// - a `portability` object of named sub-sets of `{prompt, ground_truth}` (KnowEdit), or
///   one one-hop question `{"New Question", "New Answer"}` (its zsRE and CounterFact
///   releases; set `one_hop`);
/// - `alternative_subject` (another name of the subject, put into the rewrite prompt)
///   and `alter_subject_question` (the edit asked with that name), both answered by the
///   new target (set `subject_replace`);
/// - `inverse question` (the question about the new object whose answer is the subject;
///   set `inverse_relation`);
/// - `personas` (WikiBigEdit: the question as other people would ask it, a list or an
///   object of persona → question), answered by the new target (set `personas`).
fn easyedit_portability(
    f: &Fields,
    template: &str,
    subject: &str,
    target_new: &str,
) -> Result<Vec<Probe>> {
    let mut out = match f.at("portability") {
        Some(Json::Object(o)) if o.contains_key("New Question") => vec![Probe {
            set: "one_hop".into(),
            prompt: f.non_empty(
                "portability/New Question",
                f.str("portability/New Question")?,
            )?,
            target: f.non_empty(
                "portability/New Answer",
                f.first_str("portability/New Answer")?,
            )?,
        }],
        _ => probe_sets(f, "portability")?,
    };
    let probe = |set: &str, prompt: String, target: &str| Probe {
        set: set.into(),
        prompt,
        target: target.into(),
    };
    for alias in one_or_many(f, "alternative_subject")? {
        if !template.contains("{}") {
            return Err(f.err(
                "alternative_subject",
                "the prompt has no place for the subject to put the other name in",
            ));
        }
        out.push(probe(
            "subject_replace",
            template.replacen("{}", &alias, 1),
            target_new,
        ));
    }
    for q in one_or_many(f, "alter_subject_question")? {
        out.push(probe("subject_replace", q, target_new));
    }
    for field in ["inverse question", "inverse_question"] {
        for q in one_or_many(f, field)? {
            out.push(probe("inverse_relation", q, subject));
        }
    }
    let personas = match f.at("personas") {
        Some(Json::Object(o)) => o
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| f.err(&format!("personas/{k}"), "not a string"))
            })
            .collect::<Result<Vec<_>>>()?,
        _ => one_or_many(f, "personas")?,
    };
    for q in personas {
        out.push(probe("personas", q, target_new));
    }
    out.retain(|p| !p.prompt.trim().is_empty() && !p.target.trim().is_empty());
    Ok(out)
}

fn zsre(f: &Fields) -> Result<EditRecord> {
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

/// A KnowEdit `locality` / `portability` object: sub-set name → `{prompt, ground_truth}`
/// items (one object or a list of them), each field a string or a list paired by position.
fn probe_sets(f: &Fields, field: &str) -> Result<Vec<Probe>> {
    let Some(v) = f.at(field) else {
        return Ok(Vec::new());
    };
    let Json::Object(sets) = v else {
        return Err(f.err(field, "not an object of named sub-sets"));
    };
    let mut out = Vec::new();
    for (set, items) in sets {
        let items: Vec<&Json> = match items {
            Json::Array(a) => a.iter().collect(),
            Json::Object(_) => vec![items],
            _ => {
                return Err(f.err(
                    &format!("{field}/{set}"),
                    "not a list of {prompt, ground_truth}",
                ));
            }
        };
        for (i, item) in items.into_iter().enumerate() {
            let at = |k: &str| format!("{field}/{set}/{i}/{k}");
            let strings = |k: &str| -> Result<Vec<String>> {
                match item.get(k) {
                    Some(Json::String(s)) => Ok(vec![s.clone()]),
                    // Nested lists (several answers per prompt): the first answer.
                    Some(Json::Array(a)) => a
                        .iter()
                        .map(|x| match x {
                            Json::String(s) => Ok(s.clone()),
                            Json::Array(inner) => inner
                                .first()
                                .and_then(Json::as_str)
                                .map(str::to_owned)
                                .ok_or_else(|| f.err(&at(k), "an empty or non-string answer list")),
                            _ => Err(f.err(&at(k), "not a string or list of strings")),
                        })
                        .collect(),
                    _ => Err(f.err(&at(k), "missing or not a string or list of strings")),
                }
            };
            let (prompts, answers) = (strings("prompt")?, strings("ground_truth")?);
            if prompts.len() != answers.len() {
                return Err(f.err(
                    &at("ground_truth"),
                    format!("{} prompts but {} answers", prompts.len(), answers.len()),
                ));
            }
            for (prompt, target) in prompts.into_iter().zip(answers) {
                if !prompt.trim().is_empty() && !target.trim().is_empty() {
                    out.push(Probe {
                        set: set.clone(),
                        prompt,
                        target,
                    });
                }
            }
        }
    }
    Ok(out)
}

fn knowedit(f: &Fields) -> Result<EditRecord> {
    let (prompt, subject) = template_and_subject(f, "prompt", "subject")?;
    // Some KnowEdit records have an empty ground truth: the old fact is then unknown.
    let truth = Some(f.first_str("ground_truth")?).filter(|t| !t.trim().is_empty());
    let paraphrases = one_or_many(f, "rephrase_prompt")?;
    let neighborhood = probe_sets(f, "locality")?
        .into_iter()
        .map(|p| Neighbor {
            prompt: p.prompt,
            target: p.target,
            set: Some(p.set),
        })
        .collect();
    let target_new = f.non_empty("target_new", f.str("target_new")?)?;
    Ok(EditRecord {
        portability: easyedit_portability(f, &prompt, &subject, &target_new)?,
        id: f.id(if f.at("case_id").is_some() {
            "case_id"
        } else {
            "id"
        })?,
        // EasyEdit scores every KnowEdit set by teacher-forced token accuracy.
        suite: Suite::Zsre,
        prompt,
        subject,
        target_new,
        target_true: truth,
        paraphrases,
        neighborhood,
        attribute_prompts: Vec::new(),
        generation_prompts: Vec::new(),
        relation_id: None,
        target_new_id: None,
    })
}

fn jsonl(f: &Fields) -> Result<EditRecord> {
    let (prompt, subject) = template_and_subject(f, "prompt", "subject")?;
    let target_true = f.opt_str("target_true")?;
    let mut neighborhood: Vec<Neighbor> = match f.at("neighborhood") {
        None => Vec::new(),
        Some(Json::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let sub = Fields {
                    path: f.path,
                    index: f.index,
                    obj: n,
                };
                let field = |k: &str| format!("neighborhood/{i}/{k}");
                Ok(Neighbor {
                    prompt: sub
                        .str("prompt")
                        .map_err(|_| f.err(&field("prompt"), "missing or not a string"))?,
                    target: sub
                        .str("target")
                        .map_err(|_| f.err(&field("target"), "missing or not a string"))?,
                    set: sub.opt_str("set")?,
                })
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(f.err("neighborhood", "not a list of {prompt, target} objects")),
    };
    let (rephrased, localities) = easyedit_flat(f)?;
    neighborhood.extend(localities);
    let mut paraphrases = f.str_list("paraphrases", false)?;
    paraphrases.extend(rephrased);
    let target_new = f.non_empty("target_new", f.str("target_new")?)?;
    Ok(EditRecord {
        portability: easyedit_portability(f, &prompt, &subject, &target_new)?,
        id: f.id("id")?,
        suite: if target_true.is_some() {
            Suite::CounterFact
        } else {
            Suite::Zsre
        },
        prompt,
        subject,
        target_new,
        target_true,
        paraphrases,
        neighborhood,
        attribute_prompts: f.str_list("attribute_prompts", false)?,
        generation_prompts: f.str_list("generation_prompts", false)?,
        relation_id: f.opt_str("relation_id")?,
        target_new_id: f.opt_str("target_new_id")?,
    })
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
    let parse = match format {
        Format::CounterFact => counterfact,
        Format::CounterFactMend => counterfact_mend,
        Format::Zsre => zsre,
        Format::KnowEdit => knowedit,
        Format::Jsonl => jsonl,
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
