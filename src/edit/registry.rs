//! The one place that knows the editing methods: their names, default recipes, the
//! typed config of each ([`MethodConfig`], what a recipe file holds) and how a config
//! becomes an [`Editor`]. Nothing this file imports imports it back: each method owns
//! its config type, and [`super::config`] reads recipe files without knowing methods. The command line and library users build
//! editors the same way:
//!
//! ```
//! use ftedit::edit::{self, BuildOptions, MethodConfig};
//!
//! let path = ftedit::model::registry::resolve("smollm2")?;
//! let (mut model, tok) = ftedit::load(&path, &Default::default())?;
//! let records = ftedit::data::load("examples/edits.jsonl", None)?;
//! // A method by name (FT-M, three steps to keep the example quick), its editor, the edit:
//! let config = MethodConfig::load("ft-m", Some(model.arch_name()), &["optim.epochs=3".into()])?;
//! let mut editor = edit::build(&config, &tok, &BuildOptions::default())?;
//! editor.edit(&mut model, &tok, &records)?;
//! # Ok::<(), ftedit::Error>(())
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::alphaedit::{AlphaEditConfig, AlphaEditEditor};
use super::augment;
use super::config;
use super::editor::Editor;
use super::ft::FtEditor;
use super::ft::recipe::{FactMode, Recipe};
use super::ft::resume::ResumePoint;
use super::grace::{Codebook, GraceConfig, GraceEditor};
use super::memit::{MemitConfig, MemitEditor};
use super::mend::{MendConfig, MendEditor};
use super::none::{NoEdit, NoneConfig};
use super::post::{PostConfig, PostEditor};
use super::rome::{RomeConfig, RomeEditor};
use super::serac::{SeracConfig, SeracEditor, SeracMemory};
use super::wise::{SideMemory, WiseConfig, WiseEditor};
use crate::data::{self, EditRecord};
use crate::error::{Error, Result};
use crate::model::{SavedAdapter, SharedAdapter};
use crate::tokenizer::Tokenizer;

/// A registered method.
#[derive(Debug, Clone, Copy)]
pub struct MethodInfo {
    /// Its `--method` name and the `method` field of its recipes.
    pub name: &'static str,
    /// One line on what it does.
    pub about: &'static str,
    /// The built-in recipe it runs with when none is named.
    pub default_recipe: &'static str,
}

/// Every method, in the order the paper's tables list them.
pub const METHODS: &[MethodInfo] = &[
    MethodInfo {
        name: "none",
        about: "the unedited model",
        default_recipe: "none",
    },
    MethodInfo {
        name: "ft",
        about: "the paper's fine-tuning: conditional likelihood on edits, random-prefix paraphrases and unedited facts",
        default_recipe: "layers",
    },
    MethodInfo {
        name: "ft-naive",
        about: "fine-tuning on the whole edited sentence, no augmentation",
        default_recipe: "ft-naive",
    },
    MethodInfo {
        name: "ft-l",
        about: "ROME's FT-L baseline: one MLP matrix, weights clamped to ±ε",
        default_recipe: "ft-l",
    },
    MethodInfo {
        name: "ft-m",
        about: "EasyEdit's FT-M baseline: one MLP matrix, target-only loss",
        default_recipe: "ft-m",
    },
    MethodInfo {
        name: "rome",
        about: "ROME: a rank-one update of one MLP output projection per edit",
        default_recipe: "rome",
    },
    MethodInfo {
        name: "memit",
        about: "MEMIT: all edits at once, spread over a range of MLP output projections",
        default_recipe: "memit",
    },
    MethodInfo {
        name: "alphaedit",
        about: "AlphaEdit: MEMIT's update in the null space of the preserved keys, for lifelong editing",
        default_recipe: "alphaedit",
    },
    MethodInfo {
        name: "mend",
        about: "MEND: a trained network turns the fine-tuning gradient of the top MLPs into a weight change (train it first: ftedit train-editor)",
        default_recipe: "mend",
    },
    MethodInfo {
        name: "grace",
        about: "GRACE: a key-value codebook at one layer, beside the weights (an adapter)",
        default_recipe: "grace",
    },
    MethodInfo {
        name: "serac",
        about: "SERAC: edits kept as text beside the model; a trained scope classifier puts the nearest edit in context for queries it covers (an adapter; train it first: ftedit train-editor)",
        default_recipe: "serac",
    },
    MethodInfo {
        name: "wise",
        about: "WISE: a routed side copy of one MLP output projection, beside the weights (an adapter)",
        default_recipe: "wise",
    },
];

