//! Metrics that generate text: CounterFact fluency (GE) and consistency (RS) from
//! top-k sampled continuations, as MEMIT computes them, and exact match of greedy
//! continuations, the honest companion of teacher-forced scores.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::metrics::{Tfidf, fluency, mean};
use crate::error::{Error, Result};
use crate::model::{GenerateOptions, Model, Sampling, generate};
use crate::tokenizer::{Tokenizer, clean};

/// MEMIT generates until 100 tokens including the prompt.
pub const GEN_LENGTH: usize = 100;

/// Sampled texts of one record with their fluency and consistency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenScores {
    pub texts: Vec<String>,
    /// Mean n-gram entropy of the texts (MEMIT's GE before the ×100).
    #[serde(rename = "GE")]
    pub ge: Option<f64>,
    /// TF-IDF similarity to reference texts about the new object (needs attribute
    /// snippets and IDF data).
    #[serde(rename = "RS")]
    pub rs: Option<f64>,
}

/// A greedy continuation and whether it starts with the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExactItem {
    pub prompt: String,
    pub output: String,
    pub correct: bool,
}

/// Exact match of one record's rewrite and paraphrase prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExactScores {
    pub rewrite: Vec<ExactItem>,
    pub paraphrase: Vec<ExactItem>,
    /// Fraction of rewrite prompts continued with the target.
    pub efficacy: Option<f64>,
    /// Fraction of paraphrase prompts continued with the target.
    pub paraphrase_rate: Option<f64>,
}

/// Tokens that are never text (BOS, EOS): left out of decoded generations, as MEMIT
/// drops `<|endoftext|>`.
fn special(tok: &Tokenizer) -> Vec<u32> {
    tok.bos_id.into_iter().chain(tok.eos_id).collect()
}

/// Top-k (k = 5) continuations of each prompt up to [`GEN_LENGTH`] tokens in all; each
/// prompt samples from its own seed.
pub fn sample_texts(
    model: &Model,
    tok: &Tokenizer,
    prompts: &[String],
    seeds: &[u64],
) -> Result<Vec<String>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode(p, true))
        .collect::<Result<_>>()?;
    let budget: Vec<usize> = ids
        .iter()
        .map(|i| GEN_LENGTH.saturating_sub(i.len()))
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: budget.iter().copied().max().unwrap_or(0),
        sampling: Sampling::TopK {
            k: 5,
            temperature: 1.0,
        },
        seed: 0,
        row_seeds: Some(seeds.to_vec()),
        stop: Vec::new(),
    };
    let outs = if opts.max_new_tokens == 0 {
        vec![Vec::new(); ids.len()]
    } else {
        generate(model, &ids, &opts)?
    };
    let skip = special(tok);
    Ok(prompts
        .iter()
        .zip(outs)
        .zip(budget)
        .map(|((p, out), b)| {
            let kept: Vec<u32> = out
                .into_iter()
                .take(b)
                .filter(|t| !skip.contains(t))
                .collect();
            clean(&format!("{p}{}", tok.decode(&kept)))
        })
        .collect())
}

/// Reference texts and the TF-IDF model for consistency (RS), as MEMIT's
/// `attribute_snippets.json`, `idf.npy` and `tfidf_vocab.json`.
pub struct Attributes {
    /// relation id → object id → texts.
    pub snippets: HashMap<String, HashMap<String, Vec<String>>>,
    pub tfidf: Tfidf,
}

