//! Mounters: one FUSE process per staged volume (s3fs, rclone, or an allowed
//! FUSE command), started in its own session so it outlives the daemon.
//!
//! Parameters and secrets follow k8s-csi-s3 so users can switch:
//! parameters `mounter`, `bucket`, `prefix`, `options` (+ `uid`, `gid`,
//! `umask`, `command` for `fuse`); secrets `accessKeyID`, `secretAccessKey`,
//! `endpoint`, `region`. Credentials go to a per-volume 0600 file (s3fs) or
//! to the child's environment (rclone, fuse): never to argv or a log line.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::state::{private_dir, write_atomic};
use crate::sys::{mount, mountinfo, process};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3fs,
    Rclone,
    Fuse,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::S3fs => "s3fs",
            Kind::Rclone => "rclone",
            Kind::Fuse => "fuse",
        }
    }
}

/// Parameter keys a volume may carry. Anything else is refused by name.
pub const PARAM_KEYS: &[&str] = &[
    "mounter", "bucket", "prefix", "options", "uid", "gid", "umask", "command",
];

/// Keys the CO adds to volume contexts on its own (pod info on mount,
/// ephemeral marker, provisioner metadata): accepted and ignored.
pub fn is_co_key(key: &str) -> bool {
    key.starts_with("csi.storage.k8s.io/") || key.starts_with("storage.kubernetes.io/")
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub endpoint: String,
    pub region: String,
}

impl Secrets {
    pub fn from_map(m: &HashMap<String, String>) -> Self {
        let get = |k: &str| m.get(k).cloned().unwrap_or_default();
        Secrets {
            access_key_id: get("accessKeyID"),
            secret_access_key: get("secretAccessKey"),
            endpoint: get("endpoint"),
            region: get("region"),
        }
    }

    /// The values that must never appear in a message or log line.
    fn sensitive(&self) -> Vec<&str> {
        [self.access_key_id.as_str(), self.secret_access_key.as_str()]
            .into_iter()
            .filter(|s| s.len() >= 3)
            .collect()
    }
}

/// A fully validated mount request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: Kind,
    pub bucket: String,
    pub prefix: String,
    pub options: Vec<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub umask: Option<u32>,
    pub command: Vec<String>,
    pub secrets: Secrets,
}

/// Split `options` like a shell would for plain words and quotes (no
/// expansion of any kind).
pub fn shell_words(s: &str) -> Result<Vec<String>> {
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
                None => return Err(Error::invalid("options", "ends with a backslash")),
            },
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                match chars.next() {
                    Some(n) => cur.push(n),
                    None => return Err(Error::invalid("options", "ends with a backslash")),
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
        return Err(Error::invalid("options", "unterminated quote"));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Options that bindery sets itself, or that would read or write arbitrary
/// host paths, run commands or open control ports.
const S3FS_DENY: &[&str] = &[
    "passwd_file",
    "url",
    "use_cache",
    "logfile",
    "curldbg",
    "dbglevel",
    "tmpdir",
    "ssl_client_cert",
    "cipher_suites",
    "instance_name",
    "ibm_iam_endpoint",
    "credlib",
    "credlib_opts",
    "nonempty",
    "allow_other",
    "allow_root",
];
const RCLONE_DENY: &[&str] = &[
    "config",
    "rc",
    "log-file",
    "cache-dir",
    "daemon",
    "password-command",
    "s3-access-key-id",
    "s3-secret-access-key",
    "s3-endpoint",
    "s3-provider",
    "s3-env-auth",
    "s3-shared-credentials-file",
    "s3-profile",
    "allow-non-empty",
    "allow-root",
    "allow-other",
    "volname",
    "devname",
    "metadata",
];

fn option_key_value(token: &str) -> (&str, Option<&str>) {
    match token.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (token, None),
    }
}

fn safe_value(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.,:@%+-".contains(c))
}