/// The method names.
pub fn names() -> Vec<&'static str> {
    METHODS.iter().map(|m| m.name).collect()
}

/// The method called `name`.
pub fn info(name: &str) -> Result<&'static MethodInfo> {
    METHODS.iter().find(|m| m.name == name).ok_or_else(|| {
        Error::Input(format!(
            "unknown method '{name}' (available: {})",
            names().join(", ")
        ))
    })
}

/// The built-in recipes whose `method` is `name`, default first.
pub fn recipes_of(name: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = config::BUILTIN
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| MethodConfig::load(n, None, &[]).is_ok_and(|c| c.method() == name))
        .collect();
    if let Ok(m) = info(name) {
        out.sort_by_key(|n| *n != m.default_recipe);
    }
    out
}

/// What building an editor needs besides its config.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions<'a> {
    /// Records that must not serve as unedited facts (the edits, and everything that is
    /// evaluated); their suite also picks the default fact pool.
    pub exclude: &'a [EditRecord],
    /// The fact pool file, over the recipe's `augment.fact_pool`.
    pub pool: Option<PathBuf>,
    /// Show progress bars.
    pub progress: bool,
    /// Where a fine-tuning run saves its resume point, and how often.
    pub resume: Option<ResumePoint>,
}

/// The editor `config` describes.
pub fn build(
    config: &MethodConfig,
    tok: &Tokenizer,
    opts: &BuildOptions,
) -> Result<Box<dyn Editor>> {
    Ok(with_post(config, build_method(config, tok, opts)?))
}

/// `editor` with the config's [`PostConfig`] after each edit, when it has one that
/// changes anything (for callers that build a method's editor themselves, as `ftedit
/// edit` builds the fine-tuning editor to reach its options).
pub fn with_post(config: &MethodConfig, editor: Box<dyn Editor>) -> Box<dyn Editor> {
    match config.post() {
        Some(post) if post.is_active() => Box::new(PostEditor::new(editor, post.clone())),
        _ => editor,
    }
}

/// The method's own editor, before [`PostConfig`].
fn build_method(
    config: &MethodConfig,
    tok: &Tokenizer,
    opts: &BuildOptions,
) -> Result<Box<dyn Editor>> {
    Ok(match config {
        MethodConfig::None(_) => Box::new(NoEdit),
        MethodConfig::Rome(c) => {
            let mut e = RomeEditor::new(c.clone());
            e.progress = opts.progress;
            Box::new(e)
        }
        MethodConfig::Memit(c) => {
            let mut e = MemitEditor::new(c.clone());
            e.progress = opts.progress;
            Box::new(e)
        }
        MethodConfig::AlphaEdit(c) => {
            let mut e = AlphaEditEditor::new(c.clone());
            e.progress = opts.progress;
            Box::new(e)
        }
        MethodConfig::Grace(c) => {
            let mut e = GraceEditor::new(c.clone());
            e.progress = opts.progress;
            Box::new(e)
        }
        MethodConfig::Mend(c) => {
            let mut e = MendEditor::new(c.clone());
            e.progress = opts.progress;
            Box::new(e)
        }
        MethodConfig::Serac(c) => {
            let mut e = SeracEditor::new(c.clone());
            e.progress = opts.progress;
            Box::new(e)
        }
        MethodConfig::Wise(c) => {
            let mut e = WiseEditor::new(c.clone(), fact_pool(None, opts)?)?;
            e.progress = opts.progress;
            Box::new(e)
        }
        _ => Box::new(build_ft(config, tok, opts)?),
    })
}

