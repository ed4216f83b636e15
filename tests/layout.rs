//! The source tree's dependency direction (README, "Development"): no
//! module imports another that imports it back, directly or through others,
//! whether modules are taken file by file or folder by folder. Read from the
//! `use crate::...` paths of `src/` (comments and test modules left out).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`partition::state`) → source text, for every file in `src/`.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix("src").expect("under src/");
                let name = relative
                    .with_extension("")
                    .to_string_lossy()
                    .replace('/', "::");
                let name = name.trim_end_matches("::mod").to_owned();
                let text = std::fs::read_to_string(&path).expect("source is UTF-8");
                out.insert(name, text);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(Path::new("src"), &mut out);
    out
}

/// Each module's imports of other modules of the crate (not its own parents
/// or children), from code outside `#[cfg(test)]` and comments.
fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (name, text) in modules {
        if name.starts_with("bin::") || name.ends_with("tests") || name == "lib" || name == "main" {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut edges = BTreeSet::new();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let path: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
                while !parts.is_empty() && !modules.contains_key(&parts.join("::")) {
                    parts.pop();
                }
                let target = parts.join("::");
                let related = target.is_empty()
                    || target == *name
                    || name.starts_with(&format!("{target}::"))
                    || target.starts_with(&format!("{name}::"));
                if !related {
                    edges.insert(target);
                }
            }
        }
        graph.insert(name.clone(), edges);
    }
    graph
}

/// The modules of some cycle, if there is one (depth-first search).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            return Some(path[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, done, path) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let graph = imports(&modules());
    assert!(graph.len() > 40, "read too few modules: {}", graph.len());
    assert_eq!(cycle(&graph), None);
}

#[test]
fn folders_depend_one_way() {
    let top = |m: &str| m.split("::").next().unwrap_or_default().to_owned();
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in imports(&modules()) {
        let edges = folders.entry(top(&from)).or_default();
        edges.extend(to.iter().map(|t| top(t)).filter(|t| *t != top(&from)));
    }
    assert_eq!(cycle(&folders), None, "{folders:?}");
    assert!(
        folders["consumer"].contains("partition") && folders["partition"].contains("sink"),
        "the graph was read: {folders:?}"
    );
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(from, to)| (from.to_owned(), BTreeSet::from([to.to_owned()])))
        .collect();
    assert_eq!(
        cycle(&graph),
        Some(vec!["a".to_owned(), "b".to_owned(), "c".to_owned()])
    );
}
