//! The import graph of src/ has no cycles: a module never needs, through
//! any chain of `use`s and paths, a module that needs it. Each file is a
//! node; an edge is a `crate::…`/`super::…` path that names another file's
//! module (a parent declaring `mod child;` is not an edge, a parent using
//! `child::item` is). Test modules (`#[cfg(test)] mod tests`) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Module path ("" for the crate root, "sys::mountinfo") → source text.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
                continue;
            }
            let Some(rel) = p
                .strip_prefix(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
                .ok()
                .and_then(|r| r.to_str())
                .and_then(|r| r.strip_suffix(".rs"))
            else {
                continue;
            };
            let mut parts: Vec<&str> = rel.split('/').collect();
            if matches!(parts.last(), Some(&"mod")) || parts == ["lib"] || parts == ["main"] {
                parts.pop();
            }
            let text = fs::read_to_string(&p).unwrap();
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            out.insert(parts.join("::"), text);
        }
    }
    let mut out = BTreeMap::new();
    walk(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut out,
    );
    out
}

/// The paths (`a::b::c`) that follow `prefix` in `text`, including each
/// name inside a `prefix{…}` use group.
fn paths_after(text: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    for (i, _) in text.match_indices(prefix) {
        if text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &text[i + prefix.len()..];
        let head: String = rest.chars().take_while(|&c| ident(c)).collect();
        let head = head.trim_end_matches(':').to_string();
        if rest[head.len()..].trim_start_matches(':').starts_with('{') {
            let group = &rest[head.len()..];
            let body = &group[group.find('{').unwrap_or(0) + 1..group.find('}').unwrap_or(0)];
            for item in body.split(',') {
                let item: String = item.trim().chars().take_while(|&c| ident(c)).collect();
                let item = item.trim_end_matches(':');
                if !item.is_empty() && item != "self" {
                    out.push(
                        format!("{head}::{item}")
                            .trim_start_matches(':')
                            .to_string(),
                    );
                }
            }
        }
        if !head.is_empty() {
            out.push(head);
        }
    }
    out
}

/// The longest prefix of `path` that is a module.
fn resolve(mods: &BTreeMap<String, String>, path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| mods.contains_key(m))
}

fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (m, text) in mods {
        let parent: Vec<&str> = m.split("::").filter(|p| !p.is_empty()).collect();
        let parent = parent[..parent.len().saturating_sub(1)].join("::");
        let mut deps = BTreeSet::new();
        let mut named = paths_after(text, "crate::");
        for p in paths_after(text, "super::") {
            named.push(if parent.is_empty() {
                p
            } else {
                format!("{parent}::{p}")
            });
        }
        // A parent's own children, used as `child::item` or `self::child`.
        for (child, _) in mods.iter().filter(|(c, _)| {
            c.strip_prefix(m.as_str())
                .and_then(|r| {
                    r.strip_prefix("::")
                        .or(if m.is_empty() { Some(r) } else { None })
                })
                .is_some_and(|r| !r.is_empty() && !r.contains("::"))
        }) {
            let name = child.rsplit("::").next().unwrap_or(child);
            if !paths_after(text, &format!("{name}::")).is_empty()
                || !paths_after(text, &format!("self::{name}")).is_empty()
            {
                deps.insert(child.clone());
            }
        }
        for p in named {
            if let Some(r) = resolve(mods, &p) {
                deps.insert(r);
            }
        }
        deps.remove(m);
        out.insert(m.clone(), deps);
    }
    out
}

/// A cycle through `start`, if any (depth-first search).
fn cycle_from(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn dfs(
        g: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in g.get(at).into_iter().flatten() {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if dfs(g, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    dfs(g, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn src_has_no_import_cycles() {
    let mods = modules();
    assert!(
        mods.contains_key("sys::mountinfo") && mods.contains_key(""),
        "{:?}",
        mods.keys()
    );
    let g = edges(&mods);
    let cycles: Vec<String> = g
        .keys()
        .filter_map(|m| cycle_from(&g, m))
        .map(|c| format!("{} -> {}", c.join(" -> "), c[0]))
        .collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle() {
    let mods: BTreeMap<String, String> = [
        ("".into(), "pub mod a;\npub mod b;\n".into()),
        ("a".into(), "use crate::b::{self, Thing};\n".into()),
        ("b".into(), "fn f() { crate::a::g() }\n".into()),
        ("c".into(), "use super::a;\n".into()),
    ]
    .into_iter()
    .collect();
    let g = edges(&mods);
    assert_eq!(g["a"], BTreeSet::from(["b".to_string()]));
    assert_eq!(g["c"], BTreeSet::from(["a".to_string()]));
    assert!(cycle_from(&g, "a").is_some());
    assert!(cycle_from(&g, "c").is_none());
    let mods: BTreeMap<String, String> = [
        ("".into(), "mod m;\n".into()),
        ("m".into(), "mod k;\npub use k::K;\n".into()),
        ("m::k".into(), "use super::Kind;\n".into()),
    ]
    .into_iter()
    .collect();
    let g = edges(&mods);
    assert!(cycle_from(&g, "m").is_some(), "{g:?}");
}
