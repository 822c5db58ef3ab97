//! The golden store: immutable, versioned copies of each declared cache.
//!
//! ```text
//! <root>/<name>/                     mode 0700 (pods reach files through links/mounts only)
//!   <version>/                       a complete tree: files root:root, a-w, no setuid;
//!                                    dirs root:root 0755
//!   .tmp-<version>/                  a build in progress (or a crash's leftover, see gc)
//!   .meta/<version>.manifest         outside the tree, so pods never see it
//!   .meta/<version>.retired          this version is never handed out again
//!   .meta/<version>.verity           every file of the version is sealed with fs-verity
//!   .v-<version>-<key>/              a variant of a version: the same content with other
//!                                    owners/modes (overlay lower dirs per pod owner) or
//!                                    inodes of its own (writable hardlink publishes)
//!   .meta/<version>-<key>.manifest   a variant's manifest
//!   current                          the version to hand out (text, replaced by rename)
//!   .lock                            flock: one build/retire/gc of a cache at a time,
//!                                    across processes (daemon and `bindery cache build`)
//! ```
//! A version is the build's start time in unix nanoseconds, zero-padded to 20 digits, so
//! string order is time order. On btrfs, versions and variants are subvolumes made
//! read-only once complete (`create_tree`, `freeze_tree`): a pod's `snapshot` is one
//! ioctl, and `remove_tree` destroys them whole. Caches whose strategies name hardlink
//! keep plain directories (`with_plain_dirs`): linkat out of a subvolume is EXDEV.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use nix::errno::Errno;

use crate::cache::manifest::{Confirmed, Manifest};
use crate::cache::populate::{populate_masked, Owner, Strategy};
use crate::cache::remove::remove_tree;
use crate::error::{Error, Result};
use crate::sys::{btrfs, fs};

pub mod pin;
mod variant;

const TMP_PREFIX: &str = ".tmp-";
const META: &str = ".meta";
const VARIANT_PREFIX: &str = ".v-";
/// Keys of the variants made for a pod owner (uid/gid/mode/fsGroup), which
/// `max_variants` bounds and `gc_variants` collects.
pub const OWNER_VARIANT_PREFIX: &str = "o-";

/// What bounds a new variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VariantLimit {
    /// At most this many owner variants per version.
    Owners(u32),
    /// The one shared variant of a version (writable hardlink publishes).
    Shared,
}

