//! Building blocks shared by the architectures: linear maps, norms, rotary embeddings,
//! attention with its masks, the KV cache, the per-forward context and the layer hooks
//! that ROME and MEMIT use.

use tch::{Device, Kind, Tensor};

use super::params::ParamStore;
use crate::error::Result;

/// A LoRA adapter `ΔW = scale · B·A` beside a linear map (PEFT's layout and names).
pub struct Lora {
    /// `[rank, in]`
    pub a: Tensor,
    /// `[out, rank]`
    pub b: Tensor,
    pub scale: f64,
}

/// `y = x·Wᵀ + b` with `W` stored `(out, in)` as in `torch.nn.Linear`, plus a LoRA
/// adapter when the store holds one (`{prefix}.lora_A.weight`, `{prefix}.lora_B.weight`).
pub struct Linear {
    /// The weight's parameter name (`model.layers.3.mlp.up_proj.weight`), which the
    /// layer hooks are told ([`LayerHooks::mlp_linear`]).
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

impl Linear {
    /// Loads `{prefix}.weight` of shape `(out, in)` and, if asked, `{prefix}.bias`.
    pub fn load(
        p: &ParamStore,
        prefix: &str,
        in_dim: i64,
        out_dim: i64,
        bias: bool,
    ) -> Result<Self> {
        let lora = match (
            p.get(&format!("{prefix}.lora_A.weight")),
            p.get(&format!("{prefix}.lora_B.weight")),
        ) {
            (Ok(a), Ok(b)) => Some(Lora {
                a,
                b,
                scale: p.lora_scale.unwrap_or(1.0),
            }),
            _ => None,
        };
        Ok(Linear {
            name: format!("{prefix}.weight"),
            weight: p.get_shaped(&format!("{prefix}.weight"), &[out_dim, in_dim])?,
            bias: if bias {
                Some(p.get_shaped(&format!("{prefix}.bias"), &[out_dim])?)
            } else {
                None
            },
            lora,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        match &self.lora {
            // x·Aᵀ·Bᵀ never forms the full-size ΔW.
            Some(l) => y + x.linear::<Tensor>(&l.a, None).linear::<Tensor>(&l.b, None) * l.scale,
            None => y,
        }
    }
}

/// The activation of a gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (Llama, Qwen2).
    Silu,
    /// GeGLU with the tanh approximation (Gemma); also GPT-2's and GPT-J's `gelu_new`.
    GeluTanh,
    /// Exact GELU (GPT-NeoX's `gelu`).
    Gelu,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Silu => x.silu(),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Gelu => x.gelu("none"),
        }
    }
}

/// The gate and up projections of a gated MLP: separate, or Phi-3's `gate_up_proj`
/// (gate rows first).
pub enum GateUp {
    Separate { gate_proj: Linear, up_proj: Linear },
    Fused(Linear),
}

/// The gated MLP of Llama-style blocks, `down(act(gate(x)) · up(x))`, with the hooks
/// around its output projection.
pub struct GatedMlp {
    pub gate_up: GateUp,
    pub down_proj: Linear,
    pub act: Activation,
}

impl GatedMlp {
    /// With separate `gate_proj` and `up_proj`, or (`fused`, Phi-3) one `gate_up_proj`
    /// holding both, gate first.
    pub fn load(
        p: &ParamStore,
        prefix: &str,
        hidden: i64,
        inner: i64,
        act: Activation,
        fused: bool,
    ) -> Result<Self> {
        let linear =
            |name: &str, i: i64, o: i64| Linear::load(p, &format!("{prefix}.{name}"), i, o, false);
        let gate_up = if fused {
            GateUp::Fused(linear("gate_up_proj", hidden, 2 * inner)?)
        } else {
            GateUp::Separate {
                gate_proj: linear("gate_proj", hidden, inner)?,
                up_proj: linear("up_proj", hidden, inner)?,
            }
        };
        Ok(GatedMlp {
            gate_up,
            down_proj: linear("down_proj", inner, hidden)?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor, layer: usize, ctx: &mut Ctx) -> Tensor {
        let x = &shared_matmul_input(x);
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate_proj, up_proj } => (
                ctx.linear(layer, gate_proj, x),
                ctx.linear(layer, up_proj, x),
            ),
            GateUp::Fused(gu) => {
                let y = ctx.linear(layer, gu, x);
                let parts = y.chunk(2, -1);
                (parts[0].shallow_clone(), parts[1].shallow_clone())
            }
        };
        let key = self.act.apply(&gate) * up;
        ctx.hook_key(layer, &key);
        let out = ctx.linear(layer, &self.down_proj, &key);
        ctx.hook_output(layer, out)
    }
}

