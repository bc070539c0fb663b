//! Method configurations. Every editing method is configured the same way: one TOML
//! file (a *recipe*) whose `method` field names the method and whose other fields are
//! that method's typed settings. Built-in recipes ship in `recipes/`.
//!
//! A recipe is resolved in four steps:
//! 1. the built-in recipe by name, or a TOML file (or a run's `recipe.toml`);
//! 2. `base = "NAME|FILE"`: the file's fields are laid over that recipe's;
//! 3. `[arch.<architecture>]`: fields laid over the rest for models of that
//!    architecture (`llama`, `gemma3`, …), for defaults that depend on the model;
//! 4. `key=value` overrides (`--set`), each parsed as the type of the field it replaces,
//!    so a wrong key names the keys that exist and a wrong value names the type.
//!
//! Layers are written as numbers, ranges `A..B` (inclusive), `all`, or depth fractions
//! (`2/3`, `1/9..2/7`) that resolve against the model's depth ([`layer_range`]).
//!
//! ```
//! use ftedit::edit::MethodConfig;
//!
//! let config = MethodConfig::load("memit", Some("llama"), &["lambda=5000".into()])?;
//! assert_eq!(config.method(), "memit");
//! let err = MethodConfig::load("memit", None, &["lamda=1".into()]).unwrap_err();
//! assert!(err.to_string().contains("lambda"), "{err}"); // names the keys that exist
//! # Ok::<(), ftedit::Error>(())
//! ```

use serde::{Deserialize, Serialize};

use super::alphaedit::AlphaEditConfig;
use super::memit::MemitConfig;
use super::recipe::Recipe;
use super::rome::RomeConfig;
use crate::error::{Error, Result};

/// The unedited model's (empty) settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoneConfig {
    #[serde(default)]
    pub description: String,
}

/// A method and its settings: what a recipe file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum MethodConfig {
    /// The unedited model.
    None(NoneConfig),
    /// The paper's fine-tuning and its ablations.
    Ft(Recipe),
    /// Fine-tuning on the whole sentence, without augmentation.
    FtNaive(Recipe),
    /// ROME's constrained fine-tuning baseline.
    FtL(Recipe),
    /// EasyEdit's FT-M baseline.
    FtM(Recipe),
    Rome(RomeConfig),
    Memit(MemitConfig),
    #[serde(rename = "alphaedit")]
    AlphaEdit(AlphaEditConfig),
}

/// The built-in recipes, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("none", include_str!("../../recipes/none.toml")),
    ("layers", include_str!("../../recipes/layers.toml")),
    ("full", include_str!("../../recipes/full.toml")),
    ("paper-mass", include_str!("../../recipes/paper-mass.toml")),
    ("single", include_str!("../../recipes/single.toml")),
    ("ft-naive", include_str!("../../recipes/ft-naive.toml")),
    ("ft-l", include_str!("../../recipes/ft-l.toml")),
    ("ft-m", include_str!("../../recipes/ft-m.toml")),
    ("locft", include_str!("../../recipes/locft.toml")),
    ("rome", include_str!("../../recipes/rome.toml")),
    ("memit", include_str!("../../recipes/memit.toml")),
    ("alphaedit", include_str!("../../recipes/alphaedit.toml")),
];

/// How deep `base` chains may go (a cycle stops here).
const MAX_BASES: usize = 8;

impl MethodConfig {
    /// Loads recipe `name_or_path` (a built-in name or a TOML file), resolved for models
    /// of architecture `arch` (`None`: the `[arch.*]` tables are ignored), with
    /// `key=value` overrides.
    pub fn load(name_or_path: &str, arch: Option<&str>, overrides: &[String]) -> Result<Self> {
        let table = resolved_table(name_or_path, arch, 0)?;
        let mut config = from_table(name_or_path, &table)?;
        if !overrides.is_empty() {
            let mut table = config.to_table();
            for o in overrides {
                let (k, v) = o.split_once('=').ok_or_else(|| Error::Setting {
                    key: o.clone(),
                    reason: "expected KEY=VALUE".into(),
                })?;
                let (k, v) = (k.trim(), v.trim());
                if k == "method" {
                    return Err(Error::Setting {
                        key: k.into(),
                        reason: "the method is chosen by --method or --recipe".into(),
                    });
                }
                set_key(&mut table, k, v, config.method())?;
                // Deserialising after each override names the one that broke it.
                config = from_table(name_or_path, &table).map_err(|e| Error::Setting {
                    key: format!("{k}={v}"),
                    reason: e.to_string(),
                })?;
            }
        }
        config.check()?;
        Ok(config)
    }

