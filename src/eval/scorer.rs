//! Batched scoring primitives the metrics are built on. Requests from many records are
//! packed into shared forward passes (no compute on padding) and the vocabulary
//! projection runs only at the positions a metric reads.

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::model::{Input, LogitsAt, Model};

/// Score `tokens[j]` with the logits at position `start + j - 1` of `ids` (a model
/// input): MEMIT's teacher-forced suffix scoring.
#[derive(Debug, Clone, PartialEq)]
pub struct NllRequest {
    pub ids: Vec<u32>,
    pub start: usize,
    pub tokens: Vec<u32>,
}

/// The prediction after a model input: the argmax and its lead over the runner-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub argmax: u32,
    /// Top-1 minus top-2 logit (small margins may flip between implementations).
    pub margin: f64,
}

/// Greedy packing budget: tokens per forward pass.
const TOKENS_PER_PASS: usize = 4096;

/// Splits requests into consecutive groups of at most `budget` tokens.
fn groups(lens: &[usize], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, &l) in lens.iter().enumerate() {
        if used > 0 && used + l > budget {
            out.push(start..i);
            start = i;
            used = 0;
        }
        used += l;
    }
    if start < lens.len() {
        out.push(start..lens.len());
    }
    out
}

/// Sequences that serve many reads: with causal attention, the logits at position `q`
/// depend only on tokens `0..=q`, so a read from `ids[..=q]` can be served by any
/// sequence that starts with those tokens. CounterFact's single-token targets and
/// zsRE's token-by-token inputs mostly share one sequence this way.
struct Hosts {
    seqs: Vec<Vec<u32>>,
    /// Per request: its host.
    host: Vec<usize>,
}

impl Hosts {
    /// `needed[i]`: the tokens request `i` reads logits over (its last position read is
    /// the last of these).
    fn new(needed: &[&[u32]]) -> Self {
        let mut order: Vec<usize> = (0..needed.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(needed[i].len()));
        let mut seqs: Vec<Vec<u32>> = Vec::new();
        let mut by_key: std::collections::HashMap<&[u32], Vec<usize>> =
            std::collections::HashMap::new();
        let mut host = vec![0; needed.len()];
        for i in order {
            let ids = needed[i];
            let key = &ids[..ids.len().min(2)];
            let found = by_key
                .get(key)
                .and_then(|cands| cands.iter().copied().find(|&h| seqs[h].starts_with(ids)));
            host[i] = match found {
                Some(h) => h,
                None => {
                    seqs.push(ids.to_vec());
                    let h = seqs.len() - 1;
                    // Register under every key a later, shorter request could have.
                    by_key
                        .entry(&needed[i][..ids.len().min(2)])
                        .or_default()
                        .push(h);
                    if ids.len() >= 2 {
                        by_key.entry(&needed[i][..1]).or_default().push(h);
                    }
                    h
                }
            };
        }
        Hosts { seqs, host }
    }
}

/// Computes the logits at `(request, position)` reads over host sequences packed into
/// passes of bounded size, handing each pass's `[n, V]` logits to `f` with the indices
/// of the reads they answer (so the vocabulary-sized rows never pile up).
fn for_each_pass(
    model: &Model,
    needed: &[&[u32]],
    reads: &[(usize, usize)],
    mut f: impl FnMut(&[usize], Tensor) -> Result<()>,
) -> Result<()> {
    let hosts = Hosts::new(needed);
    let lens: Vec<usize> = hosts.seqs.iter().map(Vec::len).collect();
    let passes = groups(&lens, TOKENS_PER_PASS);
    let mut pass_of = vec![0; hosts.seqs.len()];
    for (k, r) in passes.iter().enumerate() {
        for h in r.clone() {
            pass_of[h] = k;
        }
    }
    let mut by_pass: Vec<Vec<usize>> = vec![Vec::new(); passes.len()];
    for (i, &(req, _)) in reads.iter().enumerate() {
        by_pass[pass_of[hosts.host[req]]].push(i);
    }
    for (range, mine) in passes.iter().zip(by_pass) {
        if mine.is_empty() {
            continue;
        }
        let (input, place) = Input::packed(&hosts.seqs[range.clone()], model.device())?;
        let at = mine
            .iter()
            .map(|&i| {
                let (req, pos) = reads[i];
                let (row, off) = place[hosts.host[req] - range.start];
                (row, off + pos)
            })
            .collect();
        f(&mine, model.forward(&input, &LogitsAt::Positions(at))?)?;
    }
    Ok(())
}