/// A two-layer GELU MLP with biases (GPT-J's `fc_in`/`fc_out`, GPT-NeoX's
/// `dense_h_to_4h`/`dense_4h_to_h`): its activation is the key a rank-one edit acts on.
pub struct GeluMlp {
    pub up: Linear,
    pub down: Linear,
    /// `"tanh"` or `"none"` (exact), as `Tensor::gelu` takes it.
    pub approximate: &'static str,
}

impl GeluMlp {
    /// Loads `{prefix}.{up}` (`hidden → inner`) and `{prefix}.{down}` (`inner → hidden`).
    pub fn load(
        p: &ParamStore,
        prefix: &str,
        [up, down]: [&str; 2],
        hidden: i64,
        inner: i64,
        tanh: bool,
    ) -> Result<Self> {
        Ok(GeluMlp {
            up: Linear::load(p, &format!("{prefix}.{up}"), hidden, inner, true)?,
            down: Linear::load(p, &format!("{prefix}.{down}"), inner, hidden, true)?,
            approximate: if tanh { "tanh" } else { "none" },
        })
    }

    pub fn forward(&self, x: &Tensor, layer: usize, ctx: &mut Ctx) -> Tensor {
        let key = ctx.linear(layer, &self.up, x).gelu(self.approximate);
        ctx.hook_key(layer, &key);
        let out = ctx.linear(layer, &self.down, &key);
        ctx.hook_output(layer, out)
    }
}

/// RMSNorm computed in f32, as Hugging Face does. Gemma scales by `1 + w` (its stored
/// weights are offsets from one), the others by `w`.
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    pub plus_one: bool,
}

impl RmsNorm {
    pub fn load(p: &ParamStore, name: &str, dim: i64, eps: f64, plus_one: bool) -> Result<Self> {
        Ok(RmsNorm {
            weight: p.get_shaped(name, &[dim])?,
            eps,
            plus_one,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        // At least f32; f64 models (used for finite-difference tests) stay f64.
        let up = if kind == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        let xf = x.to_kind(up);
        let var = xf.square().mean_dim(-1, true, up);
        let normed = xf * (var + self.eps).rsqrt();
        if self.plus_one {
            (normed * (self.weight.to_kind(up) + 1.0)).to_kind(kind)
        } else {
            &self.weight * normed.to_kind(kind)
        }
    }
}

/// LayerNorm with weight and bias (GPT-2).
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(p: &ParamStore, prefix: &str, dim: i64, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: p.get_shaped(&format!("{prefix}.weight"), &[dim])?,
            bias: p.get_shaped(&format!("{prefix}.bias"), &[dim])?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [x.size()[x.dim() - 1]],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// How a checkpoint rescales its rotary frequencies for a longer context.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RopeScaling {
    #[default]
    None,
    /// Positions divided by `factor` (transformers' `linear`).
    Linear { factor: f64 },
    /// Llama 3.x: long wavelengths divided by `factor`, short ones kept, the band
    /// between interpolated (transformers' `_compute_llama3_parameters`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Per-frequency divisors, as llama.cpp stores Llama 3's scaling (`rope_freqs`).
    Factors(Vec<f64>),
}

impl RopeScaling {
    /// Applies the scaling to unscaled inverse frequencies.
    fn apply(&self, inv_freq: Vec<f64>) -> Vec<f64> {
        match self {
            RopeScaling::None => inv_freq,
            RopeScaling::Linear { factor } => inv_freq.iter().map(|f| f / factor).collect(),
            RopeScaling::Factors(d) => inv_freq.iter().zip(d).map(|(f, d)| f / d).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: lo,
                high_freq_factor: hi,
                original_max_position_embeddings: old,
            } => inv_freq
                .iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < old / hi {
                        f
                    } else if wavelen > old / lo {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect(),
        }
    }
}

/// Rotary position embedding in Hugging Face's rotate-half layout.
pub struct Rope {
    inv_freq: Tensor,
}

impl Rope {
    pub fn new(head_dim: i64, base: f64, device: Device) -> Self {
        Self::scaled(head_dim, base, &RopeScaling::None, device)
    }

    /// With a checkpoint's frequency scaling.
    pub fn scaled(head_dim: i64, base: f64, scaling: &RopeScaling, device: Device) -> Self {
        // As transformers: inv_freq = 1 / base^(arange(0, d, 2) / d), computed in f32
        // (then scaled in f64 and rounded back, as its f32 arithmetic nearly does).
        let exps = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, Device::Cpu))
            .to_kind(Kind::Float)
            / head_dim as f64;
        let base = Tensor::from(base)
            .to_kind(Kind::Float)
            .pow(&exps)
            .reciprocal();
        let inv_freq = match scaling {
            RopeScaling::None => base,
            s => {
                let v = Vec::<f64>::try_from(base.to_kind(Kind::Double)).unwrap_or_default();
                Tensor::from_slice(&s.apply(v)).to_kind(Kind::Float)
            }
        };
        Rope {
            inv_freq: inv_freq.to_device(device),
        }
    }