impl Attributes {
    /// Loads MEMIT's three files from a folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| Error::io(&p, e))
        };
        let bad = |name: &str, reason: String| Error::Format {
            path: dir.join(name),
            reason,
        };
        let list: serde_json::Value = serde_json::from_slice(&read("attribute_snippets.json")?)
            .map_err(|e| bad("attribute_snippets.json", e.to_string()))?;
        let mut snippets: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
        for el in list
            .as_array()
            .ok_or_else(|| bad("attribute_snippets.json", "expected a list".into()))?
        {
            let (Some(rid), Some(tid)) = (el["relation_id"].as_str(), el["target_id"].as_str())
            else {
                return Err(bad(
                    "attribute_snippets.json",
                    "an entry lacks relation_id or target_id".into(),
                ));
            };
            let texts = snippets
                .entry(rid.into())
                .or_default()
                .entry(tid.into())
                .or_default();
            for s in el["samples"].as_array().into_iter().flatten() {
                texts.extend(s["text"].as_str().map(str::to_owned));
            }
        }
        let vocab: HashMap<String, usize> = serde_json::from_slice(&read("tfidf_vocab.json")?)
            .map_err(|e| bad("tfidf_vocab.json", e.to_string()))?;
        let idf = read_npy_f64(&read("idf.npy")?).map_err(|r| bad("idf.npy", r))?;
        Ok(Attributes {
            snippets,
            tfidf: Tfidf { vocab, idf },
        })
    }

    /// MEMIT's consistency: similarity of all generations to all snippets about the
    /// new object under the record's relation.
    pub fn consistency(&self, texts: &[String], relation_id: &str, target_id: &str) -> Option<f64> {
        let refs = self.snippets.get(relation_id)?.get(target_id)?;
        Some(self.tfidf.similarity(&texts.join(" "), &refs.join(" ")))
    }
}

/// A 1-D little-endian `float64` or `float32` `.npy` array.
fn read_npy_f64(bytes: &[u8]) -> std::result::Result<Vec<f64>, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err("truncated header".into()),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + header_len)
            .ok_or("truncated header")?,
    )
    .map_err(|e| e.to_string())?;
    let data = &bytes[start + header_len..];
    if header.contains("'fortran_order': True") {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    if header.contains("'<f8'") {
        Ok(data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect())
    } else if header.contains("'<f4'") {
        Ok(data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect())
    } else {
        Err(format!("unsupported dtype in header {header}"))
    }
}

/// GE (and RS when `attributes` are given) of a record's sampled texts.
pub fn gen_scores(texts: Vec<String>, attributes: Option<(&Attributes, &str, &str)>) -> GenScores {
    let ge = mean(texts.iter().map(|t| fluency(t)));
    let rs = attributes.and_then(|(a, rel, target)| a.consistency(&texts, rel, target));
    GenScores { texts, ge, rs }
}

/// Whether a continuation starts with the target (leading whitespace ignored).
pub fn starts_with_target(output: &str, target: &str) -> bool {
    let target = target.trim();
    !target.is_empty() && output.trim_start().starts_with(target)
}

/// Greedy continuations of `(prompt, target)` pairs, long enough for the target.
pub fn exact_items(
    model: &Model,
    tok: &Tokenizer,
    pairs: &[(String, String)],
) -> Result<Vec<ExactItem>> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Vec<u32>> = pairs
        .iter()
        .map(|(p, _)| tok.encode(p, true))
        .collect::<Result<_>>()?;
    let longest = pairs
        .iter()
        .map(|(_, t)| tok.encode(&format!(" {t}"), false).map(|v| v.len()))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or(1);
    let opts = GenerateOptions {
        max_new_tokens: longest + 2,
        stop: tok.eos_id.into_iter().collect(),
        ..GenerateOptions::default()
    };
    let outs = generate(model, &ids, &opts)?;
    Ok(pairs
        .iter()
        .zip(outs)
        .map(|((prompt, target), out)| {
            let output = tok.decode(&out);
            ExactItem {
                correct: starts_with_target(&output, target),
                prompt: prompt.clone(),
                output,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_rule() {
        assert!(starts_with_target(" Paris, France", "Paris"));
        assert!(starts_with_target("\nRio de Janeiro is", " Rio de Janeiro"));
        assert!(!starts_with_target(" the city of Paris", "Paris"));
        assert!(!starts_with_target(" Par", "Paris"));
        assert!(!starts_with_target(" anything", " "));
    }

    #[test]
    fn npy_arrays() {
        let mut f8 = b"\x93NUMPY\x01\x00".to_vec();
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }";
        f8.extend((header.len() as u16).to_le_bytes());
        f8.extend(header.as_bytes());
        f8.extend(1.5f64.to_le_bytes());
        f8.extend((-2.0f64).to_le_bytes());
        assert_eq!(read_npy_f64(&f8).unwrap(), vec![1.5, -2.0]);
        assert!(read_npy_f64(b"nope").is_err());
    }
}
