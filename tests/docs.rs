//! The manual (`docs/`, an mdBook) and the front page against the code: every method and
//! built-in recipe has its page, a page's settings table names only settings the recipe
//! has, with its defaults; every internal link of the book and the README lands on a
//! file and heading that exist; every page is in SUMMARY.md; the README stays a front
//! page (at most 15 KB, its first code block the two commands `.ci/run` keeps true, its
//! numbers on the results pages).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ftedit::edit::config::BUILTIN;
use ftedit::edit::{METHODS, MethodConfig};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn book() -> PathBuf {
    root().join("docs/src")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every page of the book.
fn pages() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![book()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A page's lines outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// The cells of a markdown table row, or `None` for other lines and separator rows.
fn cells(line: &str) -> Option<Vec<String>> {
    let l = line.trim();
    if !l.starts_with('|')
        || l.trim_matches(|c| c == '|' || c == '-' || c == ':' || c == ' ')
            .is_empty()
    {
        return None;
    }
    Some(
        l.trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().trim_matches('|').trim().to_owned())
            .collect(),
    )
}

/// The `## Settings` table of a method page: key → default, both as written (without
/// backticks).
fn settings_table(page: &Path) -> Vec<(String, String)> {
    let text = read(page);
    let lines = prose(&text);
    let start = lines
        .iter()
        .position(|l| l.trim() == "## Settings")
        .unwrap_or_else(|| panic!("{} has no `## Settings` section", page.display()));
    let mut rows = Vec::new();
    for l in &lines[start + 1..] {
        if l.starts_with("## ") {
            break;
        }
        let Some(c) = cells(l) else { continue };
        if c[0] == "Setting" {
            continue;
        }
        let unquote = |s: &str| s.trim().trim_matches('`').to_owned();
        assert!(
            c.len() >= 3 && c[0].starts_with('`') && c[1].starts_with('`'),
            "{}: a settings row is | `key` | `default` | meaning |, not {l:?}",
            page.display()
        );
        rows.push((unquote(&c[0]), unquote(&c[1])));
    }
    assert!(
        !rows.is_empty(),
        "{}: an empty settings table",
        page.display()
    );
    rows
}

/// The value at dotted `key` of a recipe's table.
fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut v = table.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

/// Whether a default as a page writes it is the recipe's value (numbers compare as
/// numbers: `64` is `64.0`).
fn same_value(written: &str, actual: &toml::Value) -> bool {
    let parsed = format!("v = {written}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"));
    match (parsed, actual) {
        (Some(toml::Value::Integer(a)), toml::Value::Float(b)) => a as f64 == *b,
        (Some(toml::Value::Float(a)), toml::Value::Float(b)) => (a - b).abs() <= 1e-12 * b.abs(),
        (Some(p), a) => &p == a,
        (None, _) => false,
    }
}

/// Every setting of a recipe in `--set` form (`method` left out).
fn keys_of(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        match v {
            toml::Value::Table(t) => keys_of(t, &format!("{prefix}{k}."), out),
            _ if prefix.is_empty() && k == "method" => {}
            _ => out.push(format!("{prefix}{k}")),
        }
    }
}

/// What is wrong with page `page`'s settings against recipe `recipe`; `complete`: every
/// setting must be listed.
fn check_settings(page: &Path, recipe: &str, complete: bool) -> Vec<String> {
    let config = MethodConfig::load(recipe, None, &[]).unwrap();
    let table = config.to_table();
    let rows = settings_table(page);
    let mut wrong = Vec::new();
    let name = page
        .strip_prefix(root())
        .unwrap_or(page)
        .display()
        .to_string();
    for (key, default) in &rows {
        match lookup(&table, key) {
            None => wrong.push(format!(
                "{name}: `{key}` is not a setting of recipe '{recipe}'"
            )),
            Some(toml::Value::Table(_)) => {
                wrong.push(format!("{name}: `{key}` is a section, not a setting"))
            }
            Some(v) if !same_value(default, v) => wrong.push(format!(
                "{name}: `{key}` defaults to {v} in recipe '{recipe}', the page says {default}"
            )),
            Some(_) => {}
        }
    }
    if complete {
        let listed: BTreeSet<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
        let mut all = Vec::new();
        keys_of(&table, "", &mut all);
        for k in all {
            if !listed.contains(k.as_str()) {
                wrong.push(format!(
                    "{name}: setting `{k}` of recipe '{recipe}' is missing"
                ));
            }
        }
    }
    wrong
}

