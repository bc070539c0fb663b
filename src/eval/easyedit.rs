//! EasyEdit's probe metrics (METRICS.md, "KnowEdit and portability"), for records of
//! any suite, beside MEMIT's:
//! - **portability**: a probe's teacher-forced token accuracy against its answer on the
//!   edited model, averaged per named sub-set ([`portability`]);
//! - **locality**: the argmax tokens at a neighbour's answer positions before and after
//!   the edit, and the share the edit left unchanged, whatever the answer is
//!   ([`Locality`]); a data set's own neighbours form the set `neighborhood`, as in
//!   EasyEdit's zsRE and CounterFact runs.
//!
//! A record's number for a set is the mean over its probes; the summary averages each
//! set over the records that have it and reports the mean of the sets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::metrics::mean;
use super::scorer::predictions;
use super::zsre::queries;
use crate::data::EditRecord;
use crate::error::Result;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// The set a data set's own (unnamed) neighbours are reported under.
pub const NEIGHBORHOOD: &str = "neighborhood";

/// For each `(prompt, answer)`, the answer's tokens and the model's argmax at each of
/// their positions, teacher-forced (input `i` is the prompt and the answer's first `i`
/// tokens).
pub fn argmax_at_answers(
    model: &Model,
    tok: &Tokenizer,
    pairs: &[(&str, &str)],
) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
    let qs = pairs
        .iter()
        .map(|(p, a)| queries(tok, p, a, true))
        .collect::<Result<Vec<_>>>()?;
    let inputs: Vec<Vec<u32>> = qs.iter().flatten().map(|q| q.input_ids.clone()).collect();
    let mut preds = predictions(model, &inputs)?.into_iter();
    Ok(qs
        .into_iter()
        .map(|q| {
            let answer = q.iter().map(|q| q.answer_id).collect();
            let argmax = q
                .iter()
                .map(|_| preds.next().expect("one prediction per input").argmax)
                .collect();
            (answer, argmax)
        })
        .collect())
}

/// Each record's portability: per sub-set, the mean over its probes of the share of
/// answer tokens predicted (EasyEdit's `{set}_acc`). Records without probes get an
/// empty map.
pub fn portability(
    model: &Model,
    tok: &Tokenizer,
    records: &[&EditRecord],
) -> Result<Vec<BTreeMap<String, f64>>> {
    let pairs: Vec<(&str, &str)> = records
        .iter()
        .flat_map(|r| r.portability.iter())
        .map(|p| (p.prompt.as_str(), p.target.as_str()))
        .collect();
    let mut scored = argmax_at_answers(model, tok, &pairs)?.into_iter();
    Ok(records
        .iter()
        .map(|r| {
            let per_probe = r.portability.iter().map(|p| {
                let (answer, argmax) = scored.next().expect("one result per probe");
                (p.set.as_str(), share_equal(&answer, &argmax))
            });
            set_means(per_probe)
        })
        .collect())
}

/// One neighbour's argmax tokens at its answer positions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighbourArgmax {
    pub set: String,
    pub prompt: String,
    /// On the unedited model (filled in by the protocol, which saw it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before: Vec<u32>,
    pub after: Vec<u32>,
}

/// A record's locality: its neighbours' predictions before and after, and per set the
/// mean share of positions left unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Locality {
    pub neighbours: Vec<NeighbourArgmax>,
    /// Empty until [`Locality::compare`] has the predictions before the edit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sets: BTreeMap<String, f64>,
}

impl Locality {
    /// Takes the unedited model's predictions (as [`neighbour_argmax`] returned them
    /// for the same record) and scores each set.
    pub fn compare(&mut self, before: &[Vec<u32>]) {
        for (n, b) in self.neighbours.iter_mut().zip(before) {
            n.before = b.clone();
        }
        self.sets = set_means(
            self.neighbours
                .iter()
                .map(|n| (n.set.as_str(), share_equal(&n.before, &n.after))),
        );
    }
}

/// Each record's neighbours' argmax tokens at their answer positions (`None` for a
/// record without neighbours).
pub fn neighbour_argmax(
    model: &Model,
    tok: &Tokenizer,
    records: &[&EditRecord],
) -> Result<Vec<Option<Locality>>> {
    let pairs: Vec<(&str, &str)> = records
        .iter()
        .flat_map(|r| r.neighborhood.iter())
        .map(|n| (n.prompt.as_str(), n.target.as_str()))
        .collect();
    let mut scored = argmax_at_answers(model, tok, &pairs)?.into_iter();
    Ok(records
        .iter()
        .map(|r| {
            let neighbours: Vec<NeighbourArgmax> = r
                .neighborhood
                .iter()
                .map(|n| NeighbourArgmax {
                    set: n.set.clone().unwrap_or_else(|| NEIGHBORHOOD.into()),
                    prompt: n.prompt.clone(),
                    before: Vec::new(),
                    after: scored.next().expect("one result per neighbour").1,
                })
                .collect();
            (!neighbours.is_empty()).then(|| Locality {
                neighbours,
                sets: BTreeMap::new(),
            })
        })
        .collect())
}

/// The share of positions where `a` and `b` agree (0 for empty or unequal lengths).
fn share_equal(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return 0.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// Per set, the mean of its values.
fn set_means<'a>(values: impl Iterator<Item = (&'a str, f64)>) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (set, v) in values {
        let e = sums.entry(set.to_owned()).or_default();
        e.0 += v;
        e.1 += 1;
    }
    sums.into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect()
}

/// Summary metrics `{name}.{set}` (each set over the records that have it, in percent)
/// and `{name}` (the mean of the sets), from each record's per-set numbers.
pub fn summarize<'a>(
    name: &str,
    per_record: impl Iterator<Item = &'a BTreeMap<String, f64>> + Clone,
) -> Vec<(String, f64)> {
    let sets: std::collections::BTreeSet<&String> =
        per_record.clone().flat_map(|m| m.keys()).collect();
    let mut out = Vec::new();
    let mut means = Vec::new();
    for set in sets {
        if let Some(v) = mean(per_record.clone().filter_map(|m| m.get(set).copied())) {
            means.push(v * 100.0);
            out.push((format!("{name}.{set}"), v * 100.0));
        }
    }
    if let Some(m) = mean(means) {
        out.push((name.to_owned(), m));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_average_their_probes_and_the_summary_their_records() {
        let m = set_means([("a", 1.0), ("a", 0.5), ("b", 0.0)].into_iter());
        assert_eq!(m["a"], 0.75);
        assert_eq!(m["b"], 0.0);
        let other: BTreeMap<String, f64> = [("a".to_string(), 0.25)].into();
        let s: BTreeMap<String, f64> = summarize("locality", [&m, &other].into_iter())
            .into_iter()
            .collect();
        assert_eq!(s["locality.a"], 50.0);
        assert_eq!(s["locality.b"], 0.0);
        assert_eq!(s["locality"], 25.0);
    }

    #[test]
    fn locality_is_the_share_of_predictions_unchanged() {
        let mut l = Locality {
            neighbours: vec![
                NeighbourArgmax {
                    set: "x".into(),
                    prompt: "p".into(),
                    before: vec![],
                    after: vec![1, 2, 3, 4],
                },
                NeighbourArgmax {
                    set: "x".into(),
                    prompt: "q".into(),
                    before: vec![],
                    after: vec![7],
                },
            ],
            sets: BTreeMap::new(),
        };
        l.compare(&[vec![1, 2, 0, 4], vec![7]]);
        assert_eq!(l.sets["x"], (0.75 + 1.0) / 2.0);
        assert_eq!(share_equal(&[1], &[1, 2]), 0.0);
    }
}