fn safe_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Check user options against the allow-list of safe shapes for `kind`:
/// s3fs takes `-o key[=value]` (or `key[=value]`, which gets its `-o`),
/// rclone takes `--flag[=value]`. Values may not name paths.
pub fn validate_options(kind: Kind, words: &[String]) -> Result<Vec<String>> {
    let bad = |w: &str, why: &str| Error::invalid("options", format!("{w:?}: {why}"));
    let mut out = Vec::new();
    match kind {
        Kind::S3fs => {
            let mut it = words.iter();
            while let Some(w) = it.next() {
                let opt = if w == "-o" {
                    it.next().ok_or_else(|| bad(w, "-o needs a value"))?
                } else {
                    w
                };
                for part in opt.split(',') {
                    let (k, v) = option_key_value(part);
                    if !safe_key(k) || k.starts_with('-') {
                        return Err(bad(part, "not of the form key[=value]"));
                    }
                    if S3FS_DENY.contains(&k) {
                        return Err(bad(part, "set by bindery or not allowed"));
                    }
                    if v.is_some_and(|v| !safe_value(v)) {
                        return Err(bad(part, "value may only contain [A-Za-z0-9_.,:@%+-]"));
                    }
                    out.push("-o".to_string());
                    out.push(part.to_string());
                }
            }
        }
        Kind::Rclone => {
            for w in words {
                let flag = w
                    .strip_prefix("--")
                    .ok_or_else(|| bad(w, "must be --flag or --flag=value"))?;
                let (k, v) = option_key_value(flag);
                if !safe_key(k) {
                    return Err(bad(w, "must be --flag or --flag=value"));
                }
                if RCLONE_DENY.contains(&k) || k.starts_with("rc-") {
                    return Err(bad(w, "set by bindery or not allowed"));
                }
                if v.is_some_and(|v| !safe_value(v)) {
                    return Err(bad(w, "value may only contain [A-Za-z0-9_.,:@%+-]"));
                }
                out.push(w.clone());
            }
        }
        Kind::Fuse => {
            if !words.is_empty() {
                return Err(Error::invalid(
                    "options",
                    "not used with mounter fuse: put arguments in command",
                ));
            }
        }
    }
    Ok(out)
}

fn parse_id(field: &str, v: Option<&String>) -> Result<Option<u32>> {
    v.map(|s| {
        s.parse::<u32>()
            .map_err(|_| Error::invalid(field.to_string(), format!("{s:?} is not a number")))
    })
    .transpose()
}

/// S3 bucket names: 3–63 of [a-z0-9.-]; refuse anything else before it
/// reaches a command line.
pub fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
}

/// Prefixes: relative key paths without empty, `.` or `..` segments.
pub fn valid_prefix(p: &str) -> bool {
    p.is_empty()
        || (p.len() <= 512
            && p.split('/').all(|s| {
                !s.is_empty()
                    && s != "."
                    && s != ".."
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.=+@".contains(c))
            }))
}

/// The mounter kind recorded in already validated parameters.
pub fn kind_of(params: &HashMap<String, String>) -> Kind {
    match params.get("mounter").map(String::as_str) {
        Some("rclone") => Kind::Rclone,
        Some("fuse") => Kind::Fuse,
        _ => Kind::S3fs,
    }
}

