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
use std::str::FromStr;

use crate::cache::populate::Strategy;
use crate::error::{Error, Result};

/// How a cache volume is filled: a copy strategy or an overlay mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Auto,
    Fill(Strategy),
    Overlay,
}

impl FromStr for Choice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Choice> {
        match s {
            "auto" | "" => Ok(Choice::Auto),
            "overlay" => Ok(Choice::Overlay),
            other => other.parse::<Strategy>().map(Choice::Fill).map_err(|_| {
                Error::invalid(
                    "strategy",
                    format!("{other:?}: expected hardlink, reflink, copy, overlay or auto"),
                )
            }),
        }
    }
}

impl Choice {
    pub fn as_str(self) -> &'static str {
        match self {
            Choice::Auto => "auto",
            Choice::Overlay => "overlay",
            Choice::Fill(s) => s.as_str(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Dir(PathBuf),
    S3 {
        bucket: String,
        prefix: String,
        endpoint: String,
        region: String,
        credentials: PathBuf,
    },
}

/// Which pod namespaces may use a cache (`csi.storage.k8s.io/pod.namespace`).
/// A declaration that does not say is usable by no pod: a cache's content
/// may be private to a team, so sharing it is the admin's explicit choice
/// (`namespaces = *` for every namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// `namespaces = *`.
    Any,
    List(Vec<String>),
    /// No `namespaces` key: no pod may use the cache (the daemon logs one
    /// warning per such cache when it loads the declarations, and a publish
    /// to it is refused saying what to add).
    Undeclared,
}

impl Namespaces {
    pub fn allows(&self, ns: &str) -> bool {
        match self {
            Namespaces::Any => true,
            Namespaces::List(l) => l.iter().any(|n| n == ns),
            Namespaces::Undeclared => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDecl {
    pub name: String,
    pub source: Source,
    /// The default: the first of `strategies`.
    pub strategy: Choice,
    /// What a pod's `strategy` attribute may ask for.
    pub strategies: Vec<Choice>,
    pub namespaces: Namespaces,
    /// `trust_tenants_with_shared_inodes = true`: writable hardlink publishes are
    /// allowed, and every tenant can then rewrite what the others receive.
    pub trust_shared_inodes: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
    /// `max_variants`: how many owner variants (a copy of the version per
    /// uid/gid/mode/fsGroup that overlay pods ask for) a version may have.
    pub max_variants: u32,
}

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
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Vec<CacheDecl> {
        let (d, errors) = parse_config(text);
        assert!(errors.is_empty(), "{errors:?}");
        d.into_iter().map(|(_, r)| r.unwrap()).collect()
    }

    fn parse_err(text: &str) -> String {
        let (d, errors) = parse_config(text);
        if let Some(e) = errors.first() {
            return e.to_string();
        }
        d.into_iter()
            .find_map(|(_, r)| r.err())
            .expect("an error")
            .to_string()
    }

    #[test]
    fn parses_the_documented_format() {
        let text = "\
# comment
[cache node-modules]
source = dir:/srv/nm
strategy = hardlink
uid = 1000
mode = 0750

[cache models]
source = s3:models-bucket/resnet50
endpoint = http://127.0.0.1:9000
credentials = /etc/bindery/s3/credentials
namespaces = ml, ci
strategies = reflink, overlay, copy
trust_tenants_with_shared_inodes = false
";
        let d = parse_ok(text);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].source, Source::Dir("/srv/nm".into()));
        assert_eq!(d[0].strategy, Choice::Fill(Strategy::Hardlink));
        assert_eq!(d[0].namespaces, Namespaces::Undeclared);
        assert!(
            !d[0].namespaces.allows("default"),
            "undeclared means nobody"
        );
        assert!(d[0].strategies.contains(&Choice::Overlay));
        assert_eq!(
            (d[0].uid, d[0].gid, d[0].mode),
            (Some(1000), None, Some(0o750))
        );
        assert!(
            matches!(&d[1].source, Source::S3 { bucket, prefix, .. } if bucket == "models-bucket" && prefix == "resnet50")
        );
        assert_eq!(d[1].strategy, Choice::Fill(Strategy::Reflink));
        assert_eq!(
            d[1].strategies,
            vec![
                Choice::Fill(Strategy::Reflink),
                Choice::Overlay,
                Choice::Fill(Strategy::Copy)
            ]
        );
        assert!(d[1].namespaces.allows("ml") && !d[1].namespaces.allows("web"));
        assert!(!d[1].trust_shared_inodes);
        let any = parse_ok("[cache x]\nsource = dir:/a\nnamespaces = *\n");
        assert!(any[0].namespaces.allows("anything"));
        // Without a list, pods may not pick hardlink.
        let dflt = parse_ok("[cache x]\nsource = dir:/a\n");
        assert_eq!(dflt[0].strategy, Choice::Auto);
        assert!(!dflt[0]
            .strategies
            .contains(&Choice::Fill(Strategy::Hardlink)));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        for (text, needle) in [
            ("[cache x]\nsource = /abs\n", "source"),
            ("[cache x]\nsource = dir:rel\n", "source"),
            ("[cache x]\nsource = dir:/a/../b\n", "source"),
            ("[cache x]\nsource = dir:/a\nstrategy = fast\n", "strategy"),
            (
                "[cache x]\nsource = dir:/a\nstrategies = copy, fast\n",
                "strategies",
            ),
            ("[cache x]\nsource = dir:/a\nstrategies = ,\n", "strategies"),
            (
                "[cache x]\nsource = dir:/a\nstrategy = copy\nstrategies = copy\n",
                "strategies only",
            ),
            (
                "[cache x]\nsource = dir:/a\nnamespaces = Bad_NS\n",
                "namespaces",
            ),
            (
                "[cache x]\nsource = dir:/a\ntrust_tenants_with_shared_inodes = yes\n",
                TRUST_KEY,
            ),
            ("[cache x]\nsource = dir:/a\ncolour = red\n", "colour"),
            ("[cache ../x]\nsource = dir:/a\n", "cache name"),
            ("source = dir:/a\n", "line 1"),
            ("[cache x]\nsource = dir:/a\nnonsense\n", "line 3"),
            ("[cache x]\nsource = s3:bkt/p\n", "credentials"),
            ("[cache x]\n", "source is required"),
        ] {
            let e = parse_err(text);
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        assert!(parse_flag("x").is_err());
        assert_eq!(parse_flag("nm=dir:/srv/nm").unwrap().name, "nm");
        assert!(load(Some(Path::new("/nonexistent/caches.conf")), &[])
            .decls
            .is_empty());
    }

    #[test]
    fn every_listed_key_is_understood() {
        assert!(KEYS.contains(&TRUST_KEY));
        // Each key alone (beside the source, or an s3 source's required keys)
        // is accepted and changes the declaration: none is listed but ignored.
        let base = "[cache x]\nsource = dir:/a\n";
        let plain = parse_ok(base).remove(0);
        for (key, value) in [
            ("namespaces", "web"),
            ("strategies", "copy"),
            ("strategy", "copy"),
            (TRUST_KEY, "true"),
            ("uid", "7"),
            ("gid", "7"),
            ("mode", "0700"),
        ] {
            let d = parse_ok(&format!("{base}{key} = {value}\n")).remove(0);
            assert_ne!(d, plain, "{key} = {value} changed nothing");
        }
        let s3 = "[cache x]\nsource = s3:bkt/p\nendpoint = https://e\ncredentials = /c\n";
        let d = parse_ok(&format!("{s3}region = r1\n")).remove(0);
        assert!(
            matches!(&d.source, Source::S3 { endpoint, region, credentials, .. }
                if endpoint == "https://e" && region == "r1" && credentials == Path::new("/c"))
        );
    }

    #[test]
    fn the_cache_flag_declares_what_a_section_does() {
        let any = parse_flag("nm=dir:/srv/nm;namespaces=*").unwrap();
        assert_eq!(any.namespaces, Namespaces::Any);
        assert!(any.namespaces.allows("default") && any.namespaces.allows("team-x"));

        let listed = parse_flag(
            "nm=dir:/srv/nm; namespaces = a,b ;strategies=copy,overlay;uid=1000;gid=2000;mode=0750",
        )
        .unwrap();
        assert!(listed.namespaces.allows("a") && listed.namespaces.allows("b"));
        assert!(!listed.namespaces.allows("c"));
        let section = parse_ok(
            "[cache nm]\nsource = dir:/srv/nm\nnamespaces = a, b\nstrategies = copy, overlay\n\
             uid = 1000\ngid = 2000\nmode = 0750\n",
        );
        assert_eq!(
            listed, section[0],
            "flag and section must declare the same cache"
        );

        let none = parse_flag("nm=dir:/srv/nm").unwrap();
        assert_eq!(none.namespaces, Namespaces::Undeclared);
        assert!(
            !none.namespaces.allows("default"),
            "no namespaces key serves no pod"
        );

        let s3 = parse_flag(
            "m=s3:bkt/models;endpoint=https://s3.example.com;region=us-east-1;\
             credentials=/etc/bindery/creds;namespaces=ml;trust_tenants_with_shared_inodes=true",
        )
        .unwrap();
        assert!(
            matches!(&s3.source, Source::S3 { bucket, prefix, region, .. }
            if bucket == "bkt" && prefix == "models" && region == "us-east-1")
        );
        assert!(s3.trust_shared_inodes && s3.namespaces.allows("ml"));
    }

    #[test]
    fn the_cache_flag_refuses_by_name() {
        for (v, needle) in [
            ("nm=dir:/srv/nm;colour=red", "unknown key \"colour\""),
            ("nm=dir:/srv/a;b", "not KEY=VALUE"),
            ("nm=dir:/srv/nm;", "not KEY=VALUE"),
            ("nm=dir:/srv/nm;=x", "not KEY=VALUE"),
            ("nm=dir:/srv/nm;source=dir:/b", "not a KEY"),
            ("nm=dir:/srv/nm;uid=1;uid=2", "twice"),
            ("nm=dir:/srv/nm;namespaces=Bad_NS", "namespaces"),
            (
                "nm=dir:/srv/nm;strategy=copy;strategies=copy",
                "strategies only",
            ),
            ("nm=dir:rel", "source"),
            ("nm", "NAME=SOURCE"),
            ("../x=dir:/a", "cache name"),
            ("m=s3:bkt/p;endpoint=https://e", "credentials"),
        ] {
            let e = parse_flag(v).unwrap_err().to_string();
            assert!(e.starts_with("--cache"), "{v:?}: {e}");
            assert!(e.contains(needle), "{v:?}: {e}");
        }
    }

    /// The shipped example declarations parse, and the example pod's
    /// namespace may use the cache it asks for (a cache without
    /// `namespaces` would refuse it).
    #[test]
    fn the_example_declarations_serve_the_example_pod() {
        let yaml = include_str!("../../deploy/kubernetes/examples/cache-config.yaml");
        let pod = include_str!("../../deploy/kubernetes/examples/pod-inline-cache.yaml");
        let conf: String = yaml
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("caches.conf: |"))
            .skip(1)
            .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
            .map(|l| format!("{}\n", l.trim()))
            .collect();
        let decls = parse_ok(&conf);
        assert_eq!(decls.len(), 2, "{conf}");
        let field = |key: &str| {
            pod.lines()
                .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
                .unwrap_or_else(|| panic!("no {key} in the example pod"))
        };
        let (ns, cache) = (field("namespace:"), field("cache:"));
        let decl = decls
            .iter()
            .find(|d| d.name == cache)
            .expect("the pod's cache");
        assert!(
            decl.namespaces.allows(ns),
            "cache {cache} refuses namespace {ns}"
        );
        for d in &decls {
            assert_ne!(
                d.namespaces,
                Namespaces::Undeclared,
                "{} serves no pod",
                d.name
            );
        }
    }

    #[test]
    fn one_bad_declaration_disables_only_that_cache() {
        let dir = std::env::temp_dir().join(format!("bindery-decl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("caches.conf");
        std::fs::write(
            &conf,
            "[cache good]\nsource = dir:/srv/good\n\
             [cache bad]\nsource = dir:relative\n\
             [cache also-good]\nsource = dir:/srv/b\n\
             [not a cache]\nsource = dir:/x\n",
        )
        .unwrap();
        let l = load(Some(&conf), &["twice=dir:/a".into(), "twice=dir:/b".into()]);
        assert_eq!(
            l.decls.keys().collect::<Vec<_>>(),
            vec!["also-good", "good"]
        );
        assert!(l.broken["bad"].contains("source"), "{:?}", l.broken);
        assert!(l.broken["twice"].contains("twice"), "{:?}", l.broken);
        assert_eq!(l.errors.len(), 2, "{:?}", l.errors);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