/// The fine-tuning editor of a fine-tuning method's config.
pub fn build_ft(config: &MethodConfig, tok: &Tokenizer, opts: &BuildOptions) -> Result<FtEditor> {
    let recipe = config
        .recipe()
        .ok_or_else(|| Error::Input(format!("method '{}' does not fine-tune", config.method())))?;
    let aug = &recipe.augment;
    let pool = if aug.facts == FactMode::None || aug.facts_per_edit == 0 {
        Vec::new()
    } else {
        fact_pool(Some(aug.fact_pool.as_str()), opts)?
    };
    let lm_text = if aug.lm_gamma > 0.0 {
        let path = if aug.lm_text.is_empty() {
            data::default_text()
        } else {
            PathBuf::from(&aug.lm_text)
        };
        Some(std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?)
    } else {
        None
    };
    let mut ft = FtEditor::new(
        config.method(),
        recipe.clone(),
        pool,
        lm_text.as_deref(),
        tok,
    )?;
    ft.progress = opts.progress;
    ft.resume = opts.resume.clone();
    Ok(ft)
}

/// The unedited facts an editor draws from: `--pool`, else the recipe's `setting` (when
/// not empty), else the default pool of the evaluated records' suite, without anything
/// evaluated.
fn fact_pool(setting: Option<&str>, opts: &BuildOptions) -> Result<Vec<augment::Fact>> {
    let path = match (&opts.pool, setting) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) if !p.is_empty() => PathBuf::from(p),
        _ => data::default_fact_pool(
            opts.exclude
                .first()
                .map_or(data::Suite::CounterFact, |r| r.suite),
        ),
    };
    augment::fact_pool(&path, None, opts.exclude)
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
    Mend(MendConfig),
    Grace(GraceConfig),
    Serac(SeracConfig),
    Wise(WiseConfig),
}

impl MethodConfig {
    /// Loads recipe `name_or_path` (a built-in name or a TOML file), resolved for models
    /// of architecture `arch` (`None`: the `[arch.*]` tables are ignored), with
    /// `key=value` overrides.
    pub fn load(name_or_path: &str, arch: Option<&str>, overrides: &[String]) -> Result<Self> {
        let table = config::resolved_table(name_or_path, arch, 0)?;
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
                config::set_key(&mut table, k, v, config.method())?;
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
            (Some(m), None) => info(m)?.default_recipe,
            (None, None) => info(fallback)?.default_recipe,
        };
        let config = Self::load(name, arch, overrides)?;
        if let Some(m) = method
            && m != config.method()
        {
            info(m)?;
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
            MethodConfig::Mend(_) => "mend",
            MethodConfig::Grace(_) => "grace",
            MethodConfig::Serac(_) => "serac",
            MethodConfig::Wise(_) => "wise",
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
            MethodConfig::Mend(c) => &c.description,
            MethodConfig::Grace(c) => &c.description,
            MethodConfig::Serac(c) => &c.description,
            MethodConfig::Wise(c) => &c.description,
        }
    }

    /// What happens to the weight change after the edit, for the methods that write
    /// weights.
    pub fn post(&self) -> Option<&PostConfig> {
        match self {
            MethodConfig::None(_)
            | MethodConfig::Grace(_)
            | MethodConfig::Serac(_)
            | MethodConfig::Wise(_) => None,
            MethodConfig::Rome(c) => Some(&c.post),
            MethodConfig::Memit(c) => Some(&c.post),
            MethodConfig::AlphaEdit(c) => Some(&c.post),
            MethodConfig::Mend(c) => Some(&c.post),
            MethodConfig::Ft(r)
            | MethodConfig::FtNaive(r)
            | MethodConfig::FtL(r)
            | MethodConfig::FtM(r) => Some(&r.post),
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
            MethodConfig::Mend(c) => c.check(),
            MethodConfig::Grace(c) => c.check(),
            MethodConfig::Serac(c) => c.check(),
            MethodConfig::Wise(c) => c.check(),
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
        config::flatten("", &self.to_table(), &mut out);
        out.retain(|(k, _)| k != "method");
        out
    }
}