    /// The effective recipe for `--method` and `--recipe` as a user gives them: the
    /// recipe when one is named (it must be for `method`, when that is given too), else
    /// `method`'s default recipe, else `fallback`'s.
    pub fn select(
        method: Option<&str>,
        recipe: Option<&str>,
        fallback: &str,
        arch: Option<&str>,
        overrides: &[String],
    ) -> Result<Self> {
        let name = match (method, recipe) {
            (_, Some(r)) => r,
            (Some(m), None) => super::registry::info(m)?.default_recipe,
            (None, None) => super::registry::info(fallback)?.default_recipe,
        };
        let config = Self::load(name, arch, overrides)?;
        if let Some(m) = method
            && m != config.method()
        {
            super::registry::info(m)?;
            return Err(Error::Input(format!(
                "recipe '{name}' is for method '{}', not '{m}' (drop --method, or pick one of {m}'s recipes: ftedit methods)",
                config.method()
            )));
        }
        Ok(config)
    }

    /// The method's name, as `--method` takes it.
    pub fn method(&self) -> &'static str {
        match self {
            MethodConfig::None(_) => "none",
            MethodConfig::Ft(_) => "ft",
            MethodConfig::FtNaive(_) => "ft-naive",
            MethodConfig::FtL(_) => "ft-l",
            MethodConfig::FtM(_) => "ft-m",
            MethodConfig::Rome(_) => "rome",
            MethodConfig::Memit(_) => "memit",
            MethodConfig::AlphaEdit(_) => "alphaedit",
        }
    }

    /// The recipe's one-line description.
    pub fn description(&self) -> &str {
        match self {
            MethodConfig::None(c) => &c.description,
            MethodConfig::Ft(r)
            | MethodConfig::FtNaive(r)
            | MethodConfig::FtL(r)
            | MethodConfig::FtM(r) => &r.description,
            MethodConfig::Rome(c) => &c.description,
            MethodConfig::Memit(c) => &c.description,
            MethodConfig::AlphaEdit(c) => &c.description,
        }
    }

    /// The fine-tuning recipe, for the methods that fine-tune.
    pub fn recipe(&self) -> Option<&Recipe> {
        match self {
            MethodConfig::Ft(r)
            | MethodConfig::FtNaive(r)
            | MethodConfig::FtL(r)
            | MethodConfig::FtM(r) => Some(r),
            _ => None,
        }
    }

    fn check(&self) -> Result<()> {
        match self {
            MethodConfig::None(_) => Ok(()),
            MethodConfig::Rome(c) => c.check(),
            MethodConfig::Memit(c) => c.check(),
            MethodConfig::AlphaEdit(c) => c.check(),
            _ => self.recipe().expect("fine-tuning").check(),
        }
    }

    /// Every field, as a TOML table (`method` first).
    pub fn to_table(&self) -> toml::Table {
        toml::Table::try_from(self).expect("a config serialises to TOML")
    }

    /// The complete recipe as TOML text: `--recipe FILE` repeats it exactly.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.to_table()).expect("a table serialises")
    }

    /// Every setting as `(key, value)` in `--set` form, in file order.
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        flatten("", &self.to_table(), &mut out);
        out.retain(|(k, _)| k != "method");
        out
    }
}

