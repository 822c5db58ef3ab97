//! From volume parameters and secrets to a validated MountSpec. Every value
//! is checked for its own grammar here, before anything is written or run.

use std::collections::HashMap;
use std::path::Path;

use crate::config::Config;
use crate::error::{quoted, Error, Result};
use crate::validate::{valid_bucket, valid_prefix};

use super::kind::{is_co_key, kind_of, Kind};
use super::options::{self, Policy};
use super::values::Secrets;

/// A fully validated mount request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: Kind,
    pub bucket: String,
    pub prefix: String,
    /// Mounter arguments from the allow-list (see `options`).
    pub options: Vec<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub umask: Option<u32>,
    pub command: Vec<String>,
    pub secrets: Secrets,
    /// fsGroup (`volume_mount_group`), set by `apply_mount_group`.
    pub mount_group: Option<u32>,
}

/// Parameter keys a volume may carry. Anything else is refused by name.
/// (`unstageDelay` is the node's, not the mounter's: src/node/linger.rs.)
pub const PARAM_KEYS: &[&str] = &[
    "mounter",
    "bucket",
    "prefix",
    "options",
    "uid",
    "gid",
    "umask",
    "command",
    "unstageDelay",
];

/// Longest `options` or `command` parameter accepted.
pub const MAX_WORDS_LEN: usize = 4096;
/// Most words in `options` or `command`.
pub const MAX_WORDS: usize = 64;
/// Highest uid/gid accepted (u32::MAX is "no id" to the kernel).
pub const MAX_ID: u32 = u32::MAX - 1;

/// Placeholders a `fuse` command may use; bindery substitutes them.
pub const PLACEHOLDERS: &[&str] = &[
    "mountpoint",
    "bucket",
    "prefix",
    "endpoint",
    "region",
    "uid",
    "gid",
];

/// Split `options` like a shell would for plain words and quotes (no
/// expansion of any kind).
pub fn shell_words(s: &str) -> Result<Vec<String>> {
    shell_words_of("volume_context.options", s)
}

fn shell_words_of(field: &'static str, s: &str) -> Result<Vec<String>> {
    if s.len() > MAX_WORDS_LEN {
        return Err(Error::invalid(
            field,
            format!("longer than {MAX_WORDS_LEN} bytes"),
        ));
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => match chars.next() {
                Some(n) => cur.push(n),
                None => return Err(Error::invalid(field, "ends with a backslash")),
            },
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                match chars.next() {
                    Some(n) => cur.push(n),
                    None => return Err(Error::invalid(field, "ends with a backslash")),
                }
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(Error::invalid(field, "unterminated quote"));
    }
    if in_word {
        out.push(cur);
    }
    if out.len() > MAX_WORDS {
        return Err(Error::invalid(
            field,
            format!("more than {MAX_WORDS} words"),
        ));
    }
    if out.iter().any(|w| w.chars().any(|c| c.is_control())) {
        return Err(Error::invalid(field, "contains a control character"));
    }
    Ok(out)
}

fn parse_id(field: &'static str, v: Option<&String>) -> Result<Option<u32>> {
    v.map(|s| {
        s.parse::<u32>()
            .ok()
            .filter(|n| *n <= MAX_ID && s.len() <= 10)
            .ok_or_else(|| {
                Error::invalid(
                    field,
                    format!("{} is not a number from 0 to {MAX_ID}", quoted(s)),
                )
            })
    })
    .transpose()
}

fn parse_umask(v: Option<&String>) -> Result<Option<u32>> {
    v.map(|s| {
        Some(s)
            .filter(|s| (1..=4).contains(&s.len()))
            .and_then(|s| u32::from_str_radix(s, 8).ok())
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                Error::invalid(
                    "volume_context.umask",
                    format!("{} is not an octal mode", quoted(s)),
                )
            })
    })
    .transpose()
}

