//! Cache declarations: admins declare caches on the daemon (a config file or
//! `--cache 'NAME=SOURCE[;KEY=VALUE]...'` flags), never pod authors, so that a
//! pod cannot make the node read an arbitrary host path. Both forms build the
//! same key map and go through the same `build_decl`.
//!
//! ```text
//! # full-line comments and blank lines are ignored
//! [cache node-modules]
//! source = dir:/var/lib/bindery/sources/node-modules
//! namespaces = web, ci     # pod namespaces that may use it; * = any
//! strategies = auto, overlay, copy   # what pods may ask for; the first is the default
//! uid = 1000
//! gid = 1000
//! mode = 0755
//! # trust_tenants_with_shared_inodes = true   # allow writable hardlink publishes
//! max_variants = 8     # owner variants of a version (overlay pods with their own uid/gid/mode)
//! [cache models]
//! source = s3:models-bucket/resnet50
//! endpoint = https://s3.example.com
//! region = us-east-1
//! credentials = /etc/bindery/s3/credentials   # accessKeyID=… / secretAccessKey=… lines
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::cache::populate::Strategy;
use crate::error::{Error, Result};

mod model;
pub use model::{CacheDecl, Choice, Namespaces, Source};

/// `max_variants` when a declaration does not set it.
pub const DEFAULT_MAX_VARIANTS: u32 = 8;
/// The largest `max_variants` accepted: each variant is a copy of the cache.
pub const MAX_MAX_VARIANTS: u32 = 1000;

/// The key that allows writable hardlink publishes; its name says what it risks.
pub const TRUST_KEY: &str = "trust_tenants_with_shared_inodes";

/// Every key a declaration may set, in a `[cache NAME]` section or after the
/// source of a `--cache` flag; any other key is refused by name. Plain string
/// literals on purpose: tests/readme_drift.rs reads this list from the source
/// text and compares it with the README's table of keys.
pub const KEYS: &[&str] = &[
    "source",
    "namespaces",
    "strategies",
    "strategy",
    "trust_tenants_with_shared_inodes",
    "uid",
    "gid",
    "mode",
    "max_variants",
    "endpoint",
    "region",
    "credentials",
];

fn parse_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Cache names end up in paths and in volume attributes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Kubernetes namespace names: DNS labels (1-63 of [a-z0-9-], alphanumeric at both ends).
fn valid_namespace(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

fn bad(what: &str, why: impl Into<String>) -> Error {
    Error::invalid(what.to_string(), why)
}

fn parse_source(name: &str, v: &str, keys: &HashMap<String, String>) -> Result<Source> {
    let field = format!("cache {name}: source");
    if let Some(dir) = v.strip_prefix("dir:") {
        let p = PathBuf::from(dir);
        if !p.is_absolute() || dir.split('/').any(|s| s == "..") {
            return Err(bad(
                &field,
                format!("{dir:?} must be an absolute path without '..'"),
            ));
        }
        return Ok(Source::Dir(p));
    }
    if let Some(rest) = v.strip_prefix("s3:") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if !crate::validate::valid_bucket(bucket)
            || !crate::validate::valid_prefix(prefix.trim_matches('/'))
        {
            return Err(bad(&field, format!("{rest:?} is not bucket[/prefix]")));
        }
        let get = |k: &str| keys.get(k).cloned().unwrap_or_default();
        let credentials = PathBuf::from(get("credentials"));
        if !credentials.is_absolute() {
            return Err(bad(
                &format!("cache {name}: credentials"),
                "an absolute file path is required for s3 sources",
            ));
        }
        if get("endpoint").is_empty() {
            return Err(Error::invalid(
                format!("cache {name}: endpoint"),
                "is required for s3 sources",
            ));
        }
        return Ok(Source::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: get("endpoint"),
            region: get("region"),
            credentials,
        });
    }
    Err(bad(
        &field,
        format!("{v:?}: expected dir:/path or s3:bucket/prefix"),
    ))
}

