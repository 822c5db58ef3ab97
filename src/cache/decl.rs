//! Cache declarations: admins declare caches on the daemon (a config file or
//! `--cache NAME=SOURCE` flags), never pod authors, so that a pod cannot make
//! the node read an arbitrary host path.
//!
//! ```text
//! # full-line comments and blank lines are ignored
//! [cache node-modules]
//! source = dir:/var/lib/bindery/sources/node-modules
//! strategy = auto          # hardlink | reflink | copy | overlay | auto
//! uid = 1000
//! gid = 1000
//! mode = 0755
//! [cache models]
//! source = s3:models-bucket/resnet50
//! endpoint = https://s3.example.com
//! region = us-east-1
//! credentials = /etc/bindery/s3/credentials   # accessKeyID=… / secretAccessKey=… lines
//! ```

use std::collections::{BTreeMap, HashMap};
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDecl {
    pub name: String,
    pub source: Source,
    pub strategy: Choice,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
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
        if !crate::mounter::valid_bucket(bucket)
            || !crate::mounter::valid_prefix(prefix.trim_matches('/'))
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
    const KNOWN: &[&str] = &[
        "source",
        "strategy",
        "uid",
        "gid",
        "mode",
        "endpoint",
        "region",
        "credentials",
    ];
    if let Some(k) = keys.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad(&format!("cache {name}"), format!("unknown key {k:?}")));
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
    Ok(CacheDecl {
        name: name.to_string(),
        source: parse_source(name, source, keys)?,
        strategy: keys
            .get("strategy")
            .map(String::as_str)
            .unwrap_or("auto")
            .parse()?,
        uid: num("uid", 10)?,
        gid: num("gid", 10)?,
        mode,
    })
}

/// Parse the config file text.
pub fn parse_config(text: &str) -> Result<Vec<CacheDecl>> {
    let mut out = Vec::new();
    let mut current: Option<(String, HashMap<String, String>)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if let Some((name, keys)) = current.take() {
                out.push(build_decl(&name, &keys)?);
            }
            let name = section.strip_prefix("cache ").ok_or_else(|| {
                bad(
                    &format!("line {}", n + 1),
                    format!("expected [cache NAME], got [{section}]"),
                )
            })?;
            current = Some((name.trim().to_string(), HashMap::new()));
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| bad(&format!("line {}", n + 1), "expected key = value"))?;
        let v = v.split(" #").next().unwrap_or("").trim();
        match current.as_mut() {
            Some((_, keys)) => {
                keys.insert(k.trim().to_string(), v.to_string());
            }
            None => {
                return Err(bad(
                    &format!("line {}", n + 1),
                    "key outside a [cache NAME] section",
                ))
            }
        }
    }
    if let Some((name, keys)) = current.take() {
        out.push(build_decl(&name, &keys)?);
    }
    Ok(out)
}

/// `--cache NAME=SOURCE` (dir: sources; s3 sources need the config file).
pub fn parse_flag(v: &str) -> Result<CacheDecl> {
    let (name, source) = v
        .split_once('=')
        .ok_or_else(|| bad("--cache", format!("expected NAME=SOURCE, got {v:?}")))?;
    let keys: HashMap<String, String> = [("source".to_string(), source.to_string())].into();
    build_decl(name, &keys)
}

/// All declarations from the config file (a missing file declares none) and
/// the flags; a name declared twice is an error.
pub fn load(config: Option<&Path>, flags: &[String]) -> Result<BTreeMap<String, CacheDecl>> {
    let mut decls = Vec::new();
    if let Some(path) = config {
        match fs::read_to_string(path) {
            Ok(text) => decls.extend(parse_config(&text).map_err(|e| match e {
                Error::InvalidField { field, reason } => {
                    Error::invalid(format!("{}: {field}", path.display()), reason)
                }
                other => other,
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
    for f in flags {
        decls.push(parse_flag(f)?);
    }
    let mut map = BTreeMap::new();
    for d in decls {
        if map.contains_key(&d.name) {
            return Err(bad("cache", format!("{:?} is declared twice", d.name)));
        }
        map.insert(d.name.clone(), d);
    }
    Ok(map)
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
";
        let d = parse_config(text).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].source, Source::Dir("/srv/nm".into()));
        assert_eq!(d[0].strategy, Choice::Fill(Strategy::Hardlink));
        assert_eq!(
            (d[0].uid, d[0].gid, d[0].mode),
            (Some(1000), None, Some(0o750))
        );
        assert!(
            matches!(&d[1].source, Source::S3 { bucket, prefix, .. } if bucket == "models-bucket" && prefix == "resnet50")
        );
        assert_eq!(d[1].strategy, Choice::Auto);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        for (text, needle) in [
            ("[cache x]\nsource = /abs\n", "source"),
            ("[cache x]\nsource = dir:rel\n", "source"),
            ("[cache x]\nsource = dir:/a/../b\n", "source"),
            ("[cache x]\nsource = dir:/a\nstrategy = fast\n", "strategy"),
            ("[cache x]\nsource = dir:/a\ncolour = red\n", "colour"),
            ("[cache ../x]\nsource = dir:/a\n", "cache name"),
            ("source = dir:/a\n", "line 1"),
            ("[cache x]\nsource = s3:bkt/p\n", "credentials"),
            ("[cache x]\n", "source is required"),
        ] {
            let e = parse_config(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        assert!(parse_flag("x").is_err());
        assert_eq!(parse_flag("nm=dir:/srv/nm").unwrap().name, "nm");
        let twice = load(None, &["a=dir:/x".into(), "a=dir:/y".into()]).unwrap_err();
        assert!(twice.to_string().contains("twice"));
        assert!(load(Some(Path::new("/nonexistent/caches.conf")), &[])
            .unwrap()
            .is_empty());
    }
}