/// Build a MountSpec from volume parameters (volume context) and secrets.
/// `volume_id` of a static PV is `bucket` or `bucket/prefix`; parameters win.
pub fn parse_spec(
    volume_id: &str,
    params: &HashMap<String, String>,
    secrets: &HashMap<String, String>,
    allowed_programs: &[String],
) -> Result<MountSpec> {
    let mut unknown: Vec<&str> = params
        .keys()
        .map(String::as_str)
        .filter(|k| !PARAM_KEYS.contains(k) && !is_co_key(k))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(Error::invalid(
            "volume_context",
            format!("unknown parameters: {}", unknown.join(", ")),
        ));
    }
    let kind = match params.get("mounter").map(String::as_str) {
        None | Some("" | "s3fs" | "rclone" | "fuse") => kind_of(params),
        Some(other) => {
            return Err(Error::invalid(
                "volume_context.mounter",
                format!("{other:?}: expected s3fs, rclone or fuse"),
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
            format!("{bucket:?} is not a valid bucket name"),
        ));
    }
    if !valid_prefix(&prefix) {
        return Err(Error::invalid(
            "volume_context.prefix",
            format!("{prefix:?} is not a valid key prefix"),
        ));
    }
    let words = shell_words(params.get("options").map(String::as_str).unwrap_or(""))?;
    let options = validate_options(kind, &words)?;
    let umask = params
        .get("umask")
        .map(|s| {
            u32::from_str_radix(s, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    Error::invalid(
                        "volume_context.umask",
                        format!("{s:?} is not an octal mode"),
                    )
                })
        })
        .transpose()?;
    let command = if kind == Kind::Fuse {
        let words = shell_words(params.get("command").map(String::as_str).unwrap_or(""))?;
        let program = words
            .first()
            .ok_or(Error::MissingField("volume_context.command"))?;
        if !allowed_programs.iter().any(|p| p == program) {
            return Err(Error::invalid(
                "volume_context.command",
                format!(
                    "program {program:?} is not allowed on this node (allowed: {})",
                    allowed_programs.join(", ")
                ),
            ));
        }
        if !words.iter().any(|w| w.contains("{mountpoint}")) {
            return Err(Error::invalid(
                "volume_context.command",
                "must contain {mountpoint}",
            ));
        }
        words
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
    if kind != Kind::Fuse && secrets.endpoint.is_empty() {
        return Err(Error::MissingField("secrets.endpoint"));
    }
    Ok(MountSpec {
        kind,
        bucket,
        prefix,
        options,
        uid: parse_id("volume_context.uid", params.get("uid"))?,
        gid: parse_id("volume_context.gid", params.get("gid"))?,
        umask,
        command,
        secrets,
    })
}

/// Replace every secret value in `text` with `***`.
pub fn mask_secrets(text: &str, secrets: &Secrets) -> String {
    secrets
        .sensitive()
        .into_iter()
        .fold(text.to_string(), |t, s| t.replace(s, "***"))
}

/// The last `max` bytes of a mounter's log, secrets masked.
pub fn log_tail(log: &Path, max: u64, secrets: &Secrets) -> String {
    let mut buf = String::new();
    if let Ok(mut f) = fs::File::open(log) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        buf = String::from_utf8_lossy(&bytes).into_owned();
    }
    let t = mask_secrets(buf.trim(), secrets);
    if t.is_empty() {
        "(no output)".into()
    } else {
        t.replace('\n', " | ")
    }
}

/// Files of a volume's private directory.
pub struct VolumeFiles {
    pub dir: PathBuf,
    pub passwd: PathBuf,
    pub log: PathBuf,
    pub cache: PathBuf,
}

impl VolumeFiles {
    pub fn new(dir: PathBuf) -> Self {
        VolumeFiles {
            passwd: dir.join("passwd"),
            log: dir.join("mounter.log"),
            cache: dir.join("cache"),
            dir,
        }
    }

    /// Remove credentials, logs and caches of the volume.
    pub fn remove(&self) -> Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &self.dir, e)),
        }
    }
}

fn substitute(word: &str, vars: &BTreeMap<&str, String>) -> String {
    vars.iter().fold(word.to_string(), |w, (k, v)| {
        w.replace(&format!("{{{k}}}"), v)
    })
}