/// Per-token NLLs (f64, from the model's logits) of every request.
pub fn token_nlls(model: &Model, reqs: &[NllRequest]) -> Result<Vec<Vec<f64>>> {
    Ok(token_scores(model, reqs)?
        .into_iter()
        .map(|r| r.into_iter().map(|(nll, _)| nll).collect())
        .collect())
}

/// Per token of every request: its NLL (f64, from the model's logits) and whether it is
/// the argmax there (greedy).
pub fn token_scores(model: &Model, reqs: &[NllRequest]) -> Result<Vec<Vec<(f64, bool)>>> {
    let _g = tch::no_grad_guard();
    let mut needed = Vec::with_capacity(reqs.len());
    let mut reads = Vec::new();
    let mut labels = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let last = r.start + r.tokens.len() - 1;
        if r.start == 0 || r.tokens.is_empty() || last > r.ids.len() {
            return Err(crate::Error::Input(format!(
                "scoring {} tokens from position {} of a {}-token input",
                r.tokens.len(),
                r.start,
                r.ids.len()
            )));
        }
        needed.push(&r.ids[..last]);
        for (j, &tok) in r.tokens.iter().enumerate() {
            reads.push((i, r.start + j - 1));
            labels.push(tok as i64);
        }
    }
    let mut flat = vec![(0f64, false); reads.len()];
    for_each_pass(model, &needed, &reads, |mine, logits| {
        let lab: Vec<i64> = mine.iter().map(|&i| labels[i]).collect();
        let lab = Tensor::from_slice(&lab)
            .to_device(logits.device())
            .unsqueeze(1);
        let logp = logits.to_kind(Kind::Double).log_softmax(-1, Kind::Double);
        let nll = logp.gather(1, &lab, false).neg().squeeze_dim(1);
        let greedy = logp.argmax(-1, false).eq_tensor(&lab.squeeze_dim(1));
        let nll = Vec::<f64>::try_from(nll.to_device(tch::Device::Cpu))?;
        let greedy = Vec::<bool>::try_from(greedy.to_device(tch::Device::Cpu))?;
        for ((&i, v), g) in mine.iter().zip(nll).zip(greedy) {
            flat[i] = (v, g);
        }
        Ok(())
    })?;
    let mut out = Vec::with_capacity(reqs.len());
    let mut k = 0;
    for r in reqs {
        out.push(flat[k..k + r.tokens.len()].to_vec());
        k += r.tokens.len();
    }
    Ok(out)
}

/// The next-token prediction after each input.
pub fn predictions(model: &Model, inputs: &[Vec<u32>]) -> Result<Vec<Prediction>> {
    let _g = tch::no_grad_guard();
    let needed: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
    let reads: Vec<(usize, usize)> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s.len() - 1))
        .collect();
    let mut out = vec![
        Prediction {
            argmax: 0,
            margin: 0.0
        };
        inputs.len()
    ];
    for_each_pass(model, &needed, &reads, |mine, logits| {
        let (top, idx) = logits.to_kind(Kind::Float).topk(2, -1, true, true);
        let top = Vec::<Vec<f32>>::try_from(top.to_device(tch::Device::Cpu))?;
        let idx = Vec::<Vec<i64>>::try_from(idx.to_device(tch::Device::Cpu))?;
        for ((&i, v), ix) in mine.iter().zip(&top).zip(&idx) {
            out[i] = Prediction {
                argmax: ix[0] as u32,
                margin: (v[0] - v[1]) as f64,
            };
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{Hosts, groups};

    #[test]
    fn reads_share_hosts_when_one_input_starts_another() {
        let (a, b, c, d) = ([1, 2, 3, 4], [1, 2], [1, 2, 9], [7]);
        let h = Hosts::new(&[&a, &b, &c, &d]);
        assert_eq!(h.seqs.len(), 3, "{:?}", h.seqs);
        assert_eq!(h.host[0], h.host[1], "[1, 2] is served by [1, 2, 3, 4]");
        assert_ne!(h.host[2], h.host[0]);
        assert_eq!(h.seqs[h.host[3]], vec![7]);
    }

    #[test]
    fn groups_respect_the_budget_and_keep_order() {
        assert_eq!(groups(&[3, 3, 3, 3], 6), vec![0..2, 2..4]);
        // A request longer than the budget gets a pass of its own.
        assert_eq!(groups(&[2, 9, 2], 6), vec![0..1, 1..2, 2..3]);
        assert_eq!(groups(&[], 6), Vec::<std::ops::Range<usize>>::new());
    }
}