/// The words of a `fuse` command: an allowed program, then arguments that
/// cannot name paths (placeholders stand for the values bindery owns, and
/// everything else is `[A-Za-z0-9_.,:=+@%-]`), with `{mountpoint}` in one
/// of them.
pub fn fuse_command(command: Option<&String>, allowed_programs: &[String]) -> Result<Vec<String>> {
    const FIELD: &str = "volume_context.command";
    let words = shell_words_of(FIELD, command.map(String::as_str).unwrap_or(""))?;
    let program = words.first().ok_or(Error::MissingField(FIELD))?;
    if !allowed_programs.iter().any(|p| p == program) {
        return Err(Error::invalid(
            FIELD,
            format!(
                "program {} is not allowed on this node (allowed: {})",
                quoted(program),
                allowed_programs.join(", ")
            ),
        ));
    }
    for w in &words[1..] {
        let mut rest = w.as_str();
        let mut plain = String::new();
        while let Some(open) = rest.find('{') {
            plain.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| Error::invalid(FIELD, format!("{}: unclosed {{", quoted(w))))?;
            let name = &after[..close];
            if !PLACEHOLDERS.contains(&name) {
                return Err(Error::invalid(
                    FIELD,
                    format!(
                        "{}: unknown placeholder {{{}}} (known: {})",
                        quoted(w),
                        quoted(name),
                        PLACEHOLDERS.join(", ")
                    ),
                ));
            }
            rest = &after[close + 1..];
        }
        plain.push_str(rest);
        if !plain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.,:=+@%-".contains(c))
        {
            return Err(Error::invalid(
                FIELD,
                format!(
                    "argument {} may not name a path: use placeholders and [A-Za-z0-9_.,:=+@%-]",
                    quoted(w)
                ),
            ));
        }
    }
    if !words[1..].iter().any(|w| w.contains("{mountpoint}")) {
        return Err(Error::invalid(FIELD, "must contain {mountpoint}"));
    }
    Ok(words)
}

/// Build a MountSpec from volume parameters (volume context) and secrets,
/// with the node's policy from `cfg` (allowed fuse programs, whether
/// credential sources may be used). `volume_id` of a static PV is `bucket`
/// or `bucket/prefix`; parameters win.
pub fn parse_spec_for(
    volume_id: &str,
    params: &HashMap<String, String>,
    secrets: &HashMap<String, String>,
    cfg: &Config,
) -> Result<MountSpec> {
    parse_spec_with(
        volume_id,
        params,
        secrets,
        &cfg.fuse_programs,
        Policy {
            credential_sources: cfg.allow_credential_sources,
        },
    )
}

/// parse_spec_for without a Config: credential sources are refused.
pub fn parse_spec(
    volume_id: &str,
    params: &HashMap<String, String>,
    secrets: &HashMap<String, String>,
    allowed_programs: &[String],
) -> Result<MountSpec> {
    parse_spec_with(
        volume_id,
        params,
        secrets,
        allowed_programs,
        Policy::default(),
    )
}