/// A golden version id: 20 decimal digits (unix nanoseconds at build start).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(String);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit())).then(|| Version(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn from_nanos(n: u128) -> Version {
        Version(format!("{n:020}"))
    }

    fn nanos(&self) -> u128 {
        // Parse only accepts 20 digits, which always fit in a u128.
        self.0.parse().unwrap_or(0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Versions in use by publications in flight or live, by (cache, version): `gc`
/// never removes a pinned version.
type Pins = Arc<Mutex<HashMap<(String, String), usize>>>;

fn lock_pins(p: &Pins) -> std::sync::MutexGuard<'_, HashMap<(String, String), usize>> {
    match p.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The golden copies of all caches under one root (`<state-dir>/golden`).
#[derive(Clone, Debug)]
pub struct GoldenStore {
    root: PathBuf,
    threads: usize,
    pins: Pins,
    /// Seal every file of new versions with fs-verity (only where a probe showed it works).
    verity: bool,
    /// Caches whose versions stay plain directories on btrfs: those whose
    /// strategies name hardlink (linkat out of a subvolume is EXDEV).
    plain: Arc<HashSet<String>>,
}

impl GoldenStore {
    /// A store under `root` (created on first build). Builds copy with 4 threads.
    pub fn new(root: &Path) -> GoldenStore {
        GoldenStore {
            root: root.to_path_buf(),
            threads: 4,
            verity: false,
            pins: Pins::default(),
            plain: Arc::default(),
        }
    }

    /// Build the versions of the caches `names` as plain directories even on
    /// btrfs, where the others are read-only subvolumes: hardlink pods link
    /// their files, and linkat out of a subvolume fails with EXDEV.
    pub fn with_plain_dirs(mut self, names: impl IntoIterator<Item = String>) -> GoldenStore {
        self.plain = Arc::new(names.into_iter().collect());
        self
    }

    /// Whether versions of `name` are built as subvolumes where the store is on btrfs.
    fn subvolumes(&self, name: &str) -> bool {
        !self.plain.contains(name)
    }

    /// Seal the files of versions built from now on with fs-verity.
    pub fn with_verity(mut self, on: bool) -> GoldenStore {
        self.verity = on;
        self
    }

    /// Threads used to copy a source tree into a new version.
    pub fn with_threads(mut self, threads: usize) -> GoldenStore {
        self.threads = threads.max(1);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cache, version and variant key (None: the version itself) whose
    /// tree `path` is.
    pub fn layer_at(&self, path: &Path) -> Option<(String, Version, Option<String>)> {
        let rel = path.strip_prefix(&self.root).ok()?;
        let mut parts = rel.components();
        let name = parts.next()?.as_os_str().to_str()?;
        let entry = parts.next()?.as_os_str().to_str()?;
        if parts.next().is_some() || check_name(name).is_err() {
            return None;
        }
        let (version, key) = match entry.strip_prefix(VARIANT_PREFIX) {
            Some(variant) => {
                let key = variant.get(20..)?.strip_prefix('-')?;
                if key.is_empty() {
                    return None;
                }
                (variant.get(..20)?, Some(key.to_string()))
            }
            None => (entry, None),
        };
        Some((name.to_string(), Version::parse(version)?, key))
    }

    /// Where `version` of cache `name` lives (whether or not it exists).
    pub fn path(&self, name: &str, version: &Version) -> PathBuf {
        self.root.join(name).join(version.as_str())
    }

    fn cache_dir(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }

    fn meta_path(&self, name: &str, version: &Version, ext: &str) -> PathBuf {
        self.root
            .join(name)
            .join(META)
            .join(format!("{version}.{ext}"))
    }

    fn lock(&self, name: &str) -> Result<fs::LockGuard> {
        let dir = self.cache_dir(name)?;
        std::fs::create_dir_all(dir.join(META)).map_err(|e| Error::io("create", &dir, e))?;
        let d = fs::open_dir(&dir)?;
        fs::fchmod(d.as_fd(), 0o700).map_err(|e| Error::sys("fchmod", &dir, e))?;
        fs::lock_exclusive(&dir.join(".lock"))
    }

    /// Build a new version of `name` from the directory `source`, make it current, and
    /// return it. Copies into `.tmp-<version>` (files root:root, read-only, setuid and
    /// setgid dropped, mtimes kept; dirs root:root 0755; fifos/sockets/devices left
    /// out; symlinks kept as they are), writes the manifest beside the tree, syncs the
    /// filesystem, then renames into place and updates `current`. Holds the cache's
    /// lock throughout; a failed build leaves nothing but what `gc` cleans.
    pub fn build_from_dir(&self, name: &str, source: &Path) -> Result<Version> {
        let started = Instant::now();
        let _lock = self.lock(name)?;
        let dir = self.cache_dir(name)?;
        let source =
            std::fs::canonicalize(source).map_err(|e| Error::io("resolve source", source, e))?;
        let version = self.next_version(name)?;
        let tmp_name = format!("{TMP_PREFIX}{version}");
        let tmp = dir.join(&tmp_name);
        let result = (|| {
            create_tree(&dir, &tmp_name, self.subvolumes(name))?;
            let root = Owner {
                uid: Some(0),
                gid: Some(0),
                mode: Some(0o755),
                group_writable: false,
            };
            let stats = populate_masked(&source, &tmp, Strategy::Copy, &root, self.threads, 0o555)?;
            if self.verity {
                seal_tree(&tmp)?;
                let marker = self.meta_path(name, &version, "verity");
                fs::create_file(&marker, true)?;
            }
            freeze_tree(&tmp)?;
            let manifest = Manifest::scan(&tmp)?;
            manifest.write_to(&self.meta_path(name, &version, "manifest"))?;
            let tmp_fd = fs::open_dir(&tmp)?;
            fs::syncfs(tmp_fd.as_fd(), &tmp)?;
            let dir_fd = fs::open_dir(&dir)?;
            fs::rename_at(
                dir_fd.as_fd(),
                OsStr::new(&tmp_name),
                dir_fd.as_fd(),
                OsStr::new(version.as_str()),
            )
            .map_err(|e| Error::sys("rename into place", &tmp, e))?;
            self.set_current(name, Some(&version))?;
            Ok(stats)
        })();
        match result {
            Ok(stats) => {
                info!(
                    "cache {name}: built version {version} from {} in {:?} ({} files, {} dirs, \
                     {} symlinks, {} bytes, {} skipped)",
                    source.display(),
                    started.elapsed(),
                    stats.files,
                    stats.dirs,
                    stats.symlinks,
                    stats.bytes,
                    stats.skipped
                );
                Ok(version)
            }
            Err(e) => {
                if let Err(e2) = remove_tree(&tmp) {
                    warn!("cache {name}: cannot clean up failed build: {e2}");
                }
                let _ = fs::unlink_path(&self.meta_path(name, &version, "manifest"), false);
                Err(e)
            }
        }
    }

    /// A version id newer than every existing one, even if the clock went back.
    fn next_version(&self, name: &str) -> Result<Version> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let newest = self.versions(name)?.last().map(Version::nanos).unwrap_or(0);
        Ok(Version::from_nanos(now.max(newest + 1)))
    }

    /// Point `current` at `version` (None removes it): temp file, fsync, rename, fsync dir.
    fn set_current(&self, name: &str, version: Option<&Version>) -> Result<()> {
        let dir = self.cache_dir(name)?;
        let cur = dir.join("current");
        match version {
            Some(v) => {
                let tmp = dir.join(".current.tmp");
                let mut f = fs::create_file(&tmp, true)?;
                f.write_all(format!("{v}\n").as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| Error::io("write", &tmp, e))?;
                fs::rename_path(&tmp, &cur)?;
            }
            None => match fs::unlink_path(&cur, false) {
                Err(e) if e.errno() != Some(nix::errno::Errno::ENOENT) => return Err(e),
                _ => {}
            },
        }
        let d = fs::open_dir(&dir)?;
        fs::fsync(d.as_fd(), &dir)
    }

    /// The version to hand out to new volumes: what `current` names if it is complete
    /// and not retired, else the newest version that is. None: nothing built yet.
    pub fn current(&self, name: &str) -> Result<Option<Version>> {
        let dir = self.cache_dir(name)?;
        let cur = dir.join("current");
        let pointed = match std::fs::read_to_string(&cur) {
            Ok(s) => Version::parse(s.trim()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("read", &cur, e)),
        };
        if let Some(v) = pointed {
            if self.path(name, &v).is_dir() && !self.is_retired(name, &v) {
                return Ok(Some(v));
            }
        }
        Ok(self
            .versions(name)?
            .into_iter()
            .rev()
            .find(|v| !self.is_retired(name, v)))
    }

    /// Complete versions of `name` (retired ones included), oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<Version>> {
        let dir = self.cache_dir(name)?;
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &dir, e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("read", &dir, e))?;
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if let (true, Some(v)) = (is_dir, entry.file_name().to_str().and_then(Version::parse)) {
                out.push(v);
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn is_retired(&self, name: &str, version: &Version) -> bool {
        self.meta_path(name, version, "retired").exists()
    }

    /// The manifest written when `version` was built.
    pub fn manifest(&self, name: &str, version: &Version) -> Result<Manifest> {
        check_name(name)?;
        Manifest::read_from(&self.meta_path(name, version, "manifest"))
    }

    /// Golden entries of `version` changed since it was built (empty: intact).
    #[cfg(test)]
    pub fn verify(&self, name: &str, version: &Version) -> Result<Vec<PathBuf>> {
        self.verify_with(name, version, &mut Confirmed::new())
    }

    /// `verify`, hashing only files whose ctime moved since `confirmed` saw them intact.
    pub fn verify_with(
        &self,
        name: &str,
        version: &Version,
        confirmed: &mut Confirmed,
    ) -> Result<Vec<PathBuf>> {
        self.manifest(name, version)?
            .verify_with(&self.path(name, version), confirmed)
    }

    /// Mark `version` as never to be handed out again (it was tampered with); if it was
    /// current, `current` moves to the newest other non-retired version (or goes away).
    /// The tree stays until `gc` finds it unused. Rebuilding is the caller's job.
    pub fn retire(&self, name: &str, version: &Version) -> Result<()> {
        let _lock = self.lock(name)?;
        let marker = self.meta_path(name, version, "retired");
        let f = fs::create_file(&marker, true)?;
        f.sync_all().map_err(|e| Error::io("fsync", &marker, e))?;
        warn!("cache {name}: version {version} retired");
        let next = self
            .versions(name)?
            .into_iter()
            .rev()
            .find(|v| v != version && !self.is_retired(name, v));
        self.set_current(name, next.as_ref())
    }

    /// Delete versions that are neither current nor in `in_use` (version strings of
    /// published volumes, and of populations in flight), their metadata, and leftovers
    /// of crashed builds. Returns the versions deleted.
    pub fn gc(&self, name: &str, in_use: &HashSet<String>) -> Result<Vec<Version>> {
        let _lock = self.lock(name)?;
        let dir = self.cache_dir(name)?;
        let current = self.current(name)?;
        let mut removed = Vec::new();
        let dfd = fs::open_dir(&dir)?;
        for v in self.versions(name)? {
            if Some(&v) == current.as_ref() || in_use.contains(v.as_str()) {
                continue;
            }
            {
                // Checked and moved aside under the pins lock: see current_pinned.
                let pins = lock_pins(&self.pins);
                if pins.contains_key(&(name.to_string(), v.as_str().to_string())) {
                    continue;
                }
                let aside = format!("{TMP_PREFIX}gc-{v}");
                fs::rename_at(
                    dfd.as_fd(),
                    OsStr::new(v.as_str()),
                    dfd.as_fd(),
                    OsStr::new(&aside),
                )
                .map_err(|e| Error::sys("rename aside", self.path(name, &v), e))?;
            }
            for key in self.variants(name, &v)? {
                self.variant_aside(name, &v, &key)?;
            }
            for ext in ["manifest", "retired", "verity"] {
                let _ = fs::unlink_path(&self.meta_path(name, &v, ext), false);
            }
            info!("cache {name}: removed unused version {v}");
            removed.push(v);
        }
        // We hold the lock: no build is running, any .tmp-* is a crash's leftover.
        let rd = std::fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("read", &dir, e))?;
            let fname = entry.file_name();
            if let Some(v) = fname.to_str().and_then(|s| s.strip_prefix(TMP_PREFIX)) {
                remove_tree(&entry.path())?;
                if let Some(v) = Version::parse(v) {
                    let _ = fs::unlink_path(&self.meta_path(name, &v, "manifest"), false);
                }
                info!(
                    "cache {name}: removed unfinished build {}",
                    entry.path().display()
                );
            }
        }
        Ok(removed)
    }
}

