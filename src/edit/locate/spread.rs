//! MEMIT's multi-layer pieces, shared with AlphaEdit: each edit's target z for the
//! residual stream after the range's last layer (optimised as ROME's value, cached by
//! record), and the spreading of what z still misses over the range, lowest layer first,
//! carried through a post-MLP norm where the architecture has one ([`through_norm`]).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::value::{ValueTask, values_in_batches};
use super::{ValueConfig, add_to_out_proj, locate, mean_keys, record_key};
use crate::data::EditRecord;
use crate::error::Result;
use crate::model::nn::RmsNorm;
use crate::model::{Input, Model, Probe, Site};
use crate::tokenizer::Tokenizer;

/// What `site` of `layer` holds at each record's subject (bare prompt), `[n, hidden]`.
pub(crate) fn read_at(
    model: &Model,
    tok: &Tokenizer,
    records: &[EditRecord],
    layer: usize,
    site: Site,
) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let located = records
        .iter()
        .map(|r| locate(tok, "", r, &[]))
        .collect::<Result<Vec<_>>>()?;
    let seqs: Vec<Vec<u32>> = located.iter().map(|l| l.ids.clone()).collect();
    let input = Input::right_padded(&seqs, model.device())?;
    let t = input.seq_len();
    let mut probe = Probe {
        layer,
        site,
        positions: located
            .iter()
            .enumerate()
            .map(|(r, l)| (r * t + l.subject_last) as i64)
            .collect(),
        delta: None,
        seen: None,
    };
    model.run_hooks(&input, &mut probe)?;
    Ok(probe.seen.expect("probe ran").to_kind(Kind::Double))
}

/// The change Δ of the MLP outputs `m` (`[n, hidden]`) that brings `norm(m + Δ)` closest
/// to `norm(m) + resid`, row by row.
///
/// An RMS norm's outputs are `g ⊙ v` with `rms(v) = 1` (g its gain; ε aside), so the
/// target is projected onto that ellipsoid: `v = g ⊙ t / (g² + λ)` with λ found by
/// bisection so that `rms(v) = 1` (the least-squares point; components whose gain is
/// zero cannot move). `m + Δ = rms(m) · v` keeps `m`'s RMS, so the norm divides by what it
/// divided before. Where the target is reachable it is hit exactly; where it is not, the
/// next layers make up the rest.
pub fn through_norm(norm: &RmsNorm, m: &Tensor, resid: &Tensor) -> Tensor {
    let m = m.to_kind(Kind::Double);
    let w = norm.weight.to_kind(Kind::Double);
    let g = if norm.plus_one { w + 1.0 } else { w };
    let d = m.size()[1] as f64;
    let t = norm.forward(&m) + resid;
    let (g2, gt) = (g.square(), &t * &g);
    // Σ (g t / (g² + λ))² falls from +∞ (λ → −min g² over live components) to 0 (λ → ∞);
    // rms(v) = 1 where it crosses d.
    let live = g2.gt(0.0);
    let dead = live.logical_not();
    let min_g2 = g2.masked_fill(&dead, f64::INFINITY).min();
    let mut hi = (gt.square().sum_dim_intlist(-1, true, Kind::Double) / d).sqrt();
    let mut lo = (-&min_g2).expand_as(&hi).copy();
    for _ in 0..200 {
        let mid = (&lo + &hi) / 2.0;
        let sum = (&gt / (&g2 + &mid))
            .square()
            .sum_dim_intlist(-1, true, Kind::Double);
        let above = sum.gt(d);
        lo = lo.where_self(&above.logical_not(), &mid);
        hi = mid.where_self(&above.logical_not(), &hi);
    }
    let mut v = (&gt / (&g2 + &hi)).masked_fill(&dead, 0.0);
    // With dead components the crossing may need λ < 0, but λ = 0 is then better: the live
    // components take t / g exactly and the dead ones, free, take up the rest of rms 1
    // (along m's own dead part, the smallest change).
    let exact = (&t / g.masked_fill(&dead, 1.0)).masked_fill(&dead, 0.0);
    let spare = (d - exact.square().sum_dim_intlist(-1, true, Kind::Double)).clamp_min(0.0);
    let m_dead = m.masked_fill(&live, 0.0);
    let m_dead_norm = m_dead
        .square()
        .sum_dim_intlist(-1, true, Kind::Double)
        .sqrt();
    let fill = m_dead / m_dead_norm.clamp_min(f64::MIN_POSITIVE) * spare.sqrt();
    let use_exact = hi.lt(0.0).logical_and(&dead.any());
    v = (exact + fill).where_self(&use_exact, &v);
    let rms = m.square().mean_dim(-1, true, Kind::Double).sqrt();
    v * rms - m
}

/// MEMIT's targets z on disk, one file per weights and value settings, one tensor per
/// record.
struct ZCache {
    path: PathBuf,
    entries: HashMap<String, Tensor>,
    unsaved: usize,
    device: tch::Device,
}

