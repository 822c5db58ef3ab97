//! Mounter options: a POSITIVE allow-list per mounter kind. An option is
//! accepted only when it is listed here and its value has the listed shape;
//! everything else is refused by name. Options that name host paths, run
//! programs, open control ports, change who may use the mount or carry
//! credentials are not listed; bindery sets what it needs itself.
//!
//! The list, as the README quotes it:
//!
//! **s3fs** (`options` words `-o a,b=1` or `a b=1`; values: *n* = decimal
//! number, *oct* = octal mode, *word* = `[A-Za-z0-9_.-]`, up to 64):
//! flags `compat_dir`, `complement_stat`, `default_permissions`,
//! `disable_noobj_cache`, `enable_content_md5`, `enable_noobj_cache`,
//! `enable_unsigned_payload`, `kernel_cache`, `listobjectsv2`,
//! `no_check_certificate`, `nocopyapi`, `nodnscache`, `nomultipart`,
//! `norenameapi`, `nosscache`, `notsup_compat_dir`, `requester_pays`, `ro`,
//! `sigv2`, `sigv4`, `update_parent_dir_stat`, `use_wtf8`, `use_xattr`;
//! numbers `connect_timeout`, `ensure_diskfree`, `fake_diskfree`,
//! `list_object_max_keys`, `max_dirty_data`, `max_stat_cache_size`,
//! `multipart_copy_size`, `multipart_size`, `multireq_max`,
//! `parallel_count`, `readwrite_timeout`, `retries`,
//! `singlepart_copy_limit`, `ssl_verify_hostname`, `stat_cache_expire`,
//! `stat_cache_interval_expire`; `mp_umask=`*oct*; words `storage_class`,
//! `default_acl`.
//! Credential sources, only with `--allow-credential-sources`: `iam_role`
//! (optionally `=`*word*), `imdsv1only`, `ecs`, `ibm_iam_auth`,
//! `profile=`*word*, `use_session_token`.
//! Set by bindery or taken from parameters, refused here: `url`,
//! `endpoint`, `passwd_file`, `allow_other`, `allow_root`, `nonempty`,
//! `uid`, `gid`, `umask`, `use_path_request_style`.
//!
//! **rclone** (`--flag`, `--flag=value` or `--flag value`; values: *dur* =
//! duration like `5s`/`1h30m`, *size* = `10M`/`1.5G`/`off`, *n* = decimal,
//! *bool* = nothing, `true` or `false`): durations `--attr-timeout`,
//! `--contimeout`, `--dir-cache-time`, `--poll-interval`, `--timeout`,
//! `--vfs-cache-max-age`, `--vfs-cache-poll-interval`, `--vfs-read-wait`,
//! `--vfs-write-back`, `--vfs-write-wait`; sizes `--buffer-size`,
//! `--bwlimit`, `--max-read-ahead`, `--s3-chunk-size`, `--s3-upload-cutoff`,
//! `--vfs-cache-max-size`, `--vfs-cache-min-free-space`, `--vfs-read-ahead`,
//! `--vfs-read-chunk-size`, `--vfs-read-chunk-size-limit`; numbers
//! `--checkers`, `--low-level-retries`, `--multi-thread-streams`,
//! `--retries`, `--s3-list-chunk`, `--s3-list-version`,
//! `--s3-upload-concurrency`, `--tpslimit`, `--tpslimit-burst`,
//! `--transfers`; booleans `--async-read`, `--default-permissions`,
//! `--no-checksum`, `--no-modtime`, `--no-seek`, `--read-only`,
//! `--s3-disable-checksum`, `--s3-force-path-style`, `--s3-no-check-bucket`,
//! `--s3-no-head`, `--s3-no-head-object`, `--s3-v2-auth`,
//! `--use-server-modtime`, `--vfs-case-insensitive`,
//! `--vfs-fast-fingerprint`, `--write-back-cache`; `--dir-perms`,
//! `--file-perms` (*oct*); `--vfs-cache-mode` (off, minimal, writes, full);
//! `--log-level` (ERROR, NOTICE, INFO); words `--s3-acl`,
//! `--s3-location-constraint`, `--s3-provider`,
//! `--s3-server-side-encryption`, `--s3-storage-class`.
//! Credential sources, only with `--allow-credential-sources`:
//! `--s3-env-auth`, `--s3-profile=`*word*.
//! Set by bindery or taken from parameters, refused here: `--allow-other`,
//! `--allow-non-empty`, `--cache-dir`, `--config`, `--daemon`, `--uid`,
//! `--gid`, `--umask`, every `--rc*`, `--log-file`, `--s3-endpoint`,
//! `--s3-access-key-id`, `--s3-secret-access-key`, `--s3-region`,
//! `--s3-shared-credentials-file`.
//!
//! **fuse**: no options; the command's arguments are checked instead (see
//! `spec::fuse_command`).