    /// `(cos, sin)` of shape `[B, 1, T, head_dim]` for positions `[B, T]`, in `kind`.
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = self.angles(positions);
        Self::cos_sin_of(&Tensor::cat(&[&freqs, &freqs], -1), kind)
    }

    /// Each position's angle for each frequency, `[B, T, dim / 2]`.
    fn angles(&self, positions: &Tensor) -> Tensor {
        positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq
    }

    fn cos_sin_of(emb: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let emb = emb.unsqueeze(1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

impl Rope {
    /// `(cos, sin)` for GPT-J's interleaved layout: each frequency repeated for the two
    /// dimensions of its pair, `[B, 1, T, dim]`.
    pub fn cos_sin_interleaved(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = self.angles(positions);
        Self::cos_sin_of(&freqs.repeat_interleave_self_int(2, -1, None), kind)
    }
}

/// `(-x₁, x₀, -x₃, x₂, …)`: GPT-J's rotation of interleaved pairs.
fn rotate_every_two(x: &Tensor) -> Tensor {
    let mut shape = x.size();
    let last = shape.pop().unwrap_or(0);
    let pairs = x.reshape([shape.as_slice(), &[last / 2, 2]].concat());
    let (x0, x1) = (pairs.select(-1, 0), pairs.select(-1, 1));
    Tensor::stack(&[x1.neg(), x0], -1).reshape(x.size())
}

/// Rotary embeddings on the first `cos`-width dimensions of each head only (GPT-J,
/// GPT-NeoX: `rotary_dim` / `rotary_pct`), the rest passed through; `interleaved`
/// rotates pairs (GPT-J) rather than halves (NeoX).
pub fn apply_partial_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Tensor {
    let rot = cos.size()[cos.dim() - 1];
    let head = x.size()[x.dim() - 1];
    let (xr, pass) = (x.narrow(-1, 0, rot), x.narrow(-1, rot, head - rot));
    let rotated = if interleaved {
        &xr * cos + rotate_every_two(&xr) * sin
    } else {
        apply_rope(&xr, cos, sin)
    };
    if rot == head {
        rotated
    } else {
        Tensor::cat(&[rotated, pass], -1)
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

/// Applies rotary embeddings to `x` of shape `[B, H, T, head_dim]`.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos + rotate_half(x) * sin
}

/// How attention is masked in one forward pass.
pub enum AttnMask {
    /// Plain causal attention over the whole input (no cache, no padding mask).
    Causal,
    /// Every query sees every key (one new token against the cache).
    Full,
    /// An explicit boolean mask `[B or 1, 1, Tq, Tk]`, true where attention is allowed.
    Explicit(Tensor),
}

/// `x` in bf16 when CPU autocast is on and `x` is f32, else `x`: the input of several
/// matrix products (q, k and v; gate and up) cast once, where autocast would cast it for
/// each product (it caches casts of weights only). The products see the same bf16 values.
pub fn shared_matmul_input(x: &Tensor) -> Tensor {
    if x.kind() == Kind::Float
        && x.device() == Device::Cpu
        && crate::runtime::autocast_enabled(Device::Cpu)
    {
        x.to_kind(Kind::BFloat16)
    } else {
        x.shallow_clone()
    }
}

/// Scaled dot-product attention over `q [B, H, Tq, D]` and `k, v [B, Hkv, Tk, D]`;
/// grouped-query heads are shared by libtorch (`enable_gqa`).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, scale: f64) -> Tensor {
    // libtorch's CPU flash attention runs its backward pass in bf16 several times slower
    // than in f32 (fwd+bwd of [8, 9, 64, 64]: 7.5 ms against 2.1 ms, 2.11, AMX), so a
    // bf16-mixed pass that trains through attention computes it in f32, as autocast's
    // f32 ops; without a backward to run, bf16 stays (its forward is twice as fast).
    if q.device() == Device::Cpu
        && (q.requires_grad() || k.requires_grad() || v.requires_grad())
        && crate::runtime::autocast_enabled(Device::Cpu)
    {
        let _off = crate::runtime::AutocastOff::new(Device::Cpu);
        let f = |t: &Tensor| t.to_kind(Kind::Float);
        return sdpa(&f(q), &f(k), &f(v), mask, scale);
    }
    sdpa(q, k, v, mask, scale)
}

fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, scale: f64) -> Tensor {
    let gqa = q.size()[1] != k.size()[1];
    match mask {
        AttnMask::Causal => {
            Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, true, scale, gqa)
        }
        AttnMask::Full => {
            Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, false, scale, gqa)
        }
        AttnMask::Explicit(m) => {
            Tensor::scaled_dot_product_attention(q, k, v, Some(m), 0.0, false, scale, gqa)
        }
    }
}

