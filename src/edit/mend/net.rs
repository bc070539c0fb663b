//! MEND's editor network (EDITORS.md, "MEND"): one low-rank residual MLP per weight
//! shape, shared by the matrices of that shape through a per-matrix mode (scale and
//! shift), fed the normalised input `x` and output gradient `δ` of each edited linear
//! map and returning the pseudo-activations `x̃` and pseudo-gradients `δ̃` whose products
//! make the weight change `ΔW = α_W Σ δ̃ x̃ᵀ`.
//!
//! On disk one safetensors file holds every tensor and, in its metadata under `ftedit`,
//! the matrices it edits and the model it was trained for.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// One edited matrix: its parameter name, the editor (shape) it goes through and its
/// mode there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    pub name: String,
    /// Input and output width of the linear map (not the storage order).
    pub d_in: i64,
    pub d_out: i64,
    /// Stored `[in, out]` (GPT-2's Conv1D) rather than `[out, in]`.
    pub transposed: bool,
    pub shape: usize,
    pub mode: i64,
}

/// What the file's metadata says besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetMeta {
    pub matrices: Vec<Matrix>,
    pub rank: i64,
    pub norm: bool,
    /// The model it was trained for: architecture and [`crate::edit::mend::model_id`].
    pub arch: String,
    pub model_id: String,
}

/// Running mean and sum of squared deviations per feature (Welford), in f64.
#[derive(Debug)]
pub struct Welford {
    pub k: Tensor,
    pub mean: Tensor,
    pub s: Tensor,
}

impl Welford {
    fn new(dim: i64, device: Device) -> Self {
        let z = || Tensor::zeros([dim], (Kind::Double, device));
        Welford {
            k: Tensor::zeros([], (Kind::Double, device)),
            mean: z(),
            s: z(),
        }
    }

    /// Adds rows `[n, dim]`: the batch form of Welford's update (Chan et al.), equal to
    /// adding them one at a time.
    pub fn update(&mut self, rows: &Tensor) {
        let _g = tch::no_grad_guard();
        let rows = rows.to_kind(Kind::Double);
        let n = rows.size()[0] as f64;
        if n == 0.0 {
            return;
        }
        let k = self.k.double_value(&[]);
        let mean_b = rows.mean_dim(0, false, Kind::Double);
        let m2_b = (&rows - &mean_b)
            .square()
            .sum_dim_intlist(0, false, Kind::Double);
        let delta = &mean_b - &self.mean;
        let total = k + n;
        self.mean = &self.mean + &delta * (n / total);
        self.s = &self.s + m2_b + delta.square() * (k * n / total);
        self.k = Tensor::from(total).to_device(self.mean.device());
    }

    /// Mean and unbiased standard deviation; an error before two rows.
    pub fn mean_std(&self) -> Result<(Tensor, Tensor)> {
        let k = self.k.double_value(&[]);
        if k < 2.0 {
            return Err(Error::Input(format!(
                "MEND's normalisation needs at least two gradient rows, has {k}"
            )));
        }
        Ok((self.mean.shallow_clone(), (&self.s / (k - 1.0)).sqrt()))
    }
}

/// One low-rank layer `h ← h + relu(s[m] ⊙ (U·V·h + b) + o[m])`.
struct LrLayer {
    u: Tensor,
    v: Tensor,
    b: Tensor,
    scale: Tensor,
    shift: Tensor,
}

/// The editor of one weight shape.
struct ShapeNet {
    d_in: i64,
    layers: Vec<LrLayer>,
    norm: Welford,
}

/// The whole editor: one [`ShapeNet`] per shape and a learned step size per matrix.
pub struct MendNet {
    pub meta: NetMeta,
    shapes: Vec<ShapeNet>,
    /// `α_W`, one per matrix, `[matrices]`.
    pub alphas: Tensor,
    /// Training mode: the normalisation statistics take in what passes through.
    pub training: bool,
}

/// The names and shapes of a [`ShapeNet`]'s tensors, for saving.
fn layer_names(shape: usize, layer: usize) -> [String; 5] {
    ["u", "v", "b", "scale", "shift"].map(|p| format!("shape{shape}.layer{layer}.{p}"))
}

