//! The crate's layout, checked from its sources: the layers' dependencies point one way
//! (a module uses only the layers below it), the editing methods import each other
//! without a circle, and nothing under `src/protocols/` renders HTML or SVG (that is
//! `src/report/`). Only code counts: comments may name any module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom up (`src/lib.rs`, docs/src/design.md).
const LAYERS: &[&str] = &[
    "formats",
    "tokenizer",
    "model",
    "train",
    "data",
    "edit",
    "eval",
    "protocols",
    "report",
];

/// Modules any layer may use; they use no layer themselves.
const UTILITIES: &[&str] = &["error", "output", "runtime", "progress", "cache"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir` (or `dir.rs` itself), with its text minus comments.
fn sources(path: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let file = path.with_extension("rs");
    if file.is_file() {
        out.push((file.clone(), code_of(&file)));
    }
    if path.is_dir() {
        let mut stack = vec![path.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push((p.clone(), code_of(&p)));
                }
            }
        }
    }
    out.sort();
    out
}

/// The file's lines without `//` comments (doc comments included).
fn code_of(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names that follow `prefix` in `code`: `prefix::name` and each name of
/// `prefix::{a, b::c, …}`.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    let pat = format!("{prefix}::");
    let mut from = 0;
    while let Some(i) = code[from..].find(&pat).map(|i| i + from) {
        let after = &code[i + pat.len()..];
        from = i + pat.len();
        // Not the tail of a longer path (`super::super::x` for prefix `super`), nor its
        // head.
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            || after.starts_with("super::")
        {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            // Top-level names of the group, nested groups skipped.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.insert(ident(item.trim()));
        } else {
            out.insert(ident(after));
        }
    }
    out.remove("");
    out
}

#[test]
fn every_layer_uses_only_the_layers_below_it() {
    let mut wrong = Vec::new();
    for (rank, layer) in LAYERS.iter().enumerate() {
        for (file, code) in sources(&src().join(layer)) {
            for used in names_after(&code, "crate") {
                if let Some(r) = LAYERS.iter().position(|l| *l == used)
                    && r > rank
                {
                    wrong.push(format!("{} uses crate::{used}", file.display()));
                }
            }
        }
    }
    for util in UTILITIES {
        for (file, code) in sources(&src().join(util)) {
            for used in names_after(&code, "crate") {
                if LAYERS.contains(&used.as_str()) {
                    wrong.push(format!("{} (a utility) uses crate::{used}", file.display()));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "upward dependencies:\n{}",
        wrong.join("\n")
    );
}

/// `src/edit/`'s modules and the siblings each one's files use.
fn edit_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = src().join("edit");
    let mut modules: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() || p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|m| m != "mod")
        .collect();
    modules.sort();
    modules.dedup();
    let mut graph = BTreeMap::new();
    for m in &modules {
        let mut uses = BTreeSet::new();
        for (file, code) in sources(&root.join(m)) {
            // `super` is `edit` from `edit/x.rs` and `edit/x/mod.rs`; one level deeper
            // it is the folder's own module and `super::super` is `edit`.
            let nested = file.parent() != Some(root.as_path())
                && file.file_name().is_some_and(|n| n != "mod.rs");
            let to_edit = if nested { "super::super" } else { "super" };
            let mut named = names_after(&code, to_edit);
            named.extend(names_after(&code, "crate::edit"));
            uses.extend(named.into_iter().filter(|n| n != m && modules.contains(n)));
        }
        graph.insert(m.clone(), uses);
    }
    graph
}

#[test]
fn the_editing_methods_import_each_other_without_a_circle() {
    let graph = edit_graph();
    // The registry lists the methods; nothing imports it back.
    assert!(graph["registry"].contains("rome") && graph["registry"].contains("ft"));
    for (m, uses) in &graph {
        assert!(!uses.contains("registry"), "edit::{m} imports the registry");
    }
    // Depth-first search for a back edge.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = path.iter().position(|p| *p == m) {
            panic!("import circle: {} → {m}", path[i..].join(" → "));
        }
        path.push(m);
        for n in &graph[m] {
            visit(n, graph, path, done);
        }
        path.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_graph_reader_sees_imports() {
    // The checks above are only as good as the parsing: it must see grouped, nested and
    // deep imports, and not comments.
    let code =
        "use super::{a, b::{c, d}, e};\nuse super::super::f::g;\nlet x = crate::edit::h::i();";
    assert_eq!(
        names_after(code, "super"),
        ["a", "b", "e"].map(String::from).into()
    );
    assert_eq!(
        names_after(code, "super::super"),
        ["f"].map(String::from).into()
    );
    assert_eq!(
        names_after(code, "crate::edit"),
        ["h"].map(String::from).into()
    );
    let dir = std::env::temp_dir().join(format!("ftedit-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("x.rs");
    std::fs::write(
        &f,
        "//! uses crate::report\nuse crate::model; // crate::eval\n",
    )
    .unwrap();
    assert_eq!(
        names_after(&code_of(&f), "crate"),
        ["model"].map(String::from).into()
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let graph = edit_graph();
    assert!(graph["memit"].contains("locate"), "{graph:?}");
    assert!(graph["ft"].contains("layers"), "{graph:?}");
}

#[test]
fn protocols_render_nothing() {
    for (file, code) in sources(&src().join("protocols")) {
        for marker in ["<html", "<svg", "<table", "<div", "crate::report"] {
            assert!(
                !code.contains(marker),
                "{} has {marker}: rendering belongs in src/report/",
                file.display()
            );
        }
    }
}