/// The command line (and environment) of the mounter for `spec` at `mnt`.
/// Writes the s3fs credential file. Never puts a secret in argv.
pub fn command(spec: &MountSpec, mnt: &Path, files: &VolumeFiles) -> Result<Command> {
    private_dir(&files.dir)?;
    let s = &spec.secrets;
    let mut cmd;
    match spec.kind {
        Kind::S3fs => {
            write_atomic(
                &files.passwd,
                format!("{}:{}\n", s.access_key_id, s.secret_access_key).as_bytes(),
            )?;
            cmd = Command::new("s3fs");
            let source = if spec.prefix.is_empty() {
                spec.bucket.clone()
            } else {
                format!("{}:/{}", spec.bucket, spec.prefix)
            };
            cmd.arg(source).arg(mnt).arg("-f");
            cmd.args(["-o", "allow_other", "-o", "use_path_request_style"]);
            cmd.arg("-o").arg(format!("url={}", s.endpoint));
            cmd.arg("-o")
                .arg(format!("passwd_file={}", files.passwd.display()));
            if !s.region.is_empty() {
                cmd.arg("-o").arg(format!("endpoint={}", s.region));
            }
            if let Some(uid) = spec.uid {
                cmd.arg("-o").arg(format!("uid={uid}"));
            }
            if let Some(gid) = spec.gid {
                cmd.arg("-o").arg(format!("gid={gid}"));
            }
            if let Some(m) = spec.umask {
                cmd.arg("-o").arg(format!("umask={m:04o}"));
            }
            cmd.args(&spec.options);
        }
        Kind::Rclone => {
            cmd = Command::new("rclone");
            let remote = if spec.prefix.is_empty() {
                format!(":s3:{}", spec.bucket)
            } else {
                format!(":s3:{}/{}", spec.bucket, spec.prefix)
            };
            cmd.arg("mount").arg(remote).arg(mnt);
            // Write-back after 1 s instead of 5 s: unstage waits for it.
            cmd.args([
                "--allow-other",
                "--vfs-cache-mode",
                "writes",
                "--vfs-write-back",
                "1s",
            ]);
            cmd.arg("--cache-dir").arg(&files.cache);
            if let Some(uid) = spec.uid {
                cmd.arg(format!("--uid={uid}"));
            }
            if let Some(gid) = spec.gid {
                cmd.arg(format!("--gid={gid}"));
            }
            if let Some(m) = spec.umask {
                cmd.arg(format!("--umask={m:04o}"));
            }
            cmd.args(&spec.options);
            cmd.env("RCLONE_CONFIG", "/dev/null")
                .env("RCLONE_S3_PROVIDER", "Other")
                .env("RCLONE_S3_ENDPOINT", &s.endpoint)
                .env("RCLONE_S3_ACCESS_KEY_ID", &s.access_key_id)
                .env("RCLONE_S3_SECRET_ACCESS_KEY", &s.secret_access_key);
            if !s.region.is_empty() {
                cmd.env("RCLONE_S3_REGION", &s.region);
            }
        }
        Kind::Fuse => {
            let vars: BTreeMap<&str, String> = [
                ("mountpoint", mnt.display().to_string()),
                ("bucket", spec.bucket.clone()),
                ("prefix", spec.prefix.clone()),
                ("endpoint", s.endpoint.clone()),
                ("region", s.region.clone()),
                ("uid", spec.uid.map(|u| u.to_string()).unwrap_or_default()),
                ("gid", spec.gid.map(|g| g.to_string()).unwrap_or_default()),
            ]
            .into_iter()
            .collect();
            let words: Vec<String> = spec.command.iter().map(|w| substitute(w, &vars)).collect();
            cmd = Command::new(&words[0]);
            cmd.args(&words[1..]);
            cmd.env("AWS_ACCESS_KEY_ID", &s.access_key_id)
                .env("AWS_SECRET_ACCESS_KEY", &s.secret_access_key);
            if !s.region.is_empty() {
                cmd.env("AWS_REGION", &s.region);
            }
        }
    }
    Ok(cmd)
}

/// A running mounter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    pub pid: i32,
    pub start_ticks: u64,
}

/// What a health check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    Abnormal(String),
}