fn build_decl(name: &str, keys: &HashMap<String, String>) -> Result<CacheDecl> {
    if !valid_name(name) {
        return Err(bad(
            "cache name",
            format!("{name:?}: 1-63 of [A-Za-z0-9._-]"),
        ));
    }
    let mut unknown: Vec<&String> = keys
        .keys()
        .filter(|k| !KEYS.contains(&k.as_str()))
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        return Err(bad(
            &format!("cache {name}"),
            format!("unknown key {:?} (known: {})", unknown[0], KEYS.join(", ")),
        ));
    }
    let source = keys
        .get("source")
        .ok_or_else(|| bad(&format!("cache {name}"), "source is required"))?;
    let num = |k: &str, radix: u32| -> Result<Option<u32>> {
        keys.get(k)
            .map(|v| {
                u32::from_str_radix(v, radix).map_err(|_| {
                    bad(
                        &format!("cache {name}: {k}"),
                        format!("{v:?} is not a number"),
                    )
                })
            })
            .transpose()
    };
    let mode = num("mode", 8)?;
    if mode.is_some_and(|m| m > 0o7777) {
        return Err(bad(&format!("cache {name}: mode"), "must be an octal mode"));
    }
    let choice = |field: &str, v: &str| -> Result<Choice> {
        v.parse::<Choice>().map_err(|e| match e {
            Error::InvalidField { reason, .. } => bad(&format!("cache {name}: {field}"), reason),
            other => other,
        })
    };
    let strategies = match (keys.get("strategies"), keys.get("strategy")) {
        (Some(_), Some(_)) => {
            return Err(bad(
                &format!("cache {name}: strategy"),
                "use strategies only (its first entry is the default)",
            ))
        }
        (Some(list), None) => {
            let mut out = Vec::new();
            for v in parse_list(list) {
                let c = choice("strategies", &v)?;
                if !out.contains(&c) {
                    out.push(c);
                }
            }
            if out.is_empty() {
                return Err(bad(&format!("cache {name}: strategies"), "is empty"));
            }
            out
        }
        // No list: the declared default (auto if none) and every strategy that
        // copies on write; hardlink only when it is the declared default.
        (None, one) => {
            let first = choice("strategy", one.map(String::as_str).unwrap_or("auto"))?;
            let mut out = vec![first];
            for c in [
                Choice::Auto,
                Choice::Fill(Strategy::Reflink),
                Choice::Overlay,
                Choice::Snapshot,
                Choice::Fill(Strategy::Copy),
            ] {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
            out
        }
    };
    let namespaces = match keys.get("namespaces").map(|v| parse_list(v)) {
        None => Namespaces::Undeclared,
        Some(l) if l == ["*"] => Namespaces::Any,
        Some(l) => {
            if l.is_empty() || l.iter().any(|n| !valid_namespace(n)) {
                return Err(bad(
                    &format!("cache {name}: namespaces"),
                    format!("{:?}: expected * or namespace names", keys["namespaces"]),
                ));
            }
            Namespaces::List(l)
        }
    };
    let max_variants = num("max_variants", 10)?.unwrap_or(DEFAULT_MAX_VARIANTS);
    if max_variants > MAX_MAX_VARIANTS {
        return Err(bad(
            &format!("cache {name}: max_variants"),
            format!("at most {MAX_MAX_VARIANTS} (each variant is a copy of the cache)"),
        ));
    }
    let trust_shared_inodes = match keys.get(TRUST_KEY).map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(bad(
                &format!("cache {name}: {TRUST_KEY}"),
                format!("{v:?}: expected true or false"),
            ))
        }
    };
    Ok(CacheDecl {
        name: name.to_string(),
        source: parse_source(name, source, keys)?,
        strategy: strategies[0],
        strategies,
        namespaces,
        trust_shared_inodes,
        uid: num("uid", 10)?,
        gid: num("gid", 10)?,
        mode,
        max_variants,
    })
}

/// What the config file and flags declare: the good declarations, and the bad ones
/// by name with the reason (those caches are disabled; the rest is served).
#[derive(Debug, Default)]
pub struct Loaded {
    pub decls: BTreeMap<String, CacheDecl>,
    pub broken: BTreeMap<String, String>,
    /// Problems that belong to no cache (a line outside any section, an unreadable file).
    pub errors: Vec<String>,
}

/// Parse the config file text: every section on its own, so that one bad declaration
/// disables only that cache.
pub fn parse_config(text: &str) -> (Vec<(String, Result<CacheDecl>)>, Vec<Error>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    // (name, keys, first syntax error in the section)
    let mut current: Option<(String, HashMap<String, String>, Option<Error>)> = None;
    let finish = |c: (String, HashMap<String, String>, Option<Error>),
                  out: &mut Vec<(String, Result<CacheDecl>)>| {
        let (name, keys, err) = c;
        let r = match err {
            Some(e) => Err(e),
            None => build_decl(&name, &keys),
        };
        out.push((name, r));
    };
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if let Some(c) = current.take() {
                finish(c, &mut out);
            }
            match section.strip_prefix("cache ") {
                Some(name) => current = Some((name.trim().to_string(), HashMap::new(), None)),
                None => errors.push(bad(
                    &format!("line {}", n + 1),
                    format!("expected [cache NAME], got [{section}]; its keys are ignored"),
                )),
            }
            continue;
        }
        let Some((_, keys, err)) = current.as_mut() else {
            errors.push(bad(
                &format!("line {}", n + 1),
                "key outside a [cache NAME] section",
            ));
            continue;
        };
        match line.split_once('=') {
            Some((k, v)) => {
                let v = v.split(" #").next().unwrap_or("").trim();
                keys.insert(k.trim().to_string(), v.to_string());
            }
            None if err.is_none() => {
                *err = Some(bad(&format!("line {}", n + 1), "expected key = value"));
            }
            None => {}
        }
    }
    if let Some(c) = current.take() {
        finish(c, &mut out);
    }
    (out, errors)
}

