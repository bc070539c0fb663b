//! Layer specs, as recipes write them: a number, an inclusive range `A..B`, `all`, a
//! depth fraction (`2/3`, `1/9..2/7`) or the top `last N` that resolves against the
//! model's depth, so one recipe fits models of any depth.

use crate::error::{Error, Result};

/// The layers of a spec (see [`layer_range`]), in ascending order.
pub fn layer_list(spec: &str, num_layers: usize) -> Result<Vec<usize>> {
    let (lo, hi) = layer_range(spec, num_layers)?;
    Ok((lo..=hi).collect())
}

/// Parses a layer spec against a model of `num_layers` layers: `all`, `N`, `A..B`
/// (inclusive), a depth fraction `p/q` (layer ⌊num_layers·p/q⌋), a range of either,
/// such as `1/9..2/7`, or `last N` (the top `N` layers, MEND's).
pub fn layer_range(spec: &str, num_layers: usize) -> Result<(usize, usize)> {
    let bad = || {
        Error::Input(format!(
            "bad layers '{spec}' (N, A..B, all, a depth fraction p/q, p/q..r/s, or last N)"
        ))
    };
    let spec = spec.trim();
    if num_layers == 0 {
        return Err(bad());
    }
    if spec == "all" {
        return Ok((0, num_layers - 1));
    }
    if let Some(n) = spec.strip_prefix("last") {
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        if n == 0 || n > num_layers {
            return Err(Error::Input(format!(
                "layers '{spec}': the model has {num_layers} layers"
            )));
        }
        return Ok((num_layers - n, num_layers - 1));
    }
    let one = |s: &str| -> Result<usize> {
        let s = s.trim();
        if let Some((p, q)) = s.split_once('/') {
            let (p, q): (usize, usize) = (
                p.trim().parse().map_err(|_| bad())?,
                q.trim().parse().map_err(|_| bad())?,
            );
            if q == 0 || p > q {
                return Err(bad());
            }
            Ok((num_layers * p / q).min(num_layers - 1))
        } else {
            s.parse().map_err(|_| bad())
        }
    };
    let (lo, hi) = match spec.split_once("..") {
        Some((a, b)) => (one(a)?, one(b)?),
        None => {
            let l = one(spec)?;
            (l, l)
        }
    };
    if lo > hi || hi >= num_layers {
        return Err(Error::Input(format!(
            "layers '{spec}' ({lo}..{hi}) are outside the model's {num_layers} layers"
        )));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_specs() {
        assert_eq!(layer_range("all", 4).unwrap(), (0, 3));
        assert_eq!(layer_range("3..5", 30).unwrap(), (3, 5));
        assert_eq!(layer_range("7", 30).unwrap(), (7, 7));
        assert_eq!(layer_range("2/3", 30).unwrap(), (20, 20));
        assert_eq!(layer_range("2/3", 18).unwrap(), (12, 12));
        assert_eq!(layer_range("2/3", 32).unwrap(), (21, 21));
        assert_eq!(layer_range("1/1", 12).unwrap(), (11, 11));
        // MEMIT's default range and ROME's layer (GPT-J: 3..8 and 5 of 28).
        assert_eq!(layer_range("1/9..2/7", 28).unwrap(), (3, 8));
        assert_eq!(layer_range("1/9..2/7", 30).unwrap(), (3, 8));
        assert_eq!(layer_range("1/9..2/7", 18).unwrap(), (2, 5));
        assert_eq!(layer_range("1/5", 28).unwrap(), (5, 5));
        assert_eq!(layer_range("last 3", 30).unwrap(), (27, 29));
        assert_eq!(layer_range("last3", 18).unwrap(), (15, 17));
        assert!(layer_range("last 0", 30).is_err());
        assert!(layer_range("last 31", 30).is_err());
        assert!(layer_range("5..3", 30).is_err());
        assert!(layer_range("30", 30).is_err());
        assert!(layer_range("3/2", 30).is_err());
        for bad in ["", "x", "1/0", "-1", "2..x"] {
            assert!(layer_range(bad, 30).is_err(), "{bad:?}");
        }
    }
}
