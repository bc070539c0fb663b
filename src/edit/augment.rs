//! Augmentation of the training set (METHOD.md): random-prefix paraphrases (P) sampled
//! once from the unedited model, and unedited facts (R) from a pool that holds nothing
//! the evaluation looks at.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::data::{self, EditRecord, Format, Suite};
use crate::error::{Error, Result};
use crate::model::{GenerateOptions, Model, Sampling, generate};
use crate::tokenizer::{Tokenizer, clean};

/// An unedited fact: a prompt and its true answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Fact {
    pub prompt: String,
    pub target: String,
}

/// Samples text prefixes from the model itself: top-k 5 from the token that starts a
/// document ([`Tokenizer::document_start`]: BOS, or GPT's `<|endoftext|>`), `count`
/// samples of `tokens` tokens for each `[count, tokens]`, each followed by ". ".
pub fn sample_prefixes(
    model: &Model,
    tok: &Tokenizer,
    lengths: &[[usize; 2]],
    seed: u64,
) -> Result<Vec<String>> {
    let start = tok.document_start().ok_or_else(|| {
        Error::Input("the tokenizer has neither BOS nor EOS to sample prefixes from".into())
    })?;
    let skip: Vec<u32> = tok
        .bos_id
        .into_iter()
        .chain(tok.eos_id)
        .chain([start])
        .collect();
    let mut out = Vec::new();
    for (g, &[count, len]) in lengths.iter().enumerate() {
        if count == 0 || len == 0 {
            continue;
        }
        let opts = GenerateOptions {
            max_new_tokens: len,
            sampling: Sampling::TopK {
                k: 5,
                temperature: 1.0,
            },
            seed: 0,
            row_seeds: Some(
                (0..count as u64)
                    .map(|i| seed ^ ((g as u64) << 32) ^ i)
                    .collect(),
            ),
            stop: Vec::new(),
        };
        for ids in generate(model, &vec![vec![start]; count], &opts)? {
            let kept: Vec<u32> = ids.into_iter().filter(|t| !skip.contains(t)).collect();
            let text = clean(&tok.decode(&kept)).replace(['{', '}'], " ");
            out.push(format!("{}. ", text.trim()));
        }
    }
    Ok(out)
}