/// Cached keys and values of earlier positions, per layer, for generation (no
/// autograd: values are written in place into buffers that grow by doubling, so a step
/// costs no copy of the whole cache). A frozen cache is read-only: passes against it
/// see the cached positions and keep nothing, so the same tails can be run again and
/// again with autograd (see [`super::Prefilled`]).
#[derive(Default)]
pub struct KvCache {
    /// Per layer: key and value buffers `[B, H, capacity, D]`.
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    frozen: bool,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes the cache read-only (see [`KvCache`]).
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    /// Appends this step's keys and values for `layer` and returns all of them (a
    /// frozen cache returns them after its own and stores nothing).
    pub fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        if self.frozen {
            return match self.layers.get(layer) {
                Some(Some((kb, vb))) => (
                    Tensor::cat(&[&kb.narrow(2, 0, self.len as i64), &k], 2),
                    Tensor::cat(&[&vb.narrow(2, 0, self.len as i64), &v], 2),
                ),
                _ => (k, v),
            };
        }
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, || None);
        }
        let (len, t) = (self.len as i64, k.size()[2]);
        let grow = |old: Option<&Tensor>, new: &Tensor| {
            let s = new.size();
            let have = old.map_or(0, |o| o.size()[2]);
            if have >= len + t {
                return old.expect("capacity").shallow_clone();
            }
            let cap = (2 * have).max(len + t).max(16);
            let buf = Tensor::empty([s[0], s[1], cap, s[3]], (new.kind(), new.device()));
            if let Some(o) = old {
                buf.narrow(2, 0, len).copy_(&o.narrow(2, 0, len));
            }
            buf
        };
        let slot = &mut self.layers[layer];
        let (kb, vb) = (
            grow(slot.as_ref().map(|s| &s.0), &k),
            grow(slot.as_ref().map(|s| &s.1), &v),
        );
        kb.narrow(2, len, t).copy_(&k);
        vb.narrow(2, len, t).copy_(&v);
        let out = (kb.narrow(2, 0, len + t), vb.narrow(2, 0, len + t));
        *slot = Some((kb, vb));
        out
    }

    /// The cache of some rows of the batch (`rows` indexes its first dimension).
    pub fn select_rows(&self, rows: &Tensor) -> KvCache {
        let pick = |t: &Tensor| t.index_select(0, rows);
        KvCache {
            layers: self
                .layers
                .iter()
                .map(|l| l.as_ref().map(|(k, v)| (pick(k), pick(v))))
                .collect(),
            len: self.len,
            frozen: self.frozen,
        }
    }

    pub(crate) fn advance(&mut self, n: usize) {
        if !self.frozen {
            self.len += n;
        }
    }
}

