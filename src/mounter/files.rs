//! A volume's private directory: credentials, the mounter's log and
//! rclone's VFS cache, and what may be removed when.
//!
//! The cache holds writes rclone acknowledged but has not uploaded yet: it
//! is the only copy of them. It survives every failed start and every heal;
//! only an unstage that has seen every upload finish removes it.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use super::kind::Kind;
use super::values::{mask_secrets, Secrets};

/// A mounter log is cut to its last LOG_KEEP bytes once it grows past
/// LOG_MAX (checked on every health check).
pub const LOG_MAX: u64 = 1024 * 1024;
pub const LOG_KEEP: u64 = 64 * 1024;

/// Files of a volume's private directory.
pub struct VolumeFiles {
    pub dir: PathBuf,
    pub passwd: PathBuf,
    pub log: PathBuf,
    pub cache: PathBuf,
}

fn remove_file(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", p, e)),
    }
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

    /// Remove the credential file (s3fs reads it once, at start).
    pub fn remove_credentials(&self) -> Result<()> {
        remove_file(&self.passwd)?;
        remove_file(&self.passwd.with_extension("tmp"))
    }

    /// What a failed start may remove: credentials and the log, never the
    /// cache (it may hold acknowledged writes of an earlier mounter).
    pub fn remove_after_failure(&self) -> Result<()> {
        self.remove_credentials()?;
        remove_file(&self.log)?;
        remove_empty_dirs(&self.dir);
        Ok(())
    }

    /// Remove everything (credentials, log, cache), but only when no upload
    /// is pending in the cache: otherwise nothing but the credentials is
    /// removed and the error says how many files wait. This is what an
    /// unstage does after `wait_for_uploads`.
    pub fn remove_all_after_uploads(&self, volume: &str) -> Result<()> {
        let pending = pending_uploads(self);
        if !pending.is_empty() {
            self.remove_credentials()?;
            return Err(Error::mounter(
                volume,
                format!(
                    "{} file(s) of rclone's cache are not uploaded yet (e.g. {}); \
                     the cache is kept",
                    pending.len(),
                    pending[0].display()
                ),
            ));
        }
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &self.dir, e)),
        }
    }

    /// `remove_all_after_uploads`: the whole directory goes only when no
    /// upload is pending; a cache holding unuploaded writes is never removed.
    pub fn remove(&self) -> Result<()> {
        let volume = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.remove_all_after_uploads(&volume)
    }
}

/// Remove `dir` and the directories below it that hold no file (bottom
/// up); a directory with any file in its subtree stays.
fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&e.path());
            }
        }
    }
    // Fails (and is meant to) when something is left inside.
    let _ = fs::remove_dir(dir);
}

fn read_tail(log: &Path, max: u64, secrets: &Secrets) -> String {
    let mut buf = String::new();
    if let Ok(mut f) = fs::File::open(log) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
        let mut bytes = Vec::new();
        let _ = f.take(max).read_to_end(&mut bytes);
        buf = String::from_utf8_lossy(&bytes).into_owned();
    }
    mask_secrets(buf.trim(), secrets)
}

/// The last non-empty line of a mounter's log, secrets masked, at most 300
/// bytes: what an error message quotes.
pub fn last_line(log: &Path, secrets: &Secrets) -> String {
    let t = read_tail(log, 4096, secrets);
    match t.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
        Some(l) => crate::error::truncate(l, 300),
        None => "(no output)".into(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn files(tag: &str) -> VolumeFiles {
        let dir = std::env::temp_dir().join(format!("bindery-files-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("cache/vfsMeta/bkt")).unwrap();
        let f = VolumeFiles::new(dir);
        fs::write(&f.passwd, "a:b\n").unwrap();
        fs::write(&f.log, "started\n").unwrap();
        f
    }

    #[test]
    fn a_cache_with_pending_uploads_is_never_removed() {
        let f = files("pending");
        let meta = f.cache.join("vfsMeta/bkt/file.bin");
        fs::write(&meta, r#"{"Dirty": true}"#).unwrap();
        fs::create_dir_all(f.cache.join("vfs/empty")).unwrap();
        f.remove_after_failure().unwrap();
        assert!(!f.passwd.exists() && !f.log.exists());
        assert!(meta.exists());
        assert!(!f.cache.join("vfs").exists(), "empty dirs stay");
        let e = f.remove().unwrap_err();
        assert!(e.to_string().contains("not uploaded"), "{e}");
        assert!(meta.exists(), "cache removed with a pending upload");
        fs::write(&meta, r#"{"Dirty": false}"#).unwrap();
        f.remove_all_after_uploads("v").unwrap();
        assert!(!f.dir.exists());
    }

    #[test]
    fn last_line_is_masked_and_short() {
        let f = files("line");
        let s = Secrets {
            secret_access_key: "SECRETKEY123".into(),
            ..Default::default()
        };
        fs::write(
            &f.log,
            format!("a\nauth SECRETKEY123 failed {}\n\n", "x".repeat(1000)),
        )
        .unwrap();
        let l = last_line(&f.log, &s);
        assert!(l.starts_with("auth *** failed") && l.len() <= 300, "{l}");
        f.remove_after_failure().unwrap();
        assert!(!f.dir.exists(), "an empty volume dir stays after a failure");
    }
}
