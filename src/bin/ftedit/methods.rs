//! `ftedit methods`: the editing methods, their built-in recipes and what each sets.

use clap::Args;
use ftedit::edit::{METHODS, MethodConfig, registry};

#[derive(Args)]
pub struct MethodsArgs {
    /// A method or recipe (built-in or a file): print every setting it has, as a TOML
    /// recipe to copy.
    name: Option<String>,
    /// Resolve the recipe for this architecture (its `[arch.NAME]` table), e.g. llama,
    /// gemma3.
    #[arg(long)]
    arch: Option<String>,
}

pub fn run(args: MethodsArgs) -> anyhow::Result<()> {
    let arch = args.arch.as_deref();
    if let Some(name) = &args.name {
        let recipe = registry::info(name).map_or(name.as_str(), |m| m.default_recipe);
        print!("{}", MethodConfig::load(recipe, arch, &[])?.to_toml());
        return Ok(());
    }
    for m in METHODS {
        println!("{}: {}", m.name, m.about);
        let default = MethodConfig::load(m.default_recipe, arch, &[])?;
        let base = default.settings();
        for r in registry::recipes_of(m.name) {
            let c = MethodConfig::load(r, arch, &[])?;
            let mark = if r == m.default_recipe {
                " (default)"
            } else {
                ""
            };
            println!("  --recipe {r}{mark}: {}", c.description());
            let sets: Vec<String> = c
                .settings()
                .into_iter()
                .filter(|kv| kv.0 != "description" && !base.contains(kv))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !sets.is_empty() {
                println!("      sets {}", sets.join(" "));
            }
        }
    }
    println!(
        "\n`ftedit methods NAME` prints every setting of a method's default recipe or of a recipe;\nany of them can be changed with --set KEY=VALUE."
    );
    Ok(())
}
