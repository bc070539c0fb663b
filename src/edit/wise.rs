//! WISE (Wang et al., NeurIPS 2024; EDITORS.md, "WISE"): edits go into a side copy of
//! one MLP output projection, trained so that the activation gap between side and main
//! memory is large on the edits and small elsewhere, and a router picks the side memory
//! for inputs whose gap crosses a threshold. This file holds the pieces the editor is
//! built from: the activation-margin loss and the TIES merge of side-memory shards.

use tch::{Kind, Tensor};

/// The mean of the positive entries (0 when there are none).
fn mean_positive(x: &Tensor) -> Tensor {
    let pos = x.relu();
    let n = x.gt(0.0).sum(Kind::Float);
    // n = 0 gives 0 / 1: every entry was ≤ 0.
    pos.sum(Kind::Float) / n.clamp_min(1.0)
}

/// WISE's activation-margin loss on the gaps `s_in` (edit rows) and `s_out` (the
/// locality row) with margins `[α, β, γ]`:
/// `mean⁺(s_out − s_in + γ) + mean⁺(s_out − α) + mean⁺(β − s_in)`.
pub fn margin_loss(s_in: &Tensor, s_out: &Tensor, [alpha, beta, gamma]: [f64; 3]) -> Tensor {
    let s_in = s_in.to_kind(Kind::Float);
    let s_out = s_out.to_kind(Kind::Float);
    // Every edit row against every locality row.
    let pairs = s_out.unsqueeze(1) - s_in.unsqueeze(0) + gamma;
    mean_positive(&pairs) + mean_positive(&(s_out - alpha)) + mean_positive(&(beta - s_in))
}

/// TIES merging of the shards `weights` (each `W_i`) onto `base`: each `δ_i = W_i −
/// base` keeps its top `density` share of entries by magnitude; an entry keeps the
/// shards whose sign agrees with `sign(Σ w_i δ_i)`, averaged with their weights `w_i`;
/// entries no shard keeps stay at `base`.
pub fn ties_merge(base: &Tensor, weights: &[Tensor], w: &[f64], density: f64) -> Tensor {
    assert_eq!(weights.len(), w.len(), "one weight per shard");
    let deltas: Vec<Tensor> = weights
        .iter()
        .map(|t| {
            let d = t - base;
            let n = d.numel() as i64;
            let keep = ((density * n as f64).round() as i64).clamp(0, n);
            if keep >= n {
                return d;
            }
            let flat = d.abs().flatten(0, -1);
            let (_, order) = flat.sort(0, true);
            let mask = Tensor::zeros_like(&flat)
                .index_fill(0, &order.narrow(0, 0, keep), 1.0)
                .view(d.size().as_slice());
            d * mask
        })
        .collect();
    let total = deltas
        .iter()
        .zip(w)
        .fold(Tensor::zeros_like(base), |acc, (d, &wi)| acc + d * wi);
    let sign = total.sign();
    let (mut num, mut den) = (Tensor::zeros_like(base), Tensor::zeros_like(base));
    for (d, &wi) in deltas.iter().zip(w) {
        let agree = d
            .sign()
            .eq_tensor(&sign)
            .logical_and(&d.ne(0.0))
            .to_kind(base.kind());
        num += d * &agree * wi;
        den += agree * wi;
    }
    let merged = (num / &den).where_self(&den.gt(0.0), &Tensor::zeros_like(base));
    base + merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    /// EDITORS.md's cases with margins (5, 20, 10): s_in 25, s_out 3 → 0; s_in 12,
    /// s_out 6 → 4 + 1 + 8 = 13.
    #[test]
    fn the_margin_loss_matches_its_definition() {
        let m = [5.0, 20.0, 10.0];
        let zero = margin_loss(&t(&[25.0]), &t(&[3.0]), m).double_value(&[]);
        assert_eq!(zero, 0.0);
        let l = margin_loss(&t(&[12.0]), &t(&[6.0]), m).double_value(&[]);
        assert!((l - 13.0).abs() < 1e-6, "{l}");
        // Means over the positive entries only: s_in 12 and 30, s_out 6 →
        // pairs (4, −14) → 4; (1) → 1; (8, −10) → 8.
        let l = margin_loss(&t(&[12.0, 30.0]), &t(&[6.0]), m).double_value(&[]);
        assert!((l - 13.0).abs() < 1e-6, "{l}");
    }

    /// EDITORS.md's case: base 0, deltas [1, −2] and [3, 1], weights ½, density 1 →
    /// [2, −2]; with density ½ each shard keeps its larger entry only.
    #[test]
    fn ties_merges_by_sign_agreement() {
        let base = t(&[0.0, 0.0]);
        let shards = [t(&[1.0, -2.0]), t(&[3.0, 1.0])];
        let merged = ties_merge(&base, &shards, &[0.5, 0.5], 1.0);
        assert_eq!(Vec::<f32>::try_from(&merged).unwrap(), [2.0, -2.0]);
        // Density ½: [0, −2] and [3, 0]; the sum's signs (+, −) keep both.
        let merged = ties_merge(&base, &shards, &[0.5, 0.5], 0.5);
        assert_eq!(Vec::<f32>::try_from(&merged).unwrap(), [3.0, -2.0]);
        // An entry no shard keeps stays at the base.
        let base = t(&[1.0, 1.0]);
        let merged = ties_merge(&base, &[t(&[1.0, 2.0])], &[1.0], 1.0);
        assert_eq!(Vec::<f32>::try_from(&merged).unwrap(), [1.0, 2.0]);
    }
}
