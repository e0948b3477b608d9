//! The engine's modules import each other only downwards: no module reaches, directly or through
//! others, back to itself. A reader can then walk a job through the files in order, and a new
//! capability plugs into the seams without tangling them. This test reads `src/` and fails,
//! naming the circle, when one appears.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name → the crate modules it names (`crate::x`, `use crate::{x, y}`, `super::x` at
/// the top level), ignoring its `#[cfg(test)]` part and comments.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a source file is readable");
        modules.insert(name, text);
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .into_iter()
        .map(|(name, text)| {
            let uses = references(&code_of(&text), &names);
            let uses = uses.into_iter().filter(|m| *m != name).collect();
            (name, uses)
        })
        .collect()
}

/// The text without comments and without the `#[cfg(test)]` module at its end.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module of `names` that `code` names as `crate::<module>`, inside `use crate::{...}`
/// groups included.
fn references(code: &str, names: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for part in group[..end].split(',') {
                let first = part.trim().split("::").next().unwrap_or("").trim();
                let first = first.split_whitespace().next().unwrap_or("");
                if names.contains(first) {
                    found.insert(first.to_string());
                }
            }
            continue;
        }
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if names.contains(&ident) {
            found.insert(ident);
        }
    }
    found
}

fn matching_brace(text: &str) -> usize {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    text.len()
}

/// A circle of imports, if there is one: the modules in order, the first repeated at the end.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next.as_str()).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let start = path.iter().position(|p| p == next).unwrap();
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, graph, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn the_engines_modules_import_each_other_without_a_circle() {
    // RUSTQ_MODULE_GRAPH_SRC points the check at another tree (to see it fail on an old one).
    let src = std::env::var_os("RUSTQ_MODULE_GRAPH_SRC")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let graph = graph(&src);
    assert!(graph.len() > 10, "read too few modules: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "the engine's modules import each other in a circle: {}\nwhole graph: {graph:#?}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_check_finds_a_circle_through_use_groups_and_paths() {
    let names: BTreeSet<String> = ["ack", "fetch", "work", "launcher"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let files = [
        ("ack", "use crate::{work::Action, fetch};\n"),
        (
            "fetch",
            "// crate::launcher is only named in a comment\nuse crate::work;\n",
        ),
        ("work", "fn f() { crate::ack::run(); }\n"),
        (
            "launcher",
            "use crate::ack;\n#[cfg(test)]\nmod tests { use crate::launcher; }\n",
        ),
    ];
    let graph: BTreeMap<String, BTreeSet<String>> = files
        .iter()
        .map(|(name, text)| (name.to_string(), references(&code_of(text), &names)))
        .collect();
    assert_eq!(
        graph["ack"],
        ["fetch", "work"].iter().map(|s| s.to_string()).collect()
    );
    assert!(graph["fetch"].contains("work") && !graph["fetch"].contains("launcher"));
    let cycle = find_cycle(&graph).expect("ack -> work -> ack is a circle");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&"ack".to_string()) && cycle.contains(&"work".to_string()));

    let mut acyclic = graph.clone();
    acyclic.get_mut("work").unwrap().clear();
    assert_eq!(find_cycle(&acyclic), None);
}
