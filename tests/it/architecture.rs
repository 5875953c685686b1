//! The module structure ARCHITECTURE.md promises: no import circle, between
//! top-level modules or between files. Each file's `use` declarations
//! (`crate::`, `super::`, `self::`; braces expanded; names re-exported with
//! `pub use` followed to the file that defines them) are edges from it to
//! the file they name; test modules are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Module = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|last| last == "mod") {
                parts.pop();
            }
            if parts == ["main"] {
                continue;
            }
            if parts == ["lib"] {
                parts.clear();
            }
            out.insert(parts, path);
        }
    }
    out
}

/// `a::{b, c::{d}}` → `a::b`, `a::c::d`.
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.trim().to_string()];
    };
    let (prefix, body) = (&path[..open], &path[open + 1..path.rfind('}').unwrap()]);
    let mut items = Vec::new();
    let (mut depth, mut current) = (0, String::new());
    for ch in body.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if ch == ',' && depth == 0 {
            items.push(std::mem::take(&mut current));
        } else {
            current.push(ch);
        }
    }
    items.push(current);
    items
        .iter()
        .filter(|item| !item.trim().is_empty())
        .flat_map(|item| expand(&format!("{prefix}{}", item.trim())))
        .collect()
}

/// The `use` paths of a file's non-test code, and whether each is
/// re-exported (`pub use`).
fn uses(text: &str) -> Vec<(bool, String)> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = Vec::new();
    let mut lines = code.lines();
    while let Some(line) = lines.next() {
        let line = line.trim_start();
        let (public, rest) = match line.split_once("use ") {
            Some(("", rest)) => (false, rest),
            Some((head, rest))
                if head.starts_with("pub") && head.trim_end().ends_with(['b', ')']) =>
            {
                (true, rest)
            }
            _ => continue,
        };
        let mut statement = rest.to_string();
        while !statement.contains(';') {
            let Some(next) = lines.next() else { break };
            statement.push(' ');
            statement.push_str(next.trim());
        }
        let statement = statement.split(';').next().unwrap_or_default();
        out.extend(expand(statement).into_iter().map(|path| (public, path)));
    }
    out
}

struct Graph {
    modules: BTreeMap<Module, PathBuf>,
    reexports: BTreeMap<Module, BTreeMap<String, String>>,
}

impl Graph {
    /// The longest module prefix of `path` as written in `from`, and the
    /// rest of the path.
    fn resolve(&self, from: &Module, path: &str) -> Option<(Module, Vec<String>)> {
        let mut segments: Vec<&str> = path.split("::").map(str::trim).collect();
        let mut base = match segments.first()? {
            &"crate" => Module::new(),
            &"super" | &"self" => from.clone(),
            _ => return None,
        };
        if segments[0] == "crate" || segments[0] == "self" {
            segments.remove(0);
        }
        while segments.first() == Some(&"super") {
            base.pop();
            segments.remove(0);
        }
        let mut best = self.modules.contains_key(&base).then(|| base.clone());
        let mut rest_at = 0;
        for (idx, segment) in segments.iter().enumerate() {
            base.push(segment.split(" as ").next().unwrap().trim().to_string());
            if !self.modules.contains_key(&base) {
                break;
            }
            best = Some(base.clone());
            rest_at = idx + 1;
        }
        Some((
            best?,
            segments[rest_at..].iter().map(|s| s.to_string()).collect(),
        ))
    }

    /// The file defining what `path` names, following re-exports.
    fn target(&self, from: &Module, path: &str, depth: usize) -> Option<Module> {
        let (module, rest) = self.resolve(from, path)?;
        let name = rest
            .first()
            .map(|name| name.split(" as ").next().unwrap().trim());
        if depth < 8
            && let Some(inner) = name.and_then(|name| self.reexports.get(&module)?.get(name))
            && let Some(found) = self.target(&module, inner, depth + 1)
        {
            return Some(found);
        }
        Some(module)
    }
}

fn edges() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    let texts: BTreeMap<Module, String> = modules
        .iter()
        .map(|(module, path)| (module.clone(), std::fs::read_to_string(path).unwrap()))
        .collect();
    let mut reexports = BTreeMap::new();
    for (module, text) in &texts {
        let mut names = BTreeMap::new();
        for (public, path) in uses(text) {
            if !public {
                continue;
            }
            let name = path.rsplit("::").next().unwrap();
            let name = name.rsplit(" as ").next().unwrap().trim().to_string();
            let path = if ["crate", "super", "self"]
                .iter()
                .any(|p| path.starts_with(p))
            {
                path
            } else {
                format!("self::{path}")
            };
            names.insert(name, path);
        }
        reexports.insert(module.clone(), names);
    }
    let graph = Graph { modules, reexports };
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, text) in &texts {
        let out = edges.entry(module.clone()).or_default();
        for (_, path) in uses(text) {
            if let Some(target) = graph.target(module, &path, 0)
                && target != *module
                && !target.is_empty()
            {
                out.insert(target);
            }
        }
    }
    edges
}

/// Strongly connected components of more than one node.
fn circles<T: Ord + Clone>(edges: &BTreeMap<T, BTreeSet<T>>) -> Vec<Vec<T>> {
    // Reachability by search from each node: small graphs, plain code.
    let reach = |from: &T| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(node) = stack.pop() {
            for next in edges.get(&node).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<T, BTreeSet<T>> = edges.keys().map(|n| (n.clone(), reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for node in edges.keys() {
        if done.contains(node) {
            continue;
        }
        let component: Vec<T> = reachable[node]
            .iter()
            .filter(|other| reachable.get(*other).is_some_and(|r| r.contains(node)))
            .cloned()
            .collect();
        if component.len() > 1 {
            done.extend(component.iter().cloned());
            out.push(component);
        }
    }
    out
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in edges() {
        let Some(from) = from.first() else { continue };
        for target in targets {
            if target[0] != *from {
                top.entry(from.clone())
                    .or_default()
                    .insert(target[0].clone());
            }
        }
    }
    assert!(top.len() > 8, "{top:?}");
    assert_eq!(circles(&top), Vec::<Vec<String>>::new());
}

#[test]
fn no_import_circle_between_files() {
    let found: Vec<String> = circles(&edges())
        .into_iter()
        .map(|component| {
            component
                .iter()
                .map(|module| module.join("::"))
                .collect::<Vec<_>>()
                .join(" <-> ")
        })
        .collect();
    // FIXME(issue 18): two-file circles left to untie.
    let known = [
        "ingest::batch <-> ingest::stage",
        "ingest::file <-> ingest::pipeline",
        "plugin::host <-> plugin::wit",
    ];
    assert_eq!(found, known);
}