pub fn parse_spec_with(
    volume_id: &str,
    params: &HashMap<String, String>,
    secrets: &HashMap<String, String>,
    allowed_programs: &[String],
    policy: Policy,
) -> Result<MountSpec> {
    let mut unknown: Vec<&str> = params
        .keys()
        .map(String::as_str)
        .filter(|k| !PARAM_KEYS.contains(k) && !is_co_key(k))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        let names: Vec<String> = unknown.iter().take(8).map(|k| quoted(k)).collect();
        return Err(Error::invalid(
            "volume_context",
            format!("unknown parameters: {}", names.join(", ")),
        ));
    }
    let kind = match params.get("mounter").map(String::as_str) {
        None | Some("" | "s3fs" | "rclone" | "fuse") => kind_of(params),
        Some(other) => {
            return Err(Error::invalid(
                "volume_context.mounter",
                format!("{}: expected s3fs, rclone or fuse", quoted(other)),
            ))
        }
    };
    let (id_bucket, id_prefix) = match volume_id.split_once('/') {
        Some((b, p)) => (b, p),
        None => (volume_id, ""),
    };
    let bucket = params
        .get("bucket")
        .cloned()
        .unwrap_or_else(|| id_bucket.to_string());
    let prefix = match params.get("prefix") {
        Some(p) => p.trim_matches('/').to_string(),
        None if params.contains_key("bucket") && bucket != id_bucket => String::new(),
        None => id_prefix.trim_matches('/').to_string(),
    };
    if !valid_bucket(&bucket) {
        return Err(Error::invalid(
            "volume_context.bucket",
            format!("{} is not a valid bucket name", quoted(&bucket)),
        ));
    }
    if !valid_prefix(&prefix) {
        return Err(Error::invalid(
            "volume_context.prefix",
            format!("{} is not a valid key prefix", quoted(&prefix)),
        ));
    }
    let words = shell_words(params.get("options").map(String::as_str).unwrap_or(""))?;
    let options = options::validate(kind, &words, policy)?;
    let umask = parse_umask(params.get("umask"))?;
    let uid = parse_id("volume_context.uid", params.get("uid"))?;
    let gid = parse_id("volume_context.gid", params.get("gid"))?;
    let command = if kind == Kind::Fuse {
        fuse_command(params.get("command"), allowed_programs)?
    } else {
        if params.contains_key("command") {
            return Err(Error::invalid(
                "volume_context.command",
                "only used with mounter fuse",
            ));
        }
        Vec::new()
    };
    let secrets = Secrets::from_map(secrets);
    secrets.validate(kind)?;
    Ok(MountSpec {
        kind,
        bucket,
        prefix,
        options,
        uid,
        gid,
        umask,
        command,
        secrets,
        mount_group: None,
    })
}

/// fsGroup (CSI `volume_mount_group`): make the volume usable by a pod whose
/// processes have `group` as a SUPPLEMENTARY group, as the kubelet does for
/// volumes it owns. Files and directories belong to `group` (unless the
/// `gid` parameter says otherwise) and are group-writable:
///
/// - rclone: `--gid=G --umask=002 --default-permissions`. rclone does no
///   permission checks of its own; with default_permissions the kernel
///   checks, and the kernel knows the caller's supplementary groups.
/// - s3fs checks permissions itself, against the caller's uid and PRIMARY
///   gid only (libfuse 2 hands it no supplementary groups, and its
///   fallback looks the uid up in the node's /etc/group, which knows
///   nothing of pods). A group-writable mode therefore still refuses a pod
///   whose fsGroup is supplementary: s3fs gets `gid=G` and umask 000
///   (mode 0777) instead, which lets every process that can reach the
///   mount — the pods the volume is published to — write, as it does on
///   volumes without fsGroup support.
///
/// An explicit `umask` parameter wins over these defaults.
pub fn apply_mount_group(spec: &mut MountSpec, group: &str) -> Result<()> {
    if group.is_empty() {
        return Ok(());
    }
    let given = Some(group.to_string());
    let Some(gid) = parse_id("volume_capability.mount.volume_mount_group", given.as_ref())? else {
        return Ok(());
    };
    spec.mount_group = Some(gid);
    spec.gid = spec.gid.or(Some(gid));
    let default_umask = match spec.kind {
        Kind::S3fs => 0o000,
        Kind::Rclone | Kind::Fuse => 0o002,
    };
    spec.umask = spec.umask.or(Some(default_umask));
    Ok(())
}

/// Whether `path` is the program of an allowed fuse command that needs a
/// flag to stay in the foreground, and which.
pub fn foreground_flag(program: &str) -> Option<&'static str> {
    match Path::new(program).file_name()?.to_str()? {
        "geesefs" | "goofys" | "s3fs" => Some("-f"),
        "mount-s3" => Some("--foreground"),
        _ => None,
    }
}
