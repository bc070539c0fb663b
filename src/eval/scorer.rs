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

/// Per-token NLLs (f64, from the model's logits) of every request.
pub fn token_nlls(model: &Model, reqs: &[NllRequest]) -> Result<Vec<Vec<f64>>> {
    let _g = tch::no_grad_guard();
    let lens: Vec<usize> = reqs.iter().map(|r| r.ids.len()).collect();
    let mut out = Vec::with_capacity(reqs.len());
    for range in groups(&lens, TOKENS_PER_PASS) {
        let batch = &reqs[range];
        let seqs: Vec<&[u32]> = batch.iter().map(|r| r.ids.as_slice()).collect();
        let (input, place) = Input::packed(&seqs, model.device())?;
        let mut at = Vec::new();
        let mut labels = Vec::new();
        for (r, &(row, off)) in batch.iter().zip(&place) {
            for (j, &tok) in r.tokens.iter().enumerate() {
                let pos = r.start + j - 1;
                if r.start == 0 || pos >= r.ids.len() {
                    return Err(crate::Error::Input(format!(
                        "scored token {j} reads position {pos} of a {}-token input",
                        r.ids.len()
                    )));
                }
                at.push((row, off + pos));
                labels.push(tok as i64);
            }
        }
        let logits = model.forward(&input, &LogitsAt::Positions(at))?;
        let labels = Tensor::from_slice(&labels)
            .to_device(logits.device())
            .unsqueeze(1);
        let nll = logits
            .to_kind(Kind::Double)
            .log_softmax(-1, Kind::Double)
            .gather(1, &labels, false)
            .neg()
            .squeeze_dim(1);
        let flat = Vec::<f64>::try_from(nll.to_device(tch::Device::Cpu))?;
        let mut k = 0;
        for r in batch {
            out.push(flat[k..k + r.tokens.len()].to_vec());
            k += r.tokens.len();
        }
    }
    Ok(out)
}

/// The next-token prediction after each input.
pub fn predictions(model: &Model, inputs: &[Vec<u32>]) -> Result<Vec<Prediction>> {
    let _g = tch::no_grad_guard();
    let lens: Vec<usize> = inputs.iter().map(Vec::len).collect();
    let mut out = Vec::with_capacity(inputs.len());
    for range in groups(&lens, TOKENS_PER_PASS) {
        let batch = &inputs[range];
        let (input, place) = Input::packed(batch, model.device())?;
        let at = batch
            .iter()
            .zip(&place)
            .map(|(s, &(row, off))| (row, off + s.len() - 1))
            .collect();
        let logits = model
            .forward(&input, &LogitsAt::Positions(at))?
            .to_kind(Kind::Float);
        let (top, idx) = logits.topk(2, -1, true, true);
        let top = Vec::<Vec<f32>>::try_from(top.to_device(tch::Device::Cpu))?;
        let idx = Vec::<Vec<i64>>::try_from(idx.to_device(tch::Device::Cpu))?;
        out.extend(top.iter().zip(&idx).map(|(v, i)| Prediction {
            argmax: i[0] as u32,
            margin: (v[0] - v[1]) as f64,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::groups;

    #[test]
    fn groups_respect_the_budget_and_keep_order() {
        assert_eq!(groups(&[3, 3, 3, 3], 6), vec![0..2, 2..4]);
        // A request longer than the budget gets a pass of its own.
        assert_eq!(groups(&[2, 9, 2], 6), vec![0..1, 1..2, 2..3]);
        assert_eq!(groups(&[], 6), Vec::<std::ops::Range<usize>>::new());
    }
}
