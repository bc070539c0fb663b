//! Recipe files. Every editing method is configured the same way: one TOML file (a
//! *recipe*) whose `method` field names the method and whose other fields are that
//! method's typed settings. Built-in recipes ship in `recipes/`. This file knows the
//! files and how they layer, not the methods: [`super::registry::MethodConfig`] turns a
//! resolved table into a method's typed config.
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
//! (`2/3`, `1/9..2/7`) that resolve against the model's depth
//! ([`super::layers::layer_range`]).
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

use crate::error::{Error, Result};

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
    ("saul", include_str!("../../recipes/saul.toml")),
    ("rome", include_str!("../../recipes/rome.toml")),
    ("memit", include_str!("../../recipes/memit.toml")),
    ("alphaedit", include_str!("../../recipes/alphaedit.toml")),
    ("mend", include_str!("../../recipes/mend.toml")),
    ("grace", include_str!("../../recipes/grace.toml")),
    ("serac", include_str!("../../recipes/serac.toml")),
    ("wise", include_str!("../../recipes/wise.toml")),
];

/// How deep `base` chains may go (a cycle stops here).
const MAX_BASES: usize = 8;

/// The recipe's table for `arch`: its `base` resolved first, the file laid over it, then
/// the file's own `[arch.<arch>]` table, so that a file's settings beat its base's
/// architecture tables and its own architecture table beats both.
pub(crate) fn resolved_table(
    name_or_path: &str,
    arch: Option<&str>,
    depth: usize,
) -> Result<toml::Table> {
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
pub(crate) fn merge(under: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (under.get_mut(&k), v) {
            (Some(toml::Value::Table(u)), toml::Value::Table(t)) => merge(u, t),
            (_, v) => {
                under.insert(k, v);
            }
        }
    }
}

/// The first field of `table` whose value has another type than the method's default
/// recipe gives it, as a message.
/// (`default`: that recipe's table).
pub(crate) fn mistyped_key(table: &toml::Table, default: &toml::Table) -> Option<String> {
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
    walk("", table, default)
}

pub(crate) fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
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
pub(crate) fn set_key(root: &mut toml::Table, key: &str, raw: &str, method: &str) -> Result<()> {
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