use crate::error::{quoted, Error, Result};

use super::kind::Kind;

/// The shape a value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// No value: a flag.
    Flag,
    /// A flag that may take a word (`iam_role` or `iam_role=name`).
    OptionalWord,
    Number,
    Octal,
    Word,
    Duration,
    Size,
    Bool,
    OneOf(&'static [&'static str]),
}

/// One allowed option: its name, value shape and whether it is a
/// credential source of the node.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    pub name: &'static str,
    pub value: Value,
    pub credential_source: bool,
}

const fn opt(name: &'static str, value: Value) -> Allowed {
    Allowed {
        name,
        value,
        credential_source: false,
    }
}

const fn cred(name: &'static str, value: Value) -> Allowed {
    Allowed {
        name,
        value,
        credential_source: true,
    }
}

use Value::*;

pub const S3FS: &[Allowed] = &[
    opt("compat_dir", Flag),
    opt("complement_stat", Flag),
    opt("default_permissions", Flag),
    opt("disable_noobj_cache", Flag),
    opt("enable_content_md5", Flag),
    opt("enable_noobj_cache", Flag),
    opt("enable_unsigned_payload", Flag),
    opt("kernel_cache", Flag),
    opt("listobjectsv2", Flag),
    opt("no_check_certificate", Flag),
    opt("nocopyapi", Flag),
    opt("nodnscache", Flag),
    opt("nomultipart", Flag),
    opt("norenameapi", Flag),
    opt("nosscache", Flag),
    opt("notsup_compat_dir", Flag),
    opt("requester_pays", Flag),
    opt("ro", Flag),
    opt("sigv2", Flag),
    opt("sigv4", Flag),
    opt("update_parent_dir_stat", Flag),
    opt("use_wtf8", Flag),
    opt("use_xattr", Flag),
    opt("connect_timeout", Number),
    opt("ensure_diskfree", Number),
    opt("fake_diskfree", Number),
    opt("list_object_max_keys", Number),
    opt("max_dirty_data", Number),
    opt("max_stat_cache_size", Number),
    opt("multipart_copy_size", Number),
    opt("multipart_size", Number),
    opt("multireq_max", Number),
    opt("parallel_count", Number),
    opt("readwrite_timeout", Number),
    opt("retries", Number),
    opt("singlepart_copy_limit", Number),
    opt("ssl_verify_hostname", Number),
    opt("stat_cache_expire", Number),
    opt("stat_cache_interval_expire", Number),
    opt("mp_umask", Octal),
    opt("storage_class", Word),
    opt("default_acl", Word),
    cred("iam_role", OptionalWord),
    cred("imdsv1only", Flag),
    cred("ecs", Flag),
    cred("ibm_iam_auth", Flag),
    cred("profile", Word),
    cred("use_session_token", Flag),
];

pub const RCLONE: &[Allowed] = &[
    opt("attr-timeout", Duration),
    opt("contimeout", Duration),
    opt("dir-cache-time", Duration),
    opt("poll-interval", Duration),
    opt("timeout", Duration),
    opt("vfs-cache-max-age", Duration),
    opt("vfs-cache-poll-interval", Duration),
    opt("vfs-read-wait", Duration),
    opt("vfs-write-back", Duration),
    opt("vfs-write-wait", Duration),
    opt("buffer-size", Size),
    opt("bwlimit", Size),
    opt("max-read-ahead", Size),
    opt("s3-chunk-size", Size),
    opt("s3-upload-cutoff", Size),
    opt("vfs-cache-max-size", Size),
    opt("vfs-cache-min-free-space", Size),
    opt("vfs-read-ahead", Size),
    opt("vfs-read-chunk-size", Size),
    opt("vfs-read-chunk-size-limit", Size),
    opt("checkers", Number),
    opt("low-level-retries", Number),
    opt("multi-thread-streams", Number),
    opt("retries", Number),
    opt("s3-list-chunk", Number),
    opt("s3-list-version", Number),
    opt("s3-upload-concurrency", Number),
    opt("tpslimit", Number),
    opt("tpslimit-burst", Number),
    opt("transfers", Number),
    opt("async-read", Bool),
    opt("default-permissions", Bool),
    opt("no-checksum", Bool),
    opt("no-modtime", Bool),
    opt("no-seek", Bool),
    opt("read-only", Bool),
    opt("s3-disable-checksum", Bool),
    opt("s3-force-path-style", Bool),
    opt("s3-no-check-bucket", Bool),
    opt("s3-no-head", Bool),
    opt("s3-no-head-object", Bool),
    opt("s3-v2-auth", Bool),
    opt("use-server-modtime", Bool),
    opt("vfs-case-insensitive", Bool),
    opt("vfs-fast-fingerprint", Bool),
    opt("write-back-cache", Bool),
    opt("dir-perms", Octal),
    opt("file-perms", Octal),
    opt(
        "vfs-cache-mode",
        OneOf(&["off", "minimal", "writes", "full"]),
    ),
    opt("log-level", OneOf(&["ERROR", "NOTICE", "INFO"])),
    opt("s3-acl", Word),
    opt("s3-location-constraint", Word),
    opt("s3-provider", Word),
    opt("s3-server-side-encryption", Word),
    opt("s3-storage-class", Word),
    cred("s3-env-auth", Bool),
    cred("s3-profile", Word),
];