/// Access to the MLP of every layer during a forward pass (what ROME and MEMIT need).
///
/// The "MLP output projection" is `down_proj` (llama, qwen2, gemma3) or `mlp.c_proj`
/// (gpt2). Its input is the key a rank-one edit acts on; its output, before any
/// post-norm, is where an edited value appears.
pub trait LayerHooks {
    /// Whether `layer` needs the hooks at all (skipped calls cost nothing).
    fn wants(&self, layer: usize) -> bool;
    /// The last layer whose hooks read anything, if they only observe: a pass run for
    /// the hooks alone ([`crate::model::Model::run_hooks`]) stops there.
    fn last_layer(&self) -> Option<usize> {
        None
    }
    /// Sees the input of the MLP output projection, `[B, T, intermediate]`.
    fn mlp_key(&mut self, _layer: usize, _key: &Tensor) {}
    /// May change the output of the MLP output projection, `[B, T, hidden]`.
    fn mlp_output(&mut self, _layer: usize, out: Tensor) -> Tensor {
        out
    }
    /// May change the output `y` of a linear map of the MLP (`weight`: its weight's
    /// parameter name) given its input `x`, both `[B, T, ·]` (MEND reads both and adds
    /// its weight change here).
    fn mlp_linear(&mut self, _layer: usize, _weight: &str, _x: &Tensor, y: Tensor) -> Tensor {
        y
    }
    /// May change the residual stream after the whole layer, `[B, T, hidden]`.
    fn block_output(&mut self, _layer: usize, h: Tensor) -> Tensor {
        h
    }
}

/// Records the MLP-output-projection inputs of chosen layers.
pub struct CaptureKeys {
    pub layers: Vec<usize>,
    pub keys: Vec<(usize, Tensor)>,
}

impl LayerHooks for CaptureKeys {
    fn wants(&self, layer: usize) -> bool {
        self.layers.contains(&layer)
    }
    fn mlp_key(&mut self, layer: usize, key: &Tensor) {
        self.keys.push((layer, key.shallow_clone()));
    }
    fn last_layer(&self) -> Option<usize> {
        self.layers.iter().copied().max()
    }
}

/// Where in a layer a vector is added and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// The MLP output projection's output (ROME's value).
    MlpOutput,
    /// The residual stream after the layer (MEMIT's z).
    BlockOutput,
}

/// Adds `delta` at one site of one layer at chosen `(row, position)` pairs and records
/// what was there before (ROME's value, MEMIT's target, or a plain read).
pub struct Probe {
    pub layer: usize,
    pub site: Site,
    /// Flat indices `row * T + position` into the `[B, T]` grid.
    pub positions: Vec<i64>,
    /// `[hidden]` (the same vector everywhere) or `[positions.len(), hidden]`; `None`
    /// reads only.
    pub delta: Option<Tensor>,
    /// The values at `positions` before `delta` was added, `[positions, hidden]`.
    pub seen: Option<Tensor>,
}

impl Probe {
    fn apply(&mut self, out: Tensor) -> Tensor {
        let size = out.size();
        let (b, t, d) = (size[0], size[1], size[2]);
        let idx = Tensor::from_slice(&self.positions).to_device(out.device());
        let flat = out.reshape([b * t, d]);
        self.seen = Some(flat.index_select(0, &idx).detach());
        match &self.delta {
            None => flat.reshape([b, t, d]),
            Some(delta) => {
                let n = self.positions.len() as i64;
                let delta = delta.to_kind(flat.kind()).expand([n, d], false);
                flat.index_add(0, &idx, &delta).reshape([b, t, d])
            }
        }
    }
}

impl LayerHooks for Probe {
    fn wants(&self, layer: usize) -> bool {
        layer == self.layer
    }
    fn last_layer(&self) -> Option<usize> {
        Some(self.layer)
    }
    fn mlp_output(&mut self, _layer: usize, out: Tensor) -> Tensor {
        if self.site == Site::MlpOutput {
            self.apply(out)
        } else {
            out
        }
    }
    fn block_output(&mut self, _layer: usize, h: Tensor) -> Tensor {
        if self.site == Site::BlockOutput {
            self.apply(h)
        } else {
            h
        }
    }
}