impl MendNet {
    /// A new editor for `matrices` (their `shape` and `mode` fields are filled in here),
    /// at the identity: `U = 0`, `V ~ N(0, 1)`, `b = 0`, scale 1, shift 0.
    pub fn new(
        mut matrices: Vec<Matrix>,
        rank: i64,
        norm: bool,
        alpha: f64,
        arch: &str,
        model_id: &str,
        device: Device,
    ) -> Self {
        let mut dims: Vec<(i64, i64)> = Vec::new();
        for m in &mut matrices {
            let key = (m.d_in, m.d_out);
            m.shape = dims.iter().position(|d| *d == key).unwrap_or_else(|| {
                dims.push(key);
                dims.len() - 1
            });
        }
        let mut modes = vec![0i64; dims.len()];
        for m in &mut matrices {
            m.mode = modes[m.shape];
            modes[m.shape] += 1;
        }
        let opts = (Kind::Float, device);
        let shapes = dims
            .iter()
            .zip(&modes)
            .map(|(&(d_in, d_out), &n_modes)| {
                let d = d_in + d_out;
                let r = rank.min(d);
                let layers = (0..2)
                    .map(|_| LrLayer {
                        u: Tensor::zeros([d, r], opts),
                        v: Tensor::randn([r, d], opts),
                        b: Tensor::zeros([d], opts),
                        scale: Tensor::ones([n_modes, d], opts),
                        shift: Tensor::zeros([n_modes, d], opts),
                    })
                    .collect();
                ShapeNet {
                    d_in,
                    layers,
                    norm: Welford::new(d, device),
                }
            })
            .collect();
        let n = matrices.len() as i64;
        MendNet {
            meta: NetMeta {
                matrices,
                rank,
                norm,
                arch: arch.into(),
                model_id: model_id.into(),
            },
            shapes,
            alphas: Tensor::full([n], alpha, opts),
            training: false,
        }
    }

    /// The trained tensors (network and step sizes), in a fixed order.
    pub fn parameters(&self) -> Vec<Tensor> {
        let mut out = Vec::new();
        for s in &self.shapes {
            for l in &s.layers {
                for t in [&l.u, &l.v, &l.b, &l.scale, &l.shift] {
                    out.push(t.shallow_clone());
                }
            }
        }
        out.push(self.alphas.shallow_clone());
        out
    }

    /// Switches gradients on or off for every trained tensor.
    pub fn set_requires_grad(&mut self, on: bool) {
        for s in &mut self.shapes {
            for l in &mut s.layers {
                for t in [&mut l.u, &mut l.v, &mut l.b, &mut l.scale, &mut l.shift] {
                    *t = t.detach().set_requires_grad(on);
                }
            }
        }
        self.alphas = self.alphas.detach().set_requires_grad(on);
    }

    /// Feeds each matrix's rows `(x [n, in], δ [n, out])` to the normalisation (in
    /// training mode): all of a step's rows go in before any is normalised.
    pub fn observe(&mut self, rows: &[(usize, Tensor, Tensor)]) {
        if !(self.training && self.meta.norm) {
            return;
        }
        for (m, x, d) in rows {
            let shape = self.meta.matrices[*m].shape;
            self.shapes[shape]
                .norm
                .update(&Tensor::cat(&[x, d], 1).to_kind(Kind::Float));
        }
    }

    /// The pseudo-activations and pseudo-gradients `(x̃ [n, in], δ̃ [n, out])` of matrix
    /// `m` for its rows `x`, `δ`.
    pub fn transform(&self, m: usize, x: &Tensor, delta: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut out = self.transform_all(&[(m, x.shallow_clone(), delta.shallow_clone())])?;
        Ok(out.pop().expect("one in, one out"))
    }