fn norm(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// zsRE answers are cut to their first 35 words (METHOD.md).
fn cut_words(s: &str, n: usize) -> String {
    s.split_whitespace().take(n).collect::<Vec<_>>().join(" ")
}

/// The unedited facts of a data file: CounterFact records give `prompt → target_true`,
/// zsRE questions `question → answer` (cut to 35 words). Records that are evaluated, and
/// facts whose prompt is any evaluated record's rewrite, paraphrase or neighbourhood
/// prompt, are left out.
pub fn fact_pool(
    path: &Path,
    format: Option<Format>,
    evaluated: &[EditRecord],
) -> Result<Vec<Fact>> {
    let records = data::load(path, format)?;
    let ids: HashSet<&str> = evaluated.iter().map(|r| r.id.as_str()).collect();
    let mut prompts: HashSet<String> = HashSet::new();
    for r in evaluated {
        prompts.insert(norm(&r.rewrite_prompt()));
        prompts.extend(r.paraphrases.iter().map(|p| norm(p)));
        prompts.extend(r.neighborhood.iter().map(|n| norm(&n.prompt)));
    }
    let same_kind = evaluated.first().map(|r| r.suite);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in records {
        // Ids are comparable only within one kind of data set (CounterFact case ids).
        if Some(r.suite) == same_kind
            && r.suite == Suite::CounterFact
            && ids.contains(r.id.as_str())
        {
            continue;
        }
        let prompt = r.rewrite_prompt();
        let target = match r.suite {
            Suite::CounterFact => r.target_true.clone().unwrap_or_default(),
            Suite::Zsre => cut_words(&r.target_new, 35),
        };
        if target.trim().is_empty()
            || prompts.contains(&norm(&prompt))
            || !seen.insert(norm(&prompt))
        {
            continue;
        }
        out.push(Fact { prompt, target });
    }
    if out.is_empty() {
        return Err(Error::Input(format!(
            "{}: no unedited facts left for the pool",
            path.display()
        )));
    }
    Ok(out)
}

/// A small, fixed random generator (SplitMix64) for reproducible draws.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// `k` distinct random pool indices per edit.
pub fn random_facts(pool_len: usize, edits: usize, k: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = Rng(seed);
    let k = k.min(pool_len);
    (0..edits)
        .map(|_| {
            let mut picked = HashSet::new();
            let mut out = Vec::with_capacity(k);
            while out.len() < k {
                let i = rng.below(pool_len);
                if picked.insert(i) {
                    out.push(i);
                }
            }
            out
        })
        .collect()
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The `k` pool facts most similar to each edit's rewrite prompt: cosine of TF-IDF
/// vectors over lower-cased words, IDF from the pool (no model or network needed).
pub fn nearest_facts(pool: &[Fact], edits: &[EditRecord], k: usize) -> Vec<Vec<usize>> {
    let docs: Vec<Vec<String>> = pool.iter().map(|f| words(&f.prompt)).collect();
    let mut df: HashMap<&str, usize> = HashMap::new();
    for d in &docs {
        for w in d.iter().map(String::as_str).collect::<HashSet<_>>() {
            *df.entry(w).or_default() += 1;
        }
    }
    let n = docs.len() as f64;
    let idf = |w: &str| ((1.0 + n) / (1.0 + *df.get(w).unwrap_or(&0) as f64)).ln() + 1.0;
    let vector = |ws: &[String]| {
        let mut v: HashMap<String, f64> = HashMap::new();
        for w in ws {
            *v.entry(w.clone()).or_default() += 1.0;
        }
        for (w, x) in v.iter_mut() {
            *x *= idf(w);
        }
        let norm = v.values().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        v.values_mut().for_each(|x| *x /= norm);
        v
    };
    // Inverted index: word → (fact, weight).
    let mut index: HashMap<String, Vec<(usize, f64)>> = HashMap::new();
    for (i, d) in docs.iter().enumerate() {
        for (w, x) in vector(d) {
            index.entry(w).or_default().push((i, x));
        }
    }
    edits
        .iter()
        .map(|e| {
            let mut score: HashMap<usize, f64> = HashMap::new();
            for (w, x) in vector(&words(&e.rewrite_prompt())) {
                for &(i, y) in index.get(&w).into_iter().flatten() {
                    *score.entry(i).or_default() += x * y;
                }
            }
            let mut ranked: Vec<(usize, f64)> = score.into_iter().collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            ranked.into_iter().take(k).map(|(i, _)| i).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(p: &str) -> Fact {
        Fact {
            prompt: p.into(),
            target: "x".into(),
        }
    }

    #[test]
    fn random_facts_are_distinct_and_reproducible() {
        let a = random_facts(50, 3, 20, 7);
        assert_eq!(a, random_facts(50, 3, 20, 7));
        assert_ne!(a, random_facts(50, 3, 20, 8));
        for picks in &a {
            assert_eq!(picks.len(), 20);
            assert_eq!(picks.iter().collect::<HashSet<_>>().len(), 20);
        }
        assert_eq!(random_facts(5, 1, 20, 0)[0].len(), 5);
    }

    #[test]
    fn nearest_facts_share_the_rare_words() {
        let pool = vec![
            fact("The mother tongue of Victor Hugo is"),
            fact("Paris is the capital of"),
            fact("The mother tongue of Jean Renoir is"),
            fact("Toyota is owned by"),
        ];
        let mut e = crate::data::EditRecord {
            id: "0".into(),
            suite: Suite::CounterFact,
            prompt: "The mother tongue of {} is".into(),
            subject: "Danielle Darrieux".into(),
            target_new: "English".into(),
            target_true: Some("French".into()),
            paraphrases: vec![],
            neighborhood: vec![],
            attribute_prompts: vec![],
            generation_prompts: vec![],
            relation_id: None,
            target_new_id: None,
            portability: vec![],
        };
        let picks = nearest_facts(&pool, std::slice::from_ref(&e), 2);
        assert_eq!(
            picks[0].iter().copied().collect::<HashSet<_>>(),
            HashSet::from([0, 2])
        );
        e.prompt = "{} is owned by".into();
        e.subject = "Lexus".into();
        assert_eq!(nearest_facts(&pool, &[e], 1)[0], vec![3]);
    }
}