/// What shapes the attention mask beyond causality.
pub struct MaskInputs {
    /// Key padding mask `[B, past + T]` (true = real token), if any position is padding.
    pub key_mask: Option<Tensor>,
    /// Segment ids `[B, T]` of packed sequences.
    pub segments: Option<Tensor>,
}

/// What a forward pass carries through the layers.
pub struct Ctx<'a> {
    /// Positions `[B, T]` of the input tokens.
    pub positions: Tensor,
    /// Keys already cached before this input.
    pub past: usize,
    masks_in: MaskInputs,
    pub cache: Option<&'a mut KvCache>,
    pub hooks: Option<&'a mut dyn LayerHooks>,
    /// First stage that needs an autograd graph: 0 = embedding, `i + 1` = layer `i`.
    pub grad_from: usize,
    /// Start at this layer from its input instead of at the embedding.
    pub resume: Option<(usize, Tensor)>,
    /// The last layer to run.
    pub stop_after: Option<usize>,
    /// The model's adapter and the positions it probes `[B, T]`.
    pub adapter: Option<(crate::model::SharedAdapter, Tensor)>,
    /// The adapter layer's key, between [`Ctx::hook_key`] and [`Ctx::hook_output`].
    adapter_key: Option<Tensor>,
    masks: Vec<(Option<usize>, AttnMaskCached)>,
}