/// `--cache 'NAME=SOURCE[;KEY=VALUE]...'`: a `[cache NAME]` section on one
/// line. The pairs become the same key map a section does (`source` from
/// NAME=SOURCE, keys and values trimmed) and go through the same `build_decl`,
/// so every key of the config file works here, with the same meaning.
/// `;` separates the pairs, so a SOURCE cannot contain one; `source` cannot
/// be given again as a KEY, and no KEY twice. Every error names `--cache`.
pub fn parse_flag(v: &str) -> Result<CacheDecl> {
    let flag_err = |why: String| bad("--cache", why);
    let (name, rest) = v
        .split_once('=')
        .ok_or_else(|| flag_err(format!("expected NAME=SOURCE[;KEY=VALUE]..., got {v:?}")))?;
    let mut parts = rest.split(';');
    let source = parts.next().unwrap_or_default().trim();
    let mut keys: HashMap<String, String> = [("source".to_string(), source.to_string())].into();
    for part in parts {
        let (k, val) = match part.split_once('=') {
            Some((k, val)) if !k.trim().is_empty() => (k.trim(), val.trim()),
            _ => {
                return Err(flag_err(format!(
                    "{part:?} in {v:?} is not KEY=VALUE (';' separates KEY=VALUE pairs, \
                     so a SOURCE cannot contain one)"
                )))
            }
        };
        if k == "source" {
            return Err(flag_err(format!(
                "{v:?}: the source is the part after NAME=, not a KEY"
            )));
        }
        if keys.insert(k.to_string(), val.to_string()).is_some() {
            return Err(flag_err(format!("{v:?}: key {k:?} is given twice")));
        }
    }
    build_decl(name, &keys).map_err(|e| match e {
        Error::InvalidField { field, reason } => {
            Error::invalid(format!("--cache: {field}"), reason)
        }
        other => other,
    })
}

/// All declarations from the config file (a missing file declares none) and the flags.
/// Never fails: a bad declaration lands in `broken` (a name declared twice: both), a
/// problem that names no cache in `errors`.
pub fn load(config: Option<&Path>, flags: &[String]) -> Loaded {
    let mut loaded = Loaded::default();
    let mut all: Vec<(String, Result<CacheDecl>)> = Vec::new();
    if let Some(path) = config {
        match fs::read_to_string(path) {
            Ok(text) => {
                let (decls, errors) = parse_config(&text);
                all.extend(decls.into_iter().map(|(n, r)| {
                    let r = r.map_err(|e| match e {
                        Error::InvalidField { field, reason } => {
                            Error::invalid(format!("{}: {field}", path.display()), reason)
                        }
                        other => other,
                    });
                    (n, r)
                }));
                loaded.errors.extend(
                    errors
                        .into_iter()
                        .map(|e| format!("{}: {e}", path.display())),
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => loaded.errors.push(Error::io("read", path, e).to_string()),
        }
    }
    for f in flags {
        let name = f.split_once('=').map_or(f.as_str(), |(n, _)| n).to_string();
        all.push((name, parse_flag(f)));
    }
    let mut seen = HashSet::new();
    for (name, r) in all {
        if !seen.insert(name.clone()) {
            loaded.decls.remove(&name);
            loaded
                .broken
                .insert(name.clone(), format!("cache {name:?} is declared twice"));
            continue;
        }
        match r {
            Ok(d) => {
                loaded.decls.insert(name, d);
            }
            Err(e) => {
                loaded.broken.insert(name, e.to_string());
            }
        }
    }
    loaded
}

/// Read `accessKeyID=…` / `secretAccessKey=…` lines.
pub fn read_credentials(path: &Path) -> Result<HashMap<String, String>> {
    let text = fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

#[cfg(test)]
mod tests;