/// The adapter `saved` holds, built by the method that wrote it.
pub fn adapter_from_saved(saved: &SavedAdapter, device: tch::Device) -> Result<SharedAdapter> {
    match saved.method.as_str() {
        "grace" => Ok(std::rc::Rc::new(Codebook::from_saved(saved, device)?)),
        "wise" => Ok(std::rc::Rc::new(SideMemory::from_saved(saved, device)?)),
        "serac" => Ok(std::rc::Rc::new(SeracMemory::from_saved(saved, device)?)),
        other => Err(Error::Input(format!(
            "an adapter of method '{other}', which keeps none (adapters: grace, serac, wise)"
        ))),
    }
}

/// Installs the adapter kept beside the model file `path` (`DIR/ftedit_adapter.*` or
/// `x.gguf.adapter.*`), if there is one; returns whether there was.
pub fn load_adapter(model: &mut crate::model::Model, path: &std::path::Path) -> Result<bool> {
    let base = crate::model::adapter::adapter_base(path);
    match crate::model::adapter::read_adapter(&base)? {
        Some(saved) => {
            let adapter = adapter_from_saved(&saved, model.device())?;
            if adapter.layer() >= model.num_layers() {
                return Err(Error::Input(format!(
                    "{}: an adapter at layer {} of a {}-layer model",
                    base.display(),
                    adapter.layer(),
                    model.num_layers()
                )));
            }
            model.set_adapter(Some(adapter));
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The table of `table`'s method's default recipe, to name a mistyped field.
fn default_table(table: &toml::Table) -> Option<toml::Table> {
    let method = table.get("method")?.as_str()?;
    let recipe = info(method).ok()?.default_recipe;
    Some(MethodConfig::load(recipe, None, &[]).ok()?.to_table())
}

fn from_table(name: &str, table: &toml::Table) -> Result<MethodConfig> {
    if !table.contains_key("method") {
        return Err(Error::Input(format!(
            "recipe {name}: no `method` field (one of {})",
            names().join(", ")
        )));
    }
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| {
            // serde's message for a tagged enum has lost the key: find it by comparing
            // types with the method's default recipe (built-ins are tested, so skip them).
            let builtin = config::BUILTIN.iter().any(|(n, _)| *n == name);
            let why = (!builtin)
                .then(|| default_table(table).and_then(|d| config::mistyped_key(table, &d)))
                .flatten()
                .unwrap_or_else(|| e.message().to_owned());
            Error::Input(format!("recipe {name}: {why}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_its_default_recipe_and_every_recipe_a_method() {
        for m in METHODS {
            let recipes = recipes_of(m.name);
            assert_eq!(recipes.first(), Some(&m.default_recipe), "{}", m.name);
        }
        let listed: usize = METHODS.iter().map(|m| recipes_of(m.name).len()).sum();
        assert_eq!(listed, config::BUILTIN.len());
        assert!(recipes_of("ft").contains(&"paper-mass"));
        let e = info("bogus").unwrap_err().to_string();
        assert!(
            e.contains("unknown method 'bogus'") && e.contains("alphaedit") && e.contains("mend"),
            "{e}"
        );
    }

    #[test]
    fn every_builtin_recipe_loads_and_names_its_method() {
        for (name, _) in config::BUILTIN {
            let c = MethodConfig::load(name, None, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(names().contains(&c.method()), "{name}");
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
}