impl ZCache {
    fn open(
        dir: &Path,
        model: &Model,
        value: &ValueConfig,
        contexts: &[String],
        layer: usize,
    ) -> Result<Self> {
        let print = model.params.fingerprint("")?;
        let mut h = DefaultHasher::new();
        // The precision as it resolves here; f32 z's keep the key they always had.
        let mut settings = serde_json::to_value(value).expect("serialisable");
        settings
            .as_object_mut()
            .expect("a table")
            .remove("precision");
        settings.to_string().hash(&mut h);
        let precision = value.precision.resolve(model.device()).0;
        if precision != crate::runtime::Precision::F32 {
            precision.name().hash(&mut h);
        }
        contexts.hash(&mut h);
        layer.hash(&mut h);
        let path = dir.join(format!(
            "memit-z-{print:016x}-{:016x}.safetensors",
            h.finish()
        ));
        let entries = if path.exists() {
            Tensor::read_safetensors(&path)?.into_iter().collect()
        } else {
            HashMap::new()
        };
        Ok(ZCache {
            path,
            entries,
            unsaved: 0,
            device: model.device(),
        })
    }

    fn get(&self, r: &EditRecord) -> Option<Tensor> {
        self.entries
            .get(&record_key(r))
            .map(|z| z.to_device(self.device))
    }

    /// Adds `z`, saving every 16 new entries so a killed run keeps most of its work.
    fn insert(&mut self, r: &EditRecord, z: &Tensor) -> Result<()> {
        self.entries
            .insert(record_key(r), z.to_device(tch::Device::Cpu));
        self.unsaved += 1;
        if self.unsaved >= 16 {
            self.save()?;
        }
        Ok(())
    }

    fn save(&mut self) -> Result<()> {
        if self.unsaved == 0 {
            return Ok(());
        }
        let named: Vec<(&str, &Tensor)> =
            self.entries.iter().map(|(k, v)| (k.as_str(), v)).collect();
        crate::cache::write_tensors(&self.path, &named)?;
        self.unsaved = 0;
        Ok(())
    }
}

/// Where z's are cached (`None`: not cached) and whether to show their progress.
pub(crate) struct ZOptions {
    pub cache_dir: Option<PathBuf>,
    pub progress: bool,
}

/// Each record's target z for the residual stream after layer `hi` (ROME's value
/// optimisation), from the cache where it has them; returns `[n, hidden]` and how many
/// came from the cache. MEMIT and AlphaEdit share these.
pub(crate) fn targets(
    model: &Model,
    tok: &Tokenizer,
    records: &[EditRecord],
    hi: usize,
    (ctx, value): (&[String], &ValueConfig),
    opts: ZOptions,
) -> Result<(Tensor, usize)> {
    let progress = opts.progress;
    let mut cache = match opts.cache_dir {
        Some(dir) => Some(ZCache::open(&dir, model, value, ctx, hi)?),
        None => None,
    };
    let pb = crate::progress::bar(progress, records.len(), "z");
    let mut zs: Vec<Option<Tensor>> = records
        .iter()
        .map(|r| cache.as_ref().and_then(|c| c.get(r)))
        .collect();
    let from_cache = zs.iter().filter(|z| z.is_some()).count();
    pb.inc(from_cache as u64);
    let missing: Vec<usize> = (0..records.len()).filter(|&i| zs[i].is_none()).collect();
    let todo: Vec<EditRecord> = missing.iter().map(|&i| records[i].clone()).collect();
    let task = ValueTask {
        layer: hi,
        site: Site::BlockOutput,
        contexts: ctx,
        cfg: value,
    };
    values_in_batches(model, tok, &todo, task, |j, z| {
        let i = missing[j];
        if let Some(c) = &mut cache {
            c.insert(&records[i], &z)?;
        }
        zs[i] = Some(z);
        pb.inc(1);
        Ok(())
    })?;
    let zs: Vec<Tensor> = zs.into_iter().map(|z| z.expect("every z made")).collect();
    if let Some(c) = &mut cache {
        c.save()?;
    }
    pb.finish_and_clear();
    Ok((Tensor::stack(&zs, 0), from_cache))
}

/// MEMIT's spreading of `zs` over `layers` (ascending; the last is where z was
/// optimised): from the lowest layer up, each takes its share R of what is still
/// missing, and `solve(i, K, R)` (keys `[in, n]`, residuals `[out, n]`, both f64) gives
/// its update `[out, in]`, which is added before the next layer is measured.
pub(crate) fn spread(
    model: &mut Model,
    tok: &Tokenizer,
    records: &[EditRecord],
    layers: &[usize],
    ctx: &[String],
    zs: &Tensor,
    mut solve: impl FnMut(usize, &Tensor, &Tensor) -> Result<Tensor>,
) -> Result<()> {
    let hi = *layers.last().expect("at least one layer");
    for (i, &layer) in layers.iter().enumerate() {
        let keys = mean_keys(model, tok, records, layer, ctx)?;
        let current = read_at(model, tok, records, hi, Site::BlockOutput)?;
        let mut resid = (zs - current) / (layers.len() - i) as f64;
        if let Some(norm) = model.mlp_out_norm(layer)? {
            let m = read_at(model, tok, records, layer, Site::MlpOutput)?;
            resid = through_norm(&norm, &m, &resid);
        }
        let delta = solve(
            i,
            &keys.transpose(0, 1).to_kind(Kind::Double),
            &resid.transpose(0, 1).to_kind(Kind::Double),
        )?;
        add_to_out_proj(model, layer, &delta)?;
    }
    Ok(())
}
