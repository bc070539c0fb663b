//! Adapters: modules that live beside the weights and act in every forward pass at one
//! layer's MLP output projection (GRACE's codebook, WISE's side memory). An adapter sees
//! the projection's input (the key) and may change its output at the positions a forward
//! pass *probes*: where its logits are asked for first in each row (the last prompt token
//! of a teacher-forced prompt + target, or the new token of a generation step), or every
//! position when logits are asked for everywhere. Editors above this layer define them;
//! the model only applies the one installed ([`crate::model::Model::set_adapter`]).

use std::rc::Rc;

use tch::Tensor;

/// A module at one layer's MLP output projection.
pub trait Adapter {
    /// The layer whose MLP output projection it wraps.
    fn layer(&self) -> usize;
    /// The projection's output after the adapter: `key` is its input `[B, T, inner]`,
    /// `out` its output `[B, T, hidden]`, `probe` `[B, T]` (bool) the positions probed,
    /// `groups` `[B, T]` (int64) the sequence each position belongs to (packed rows hold
    /// several; −1 at padding).
    fn apply(&self, key: &Tensor, out: Tensor, probe: &Tensor, groups: &Tensor) -> Tensor;
    /// What to save of it: its method, settings and tensors.
    fn saved(&self) -> SavedAdapter;
    /// Its router, when it acts before the model on whole sequences (SERAC) rather than
    /// (or besides) at its layer.
    fn router(&self) -> Option<&dyn SequenceRouter> {
        None
    }
    /// For the editor that made it to find its own type again.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Routes whole sequences before the model: each sequence, up to the first position
/// whose logits are read, either runs as it is or with tokens put before it (SERAC's
/// edit in context); [`crate::model::Model::forward_with`] asks it for every pass.
pub trait SequenceRouter {
    /// For each query (token ids), `None` to run it as it is, or its [`Route`].
    fn contexts(
        &self,
        model: &crate::model::Model,
        queries: &[Vec<u32>],
    ) -> crate::Result<Vec<Option<Route>>>;
}

/// Where a [`SequenceRouter`] sends a sequence: with `context` put in at position `at`,
/// in the place of the sequence's `replaces` tokens there (a BOS the context brings
/// itself). `at` is 0 but for a chat turn, whose context goes inside the turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub at: usize,
    pub context: Vec<u32>,
    pub replaces: usize,
}

impl Route {
    /// The sequence `seq` as it runs on this route: `seq` up to `at`, the context, then
    /// the rest of `seq` past the tokens the context replaces.
    pub fn continued(&self, seq: &[u32]) -> Vec<u32> {
        let at = self.at.min(seq.len());
        let rest = seq.get(at + self.replaces..).unwrap_or_default();
        [&seq[..at], self.context.as_slice(), rest].concat()
    }

    /// Where the token at `pos` of the sequence lands on this route (`None`: one the
    /// context replaces).
    pub fn position(&self, pos: usize) -> Option<usize> {
        if pos < self.at {
            Some(pos)
        } else if pos < self.at + self.replaces {
            None
        } else {
            Some(pos - self.replaces + self.context.len())
        }
    }
}

/// An adapter as files hold it: `method` names the editor that reads it back.
#[derive(Debug)]
pub struct SavedAdapter {
    pub method: String,
    /// Settings, as JSON.
    pub config: serde_json::Value,
    pub tensors: Vec<(String, Tensor)>,
}

impl SavedAdapter {
    /// The tensor called `name`; a missing one is an input error naming the adapter.
    pub fn tensor(&self, name: &str) -> crate::Result<&Tensor> {
        named_tensor(
            &self.tensors,
            name,
            &format!("{} adapter", self.method.to_uppercase()),
        )
    }
}

/// The tensor called `name` among `tensors`; `what` names their source in the error.
pub fn named_tensor<'a>(
    tensors: &'a [(String, Tensor)],
    name: &str,
    what: &str,
) -> crate::Result<&'a Tensor> {
    tensors
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .ok_or_else(|| crate::Error::Input(format!("{what}: no tensor {name}")))
}

/// The adapter a model carries (shared, so editors can keep a handle).
pub type SharedAdapter = Rc<dyn Adapter>;