/// Create `name` in `dir`, where a version or variant is built: with
/// `subvolume`, a btrfs subvolume where the store is on btrfs (pods then get
/// it by one O(1) snapshot, the `snapshot` strategy), else a plain directory.
pub(super) fn create_tree(dir: &Path, name: &str, subvolume: bool) -> Result<()> {
    let path = dir.join(name);
    let dfd = fs::open_dir(dir)?;
    if subvolume && btrfs::is_btrfs(dfd.as_fd()).unwrap_or(false) {
        let cname = std::ffi::CString::new(name)
            .map_err(|_| Error::invalid("cache", format!("{name:?}: NUL byte")))?;
        match btrfs::create_subvolume(dfd.as_fd(), &cname) {
            Ok(()) => return Ok(()),
            Err(e) => warn!(
                "{}: no btrfs subvolume ({e}); a plain directory, which the snapshot \
                 strategy cannot use",
                path.display()
            ),
        }
    }
    std::fs::create_dir(&path).map_err(|e| Error::io("create", &path, e))
}

/// Make a finished tree read-only if it is a btrfs subvolume: not even root
/// writes into it then without first clearing the flag, and every snapshot
/// of it starts from the bytes its manifest records.
pub(super) fn freeze_tree(path: &Path) -> Result<()> {
    let fd = fs::open_dir(path)?;
    if btrfs::is_subvolume(fd.as_fd()).unwrap_or(false) {
        btrfs::set_read_only(fd.as_fd(), true)
            .map_err(|e| Error::sys("make subvolume read-only", path, e))?;
    }
    Ok(())
}

