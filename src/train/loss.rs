//! Conditional likelihood: the negative log-likelihood of the target tokens given the
//! prompt, masked **by position** (never by token value), with logits computed only at
//! the positions that predict a target token.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::{ForwardExtras, Input, LogitsAt, Model};

/// One training example: the prompt as model input (BOS included where the model
/// wants it) and the target tokens that should follow.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub target: Vec<u32>,
}

/// How target-token losses are averaged over a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// Sum of all target-token NLLs over the number of target tokens (what a Hugging
    /// Face `labels` tensor with -100 on the prompt gives).
    TokenMean,
    /// Mean over examples of each example's mean target-token NLL.
    ExampleMean,
}

/// A packed batch and where its target tokens are predicted.
struct Layout {
    input: Input,
    /// `(row, position)` of the logits that predict each target token.
    at: Vec<(usize, usize)>,
    labels: Vec<i64>,
    /// The example each target token belongs to.
    owner: Vec<i64>,
}

/// Packs the batch (no compute on padding) and lists the positions whose logits predict
/// target tokens.
fn layout(batch: &[Example], model: &Model) -> Result<Layout> {
    let mut seqs = Vec::with_capacity(batch.len());
    for (r, ex) in batch.iter().enumerate() {
        if ex.prompt.is_empty() || ex.target.is_empty() {
            return Err(Error::Input(format!(
                "example {r} has an empty prompt or target"
            )));
        }
        seqs.push([ex.prompt.as_slice(), ex.target.as_slice()].concat());
    }
    let (input, place) = Input::packed(&seqs, model.device())?;
    let (mut at, mut labels, mut owner) = (Vec::new(), Vec::new(), Vec::new());
    for (r, (ex, (row, offset))) in batch.iter().zip(place).enumerate() {
        for (j, &tok) in ex.target.iter().enumerate() {
            at.push((row, offset + ex.prompt.len() - 1 + j));
            labels.push(tok as i64);
            owner.push(r as i64);
        }
    }
    Ok(Layout {
        input,
        at,
        labels,
        owner,
    })
}

/// Per-token NLLs `[N]` of all target tokens of the batch, in order, and each token's
/// example index.
fn token_nll_tensor(
    model: &Model,
    batch: &[Example],
    extras: ForwardExtras,
) -> Result<(Tensor, Tensor)> {
    let Layout {
        input,
        at,
        labels,
        owner,
    } = layout(batch, model)?;
    let device = model.device();
    let logits = model.forward_with(&input, &LogitsAt::Positions(at), extras)?;
    let labels = Tensor::from_slice(&labels).to_device(device);
    // Low-precision models take the loss in f32; f64 models keep f64.
    let kind = if logits.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let nll = logits.to_kind(kind).cross_entropy_loss::<Tensor>(
        &labels,
        None,
        tch::Reduction::None,
        -100,
        0.0,
    );
    Ok((nll, Tensor::from_slice(&owner).to_device(device)))
}

/// The conditional NLL of the targets given the prompts (a scalar with a graph to the
/// trainable parameters).
pub fn conditional_nll(model: &Model, batch: &[Example], reduction: Reduction) -> Result<Tensor> {
    conditional_nll_with(model, batch, reduction, ForwardExtras::default())
}

/// [`conditional_nll`] with hooks or other extras in the forward pass.
pub fn conditional_nll_with(
    model: &Model,
    batch: &[Example],
    reduction: Reduction,
    extras: ForwardExtras,
) -> Result<Tensor> {
    let (nll, owner) = token_nll_tensor(model, batch, extras)?;
    Ok(match reduction {
        Reduction::TokenMean => nll.mean(nll.kind()),
        Reduction::ExampleMean => {
            let n = batch.len() as i64;
            let sums = Tensor::zeros([n], (nll.kind(), nll.device())).index_add(0, &owner, &nll);
            let counts: Vec<f64> = batch.iter().map(|e| e.target.len() as f64).collect();
            let counts = Tensor::from_slice(&counts)
                .to_kind(nll.kind())
                .to_device(nll.device());
            (sums / counts).mean(nll.kind())
        }
    })
}

/// Back-propagates `weight` × the batch's token-mean conditional NLL and returns its
/// value. A full batch can hold thousands of sequences, so it runs in consecutive
/// slices of at most `max_tokens` tokens (a longer example gets a slice of its own),
/// each slice's loss weighted by its share of the target tokens: the gradient is the
/// whole batch's, the memory one slice's.
pub fn backward_in_slices(
    model: &Model,
    batch: &[Example],
    max_tokens: usize,
    weight: f64,
) -> Result<f64> {
    let targets: usize = batch.iter().map(|x| x.target.len()).sum();
    let mut value = 0.0;
    let mut slice = |part: &[Example]| -> Result<()> {
        let share = part.iter().map(|x| x.target.len()).sum::<usize>() as f64 / targets as f64;
        let loss = conditional_nll(model, part, Reduction::TokenMean)? * (share * weight);
        value += loss.double_value(&[]);
        loss.backward();
        Ok(())
    };
    let (mut start, mut used) = (0, 0);
    for (i, x) in batch.iter().enumerate() {
        let n = x.prompt.len() + x.target.len();
        if i > start && used + n > max_tokens {
            slice(&batch[start..i])?;
            (start, used) = (i, 0);
        }
        used += n;
    }
    if start < batch.len() {
        slice(&batch[start..])?;
    }
    Ok(value)
}

/// The NLL of every target token, per example (no autograd).
pub fn target_token_nlls(model: &Model, batch: &[Example]) -> Result<Vec<Vec<f64>>> {
    let _g = tch::no_grad_guard();
    let (nll, _) = token_nll_tensor(model, batch, ForwardExtras::default())?;
    let flat = Vec::<f64>::try_from(nll.to_kind(Kind::Double))?;
    let mut out = Vec::with_capacity(batch.len());
    let mut i = 0;
    for ex in batch {
        out.push(flat[i..i + ex.target.len()].to_vec());
        i += ex.target.len();
    }
    Ok(out)
}