/// A `[B, T]` bool mask true at exactly `positions` (`(row, position)`), or everywhere
/// (`None`).
pub fn probe_mask(
    b: usize,
    t: usize,
    positions: Option<&[(usize, usize)]>,
    device: tch::Device,
) -> Tensor {
    let Some(positions) = positions else {
        return Tensor::ones([b as i64, t as i64], (tch::Kind::Bool, device));
    };
    let mut flat = vec![false; b * t];
    for &(r, p) in positions {
        if r < b && p < t {
            flat[r * t + p] = true;
        }
    }
    Tensor::from_slice(&flat)
        .view([b as i64, t as i64])
        .to_device(device)
}

/// The files an adapter is kept in beside a model: `NAME.json` (method and settings) and
/// `NAME.safetensors` (tensors), for `base` = `DIR/ftedit_adapter` (a folder model) or
/// `x.gguf.adapter` (beside a GGUF).
pub fn adapter_base(model_path: &std::path::Path) -> std::path::PathBuf {
    if model_path.is_dir() {
        model_path.join(ADAPTER_NAME)
    } else {
        std::path::PathBuf::from(format!("{}.adapter", model_path.display()))
    }
}

/// The adapter files' name in a model folder (`ftedit_adapter.json`, `.safetensors`).
pub const ADAPTER_NAME: &str = "ftedit_adapter";

/// Writes `saved` as `base.json` and `base.safetensors`, each whole or not at all.
pub fn write_adapter(saved: &SavedAdapter, base: &std::path::Path) -> crate::Result<()> {
    let with = |ext: &str| std::path::PathBuf::from(format!("{}.{ext}", base.display()));
    let tensors = with("safetensors");
    let tmp = crate::output::temp_path(&tensors);
    let named: Vec<(&str, &Tensor)> = saved.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&named, &tmp)
        .map_err(crate::Error::from)
        .and_then(|_| std::fs::rename(&tmp, &tensors).map_err(|e| crate::Error::io(&tensors, e)))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
    let json = serde_json::json!({"method": saved.method, "config": saved.config});
    crate::output::write_atomic(
        &with("json"),
        serde_json::to_string_pretty(&json)
            .expect("serialisable")
            .as_bytes(),
    )
}

/// The adapter kept at `base` ([`write_adapter`]), if there is one.
pub fn read_adapter(base: &std::path::Path) -> crate::Result<Option<SavedAdapter>> {
    let with = |ext: &str| std::path::PathBuf::from(format!("{}.{ext}", base.display()));
    let json = with("json");
    if !json.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&json).map_err(|e| crate::Error::io(&json, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| crate::Error::data(&json, e.to_string()))?;
    let method = v["method"]
        .as_str()
        .ok_or_else(|| crate::Error::data(&json, "no `method`"))?
        .to_owned();
    let tensors = Tensor::read_safetensors(with("safetensors"))?;
    Ok(Some(SavedAdapter {
        method,
        config: v["config"].clone(),
        tensors,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_adapter_finds_its_tensors_by_name_and_names_a_missing_one() {
        let saved = SavedAdapter {
            method: "grace".into(),
            config: serde_json::json!({}),
            tensors: vec![
                ("keys".into(), Tensor::from_slice(&[1.0f32, 2.0])),
                ("values".into(), Tensor::from_slice(&[3.0f32])),
            ],
        };
        assert_eq!(
            Vec::<f32>::try_from(saved.tensor("values").unwrap()).unwrap(),
            [3.0]
        );
        let err = saved.tensor("labels").unwrap_err().to_string();
        assert!(err.contains("GRACE adapter: no tensor labels"), "{err}");
    }

    #[test]
    fn a_route_puts_its_context_at_its_place_and_maps_each_token_there() {
        // A BOS-led query whose context brings its own BOS.
        let front = Route {
            at: 0,
            context: vec![1, 7, 8],
            replaces: 1,
        };
        assert_eq!(front.continued(&[1, 4, 5]), [1, 7, 8, 4, 5]);
        assert_eq!(
            (0..3).map(|p| front.position(p)).collect::<Vec<_>>(),
            [None, Some(3), Some(4)]
        );
        // A chat turn: the context goes in after the template's two tokens.
        let turn = Route {
            at: 2,
            context: vec![7, 8],
            replaces: 0,
        };
        let seq = [20, 21, 4, 5, 22];
        let routed = turn.continued(&seq);
        assert_eq!(routed, [20, 21, 7, 8, 4, 5, 22]);
        for (p, tok) in seq.iter().enumerate() {
            assert_eq!(routed[turn.position(p).unwrap()], *tok, "token {p}");
        }
    }
}
