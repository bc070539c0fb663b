//! Reading Hugging Face `config.json` fields with clear errors and the library's
//! defaults. Each architecture's `Config` uses these to fill its fields.

use serde_json::Value as Json;

use crate::error::{Error, Result};

/// A `config.json` object.
pub struct JsonConfig<'a>(pub &'a Json);

impl JsonConfig<'_> {
    fn get(&self, key: &str) -> Option<&Json> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub fn int(&self, key: &str) -> Result<i64> {
        self.opt_int(key).ok_or_else(|| {
            Error::Config(format!(
                "config.json: field '{key}' is missing or not an integer"
            ))
        })
    }

    pub fn opt_int(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(Json::as_i64)
    }

    pub fn int_or(&self, key: &str, default: i64) -> i64 {
        self.opt_int(key).unwrap_or(default)
    }

    pub fn float_or(&self, key: &str, default: f64) -> f64 {
        self.get(key).and_then(Json::as_f64).unwrap_or(default)
    }

    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        self.get(key).and_then(Json::as_bool).unwrap_or(default)
    }

    pub fn str_or<'b>(&'b self, key: &str, default: &'b str) -> &'b str {
        self.get(key).and_then(Json::as_str).unwrap_or(default)
    }

    /// The rotary scaling of `rope_scaling` (transformers 4) or `rope_parameters`
    /// (transformers 5, possibly per layer type: all must agree). `linear` and `llama3`
    /// are implemented; any other kind is refused rather than run as a subtly different
    /// model.
    pub fn rope_scaling(&self) -> Result<crate::model::nn::RopeScaling> {
        use crate::model::nn::RopeScaling;
        let parse = |s: &Json| -> Result<Option<RopeScaling>> {
            let Some(kind) = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(Json::as_str)
            else {
                return Ok(None);
            };
            let num = |k: &str| {
                s.get(k).and_then(Json::as_f64).ok_or_else(|| {
                    Error::Config(format!(
                        "config.json: rope scaling '{kind}' has no number '{k}'"
                    ))
                })
            };
            Ok(Some(match kind {
                "default" => RopeScaling::None,
                "linear" => RopeScaling::Linear {
                    factor: num("factor")?,
                },
                "llama3" => RopeScaling::Llama3 {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position_embeddings: num("original_max_position_embeddings")?,
                },
                other => {
                    return Err(Error::Config(format!(
                        "config.json: rope scaling '{other}' is not supported (supported: \
                         default, linear, llama3)"
                    )));
                }
            }))
        };
        let mut found: Option<RopeScaling> = None;
        for key in ["rope_scaling", "rope_parameters"] {
            let Some(s) = self.get(key) else { continue };
            // transformers 5 nests the parameters per layer type.
            let nested = s
                .as_object()
                .into_iter()
                .flat_map(|o| o.values())
                .filter(|v| v.is_object());
            for v in std::iter::once(s).chain(nested) {
                if let Some(r) = parse(v)? {
                    if found.as_ref().is_some_and(|f| *f != r) {
                        return Err(Error::Config(
                            "config.json: rope scaling differs between layer types, which \
                             this architecture does not support"
                                .into(),
                        ));
                    }
                    found = Some(r);
                }
            }
        }
        Ok(found.unwrap_or_default())
    }

    /// Refuses any rope scaling (for architectures that do not implement it).
    pub fn check_rope_scaling(&self) -> Result<()> {
        match self.rope_scaling()? {
            crate::model::nn::RopeScaling::None => Ok(()),
            other => Err(Error::Config(format!(
                "config.json: rope scaling {other:?} is not supported for this architecture"
            ))),
        }
    }
}

/// The rotary base: `rope_theta`, or transformers 5's `rope_parameters` (per layer type
/// when `layer_type` is given), else `default`.
pub fn rope_theta(j: &Json, layer_type: Option<&str>, default: f64) -> f64 {
    let params = j.get("rope_parameters");
    let nested = layer_type.and_then(|t| params?.get(t)?.get("rope_theta")?.as_f64());
    nested
        .or_else(|| params?.get("rope_theta")?.as_f64())
        .or_else(|| j.get("rope_theta")?.as_f64())
        .unwrap_or(default)
}

/// The first id of `bos_token_id` / `eos_token_id`, which may be a number or a list.
pub fn token_id(j: &Json, key: &str) -> Option<u32> {
    match j.get(key)? {
        Json::Number(n) => n.as_u64().map(|v| v as u32),
        Json::Array(a) => a.first()?.as_u64().map(|v| v as u32),
        _ => None,
    }
}
