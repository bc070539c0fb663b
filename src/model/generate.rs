//! Text generation with a KV cache: greedy or top-k sampling from a seed, for one
//! prompt or a batch (left-padded, with a key mask and per-row positions).

use tch::{Kind, Tensor};

use super::nn::KvCache;
use super::{ForwardExtras, Input, LogitsAt, Model};
use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most probable token.
    Greedy,
    /// Sample among the `k` most probable tokens (softmax at `temperature`).
    TopK { k: usize, temperature: f64 },
}

/// Options for [`generate`].
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Seed of the sampler (top-k); the same seed gives the same text. Row `r` of a
    /// batch samples from its own stream, seeded `row_seeds[r]` if given, else
    /// `seed + r`, so a prompt's text does not depend on what it is batched with.
    pub seed: u64,
    pub row_seeds: Option<Vec<u64>>,
    /// Tokens that end a row (not included in its output), e.g. EOS.
    pub stop: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 32,
            sampling: Sampling::Greedy,
            seed: 0,
            row_seeds: None,
            stop: Vec::new(),
        }
    }
}

/// SplitMix64: a small, fixed generator so a seed means the same text on every build.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn choose(logits: &Tensor, sampling: Sampling, rngs: &mut [SplitMix64]) -> Result<Vec<u32>> {
    let logits = logits.to_kind(Kind::Float);
    Ok(match sampling {
        Sampling::Greedy => Vec::<i64>::try_from(logits.argmax(-1, false))?
            .into_iter()
            .map(|i| i as u32)
            .collect(),
        Sampling::TopK { k, temperature } => {
            let k = k.clamp(1, logits.size()[1] as usize) as i64;
            let (vals, idx) = logits.topk(k, -1, true, true);
            let probs = (vals / temperature.max(1e-6)).softmax(-1, Kind::Float);
            let probs: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(probs)?;
            let idx: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(idx)?;
            probs
                .iter()
                .zip(&idx)
                .zip(rngs.iter_mut())
                .map(|((p, ids), rng)| {
                    let u = rng.next_f64() as f32;
                    let mut acc = 0.0;
                    let pick = p.iter().position(|&q| {
                        acc += q;
                        u < acc
                    });
                    ids[pick.unwrap_or(p.len() - 1)] as u32
                })
                .collect()
        }
    })
}

/// Continues each prompt (token ids as the model takes them, BOS included) and returns
/// the new tokens of each, without the stop token.
pub fn generate(
    model: &Model,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    let _g = tch::no_grad_guard();
    let b = prompts.len();
    if b == 0 || prompts.iter().any(Vec::is_empty) {
        return Err(Error::Input("generate needs non-empty prompts".into()));
    }
    // An adapter that routes whole sequences (SERAC) routes each on its prompt, so the
    // generated tokens cannot change the route: a routed prompt continues as context +
    // prompt, decoded with the cache like any other and not routed again.
    let adapter = model.adapter.clone();
    let router = adapter.as_ref().and_then(|a| a.router());
    let routed: Vec<Vec<u32>>;
    let prompts = match router {
        Some(router) => {
            let routes = router.contexts(model, prompts)?;
            routed = prompts
                .iter()
                .zip(routes)
                .map(|(p, route)| route.map_or_else(|| p.clone(), |r| r.continued(p)))
                .collect();
            &routed[..]
        }
        None => prompts,
    };
    let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if len > model.max_positions() {
        return Err(Error::ContextOverflow {
            len,
            max: model.max_positions(),
        });
    }
    let max_new = opts.max_new_tokens.min(model.max_positions() - len);
    let device = model.device();
    let mut input = left_padded(prompts, device);
    let mut key_mask = input.key_mask.as_ref().map(Tensor::shallow_clone);
    let mut positions = input.positions.as_ref().map(Tensor::shallow_clone);
    let mut cache = KvCache::new();
    let mut rngs: Vec<SplitMix64> = match &opts.row_seeds {
        Some(seeds) if seeds.len() == b => seeds.iter().map(|&s| SplitMix64(s)).collect(),
        Some(seeds) => {
            return Err(Error::Input(format!(
                "{} row seeds for {b} prompts",
                seeds.len()
            )));
        }
        None => (0..b as u64)
            .map(|r| SplitMix64(opts.seed.wrapping_add(r)))
            .collect(),
    };
    let mut out = vec![Vec::new(); b];
    let mut done = vec![false; b];
    for _ in 0..max_new {
        let extras = ForwardExtras {
            hooks: None,
            cache: Some(&mut cache),
            grad_from: None,
            ..Default::default()
        };
        let logits = model.forward_plain(&input, &LogitsAt::Last, extras)?;
        let next = choose(&logits, opts.sampling, &mut rngs)?;
        for (r, &tok) in next.iter().enumerate() {
            if done[r] {
                continue;
            }
            if opts.stop.contains(&tok) {
                done[r] = true;
            } else {
                out[r].push(tok);
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        let step: Vec<i64> = next.iter().map(|&t| t as i64).collect();
        key_mask = key_mask
            .map(|m| Tensor::cat(&[m, Tensor::ones([b as i64, 1], (Kind::Bool, device))], 1));
        positions = positions.map(|p| p.narrow(1, p.size()[1] - 1, 1) + 1);
        input = Input {
            ids: Tensor::from_slice(&step)
                .view([b as i64, 1])
                .to_device(device),
            lengths: vec![1; b],
            key_mask: key_mask.as_ref().map(Tensor::shallow_clone),
            positions: positions.as_ref().map(Tensor::shallow_clone),
            segments: None,
        };
    }
    Ok(out)
}

/// `seqs` left-padded into one batch, with the key mask and positions padding needs.
fn left_padded(seqs: &[Vec<u32>], device: tch::Device) -> Input {
    let b = seqs.len();
    let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let padded = seqs.iter().any(|p| p.len() != len);
    let mut ids = vec![0i64; b * len];
    let mut mask = vec![false; b * len];
    let mut pos = vec![0i64; b * len];
    for (r, p) in seqs.iter().enumerate() {
        let pad = len - p.len();
        for (j, &id) in p.iter().enumerate() {
            ids[r * len + pad + j] = id as i64;
            mask[r * len + pad + j] = true;
            pos[r * len + pad + j] = j as i64;
        }
    }
    let shape = [b as i64, len as i64];
    Input {
        ids: Tensor::from_slice(&ids).view(shape).to_device(device),
        lengths: vec![len; b],
        key_mask: padded.then(|| Tensor::from_slice(&mask).view(shape).to_device(device)),
        positions: padded.then(|| Tensor::from_slice(&pos).view(shape).to_device(device)),
        segments: None,
    }
}
