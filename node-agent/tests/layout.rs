//! The crate's shape, checked from its source: the folders are the roles
//! (`node/` the DaemonSet, `controller/` the Deployment, `mover/` the mover
//! pod's program), the shared modules below them name none of them, `node`
//! and `controller` never name each other, and no module imports one that
//! imports it back. Only `use` and path references count; doc comments and
//! test modules do not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module path (`controller::backup::group`) for each source file.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(src) {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if !rel.ends_with(".rs") || rel == "lib.rs" || rel == "main.rs" {
            continue;
        }
        let m = rel
            .trim_end_matches(".rs")
            .trim_end_matches("/mod")
            .replace('/', "::");
        out.insert(m, std::fs::read_to_string(e.path()).unwrap());
    }
    out
}

/// The code of a file without its comments and its test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules `module` refers to: `crate::a::b` paths (the longest prefix
/// that is a module), `super::x`, and in a folder's `mod.rs` its children
/// named by relative paths.
fn references(module: &str, text: &str, all: &BTreeMap<String, String>) -> BTreeSet<String> {
    let code = code(text);
    let mut refs = BTreeSet::new();
    let parent = module.rsplit_once("::").map(|(p, _)| p.to_string());
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.contains("::"))
        .collect();
    for w in words {
        let path = if let Some(rest) = w.strip_prefix("crate::") {
            rest.to_string()
        } else if let Some(rest) = w.strip_prefix("super::") {
            match &parent {
                Some(p) => format!("{p}::{rest}"),
                None => rest.to_string(),
            }
        } else {
            // A child of this folder, named relatively.
            format!("{module}::{w}")
        };
        let parts: Vec<&str> = path.split("::").collect();
        for n in (1..=parts.len()).rev() {
            let candidate = parts[..n].join("::");
            if all.contains_key(&candidate) {
                if candidate != module {
                    refs.insert(candidate);
                }
                break;
            }
        }
    }
    refs
}

fn role(module: &str) -> &str {
    match module.split("::").next().unwrap() {
        r @ ("node" | "controller" | "mover") => r,
        _ => "shared",
    }
}

/// Strongly connected groups of more than one module (Tarjan's algorithm).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph[v].iter() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                group.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                s.found.push(group);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let all = modules(&src);
    all.iter()
        .map(|(m, text)| (m.clone(), references(m, text, &all)))
        .collect()
}

#[test]
fn the_roles_stay_apart_and_shared_modules_name_none_of_them() {
    let graph = graph();
    assert!(
        graph.contains_key("controller::backup::reconcile"),
        "{:?}",
        graph.keys()
    );
    let mut wrong = Vec::new();
    for (from, tos) in &graph {
        for to in tos {
            let allowed = match (role(from), role(to)) {
                (a, b) if a == b => true,
                (_, "shared") => true,
                // The mover's command line is the contract between the two.
                ("controller", "mover") => to == "mover::args",
                _ => false,
            };
            if !allowed {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "references across roles: {wrong:#?}");
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let found = circles(&graph());
    assert!(found.is_empty(), "import circles: {found:#?}");
}

#[test]
fn the_checker_sees_a_circle_and_a_crossing() {
    // The checks above must be able to fail.
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("a".into(), BTreeSet::from(["b".to_string()]));
    g.insert("b".into(), BTreeSet::from(["c".to_string()]));
    g.insert("c".into(), BTreeSet::from(["a".to_string()]));
    g.insert("d".into(), BTreeSet::new());
    assert_eq!(circles(&g), vec![vec!["a", "b", "c"]]);
    let all: BTreeMap<String, String> = ["node::runs", "controller::csi", "controller"]
        .iter()
        .map(|m| (m.to_string(), String::new()))
        .collect();
    let refs = references(
        "node::runs",
        "use crate::controller::csi::VolumeSnapshot;\n/// [crate::controller]\n",
        &all,
    );
    assert_eq!(refs, BTreeSet::from(["controller::csi".to_string()]));
    assert_eq!(role("controller::csi"), "controller");
    assert_eq!(role("names"), "shared");
}