/// How long a health check waits for a FUSE server to answer statfs and a
/// listing before it calls the mount abnormal.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// statfs + a listing of `mnt`, on a helper thread: a FUSE server that hangs
/// would block the caller forever. The helper stays blocked until the server
/// answers or its connection is aborted (healing does that).
fn probe_mount(mnt: &Path, timeout: Duration) -> std::result::Result<(), String> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let path = mnt.to_path_buf();
    let spawned = thread::Builder::new()
        .name("fuse-probe".into())
        .spawn(move || {
            let result = match mount::fs_stats(&path) {
                Ok(s) if s.fuse => fs::read_dir(&path)
                    .and_then(|mut d| d.next().transpose())
                    .map(|_| ())
                    .map_err(|e| format!("listing {}: {e}", path.display())),
                Ok(_) => Err(format!("statfs {}: not a FUSE filesystem", path.display())),
                Err(e) => Err(e.to_string()),
            };
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start a probe thread: {e}"));
    }
    rx.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(format!(
            "{} did not answer within {timeout:?}",
            mnt.display()
        ))
    })
}

/// The mount at `mnt` is FUSE, answers statfs and a listing within
/// `timeout`, and its process is alive (not a zombie, not stopped). Exit
/// codes are not evidence: s3fs exits 0 on bad credentials without
/// mounting, rclone mounts a missing bucket as empty.
pub fn check(mnt: &Path, run: Running, timeout: Duration) -> Health {
    process::reap(run.pid);
    if !process::is_alive(run.pid, run.start_ticks) {
        return Health::Abnormal(format!("mounter process {} is gone", run.pid));
    }
    // A stopped FUSE server makes every call on its mount hang: look at the
    // process first, not the mount.
    if process::stat(run.pid).is_some_and(|s| s.state == 'T' || s.state == 't') {
        return Health::Abnormal(format!("mounter process {} is stopped", run.pid));
    }
    match mountinfo::read_self() {
        Ok(t) => match mountinfo::mount_at(&t, mnt) {
            Some(m) if m.is_fuse() => {}
            Some(m) => {
                return Health::Abnormal(format!("{} is {} not FUSE", mnt.display(), m.fs_type))
            }
            None => return Health::Abnormal(format!("nothing is mounted at {}", mnt.display())),
        },
        Err(e) => return Health::Abnormal(e.to_string()),
    }
    match probe_mount(mnt, timeout) {
        Ok(()) => Health::Ok,
        Err(why) => Health::Abnormal(why),
    }
}

/// Start the mounter for `spec` at `mnt` and wait until it serves the mount.
/// On failure nothing is left behind: the process is stopped, the mount
/// removed, credentials deleted; the error carries the mounter's own output.
///
/// The process is moved into each `--mounter-cgroup` so that a container
/// runtime stopping the daemon's container (which kills what is left in the
/// container's cgroup) does not take the mounts of running pods with it.
pub fn start(
    volume: &str,
    spec: &MountSpec,
    mnt: &Path,
    files: &VolumeFiles,
    cfg: &Config,
) -> Result<Running> {
    let timeout = cfg.mount_timeout;
    let cmd = command(spec, mnt, files)?;
    let _ = fs::remove_file(&files.log);
    let (pid, start_ticks) = match process::spawn_session(cmd, &files.log) {
        Ok(r) => r,
        Err(e) => {
            let _ = files.remove();
            return Err(Error::mounter(
                volume,
                format!("cannot start {}: {e}", spec.kind.as_str()),
            ));
        }
    };
    let run = Running { pid, start_ticks };
    if let Some(e) = cfg
        .mounter_cgroups
        .iter()
        .find_map(|cg| process::move_to_cgroup(pid, cg).err())
    {
        stop(mnt, run, Duration::from_millis(200));
        let _ = files.remove();
        return Err(Error::mounter(volume, format!("--mounter-cgroup: {e}")));
    }
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        last = check(mnt, run, left.max(Duration::from_millis(100)));
        if last == Health::Ok {
            return Ok(run);
        }
        let exited = !process::is_alive(pid, start_ticks);
        if exited || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    abort(mnt);
    stop(mnt, run, Duration::from_millis(200));
    let tail = log_tail(&files.log, 2048, &spec.secrets);
    let _ = files.remove();
    let reason = match last {
        Health::Abnormal(why) => why,
        Health::Ok => String::new(),
    };
    Err(Error::mounter(
        volume,
        format!(
            "{} did not become ready within {:?} ({reason}); mounter output: {tail}",
            spec.kind.as_str(),
            timeout
        ),
    ))
}

