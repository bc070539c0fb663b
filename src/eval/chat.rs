//! Chat-level checks for instruct models: each edit's question asked through the
//! model's chat template, answered greedily, and judged as a user would read it.
//!
//! - `chat_exact`: the new target appears in the answer (case-insensitive).
//! - `chat_clean`: the answer does not degenerate, meaning no token 4-gram occurs three
//!   times or more, and when it mentions the subject (the first word of the subject's
//!   name past a leading article) it spells the whole name intact. "The Eiffel TA is a
//!   Romananananan food" fails both ways.
//!
//! The question is the record's rewrite prompt: zsRE's is a question; CounterFact's is
//! the statement to complete, which chat models answer as well.

use serde::{Deserialize, Serialize};

use crate::data::EditRecord;
use crate::error::Result;
use crate::model::{GenerateOptions, Model, generate};
use crate::tokenizer::Tokenizer;

/// Most tokens of a chat answer.
pub const ANSWER_TOKENS: usize = 32;

/// One record's chat check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatScores {
    pub question: String,
    pub answer: String,
    /// The new target appears in the answer.
    pub exact: bool,
    /// Some token 4-gram occurs at least three times.
    pub repeats: bool,
    /// Whether the subject's name is intact where the answer mentions it (`None`: not
    /// mentioned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_intact: Option<bool>,
    /// Neither repeats nor a broken subject.
    pub clean: bool,
}

/// Whether some `n`-gram of `ids` occurs `times` times or more.
pub fn repeats(ids: &[u32], n: usize, times: usize) -> bool {
    let mut seen = std::collections::HashMap::new();
    ids.windows(n).any(|w| {
        let c = seen.entry(w).or_insert(0usize);
        *c += 1;
        *c >= times
    })
}

/// `None` when `answer` does not mention the subject (its first word past an article);
/// else whether it contains the whole name.
pub fn subject_intact(answer: &str, subject: &str) -> Option<bool> {
    let lower = answer.to_lowercase();
    let name = subject.trim().to_lowercase();
    let core = ["the ", "a ", "an "]
        .iter()
        .find_map(|a| name.strip_prefix(a))
        .unwrap_or(&name)
        .trim()
        .to_string();
    let first = core.split_whitespace().next()?;
    let mentioned = lower
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| w == first.trim_matches(|c: char| !c.is_alphanumeric()));
    mentioned.then(|| lower.contains(&core))
}

/// Asks each record's question through the chat template and scores the answers.
pub fn chat_scores(
    model: &Model,
    tok: &Tokenizer,
    records: &[EditRecord],
) -> Result<Vec<ChatScores>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let prompts = records
        .iter()
        .map(|r| tok.chat_prompt(&r.rewrite_prompt()))
        .collect::<Result<Vec<_>>>()?;
    let opts = GenerateOptions {
        max_new_tokens: ANSWER_TOKENS,
        stop: tok.turn_ends(),
        ..GenerateOptions::default()
    };
    let answers = generate(model, &prompts, &opts)?;
    Ok(records
        .iter()
        .zip(answers)
        .map(|(r, ids)| {
            let answer = tok.decode(&ids);
            let exact = answer
                .to_lowercase()
                .contains(&r.target_new.trim().to_lowercase());
            let rep = repeats(&ids, 4, 3);
            let intact = subject_intact(&answer, &r.subject);
            ChatScores {
                question: r.rewrite_prompt(),
                exact,
                repeats: rep,
                subject_intact: intact,
                clean: !rep && intact != Some(false),
                answer,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degenerate_answers_are_not_clean() {
        assert!(repeats(&[1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4], 4, 3));
        assert!(!repeats(&[1, 2, 3, 4, 1, 2, 3, 4, 9], 4, 3));
        assert!(!repeats(&[1, 2], 4, 3));
        let s = "The Eiffel Tower";
        assert_eq!(
            subject_intact("The Eiffel TA is a Romanan food", s),
            Some(false)
        );
        assert_eq!(
            subject_intact("The Eiffel Tower is in Rome.", s),
            Some(true)
        );
        assert_eq!(subject_intact("It is in Rome.", s), None);
        assert_eq!(
            subject_intact("Michael Jordan plays tennis", "Michael Jordan"),
            Some(true)
        );
        assert_eq!(
            subject_intact("Michaels is a store", "Michael Jordan"),
            None
        );
    }
}