/// Seal every regular file below `dir` with fs-verity (reopened read-only: the
/// kernel refuses to seal a file that is open for writing).
fn seal_tree(dir: &Path) -> Result<()> {
    super::manifest::walk_tree(dir, fs::open_dir(dir)?, |fd, name, child, st| {
        if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG {
            let f =
                fs::open_file_at(fd, name).map_err(|e| Error::sys("open", dir.join(child), e))?;
            fs::enable_verity(f.as_fd())
                .map_err(|e| Error::sys("FS_IOC_ENABLE_VERITY", dir.join(child), e))?;
        }
        Ok(())
    })
}

/// Whether the filesystem of `store` seals files with fs-verity: enables it on a
/// scratch file (then removes it). Err(errno) says why not (EOPNOTSUPP, ENOTTY).
pub fn probe_verity(store: &Path) -> std::result::Result<(), Errno> {
    let name = format!(".verity-probe-{}", std::process::id());
    let p = store.join(&name);
    let run = || -> std::result::Result<(), Errno> {
        let mut f = fs::create_file(&p, true).map_err(|e| e.errno().unwrap_or(Errno::EIO))?;
        f.write_all(&[0x5a; 4096]).map_err(|_| Errno::EIO)?;
        drop(f);
        let dfd = fs::open_dir(store).map_err(|e| e.errno().unwrap_or(Errno::EIO))?;
        let c = std::ffi::CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
        let f = fs::open_file_at(dfd.as_fd(), &c)?;
        fs::enable_verity(f.as_fd())
    };
    let r = run();
    let _ = fs::unlink_path(&p, false);
    r
}

/// Cache names are path components under our control: `[A-Za-z0-9._-]`, not starting with '.'.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "cache",
            format!("invalid cache name {name:?}: use letters, digits, '.', '_', '-', not starting with '.'"),
        ))
    }
}

#[cfg(test)]
mod tests;