/// Files rclone has accepted but not uploaded yet: its VFS cache keeps one
/// JSON metadata file per cached object, with `"Dirty": true` until the
/// upload is done.
pub fn pending_uploads(files: &VolumeFiles) -> Vec<PathBuf> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&p, base, out),
                Ok(t) if t.is_file() => {
                    let dirty = fs::read_to_string(&p)
                        .map(|t| t.replace([' ', '\t', '\n'], "").contains("\"Dirty\":true"))
                        .unwrap_or(false);
                    if dirty {
                        out.push(p.strip_prefix(base).unwrap_or(&p).to_path_buf());
                    }
                }
                _ => {}
            }
        }
    }
    let meta = files.cache.join("vfsMeta");
    let mut out = Vec::new();
    walk(&meta, &meta, &mut out);
    out
}

/// Wait until rclone has uploaded every write it acknowledged: killing it or
/// unmounting earlier would leave them in its cache only. s3fs uploads on
/// close, so it has nothing pending once no file is open.
pub fn wait_for_uploads(
    volume: &str,
    kind: Kind,
    files: &VolumeFiles,
    timeout: Duration,
) -> Result<()> {
    if kind != Kind::Rclone {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    loop {
        let pending = pending_uploads(files);
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::mounter(
                volume,
                format!(
                    "{} file(s) still waiting for upload after {timeout:?} (e.g. {}); \
                     the volume stays staged so that no acknowledged write is lost",
                    pending.len(),
                    pending[0].display()
                ),
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Abort the FUSE connection behind `mnt` (fusectl): calls blocked on a
/// hung or stopped server fail with ENOTCONN instead of hanging the pods.
pub fn abort(mnt: &Path) {
    let Ok(table) = mountinfo::read_self() else {
        return;
    };
    if let Some(m) = mountinfo::mount_at(&table, mnt).filter(|m| m.is_fuse()) {
        match mount::abort_fuse_connection(m.dev.1) {
            Ok(true) => log::info!("aborted the FUSE connection of {}", mnt.display()),
            Ok(false) => {}
            Err(e) => log::warn!("abort FUSE connection of {}: {e}", mnt.display()),
        }
    }
}

/// Unmount `mnt` (lazily if the FUSE side is dead), let the mounter exit by
/// itself (rclone uploads pending writes first), and only after `grace`
/// SIGTERM, then SIGKILL the process group.
pub fn stop(mnt: &Path, run: Running, grace: Duration) {
    if let Err(e) = mount::unmount(mnt) {
        log::warn!("unmount {}: {e}", mnt.display());
    }
    process::stop(run.pid, run.start_ticks, grace);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn secrets() -> HashMap<String, String> {
        map(&[
            ("accessKeyID", "AKIDEXAMPLE"),
            ("secretAccessKey", "SECRETKEY123"),
            ("endpoint", "http://127.0.0.1:9000"),
        ])
    }

    #[test]
    fn words() {
        assert_eq!(
            shell_words(r#"-o a=1  "b c" 'd e' f\ g"#).unwrap(),
            vec!["-o", "a=1", "b c", "d e", "f g"]
        );
        assert!(shell_words("'open").is_err());
        assert!(shell_words("").unwrap().is_empty());
    }

    #[test]
    fn static_volume_ids() {
        let s = parse_spec("my-bucket/a/b", &map(&[]), &secrets(), &[]).unwrap();
        assert_eq!(
            (s.kind, s.bucket.as_str(), s.prefix.as_str()),
            (Kind::S3fs, "my-bucket", "a/b")
        );
        let s = parse_spec(
            "vol",
            &map(&[("bucket", "bkt"), ("mounter", "rclone")]),
            &secrets(),
            &[],
        )
        .unwrap();
        assert_eq!(
            (s.kind, s.bucket.as_str(), s.prefix.as_str()),
            (Kind::Rclone, "bkt", "")
        );
        let s = parse_spec("bkt/pvc-1", &map(&[("bucket", "bkt")]), &secrets(), &[]).unwrap();
        assert_eq!(s.prefix, "pvc-1");
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("bucket", "b"), ("colour", "x")], "colour"),
            (&[("bucket", "Bad_Bucket")], "bucket"),
            (&[("bucket", "bkt"), ("prefix", "a/../b")], "prefix"),
            (&[("bucket", "bkt"), ("mounter", "goofys")], "mounter"),
            (
                &[("bucket", "bkt"), ("options", "-o passwd_file=/etc/x")],
                "options",
            ),
            (
                &[("bucket", "bkt"), ("options", "-o use_cache=/tmp")],
                "options",
            ),
            (
                &[
                    ("bucket", "bkt"),
                    ("mounter", "rclone"),
                    ("options", "--config=/x"),
                ],
                "options",
            ),
            (
                &[("bucket", "bkt"), ("mounter", "rclone"), ("options", "-v")],
                "options",
            ),
            (&[("bucket", "bkt"), ("uid", "root")], "uid"),
            (&[("bucket", "bkt"), ("umask", "999")], "umask"),
            (
                &[
                    ("bucket", "bkt"),
                    ("mounter", "fuse"),
                    ("command", "sh -c {mountpoint}"),
                ],
                "command",
            ),
            (&[("bucket", "bkt"), ("command", "x")], "command"),
        ];
        for (params, needle) in cases {
            let e = parse_spec("v", &map(params), &secrets(), &["geesefs".into()]).unwrap_err();
            assert!(e.to_string().contains(needle), "{params:?}: {e}");
            assert_eq!(e.code(), grpcio::RpcStatusCode::INVALID_ARGUMENT);
            assert!(!e.to_string().contains("SECRETKEY123"));
        }
        let e = parse_spec("bkt", &map(&[]), &map(&[]), &[]).unwrap_err();
        assert!(e.to_string().contains("secrets.endpoint"), "{e}");
    }

    #[test]
    fn allowed_options_pass() {
        let s = parse_spec(
            "bkt",
            &map(&[(
                "options",
                "-o max_stat_cache_size=1000 stat_cache_expire=30,enable_noobj_cache",
            )]),
            &secrets(),
            &[],
        )
        .unwrap();
        assert_eq!(
            s.options,
            vec![
                "-o",
                "max_stat_cache_size=1000",
                "-o",
                "stat_cache_expire=30",
                "-o",
                "enable_noobj_cache"
            ]
        );
        let s = parse_spec(
            "bkt",
            &map(&[
                ("mounter", "rclone"),
                ("options", "--vfs-cache-max-age=1h --dir-cache-time=5s"),
            ]),
            &secrets(),
            &[],
        )
        .unwrap();
        assert_eq!(s.options.len(), 2);
    }

    #[test]
    fn secrets_stay_out_of_argv() {
        let dir = std::env::temp_dir().join(format!("bindery-cmd-{}", std::process::id()));
        let files = VolumeFiles::new(dir.clone());
        for mounter in ["s3fs", "rclone"] {
            let spec = parse_spec("bkt/p", &map(&[("mounter", mounter)]), &secrets(), &[]).unwrap();
            let cmd = command(&spec, Path::new("/mnt/x"), &files).unwrap();
            let argv: Vec<String> = cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let joined = argv.join(" ");
            assert!(
                !joined.contains("SECRETKEY123") && !joined.contains("AKIDEXAMPLE"),
                "{joined}"
            );
        }
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&files.passwd).unwrap().mode() & 0o777, 0o600);
        files.remove().unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn masking() {
        let s = Secrets::from_map(&secrets());
        assert_eq!(
            mask_secrets("auth AKIDEXAMPLE:SECRETKEY123 failed", &s),
            "auth ***:*** failed"
        );
    }
}
