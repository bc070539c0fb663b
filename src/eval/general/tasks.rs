//! The downstream tasks' files, read into [`Doc`]s exactly as lm-evaluation-harness
//! builds its requests (`../shared/data/general/LM_EVAL.md` gives each rule and where in
//! lm-eval it comes from).

use std::path::{Path, PathBuf};

use super::{Doc, Metric, Task};
use crate::error::{Error, Result};

/// Every task, in the order reports list them.
pub const TASKS: &[&str] = &[
    "arc_easy",
    "arc_challenge",
    "hellaswag",
    "piqa",
    "winogrande",
    "boolq",
    "mmlu",
    "lambada",
];

/// Task `name` from the `general/` data folder `dir`, its first `limit` docs (all when
/// `None`, or when the file holds fewer). A task read from several files (MMLU's
/// subjects) takes the first `⌈limit / files⌉` of each, as lm-eval's `--limit` on each
/// subject task does, so that a sample covers them all.
pub fn load(name: &str, dir: &Path, limit: Option<usize>) -> Result<Task> {
    let file = |rel: &str| dir.join(rel);
    let one = |docs: Result<Vec<Doc>>| docs.map(|d| vec![d]);
    let (files, main, norm) = match name {
        "arc_easy" => (
            one(arc(&file("arc_easy/ARC-Easy-Test.jsonl")))?,
            Metric::Acc,
            true,
        ),
        "arc_challenge" => (
            one(arc(&file("arc_challenge/ARC-Challenge-Test.jsonl")))?,
            Metric::AccNorm,
            true,
        ),
        "hellaswag" => (
            one(hellaswag(&file(
                "hellaswag/hellaswag_val_full.first2000.txt",
            )))?,
            Metric::AccNorm,
            true,
        ),
        "piqa" => (
            one(piqa(
                &file("piqa/valid.jsonl"),
                &file("piqa/valid-labels.lst"),
            ))?,
            Metric::AccNorm,
            true,
        ),
        "winogrande" => (
            one(winogrande(&file("winogrande/winogrande.jsonl")))?,
            Metric::Acc,
            false,
        ),
        "boolq" => (one(boolq(&file("boolq/val.jsonl")))?, Metric::Acc, false),
        "mmlu" => (mmlu(&file("mmlu/test"))?, Metric::Acc, false),
        "lambada" => (
            one(lambada(&file("lambada_openai/lambada_test.jsonl")))?,
            Metric::Acc,
            false,
        ),
        other => {
            return Err(Error::Input(format!(
                "unknown task '{other}' (tasks: {}, and glue: {})",
                TASKS.join(", "),
                super::glue::GLUE_TASKS.join(", ")
            )));
        }
    };
    let per = limit.map_or(usize::MAX, |n| n.div_ceil(files.len().max(1)));
    Ok(Task {
        name: name.to_owned(),
        docs: files
            .into_iter()
            .flat_map(|f| f.into_iter().take(per))
            .collect(),
        main,
        norm,
        greedy: name == "lambada",
    })
}

fn lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text.lines().map(str::to_owned).collect())
}

pub(super) fn jsonl(path: &Path) -> Result<Vec<serde_json::Value>> {
    lines(path)?
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::data(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

fn field<'a>(v: &'a serde_json::Value, key: &str, path: &Path, i: usize) -> Result<&'a str> {
    v[key]
        .as_str()
        .ok_or_else(|| Error::data(path, format!("record {}: no string `{key}`", i + 1)))
}

/// A multiple-choice doc: one request `(context, " " + choice)` per choice.
fn choice_doc(context: String, choices: &[String], gold: usize) -> Doc {
    Doc {
        requests: choices
            .iter()
            .map(|c| (context.clone(), format!(" {c}")))
            .collect(),
        gold,
        choice_chars: choices.iter().map(|c| c.chars().count()).collect(),
    }
}

fn arc(path: &Path) -> Result<Vec<Doc>> {
    jsonl(path)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let q = &v["question"];
            let stem = field(q, "stem", path, i)?;
            let choices = q["choices"]
                .as_array()
                .ok_or_else(|| Error::data(path, format!("record {}: no choices", i + 1)))?;
            let mut texts = Vec::new();
            let mut gold = None;
            let key = field(v, "answerKey", path, i)?;
            for (k, c) in choices.iter().enumerate() {
                texts.push(field(c, "text", path, i)?.to_owned());
                if field(c, "label", path, i)? == key {
                    gold = Some(k);
                }
            }
            let gold = gold.ok_or_else(|| {
                Error::data(path, format!("record {}: answer {key} is no label", i + 1))
            })?;
            Ok(choice_doc(
                format!("Question: {stem}\nAnswer:"),
                &texts,
                gold,
            ))
        })
        .collect()
}

