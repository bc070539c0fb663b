//! The parameter store: every weight of a model under its Hugging Face name
//! (`model.layers.10.mlp.down_proj.weight`), whatever file it came from.
//!
//! Architectures hold shallow clones of these tensors (same storage, same autograd
//! flag), so freezing or unfreezing a parameter here takes effect in the model, and
//! editing methods select what to train by name or pattern.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Named parameters in checkpoint order.
pub struct ParamStore {
    names: Vec<String>,
    tensors: Vec<Tensor>,
    index: HashMap<String, usize>,
    /// `alpha / rank` of the LoRA adapters in the store, if any (see `model::lora`).
    pub lora_scale: Option<f64>,
}

impl Default for ParamStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ParamStore {
    pub fn new() -> Self {
        ParamStore {
            names: Vec::new(),
            tensors: Vec::new(),
            index: HashMap::new(),
            lora_scale: None,
        }
    }

    /// Adds (or replaces) a parameter; it starts frozen.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        let name = name.into();
        let tensor = tensor.set_requires_grad(false);
        match self.index.get(&name) {
            Some(&i) => self.tensors[i] = tensor,
            None => {
                self.index.insert(name.clone(), self.names.len());
                self.names.push(name);
                self.tensors.push(tensor);
            }
        }
    }

    /// A handle on a parameter (shares storage and the requires-grad flag).
    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.index
            .get(name)
            .map(|&i| self.tensors[i].shallow_clone())
            .ok_or_else(|| Error::MissingTensor { name: name.into() })
    }

    /// Like [`ParamStore::get`], checking the shape.
    pub fn get_shaped(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.get(name)?;
        if t.size() != shape {
            return Err(Error::ShapeMismatch {
                name: name.into(),
                expected: shape.to_vec(),
                found: t.size(),
            });
        }
        Ok(t)
    }

    /// Removes a parameter, returning it.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        let i = self.index.remove(name)?;
        self.names.remove(i);
        let t = self.tensors.remove(i);
        for v in self.index.values_mut() {
            if *v > i {
                *v -= 1;
            }
        }
        Some(t)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.names.iter().map(String::as_str).zip(&self.tensors)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Total number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(Tensor::numel).sum()
    }

    /// Makes every parameter whose name matches `pattern` (see [`glob_match`]) trainable
    /// or frozen; returns how many matched.
    pub fn set_trainable(&self, pattern: &str, trainable: bool) -> Result<usize> {
        let mut n = 0;
        for (name, t) in self.iter() {
            if glob_match(pattern, name) {
                let _ = t.shallow_clone().set_requires_grad(trainable);
                n += 1;
            }
        }
        if n == 0 {
            return Err(Error::NoMatch(pattern.into()));
        }
        Ok(n)
    }

    pub fn freeze_all(&self) {
        for t in &self.tensors {
            let _ = t.shallow_clone().set_requires_grad(false);
        }
    }

    /// The trainable parameters, in order.
    pub fn trainable(&self) -> Vec<(&str, &Tensor)> {
        self.iter().filter(|(_, t)| t.requires_grad()).collect()
    }

    pub fn device(&self) -> Device {
        self.tensors.first().map_or(Device::Cpu, Tensor::device)
    }

    pub fn kind(&self) -> Kind {
        self.tensors.first().map_or(Kind::Float, Tensor::kind)
    }
}

/// Copies of parameters' values, by name, for exact restores: every parameter
/// ([`ParamStore::snapshot`]) or only those an edit may change
/// ([`ParamStore::snapshot_of`], so restoring one matrix does not cost a second copy of
/// the model).
pub struct Snapshot(Vec<(String, Tensor)>);

/// Feeds a tensor's values, as f32 bytes, to `h`.
fn hash_values(t: &Tensor, h: &mut impl std::hash::Hasher) -> Result<()> {
    let flat = t
        .detach()
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float)
        .flatten(0, -1);
    let v = Vec::<f32>::try_from(&flat)?;
    // SAFETY: any f32 slice is a valid byte slice of four times its length.
    let bytes = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len() * 4) };
    h.write(bytes);
    Ok(())
}