/// Options bindery sets itself or takes from parameters: named in the
/// refusal so users know where the setting went.
const S3FS_OWN: &[(&str, &str)] = &[
    ("uid", "use the uid parameter"),
    ("gid", "use the gid parameter"),
    ("umask", "use the umask parameter"),
    ("url", "set from secrets.endpoint"),
    ("endpoint", "set from secrets.region"),
];
const RCLONE_OWN: &[(&str, &str)] = &[
    ("uid", "use the uid parameter"),
    ("gid", "use the gid parameter"),
    ("umask", "use the umask parameter"),
    ("s3-endpoint", "set from secrets.endpoint"),
    ("s3-region", "set from secrets.region"),
];

const MAX_VALUE: usize = 64;

fn is_number(v: &str) -> bool {
    (1..=20).contains(&v.len()) && v.bytes().all(|c| c.is_ascii_digit())
}

fn is_octal(v: &str) -> bool {
    (1..=4).contains(&v.len()) && v.bytes().all(|c| (b'0'..=b'7').contains(&c))
}

fn is_word(v: &str) -> bool {
    (1..=MAX_VALUE).contains(&v.len())
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
        && !v.starts_with(['-', '.'])
}

/// `1.5`, `10`: digits with at most one dot.
fn decimal(v: &str) -> Option<&str> {
    let end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, rest) = v.split_at(end);
    (!num.is_empty() && num.matches('.').count() <= 1 && !num.starts_with('.')).then_some(rest)
}

/// rclone durations: `300ms`, `5s`, `1h30m`, `2d`, or a bare number (seconds).
fn is_duration(v: &str) -> bool {
    if v.is_empty() || v.len() > 32 {
        return false;
    }
    let mut rest = v;
    let mut first = true;
    while !rest.is_empty() {
        let Some(after) = decimal(rest) else {
            return false;
        };
        let unit_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let unit = &after[..unit_end];
        let known = matches!(
            unit,
            "ns" | "us" | "ms" | "s" | "m" | "h" | "d" | "w" | "M" | "y"
        );
        // A bare number (seconds) only as the whole value.
        let bare_seconds = unit.is_empty() && first && unit_end == after.len();
        if !known && !bare_seconds {
            return false;
        }
        rest = &after[unit_end..];
        first = false;
    }
    true
}

/// rclone sizes: `off`, `1024`, `10M`, `1.5Gi`, `512k`.
fn is_size(v: &str) -> bool {
    if v == "off" {
        return true;
    }
    if v.len() > 24 {
        return false;
    }
    match decimal(v) {
        Some(rest) => matches!(
            rest,
            "" | "b"
                | "B"
                | "k"
                | "K"
                | "M"
                | "G"
                | "T"
                | "P"
                | "Ki"
                | "Mi"
                | "Gi"
                | "Ti"
                | "Pi"
                | "KiB"
                | "MiB"
                | "GiB"
                | "TiB"
        ),
        None => false,
    }
}

fn value_ok(shape: Value, v: Option<&str>) -> bool {
    match (shape, v) {
        (Flag | OptionalWord | Bool, None) => true,
        (Flag, Some(_)) => false,
        (_, None) => false,
        (OptionalWord | Word, Some(v)) => is_word(v),
        (Number, Some(v)) => is_number(v),
        (Octal, Some(v)) => is_octal(v),
        (Duration, Some(v)) => is_duration(v),
        (Size, Some(v)) => is_size(v),
        (Bool, Some(v)) => v == "true" || v == "false",
        (OneOf(list), Some(v)) => list.contains(&v),
    }
}