/// Python's `str.capitalize`: the first character upper-cased, the rest lower-cased.
fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first
            .to_uppercase()
            .chain(c.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// lm-eval's HellaSwag `preprocess`: strip, `" [title]"` → `". "`, every `[...]`
/// removed, then one pass of `"  "` → `" "`.
pub(crate) fn hellaswag_preprocess(text: &str) -> String {
    let s = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(open) = rest.find('[') {
        match rest[open..].find(']') {
            Some(close) => {
                out.push_str(&rest[..open]);
                rest = &rest[open + close + 1..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// The llama.cpp text form of HellaSwag (6 lines per item: `label: context`, gold,
/// four endings), with `ctx_b` capitalised back as lm-eval has it (LM_EVAL.md's
/// suggested fix: the text after the last `". "` when it starts lower-case; items 1692
/// and 1828 left as they are).
fn hellaswag(path: &Path) -> Result<Vec<Doc>> {
    let all = lines(path)?;
    if all.len() % 6 != 0 {
        return Err(Error::data(
            path,
            format!("{} lines, not 6 per item", all.len()),
        ));
    }
    all.chunks(6)
        .enumerate()
        .map(|(i, item)| {
            let mut query = item[0].clone();
            if i != 1692
                && i != 1828
                && let Some(at) = query.rfind(". ")
            {
                let rest = &query[at + 2..];
                if rest.chars().next().is_some_and(char::is_lowercase) {
                    query = format!("{}{}", &query[..at + 2], capitalize(rest));
                }
            }
            let gold: usize = item[1].trim().parse().map_err(|_| {
                Error::data(path, format!("item {i}: gold '{}' is not 0–3", item[1]))
            })?;
            let endings: Vec<String> = item[2..].iter().map(|e| hellaswag_preprocess(e)).collect();
            if gold >= endings.len() {
                return Err(Error::data(path, format!("item {i}: gold {gold}")));
            }
            Ok(choice_doc(hellaswag_preprocess(&query), &endings, gold))
        })
        .collect()
}

fn piqa(path: &Path, labels: &Path) -> Result<Vec<Doc>> {
    let recs = jsonl(path)?;
    let labels = lines(labels)?;
    if labels.len() < recs.len() {
        return Err(Error::data(
            path,
            format!("{} records but {} labels", recs.len(), labels.len()),
        ));
    }
    recs.iter()
        .zip(&labels)
        .enumerate()
        .map(|(i, (v, l))| {
            let gold: usize = l
                .trim()
                .parse()
                .map_err(|_| Error::data(path, format!("label {}: '{l}'", i + 1)))?;
            let sols = [
                field(v, "sol1", path, i)?.to_owned(),
                field(v, "sol2", path, i)?.to_owned(),
            ];
            Ok(choice_doc(
                format!("Question: {}\nAnswer:", field(v, "goal", path, i)?),
                &sols,
                gold,
            ))
        })
        .collect()
}

/// WinoGrande: the context varies per choice, one shared continuation (`" " +
/// continuation`); acc only.
fn winogrande(path: &Path) -> Result<Vec<Doc>> {
    jsonl(path)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let opts = v["context_options"]
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or_else(|| Error::data(path, format!("record {}: context_options", i + 1)))?;
            let cont = format!(" {}", field(v, "continuation", path, i)?);
            let gold = v["gold"]
                .as_u64()
                .ok_or_else(|| Error::data(path, format!("record {}: gold", i + 1)))?
                as usize;
            let requests = opts
                .iter()
                .map(|o| {
                    o.as_str()
                        .map(|c| (c.to_owned(), cont.clone()))
                        .ok_or_else(|| Error::data(path, format!("record {}: option", i + 1)))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Doc {
                choice_chars: vec![cont.chars().count() - 1; 2],
                requests,
                gold,
            })
        })
        .collect()
}

fn boolq(path: &Path) -> Result<Vec<Doc>> {
    jsonl(path)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let gold = match &v["label"] {
                serde_json::Value::String(s) if s == "true" => 1,
                serde_json::Value::String(s) if s == "false" => 0,
                serde_json::Value::Bool(b) => usize::from(*b),
                other => {
                    return Err(Error::data(
                        path,
                        format!("record {}: label {other}", i + 1),
                    ));
                }
            };
            let context = format!(
                "{}\nQuestion: {}?\nAnswer:",
                field(v, "passage", path, i)?,
                field(v, "question", path, i)?
            );
            Ok(choice_doc(context, &["no".into(), "yes".into()], gold))
        })
        .collect()
}

/// RFC 4180 rows: quoted fields may hold commas, newlines and doubled quotes.
pub(crate) fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// MMLU's test CSVs, one list of items per subject, subjects in name order, zero-shot:
/// the description, the question and its lettered choices; choices `" A"`…`" D"`; acc
/// only.
fn mmlu(dir: &Path) -> Result<Vec<Vec<Doc>>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with("_test.csv"))
        .collect();
    files.sort();
    let mut subjects = Vec::new();
    for path in files {
        let mut docs = Vec::new();
        let stem = path.file_name().unwrap_or_default().to_string_lossy();
        let subject = stem.trim_end_matches("_test.csv").replace('_', " ");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        for (i, row) in csv_rows(&text).into_iter().enumerate().skip(1) {
            if row.len() != 6 {
                return Err(Error::data(
                    &path,
                    format!("row {i}: {} fields, not 6", row.len()),
                ));
            }
            let gold: usize = row[5]
                .trim()
                .parse()
                .ok()
                .filter(|&g: &usize| g < 4)
                .ok_or_else(|| Error::data(&path, format!("row {i}: answer '{}'", row[5])))?;
            let context = format!(
                "The following are multiple choice questions (with answers) about {subject}.\n\n{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
                row[0].trim(),
                row[1],
                row[2],
                row[3],
                row[4]
            );
            docs.push(choice_doc(
                context,
                &["A".into(), "B".into(), "C".into(), "D".into()],
                gold,
            ));
        }
        subjects.push(docs);
    }
    Ok(subjects)
}

/// LAMBADA (OpenAI): the last space-separated word after the rest; one request.
fn lambada(path: &Path) -> Result<Vec<Doc>> {
    jsonl(path)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let text = field(v, "text", path, i)?;
            let (context, word) = text
                .rsplit_once(' ')
                .ok_or_else(|| Error::data(path, format!("record {}: one word", i + 1)))?;
            Ok(Doc {
                requests: vec![(context.to_owned(), format!(" {word}"))],
                gold: 0,
                choice_chars: vec![word.chars().count()],
            })
        })
        .collect()
}