enum AttnMaskCached {
    Causal,
    Full,
    Explicit(Tensor),
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        positions: Tensor,
        past: usize,
        masks_in: MaskInputs,
        cache: Option<&'a mut KvCache>,
        hooks: Option<&'a mut dyn LayerHooks>,
        grad_from: usize,
    ) -> Self {
        Ctx {
            positions,
            past,
            masks_in,
            cache,
            hooks,
            grad_from,
            resume: None,
            stop_after: None,
            adapter: None,
            adapter_key: None,
            masks: Vec::new(),
        }
    }

    /// Where the layers start: the resumed layer and its input, or layer 0 and the
    /// embedding `embed` computes (under no-grad where the graph starts later).
    pub fn start(&mut self, embed: impl FnOnce() -> Tensor) -> (usize, Tensor) {
        match self.resume.take() {
            Some(r) => r,
            None => {
                let _g = (self.grad_from > 0).then(tch::no_grad_guard);
                (0, embed())
            }
        }
    }

    /// How many of `n` layers run: all, or up to [`Ctx::stop_after`].
    pub fn end(&self, n: usize) -> usize {
        self.stop_after.map_or(n, |s| (s + 1).min(n))
    }

    /// The attention mask for layers with the given sliding window (built once per
    /// window per forward pass).
    pub fn mask(&mut self, window: Option<usize>) -> AttnMask {
        if let Some((_, m)) = self.masks.iter().find(|(w, _)| *w == window) {
            return match m {
                AttnMaskCached::Causal => AttnMask::Causal,
                AttnMaskCached::Full => AttnMask::Full,
                AttnMaskCached::Explicit(t) => AttnMask::Explicit(t.shallow_clone()),
            };
        }
        let q_len = self.positions.size()[1] as usize;
        let k_len = self.past + q_len;
        let windowed = window.is_some_and(|w| w < k_len);
        let plain =
            self.masks_in.key_mask.is_none() && self.masks_in.segments.is_none() && !windowed;
        let m = if plain && self.past == 0 {
            AttnMaskCached::Causal
        } else if plain && q_len == 1 {
            AttnMaskCached::Full
        } else {
            let device = self.positions.device();
            let q = Tensor::arange_start(self.past as i64, k_len as i64, (Kind::Int64, device))
                .unsqueeze(1);
            let k = Tensor::arange(k_len as i64, (Kind::Int64, device)).unsqueeze(0);
            let mut allowed = k.le_tensor(&q);
            if let Some(w) = window {
                allowed = allowed.logical_and(&(&q - &k).lt(w as i64));
            }
            let mut allowed = allowed.unsqueeze(0).unsqueeze(0);
            if let Some(seg) = &self.masks_in.segments {
                // Packed rows: each segment attends within itself (shapes [B, 1, T, T]).
                allowed = allowed
                    .logical_and(&seg.unsqueeze(-1).eq_tensor(&seg.unsqueeze(-2)).unsqueeze(1));
            }
            if let Some(km) = &self.masks_in.key_mask {
                // A query always sees itself, so rows of padding never go all-masked (NaN).
                let diag = k.eq_tensor(&q).unsqueeze(0).unsqueeze(0);
                allowed = allowed
                    .logical_and(&km.unsqueeze(1).unsqueeze(1))
                    .logical_or(&diag);
            }
            AttnMaskCached::Explicit(allowed)
        };
        self.masks.push((window, m));
        self.mask(window)
    }

    /// A guard that switches autograd off for layer `i` when nothing at or below it
    /// is trained.
    pub fn layer_guard(&self, i: usize) -> Option<tch::NoGradGuard> {
        (i + 1 < self.grad_from).then(tch::no_grad_guard)
    }

    /// Runs the layer hooks' key observer.
    pub fn hook_key(&mut self, layer: usize, key: &Tensor) {
        if self
            .adapter
            .as_ref()
            .is_some_and(|(a, _)| a.layer() == layer)
        {
            self.adapter_key = Some(key.shallow_clone());
        }
        if let Some(h) = self.hooks.as_deref_mut()
            && h.wants(layer)
        {
            h.mlp_key(layer, key);
        }
    }

    /// Runs the layer hooks' output editor, then the model's adapter where it sits.
    pub fn hook_output(&mut self, layer: usize, out: Tensor) -> Tensor {
        let out = match self.hooks.as_deref_mut() {
            Some(h) if h.wants(layer) => h.mlp_output(layer, out),
            _ => out,
        };
        match (&self.adapter, self.adapter_key.take()) {
            (Some((a, probe)), Some(key)) if a.layer() == layer => {
                let groups = self.sequence_groups(&out);
                a.apply(&key, out, probe, &groups)
            }
            _ => out,
        }
    }

    /// Which sequence each position of a `[B, T, ·]` tensor belongs to, `[B, T]` int64:
    /// its segment in a packed row, else 0; −1 at padding.
    fn sequence_groups(&self, like: &Tensor) -> Tensor {
        let (b, t) = (like.size()[0], like.size()[1]);
        if let Some(s) = &self.masks_in.segments {
            return s.shallow_clone();
        }
        let zeros = Tensor::zeros([b, t], (Kind::Int64, like.device()));
        match &self.masks_in.key_mask {
            Some(m) => {
                let real = m.narrow(1, m.size()[1] - t, t);
                zeros.masked_fill(&real.logical_not(), -1)
            }
            None => zeros,
        }
    }

    /// Applies a linear map of layer `layer`'s MLP, then the hooks' [`LayerHooks::mlp_linear`].
    pub fn linear(&mut self, layer: usize, lin: &Linear, x: &Tensor) -> Tensor {
        let y = lin.forward(x);
        self.hook_linear(layer, &lin.name, x, y)
    }

    /// Runs the hooks' [`LayerHooks::mlp_linear`] on an MLP linear map's output.
    pub fn hook_linear(&mut self, layer: usize, weight: &str, x: &Tensor, y: Tensor) -> Tensor {
        match self.hooks.as_deref_mut() {
            Some(h) if h.wants(layer) => h.mlp_linear(layer, weight, x, y),
            _ => y,
        }
    }

    /// Runs the layer hooks on the residual stream after layer `layer`.
    pub fn hook_block(&mut self, layer: usize, h: Tensor) -> Tensor {
        match self.hooks.as_deref_mut() {
            Some(h_) if h_.wants(layer) => h_.block_output(layer, h),
            _ => h,
        }
    }

    /// Appends keys and values to the cache when generating.
    pub fn cached_kv(&mut self, layer: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        match self.cache.as_deref_mut() {
            Some(c) => c.append(layer, k, v),
            None => (k, v),
        }
    }
}

/// Splits `[B, T, H*D]` into heads `[B, H, T, D]`.
pub fn split_heads(x: &Tensor, heads: i64, head_dim: i64) -> Tensor {
    let s = x.size();
    x.view([s[0], s[1], heads, head_dim]).transpose(1, 2)
}

/// Merges heads `[B, H, T, D]` back into `[B, T, H*D]`.
pub fn merge_heads(x: &Tensor) -> Tensor {
    let s = x.size();
    x.transpose(1, 2).reshape([s[0], s[2], s[1] * s[3]])
}
