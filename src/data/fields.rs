//! Reading one record's fields, with errors that name the file, the record's index and
//! the field; the prompt-template helpers every format uses.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};

/// Reads one record's fields, naming the file, index and field in every error.
pub(super) struct Fields<'a> {
    pub path: &'a Path,
    pub index: usize,
    pub obj: &'a Json,
}

impl<'a> Fields<'a> {
    pub fn err(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::Record {
            path: self.path.to_path_buf(),
            index: self.index,
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The value at a `/`-separated path.
    pub fn at(&self, field: &str) -> Option<&'a Json> {
        field
            .split('/')
            .try_fold(self.obj, |v, k| v.get(k))
            .filter(|v| !v.is_null())
    }

    pub fn str(&self, field: &str) -> Result<String> {
        match self.at(field) {
            Some(Json::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.err(field, "not a string")),
            None => Err(self.err(field, "missing")),
        }
    }

    pub fn opt_str(&self, field: &str) -> Result<Option<String>> {
        match self.at(field) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(field, "not a string")),
        }
    }

    /// A string, or the first string of a list (zsRE's `answers`).
    pub fn first_str(&self, field: &str) -> Result<String> {
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

    pub fn str_list(&self, field: &str, required: bool) -> Result<Vec<String>> {
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

    pub fn id(&self, field: &str) -> Result<String> {
        match self.at(field) {
            Some(Json::Number(n)) => Ok(n.to_string()),
            Some(Json::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.err(field, "not a number or string")),
            None => Ok(self.index.to_string()),
        }
    }

    pub fn non_empty(&self, field: &str, value: String) -> Result<String> {
        if value.trim().is_empty() {
            return Err(self.err(field, "empty"));
        }
        Ok(value)
    }
}

/// `text` with the first occurrence of `subject` replaced by `{}` (zsRE and EasyEdit
/// store filled prompts).
pub(super) fn template(text: &str, subject: &str) -> String {
    if subject.is_empty() || !text.contains(subject) {
        return text.to_owned();
    }
    text.replacen(subject, "{}", 1)
}

/// The prompt's template and the subject: the prompt as given when it has `{}`, else
/// with the subject (written verbatim, as in question-style edit files) replaced by
/// `{}`.
pub(super) fn template_and_subject(
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

/// A string, or each string of a list.
pub(super) fn one_or_many(f: &Fields, field: &str) -> Result<Vec<String>> {
    match f.at(field) {
        None => Ok(Vec::new()),
        Some(Json::String(s)) => Ok(vec![s.clone()]),
        Some(_) => f.str_list(field, false),
    }
}