fn shape_words(shape: Value) -> String {
    match shape {
        Flag => "takes no value".into(),
        OptionalWord => "takes no value or a word of [A-Za-z0-9_.-]".into(),
        Number => "takes a decimal number".into(),
        Octal => "takes an octal mode".into(),
        Word => "takes a word of [A-Za-z0-9_.-] (at most 64)".into(),
        Duration => "takes a duration like 5s or 1h30m".into(),
        Size => "takes a size like 512M, 1.5G or off".into(),
        Bool => "takes no value, true or false".into(),
        OneOf(list) => format!("takes one of {}", list.join(", ")),
    }
}

/// What options may do on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// `--allow-credential-sources`.
    pub credential_sources: bool,
}

fn check_one(
    list: &[Allowed],
    own: &[(&str, &str)],
    policy: Policy,
    shown: &str,
    key: &str,
    value: Option<&str>,
) -> Result<()> {
    let bad = |why: String| {
        Error::invalid(
            "volume_context.options",
            format!("{}: {why}", quoted(shown)),
        )
    };
    if let Some((_, why)) = own.iter().find(|(k, _)| *k == key) {
        return Err(bad(format!("set by bindery ({why})")));
    }
    let Some(a) = list.iter().find(|a| a.name == key) else {
        return Err(bad(
            "not an allowed option (see the README's allow-list)".into()
        ));
    };
    if a.credential_source && !policy.credential_sources {
        return Err(bad(
            "a credential source of the node; allowed only when bindery runs with \
             --allow-credential-sources"
                .into(),
        ));
    }
    if !value_ok(a.value, value) {
        return Err(bad(shape_words(a.value)));
    }
    Ok(())
}

/// Check user options against the allow-list of `kind` and return them as
/// mounter arguments: s3fs words become `-o key[=value]` pairs, rclone
/// words `--flag[=value]`.
pub fn validate(kind: Kind, words: &[String], policy: Policy) -> Result<Vec<String>> {
    let mut out = Vec::new();
    match kind {
        Kind::S3fs => {
            let mut it = words.iter();
            while let Some(w) = it.next() {
                let opt = if w == "-o" {
                    it.next().ok_or_else(|| {
                        Error::invalid("volume_context.options", "-o needs a value")
                    })?
                } else {
                    w
                };
                for part in opt.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = match part.split_once('=') {
                        Some((k, v)) => (k, Some(v)),
                        None => (part, None),
                    };
                    check_one(S3FS, S3FS_OWN, policy, part, k, v)?;
                    out.push("-o".to_string());
                    out.push(part.to_string());
                }
            }
        }
        Kind::Rclone => {
            let mut it = words.iter().peekable();
            while let Some(w) = it.next() {
                let Some(flag) = w.strip_prefix("--") else {
                    return Err(Error::invalid(
                        "volume_context.options",
                        format!("{}: must be --flag or --flag=value", quoted(w)),
                    ));
                };
                let (k, mut v) = match flag.split_once('=') {
                    Some((k, v)) => (k, Some(v.to_string())),
                    None => (flag, None),
                };
                // `--flag value`: the next word is the value of a flag that takes one.
                let takes_value = RCLONE
                    .iter()
                    .find(|a| a.name == k)
                    .is_some_and(|a| !matches!(a.value, Flag | Bool | OptionalWord));
                if v.is_none() && takes_value {
                    if let Some(next) = it.next_if(|n| !n.starts_with("--")) {
                        v = Some(next.clone());
                    }
                }
                check_one(RCLONE, RCLONE_OWN, policy, w, k, v.as_deref())?;
                out.push(match v {
                    Some(v) => format!("--{k}={v}"),
                    None => format!("--{k}"),
                });
            }
        }
        Kind::Fuse => {
            if !words.is_empty() {
                return Err(Error::invalid(
                    "volume_context.options",
                    "not used with mounter fuse: put arguments in command",
                ));
            }
        }
    }
    Ok(out)
}

/// Whether `options` (as validate returned them) set rclone flag `name`.
pub fn has_rclone_flag(options: &[String], name: &str) -> bool {
    options.iter().any(|o| {
        o.strip_prefix("--")
            .map(|f| f.split('=').next() == Some(name))
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests;