impl ParamStore {
    /// A fingerprint of every weight (names, shapes, f32 values) and of `salt` (what
    /// else a cached result depends on), to name cache files by.
    pub fn fingerprint(&self, salt: &str) -> Result<u64> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut names: Vec<&str> = self.names().collect();
        names.sort_unstable();
        for name in names {
            let t = self.get(name)?;
            name.hash(&mut h);
            t.size().hash(&mut h);
            hash_values(&t, &mut h)?;
        }
        salt.hash(&mut h);
        Ok(h.finish())
    }

    /// A hash of one parameter's values.
    pub fn value_hash(&self, name: &str) -> Result<u64> {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        hash_values(&self.get(name)?, &mut h)?;
        Ok(h.finish())
    }

    /// A hash of each parameter's values, in store order: comparing two lists tells
    /// which parameters changed (a sequential run's checkpoint keeps only those).
    pub fn value_hashes(&self) -> Result<Vec<u64>> {
        use std::hash::Hasher;
        self.tensors
            .iter()
            .map(|t| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                hash_values(t, &mut h)?;
                Ok(h.finish())
            })
            .collect()
    }

    /// Copies every parameter.
    pub fn snapshot(&self) -> Snapshot {
        let _g = tch::no_grad_guard();
        Snapshot(
            self.names
                .iter()
                .zip(&self.tensors)
                .map(|(n, t)| (n.clone(), t.detach().copy()))
                .collect(),
        )
    }

    /// Copies the parameters named (each once); an unknown name is an error.
    pub fn snapshot_of(&self, names: &[String]) -> Result<Snapshot> {
        let _g = tch::no_grad_guard();
        let mut seen = std::collections::HashSet::new();
        names
            .iter()
            .filter(|n| seen.insert(n.as_str()))
            .map(|n| Ok((n.clone(), self.get(n)?.detach().copy())))
            .collect::<Result<_>>()
            .map(Snapshot)
    }

    /// Puts back the values of `snapshot`, bit for bit, in place (handles held by the
    /// model stay valid), and clears every parameter's gradient.
    pub fn restore(&self, snapshot: &Snapshot) -> Result<()> {
        let _g = tch::no_grad_guard();
        for (name, saved) in &snapshot.0 {
            let mut t = self.get(name)?;
            if t.size() != saved.size() {
                return Err(Error::ShapeMismatch {
                    name: name.clone(),
                    expected: saved.size(),
                    found: t.size(),
                });
            }
            t.copy_(saved);
        }
        for t in &self.tensors {
            t.shallow_clone().zero_grad();
        }
        Ok(())
    }
}

/// Matches a parameter name against a pattern: `*` any run of characters, `?` one
/// character, `{a,b}` alternatives and `{3..5}` an inclusive integer range.
///
/// ```
/// use ftedit::model::glob_match;
/// assert!(glob_match("model.layers.{3..5}.mlp.*", "model.layers.4.mlp.up_proj.weight"));
/// assert!(glob_match("*.{q,k}_proj.weight", "model.layers.0.self_attn.k_proj.weight"));
/// assert!(!glob_match("model.layers.{3..5}.mlp.*", "model.layers.6.mlp.up_proj.weight"));
/// ```
pub fn glob_match(pattern: &str, name: &str) -> bool {
    expand_braces(pattern)
        .iter()
        .any(|p| wildcard(p.as_bytes(), name.as_bytes()))
}

fn expand_braces(pattern: &str) -> Vec<String> {
    let Some(open) = pattern.find('{') else {
        return vec![pattern.to_owned()];
    };
    let Some(close) = pattern[open..].find('}').map(|c| open + c) else {
        return vec![pattern.to_owned()];
    };
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let alternatives: Vec<String> = match body.split_once("..") {
        Some((a, b)) if a.parse::<i64>().is_ok() && b.parse::<i64>().is_ok() => {
            let (a, b) = (a.parse::<i64>().unwrap(), b.parse::<i64>().unwrap());
            (a.min(b)..=a.max(b)).map(|i| i.to_string()).collect()
        }
        _ => body.split(',').map(str::to_owned).collect(),
    };
    alternatives
        .iter()
        .flat_map(|alt| expand_braces(&format!("{head}{alt}{tail}")))
        .collect()
}

fn wildcard(p: &[u8], s: &[u8]) -> bool {
    // Iterative matcher with backtracking to the last '*'.
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns() {
        let n = "model.layers.4.mlp.down_proj.weight";
        assert!(glob_match("model.layers.{3..5}.mlp.*", n));
        assert!(!glob_match("model.layers.{5..7}.mlp.*", n));
        assert!(glob_match("*.mlp.{gate,down}_proj.weight", n));
        assert!(!glob_match("*.mlp.{gate,up}_proj.weight", n));
        assert!(glob_match("model.layers.?.mlp.down_proj.weight", n));
        assert!(!glob_match(
            "model.layers.?.mlp.down_proj.weight",
            "model.layers.14.mlp.down_proj.weight"
        ));
        assert!(glob_match("*", n));
        assert!(glob_match(n, n));
        assert!(!glob_match("model.layers.4.mlp", n));
    }

    #[test]
    fn trainable_flags_are_shared_with_handles() {
        let mut store = ParamStore::new();
        store.insert(
            "a.weight",
            Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
        );
        store.insert("b.weight", Tensor::zeros([2], (Kind::Float, Device::Cpu)));
        let handle = store.get("a.weight").unwrap();
        assert!(!handle.requires_grad());
        assert_eq!(store.set_trainable("a.*", true).unwrap(), 1);
        assert!(handle.requires_grad());
        assert_eq!(store.trainable().len(), 1);
        assert!(matches!(
            store.set_trainable("c.*", true),
            Err(Error::NoMatch(_))
        ));
        let err = store.get_shaped("b.weight", &[3]).unwrap_err();
        assert!(err.to_string().contains("b.weight"), "{err}");
    }
}