/// The recipe's table for `arch`: its `base` resolved first, the file laid over it, then
/// the file's own `[arch.<arch>]` table, so that a file's settings beat its base's
/// architecture tables and its own architecture table beats both.
fn resolved_table(name_or_path: &str, arch: Option<&str>, depth: usize) -> Result<toml::Table> {
    if depth > MAX_BASES {
        return Err(Error::Input(format!(
            "recipe {name_or_path}: more than {MAX_BASES} nested `base` recipes (a cycle?)"
        )));
    }
    let text = match BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
        Some((_, t)) => t.to_string(),
        None => {
            let p = std::path::Path::new(name_or_path);
            if !p.is_file() {
                return Err(Error::Input(format!(
                    "recipe '{name_or_path}' is neither a file nor a built-in recipe ({})",
                    BUILTIN
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?
        }
    };
    let mut table: toml::Table = text
        .parse()
        .map_err(|e| Error::Input(format!("recipe {name_or_path}: {e}")))?;
    let arch_tables = table.remove("arch");
    let mut table = match table.remove("base") {
        None => table,
        Some(toml::Value::String(base)) => {
            let mut under = resolved_table(&base, arch, depth + 1)?;
            under.remove("description");
            merge(&mut under, table);
            under
        }
        Some(other) => {
            return Err(Error::Input(format!(
                "recipe {name_or_path}: `base` names a recipe, not {other}"
            )));
        }
    };
    match (arch, arch_tables) {
        (_, None) => {}
        (Some(arch), Some(toml::Value::Table(mut tables))) => {
            if let Some(toml::Value::Table(t)) = tables.remove(arch) {
                merge(&mut table, t);
            }
        }
        (None, Some(toml::Value::Table(_))) => {}
        (_, Some(other)) => {
            return Err(Error::Input(format!(
                "recipe {name_or_path}: `arch` holds one table per architecture, not {other}"
            )));
        }
    }
    Ok(table)
}

/// Lays `top` over `under`: tables merge key by key, anything else replaces.
fn merge(under: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (under.get_mut(&k), v) {
            (Some(toml::Value::Table(u)), toml::Value::Table(t)) => merge(u, t),
            (_, v) => {
                under.insert(k, v);
            }
        }
    }
}

fn from_table(name: &str, table: &toml::Table) -> Result<MethodConfig> {
    if !table.contains_key("method") {
        return Err(Error::Input(format!(
            "recipe {name}: no `method` field (one of {})",
            super::registry::names().join(", ")
        )));
    }
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| {
            // serde's message for a tagged enum has lost the key: find it by comparing
            // types with the method's default recipe (built-ins are tested, so skip them).
            let builtin = BUILTIN.iter().any(|(n, _)| *n == name);
            let why = (!builtin)
                .then(|| mistyped_key(table))
                .flatten()
                .unwrap_or_else(|| e.message().to_owned());
            Error::Input(format!("recipe {name}: {why}"))
        })
}

/// The first field of `table` whose value has another type than the method's default
/// recipe gives it, as a message.
fn mistyped_key(table: &toml::Table) -> Option<String> {
    let method = table.get("method")?.as_str()?;
    let recipe = super::registry::info(method).ok()?.default_recipe;
    let default = MethodConfig::load(recipe, None, &[]).ok()?.to_table();
    fn walk(prefix: &str, t: &toml::Table, default: &toml::Table) -> Option<String> {
        for (k, v) in t {
            let Some(d) = default.get(k) else { continue };
            let key = format!("{prefix}{k}");
            match (d, v) {
                (toml::Value::Table(d), toml::Value::Table(v)) => {
                    if let Some(m) = walk(&format!("{key}."), v, d) {
                        return Some(m);
                    }
                }
                (toml::Value::Float(_), toml::Value::Integer(_)) => {}
                (d, v) if d.type_str() != v.type_str() => {
                    let a = |t: &str| match t.as_bytes()[0] {
                        b'a' | b'i' => format!("an {t}"),
                        _ => format!("a {t}"),
                    };
                    return Some(format!(
                        "`{key}` is {}, expected {} (like {d})",
                        a(v.type_str()),
                        a(d.type_str())
                    ));
                }
                _ => {}
            }
        }
        None
    }
    walk("", table, &default)
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
    for (k, v) in table {
        let key = format!("{prefix}{k}");
        match v {
            toml::Value::Table(t) => flatten(&format!("{key}."), t, out),
            toml::Value::String(s) if s.is_empty() => out.push((key, "\"\"".into())),
            toml::Value::String(s) => out.push((key, s.clone())),
            other => out.push((key, other.to_string())),
        }
    }
}

/// The keys of a table, for error messages (sections as `name.*`).
fn keys_of(table: &toml::Table) -> String {
    table
        .iter()
        .filter(|(k, _)| *k != "method")
        .map(|(k, v)| match v {
            toml::Value::Table(_) => format!("{k}.*"),
            _ => k.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sets dotted `key` to `raw`, parsed as the type of the value it replaces.
fn set_key(root: &mut toml::Table, key: &str, raw: &str, method: &str) -> Result<()> {
    let err = |reason: String| Error::Setting {
        key: key.to_owned(),
        reason,
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts
        .pop()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| err("empty key".into()))?;
    let mut table = root;
    let mut path = String::new();
    for p in parts {
        let keys = keys_of(table);
        table = match table.get_mut(p) {
            Some(toml::Value::Table(t)) => t,
            _ => {
                return Err(err(format!(
                    "{method} has no section '{path}{p}' (settings: {keys})"
                )));
            }
        };
        path.push_str(p);
        path.push('.');
    }
    let keys = keys_of(table);
    let old = table.get(last).ok_or_else(|| {
        err(format!(
            "{method} has no setting '{path}{last}' (settings{}: {keys})",
            if path.is_empty() {
                String::new()
            } else {
                format!(" in {}", path.trim_end_matches('.'))
            }
        ))
    })?;
    let new = parse_as(old, raw).map_err(err)?;
    table.insert(last.to_owned(), new);
    Ok(())
}

/// `raw` as a value of `old`'s type, or what was expected.
fn parse_as(old: &toml::Value, raw: &str) -> std::result::Result<toml::Value, String> {
    use toml::Value as V;
    let parsed: Option<V> = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"));
    let bad = |what: &str| Err(format!("'{raw}' is not {what}"));
    match (old, parsed) {
        // Strings take the text as written (quotes optional).
        (V::String(_), Some(V::String(s))) => Ok(V::String(s)),
        (V::String(_), _) => Ok(V::String(raw.to_owned())),
        (V::Integer(_), Some(V::Integer(i))) => Ok(V::Integer(i)),
        (V::Integer(_), _) => bad("an integer"),
        (V::Float(_), Some(V::Float(f))) => Ok(V::Float(f)),
        (V::Float(_), Some(V::Integer(i))) => Ok(V::Float(i as f64)),
        (V::Float(_), _) => bad("a number"),
        (V::Boolean(_), Some(V::Boolean(b))) => Ok(V::Boolean(b)),
        (V::Boolean(_), _) => bad("true or false"),
        (V::Array(_), Some(V::Array(a))) => Ok(V::Array(a)),
        (V::Array(_), _) => bad("an array, e.g. [1, 2] or [\"a\"]"),
        (V::Table(t), _) => Err(format!(
            "is a section; set one of its keys ({})",
            keys_of(t)
        )),
        (V::Datetime(_), Some(v @ V::Datetime(_))) => Ok(v),
        (V::Datetime(_), _) => bad("a date"),
    }
}

/// The layers of a spec (see [`layer_range`]), in ascending order.
pub fn layer_list(spec: &str, num_layers: usize) -> Result<Vec<usize>> {
    let (lo, hi) = layer_range(spec, num_layers)?;
    Ok((lo..=hi).collect())
}

/// Parses a layer spec against a model of `num_layers` layers: `all`, `N`, `A..B`
/// (inclusive), a depth fraction `p/q` (layer ⌊num_layers·p/q⌋), or a range of either,
/// such as `1/9..2/7`.
pub fn layer_range(spec: &str, num_layers: usize) -> Result<(usize, usize)> {
    let bad = || {
        Error::Input(format!(
            "bad layers '{spec}' (N, A..B, all, a depth fraction p/q, or p/q..r/s)"
        ))
    };
    let spec = spec.trim();
    if num_layers == 0 {
        return Err(bad());
    }
    if spec == "all" {
        return Ok((0, num_layers - 1));
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
    fn every_builtin_recipe_loads_and_names_its_method() {
        for (name, _) in BUILTIN {
            let c = MethodConfig::load(name, None, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                super::super::registry::names().contains(&c.method()),
                "{name}"
            );
            // The TOML written for a run loads back to the same config.
            let dir = std::env::temp_dir().join(format!("ftedit-recipe-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{name}.toml"));
            std::fs::write(&file, c.to_toml()).unwrap();
            let again = MethodConfig::load(file.to_str().unwrap(), None, &[]).unwrap();
            assert_eq!(again, c, "{name}");
        }
    }

    #[test]
    fn overrides_are_typed_and_errors_name_the_key() {
        let c = MethodConfig::load(
            "layers",
            None,
            &[
                "optim.lr=1e-3".into(),
                "augment.facts=nearest".into(),
                "train.layers=2..4".into(),
                "optim.clip=2".into(), // an integer where a float is expected
            ],
        )
        .unwrap();
        let r = c.recipe().unwrap();
        assert_eq!(r.optim.lr, 1e-3);
        assert_eq!(r.optim.clip, 2.0);
        assert_eq!(r.train.layers, "2..4");
        let err = |o: &str| {
            MethodConfig::load("memit", None, &[o.into()])
                .unwrap_err()
                .to_string()
        };
        let e = err("value.clamp=4");
        assert!(
            e.contains("value.clamp") && e.contains("clamp_norm_factor"),
            "{e}"
        );
        let e = err("nope.x=1");
        assert!(
            e.contains("no section 'nope'") && e.contains("value.*"),
            "{e}"
        );
        let e = err("lambda=big");
        assert!(e.contains("lambda") && e.contains("not a number"), "{e}");
        let e = err("value.steps=2.5");
        assert!(e.contains("value.steps") && e.contains("integer"), "{e}");
        let e = err("value=3");
        assert!(e.contains("section"), "{e}");
        let e = err("method=rome");
        assert!(e.contains("--method"), "{e}");
        // A value of the right TOML type that the method rejects names its key too.
        let e = MethodConfig::load("layers", None, &["optim.schedule=cosin".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("optim.schedule=cosin") && e.contains("cosine"),
            "{e}"
        );
        let e = MethodConfig::load("layers", None, &["optim.lr=-1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("optim.lr"), "{e}");
        assert!(
            MethodConfig::load("nope", None, &[])
                .unwrap_err()
                .to_string()
                .contains("built-in")
        );
    }

    #[test]
    fn base_and_arch_tables_layer_over_the_recipe() {
        let dir = std::env::temp_dir().join(format!("ftedit-base-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mine.toml");
        std::fs::write(
            &file,
            "base = \"memit\"\nlambda = 100\n[value]\nsteps = 3\n[arch.gemma3]\nlayers = \"1..2\"\n[arch.gemma3.value]\nlr = 0.1\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let memit = |c: MethodConfig| match c {
            MethodConfig::Memit(m) => m,
            other => panic!("{}", other.method()),
        };
        let builtin = memit(MethodConfig::load("memit", None, &[]).unwrap());
        // The file's λ beats the base's [arch.llama] λ.
        let plain = memit(MethodConfig::load(path, Some("llama"), &[]).unwrap());
        assert_eq!(plain.lambda, 100.0);
        let llama = memit(MethodConfig::load("memit", Some("llama"), &[]).unwrap());
        assert_ne!(llama.lambda, builtin.lambda, "memit.toml tunes λ for llama");
        assert_eq!(plain.value.steps, 3);
        assert_eq!(plain.value.lr, builtin.value.lr);
        assert_eq!(plain.layers, builtin.layers);
        let g = memit(MethodConfig::load(path, Some("gemma3"), &["value.steps=4".into()]).unwrap());
        // A mistyped field in a file names its key.
        let bad = dir.join("bad.toml");
        let bad_path = bad.to_str().unwrap();
        std::fs::write(&bad, "base = \"memit\"\n[value]\nsteps = \"x\"\n").unwrap();
        let e = MethodConfig::load(bad_path, None, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`value.steps` is a string, expected an integer (like 25)"),
            "{e}"
        );
        std::fs::write(&bad, "method = \"memit\"\nbase = \"memit\"\nlamda = 1\n").unwrap();
        let e = MethodConfig::load(bad_path, None, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `lamda`") && e.contains("`lambda`"),
            "{e}"
        );
        assert_eq!(
            (g.layers.as_str(), g.value.lr, g.value.steps),
            ("1..2", 0.1, 4)
        );
        // A recipe for another method is refused when --method says otherwise.
        let e = MethodConfig::select(Some("rome"), Some(path), "none", None, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("for method 'memit', not 'rome'"), "{e}");
        let c = MethodConfig::select(Some("ft-l"), None, "none", None, &[]).unwrap();
        assert_eq!(c.method(), "ft-l");
        assert_eq!(
            MethodConfig::select(None, None, "none", None, &[])
                .unwrap()
                .method(),
            "none"
        );
    }

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
        assert!(layer_range("5..3", 30).is_err());
        assert!(layer_range("30", 30).is_err());
        assert!(layer_range("3/2", 30).is_err());
        for bad in ["", "x", "1/0", "-1", "2..x"] {
            assert!(layer_range(bad, 30).is_err(), "{bad:?}");
        }
    }
}