#[test]
fn every_method_and_recipe_has_its_page_and_the_pages_name_real_settings() {
    let methods = book().join("methods");
    let mut wrong = Vec::new();
    for m in METHODS {
        let page = methods.join(format!("{}.md", m.name));
        if !page.is_file() {
            wrong.push(format!(
                "method '{}' has no page {}",
                m.name,
                page.display()
            ));
            continue;
        }
        wrong.extend(check_settings(&page, m.default_recipe, true));
    }
    for (recipe, _) in BUILTIN {
        let own = methods.join(format!("{recipe}.md"));
        if own.is_file() {
            if !METHODS.iter().any(|m| m.name == *recipe) {
                wrong.extend(check_settings(&own, recipe, false));
            }
            continue;
        }
        let method = MethodConfig::load(recipe, None, &[]).unwrap().method();
        let page = methods.join(format!("{method}.md"));
        let mentioned = page.is_file() && read(&page).contains(&format!("`--recipe {recipe}`"));
        if !mentioned {
            wrong.push(format!(
                "built-in recipe '{recipe}' has no page and {} does not name `--recipe {recipe}`",
                page.display()
            ));
        }
    }
    // A page in methods/ is a method's or a recipe's (or the chapter's own README, or
    // `post`: the `[post]` table every weight-writing method shares).
    for page in pages()
        .iter()
        .filter(|p| p.parent() == Some(methods.as_path()))
    {
        let stem = page.file_stem().unwrap().to_string_lossy();
        let known =
            BUILTIN.iter().any(|(n, _)| *n == stem) || METHODS.iter().any(|m| m.name == stem);
        if stem != "README" && stem != "post" && !known {
            wrong.push(format!(
                "{}: no method or recipe is called '{stem}'",
                page.display()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_wrong_setting_on_a_page_is_caught() {
    let dir = std::env::temp_dir().join(format!("ftedit-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("memit.md");
    std::fs::write(
        &page,
        "# MEMIT\n\n## Settings\n\n| Setting | Default | Meaning |\n|---|---|---|\n\
         | `lamda` | `15000` | typo |\n| `lambda` | `15000.0` | right |\n| `value.steps` | `3` | wrong default |\n",
    )
    .unwrap();
    let wrong = check_settings(&page, "memit", true);
    std::fs::remove_dir_all(&dir).unwrap();
    let text = wrong.join("\n");
    assert!(text.contains("`lamda` is not a setting"), "{text}");
    assert!(text.contains("`value.steps` defaults to"), "{text}");
    assert!(!text.contains("`lambda`"), "{text}");
    assert!(
        text.contains("setting `cache_z`") && text.contains("is missing"),
        "{text}"
    );
}

/// mdBook's id of a heading: its text lowercased, letters, digits, `-` and `_` kept,
/// whitespace as `-`, the rest dropped (markdown marks first: code, emphasis, links).
fn heading_id(text: &str) -> String {
    let mut plain = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' | '*' => {}
            '[' => {}
            ']' if chars.peek() == Some(&'(') => {
                // Skip the link's target.
                for d in chars.by_ref() {
                    if d == ')' {
                        break;
                    }
                }
            }
            _ => plain.push(c),
        }
    }
    plain
        .trim()
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c.to_lowercase().next().unwrap())
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

/// The ids of a page's headings (a repeated id gets `-1`, `-2`, … as mdBook gives it).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for l in prose(text) {
        let t = l.trim_start();
        if !t.starts_with('#') {
            continue;
        }
        let level = t.chars().take_while(|c| *c == '#').count();
        if level > 6 || !t[level..].starts_with(' ') {
            continue;
        }
        let id = heading_id(&t[level..]);
        let n = seen.entry(id.clone()).or_insert(0);
        out.insert(if *n == 0 {
            id.clone()
        } else {
            format!("{id}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of a page's inline links and images, outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for l in prose(text) {
        // Inline code may show link syntax.
        let mut code = false;
        let visible: String = l
            .chars()
            .filter(|c| {
                if *c == '`' {
                    code = !code;
                }
                !code
            })
            .collect();
        let mut rest = visible.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let end = after.find(')').unwrap_or(after.len());
            out.push(
                after[..end]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            );
            rest = &after[end..];
        }
    }
    out
}

/// What is wrong with the links of `page`.
fn broken_links(page: &Path) -> Vec<String> {
    let text = read(page);
    let mut wrong = Vec::new();
    for target in links(&text) {
        if target.is_empty() {
            wrong.push(format!("{}: an empty link", page.display()));
            continue;
        }
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (file, anchor) = match target.split_once('#') {
            Some((f, a)) => (f, Some(a)),
            None => (target.as_str(), None),
        };
        if file.starts_with('/') {
            wrong.push(format!("{}: absolute link {target}", page.display()));
            continue;
        }
        let dest = if file.is_empty() {
            page.to_path_buf()
        } else {
            page.parent().unwrap().join(file)
        };
        if !dest.exists() {
            wrong.push(format!("{}: {target} does not exist", page.display()));
            continue;
        }
        if let Some(a) = anchor
            && dest.extension().is_some_and(|x| x == "md")
            && !anchors(&read(&dest)).contains(a)
        {
            wrong.push(format!(
                "{}: {target}: no heading #{a} in {}",
                page.display(),
                dest.display()
            ));
        }
    }
    wrong
}

#[test]
fn every_internal_link_lands() {
    let mut wrong = Vec::new();
    for page in pages() {
        wrong.extend(broken_links(&page));
    }
    wrong.extend(broken_links(&root().join("README.md")));
    assert!(wrong.is_empty(), "broken links:\n{}", wrong.join("\n"));
}

#[test]
fn the_link_checker_finds_what_is_broken() {
    assert_eq!(
        heading_id("Baselines on SmolLM2: 200 CounterFact + 200 zsRE"),
        "baselines-on-smollm2-200-counterfact--200-zsre"
    );
    assert_eq!(
        heading_id("`ftedit sweep` and [λ](x.md)"),
        "ftedit-sweep-and-λ"
    );
    let dir = std::env::temp_dir().join(format!("ftedit-links-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("b.md"), "# Top\n## Part one\n## Part one\n").unwrap();
    let a = dir.join("a.md");
    std::fs::write(
        &a,
        "See [b](b.md#part-one), [again](b.md#part-one-1), [gone](c.md), [bad](b.md#nope), \
         `[code](x.md)`, [web](https://example.com)\n```\n[fenced](y.md)\n```\n",
    )
    .unwrap();
    let wrong = broken_links(&a);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(wrong.len(), 2, "{wrong:?}");
    assert!(wrong[0].contains("c.md does not exist"), "{wrong:?}");
    assert!(wrong[1].contains("no heading #nope"), "{wrong:?}");
}

#[test]
fn every_page_is_in_the_summary_and_every_entry_exists() {
    let summary = read(&book().join("SUMMARY.md"));
    let listed: BTreeSet<PathBuf> = links(&summary)
        .into_iter()
        .filter(|t| !t.is_empty())
        .map(|t| book().join(t.split('#').next().unwrap()))
        .collect();
    let mut wrong = Vec::new();
    for p in &listed {
        if !p.is_file() {
            wrong.push(format!(
                "SUMMARY.md lists {} which does not exist",
                p.display()
            ));
        }
    }
    for p in pages() {
        if p.file_name().is_some_and(|n| n == "SUMMARY.md") {
            continue;
        }
        if !listed.contains(&p) {
            wrong.push(format!("{} is not in SUMMARY.md", p.display()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_readme_is_a_front_page() {
    let readme = read(&root().join("README.md"));
    assert!(
        readme.len() <= 15_000,
        "README.md is {} bytes; the front page stays under 15 KB (move detail to docs/)",
        readme.len()
    );
    // The first code block: the set-up + main job, then the tests, as `.ci/run` runs them.
    let start = readme.find("```").expect("a code block");
    let body_start = start + readme[start..].find('\n').unwrap() + 1;
    let body_end = body_start + readme[body_start..].find("```").unwrap();
    let commands: Vec<&str> = readme[body_start..body_end].lines().collect();
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert!(commands[0].starts_with("./setup.sh && "), "{commands:?}");
    let ci = read(&root().join(".ci/run"));
    assert!(
        ci.lines().any(|l| l.trim() == commands[1]),
        ".ci/run does not run the README's test command {:?}",
        commands[1]
    );
    // Every number of the README's tables is on a results page.
    let results: String = pages()
        .iter()
        .filter(|p| p.starts_with(book().join("results")))
        .map(|p| read(p))
        .collect();
    let mut missing = Vec::new();
    for l in prose(&readme) {
        let Some(row) = cells(l) else { continue };
        for cell in row {
            for word in cell.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ',')) {
                let n = word.trim_matches(|c| c == '.' || c == ',');
                if n.chars().any(|c| c.is_ascii_digit()) && n.contains('.') && !results.contains(n)
                {
                    missing.push(n.to_owned());
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README numbers not on any results page: {missing:?}"
    );
}