    /// [`MendNet::transform`] of several matrices' rows `(m, x, δ)`, in order. The rows
    /// of all matrices of one shape go through its network together (each row with its
    /// matrix's mode): one pass over its weights instead of one per matrix.
    pub fn transform_all(&self, rows: &[(usize, Tensor, Tensor)]) -> Result<Vec<(Tensor, Tensor)>> {
        let mut out: Vec<Option<(Tensor, Tensor)>> = rows.iter().map(|_| None).collect();
        for (s, net) in self.shapes.iter().enumerate() {
            let mine: Vec<usize> = (0..rows.len())
                .filter(|&i| self.meta.matrices[rows[i].0].shape == s)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let device = rows[mine[0]].1.device();
            let mut hs = Vec::new();
            let (mut modes, mut counts) = (Vec::new(), Vec::new());
            for &i in &mine {
                let (m, x, d) = &rows[i];
                let n = x.size()[0];
                hs.push(Tensor::cat(&[x, d], 1).to_kind(Kind::Float));
                modes.extend(std::iter::repeat_n(self.meta.matrices[*m].mode, n as usize));
                counts.push(n);
            }
            let mut h = Tensor::cat(&hs, 0);
            if self.meta.norm {
                let (mean, std) = net.norm.mean_std()?;
                h = (h - mean.to_kind(Kind::Float)) / (std.to_kind(Kind::Float) + 1e-7);
            }
            let modes = Tensor::from_slice(&modes).to_device(device);
            for l in &net.layers {
                let pre = h.linear::<Tensor>(&l.v, None).linear(&l.u, Some(&l.b));
                let pre = pre * l.scale.index_select(0, &modes) + l.shift.index_select(0, &modes);
                h = &h + pre.relu();
            }
            for (&i, part) in mine.iter().zip(h.split_with_sizes(&counts, 0)) {
                let d_out = self.meta.matrices[rows[i].0].d_out;
                let xd = part.split_with_sizes([net.d_in, d_out], 1);
                out[i] = Some((xd[0].shallow_clone(), xd[1].shallow_clone()));
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every shape ran"))
            .collect())
    }

    /// Writes the editor to `path` (whole or not at all).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (i, s) in self.shapes.iter().enumerate() {
            for (j, l) in s.layers.iter().enumerate() {
                let names = layer_names(i, j);
                for (n, t) in names
                    .into_iter()
                    .zip([&l.u, &l.v, &l.b, &l.scale, &l.shift])
                {
                    named.push((n, t.detach()));
                }
            }
            named.push((format!("shape{i}.norm.k"), s.norm.k.detach()));
            named.push((format!("shape{i}.norm.mean"), s.norm.mean.detach()));
            named.push((format!("shape{i}.norm.s"), s.norm.s.detach()));
        }
        named.push(("alphas".into(), self.alphas.detach()));
        let meta = serde_json::to_string(&self.meta).expect("serialisable");
        let mut bytes = Vec::new();
        for (_, t) in &named {
            let t = t.to_device(Device::Cpu).contiguous();
            let n = t.numel();
            let mut buf = vec![0u8; n * t.kind().elt_size_in_bytes()];
            t.copy_data_u8(&mut buf, n);
            bytes.push(buf);
        }
        let views = named
            .iter()
            .zip(&bytes)
            .map(|((n, t), b)| {
                let dtype = match t.kind() {
                    Kind::Double => safetensors::Dtype::F64,
                    _ => safetensors::Dtype::F32,
                };
                let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
                safetensors::tensor::TensorView::new(dtype, shape, b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::data(path, e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let out = safetensors::serialize(views, Some(HashMap::from([("ftedit".into(), meta)])))
            .map_err(|e| Error::data(path, e.to_string()))?;
        crate::output::write_atomic(path, &out)
    }

    /// Reads an editor [`MendNet::save`] wrote; any defect (truncated file, missing
    /// tensor, wrong shape) is an error naming the file.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |why: String| Error::data(path, format!("not a MEND editor file: {why}"));
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta: NetMeta = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("ftedit"))
            .ok_or_else(|| bad("no `ftedit` metadata".into()))
            .and_then(|s| serde_json::from_str(s).map_err(|e| bad(e.to_string())))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let take = |name: &str, shape: &[i64]| -> Result<Tensor> {
            let v = st
                .tensor(name)
                .map_err(|_| bad(format!("no tensor {name}")))?;
            let kind = match v.dtype() {
                safetensors::Dtype::F32 => Kind::Float,
                safetensors::Dtype::F64 => Kind::Double,
                other => return Err(bad(format!("{name} is {other:?}"))),
            };
            let got: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
            if got != shape {
                return Err(bad(format!("{name} has shape {got:?}, expected {shape:?}")));
            }
            Ok(Tensor::from_data_size(v.data(), shape, kind).to_device(device))
        };
        let mut net = MendNet::new(
            meta.matrices.clone(),
            meta.rank,
            meta.norm,
            0.0,
            &meta.arch,
            &meta.model_id,
            device,
        );
        if net.meta != meta {
            return Err(bad("its matrices are not in shape order".into()));
        }
        for (i, s) in net.shapes.iter_mut().enumerate() {
            for (j, l) in s.layers.iter_mut().enumerate() {
                let names = layer_names(i, j);
                for (n, t) in
                    names
                        .iter()
                        .zip([&mut l.u, &mut l.v, &mut l.b, &mut l.scale, &mut l.shift])
                {
                    *t = take(n, &t.size())?;
                }
            }
            let d = s.norm.mean.size();
            s.norm.k = take(&format!("shape{i}.norm.k"), &[])?;
            s.norm.mean = take(&format!("shape{i}.norm.mean"), &d)?;
            s.norm.s = take(&format!("shape{i}.norm.s"), &d)?;
        }
        net.alphas = take("alphas", &net.alphas.size())?;
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mats() -> Vec<Matrix> {
        [(3, 4), (3, 4), (4, 3)]
            .iter()
            .enumerate()
            .map(|(i, &(d_in, d_out))| Matrix {
                name: format!("m{i}"),
                d_in,
                d_out,
                transposed: false,
                shape: 0,
                mode: 0,
            })
            .collect()
    }

    /// Rows added in batches give the mean and unbiased std of all of them (torch's,
    /// to 1e-12 in f64); one row is an error.
    #[test]
    fn welford_matches_mean_and_std() {
        tch::manual_seed(1);
        let rows = Tensor::randn([9, 5], (Kind::Double, Device::Cpu)) * 3.0 + 1.0;
        let mut w = Welford::new(5, Device::Cpu);
        w.update(&rows.narrow(0, 0, 1));
        assert!(w.mean_std().is_err());
        w.update(&rows.narrow(0, 1, 4));
        w.update(&rows.narrow(0, 5, 4));
        let (mean, std) = w.mean_std().unwrap();
        let want_mean = rows.mean_dim(0, false, Kind::Double);
        let want_std = rows.std_correction(0, 1, false);
        assert!(f64::try_from((mean - want_mean).abs().max()).unwrap() < 1e-12);
        assert!(f64::try_from((std - want_std).abs().max()).unwrap() < 1e-12);
    }

    /// Shapes are shared with one mode per matrix; at initialisation the network is
    /// the identity, bit for bit.
    #[test]
    fn modes_and_identity_at_init() {
        let net = MendNet::new(mats(), 1920, false, 1e-4, "llama", "x", Device::Cpu);
        let m = &net.meta.matrices;
        assert_eq!((m[0].shape, m[0].mode), (0, 0));
        assert_eq!((m[1].shape, m[1].mode), (0, 1));
        assert_eq!((m[2].shape, m[2].mode), (1, 0));
        let x = Tensor::randn([6, 3], (Kind::Float, Device::Cpu));
        let d = Tensor::randn([6, 4], (Kind::Float, Device::Cpu));
        let (xt, dt) = net.transform(1, &x, &d).unwrap();
        assert!(xt.equal(&x) && dt.equal(&d));
    }

    /// What is saved is read back exactly; a truncated file is an error naming it.
    #[test]
    fn save_and_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("ftedit-mend-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("editor.safetensors");
        let mut net = MendNet::new(mats(), 2, true, 1e-4, "llama", "abc", Device::Cpu);
        net.training = true;
        let rows: Vec<(usize, Tensor, Tensor)> = (0..3)
            .map(|m| {
                let mm = &net.meta.matrices[m];
                (
                    m,
                    Tensor::randn([4, mm.d_in], (Kind::Float, Device::Cpu)),
                    Tensor::randn([4, mm.d_out], (Kind::Float, Device::Cpu)),
                )
            })
            .collect();
        net.observe(&rows);
        net.save(&path).unwrap();
        let back = MendNet::load(&path, Device::Cpu).unwrap();
        assert_eq!(back.meta, net.meta);
        for (a, b) in net.parameters().iter().zip(back.parameters()) {
            assert!(a.equal(&b));
        }
        let (x0, d0) = net.transform(2, &rows[2].1, &rows[2].2).unwrap();
        let (x1, d1) = back.transform(2, &rows[2].1, &rows[2].2).unwrap();
        assert!(x0.equal(&x1) && d0.equal(&d1));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = MendNet::load(&path, Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("editor.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
