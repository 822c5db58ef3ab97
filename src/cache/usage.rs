//! Space used by pods' cache trees, measured off the request path.
//!
//! A pod controls its tree: it can make it huge, deep, or full of symlinks. The walk
//! is fd-relative (`openat2(RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS)` per directory, so
//! neither a symlink nor a mount below the root is entered), counts at most
//! `max_entries` entries and stops at a deadline. NodeGetVolumeStats answers from the
//! last figure (`Caches::usage_cached`); a background thread refreshes the figures
//! (`Caches::refresh_usage`).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::sys::fs;

/// How much one refresh may do.
#[derive(Clone, Copy, Debug)]
pub struct UsageBudget {
    /// Entries counted per tree before its walk stops (the figure is then a lower bound).
    pub max_entries: u64,
    /// Wall time for the whole refresh; trees not reached keep their last figure.
    pub max_time: Duration,
}

impl Default for UsageBudget {
    fn default() -> Self {
        UsageBudget {
            max_entries: 1_000_000,
            max_time: Duration::from_secs(10),
        }
    }
}

/// One measured figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Allocated bytes of the entries counted (st_blocks * 512).
    pub bytes: u64,
    /// Entries counted, the root included.
    pub inodes: u64,
    /// False when the walk hit the entry budget or the deadline: a lower bound.
    pub complete: bool,
    pub measured_at: SystemTime,
}

/// Open `root`, at or below the publication's `target`: the components
/// between them are the pod's (placeCacheAtPath in its own tree), so none of
/// them may be a symlink (a pod could point the walk at `/` or at a hung FUSE
/// mount) and the walk never leaves `target`.
fn open_root(target: &Path, root: &Path) -> Result<OwnedFd> {
    let base = fs::open_dir(target)?;
    let rel = root.strip_prefix(target).map_err(|_| Error::Corrupt {
        path: root.to_path_buf(),
        reason: format!("recorded as not below its target {}", target.display()),
    })?;
    if rel.as_os_str().is_empty() {
        return Ok(base);
    }
    fs::open_dir_beneath(base.as_fd(), rel).map_err(|e| Error::sys("open beneath", root, e))
}

/// Walk `root` (at or below `target`) without following symlinks or crossing
/// mounts, within the budget.
pub fn measure(target: &Path, root: &Path, max_entries: u64, deadline: Instant) -> Result<Usage> {
    let fd = open_root(target, root)?;
    let st = fs::fstat(fd.as_fd()).map_err(|e| Error::sys("fstat", root, e))?;
    let mut u = Usage {
        bytes: fs::allocated_bytes(&st),
        inodes: 1,
        complete: true,
        measured_at: SystemTime::now(),
    };
    let mut stack: Vec<OwnedFd> = vec![fd];
    'walk: while let Some(dir) = stack.pop() {
        let Ok(mut d) = fs::read_dir(dir.as_fd()) else {
            continue;
        };
        for ent in d.iter() {
            let Ok(ent) = ent else { continue };
            let name = ent.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            if u.inodes >= max_entries || (u.inodes % 1024 == 0 && Instant::now() > deadline) {
                u.complete = false;
                break 'walk;
            }
            let Ok(st) = fs::stat_at(dir.as_fd(), name) else {
                continue;
            };
            u.inodes += 1;
            u.bytes += fs::allocated_bytes(&st);
            if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR {
                // A mount point (EXDEV) or a directory we cannot open is not counted.
                if let Ok(sub) = fs::open_dir_at_no_xdev(dir.as_fd(), name) {
                    stack.push(sub);
                }
            }
        }
    }
    Ok(u)
}

/// A tree being watched: the publication's target, and the last figure.
struct Watched {
    target: PathBuf,
    usage: Option<Usage>,
}

/// The figures of the trees being watched, by root.
#[derive(Default)]
pub struct UsageTable {
    figures: Mutex<HashMap<PathBuf, Watched>>,
}

impl UsageTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Watched>> {
        match self.figures.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Watch `root` (at or below the publication's `target`) from now on
    /// (measured by the next refresh).
    pub fn track(&self, target: &Path, root: &Path) {
        self.lock()
            .entry(root.to_path_buf())
            .or_insert_with(|| Watched {
                target: target.to_path_buf(),
                usage: None,
            });
    }

    /// Stop watching every tree at or below `target`; returns the bytes
    /// they used when last measured (0 for a tree never measured).
    pub fn forget_below(&self, target: &Path) -> u64 {
        let mut bytes = 0u64;
        self.lock().retain(|p, w| {
            let keep = !p.starts_with(target);
            if !keep {
                bytes = bytes.saturating_add(w.usage.map_or(0, |u| u.bytes));
            }
            keep
        });
        bytes
    }

    pub fn get(&self, root: &Path) -> Option<Usage> {
        self.lock().get(root).and_then(|w| w.usage)
    }

    pub fn set(&self, root: &Path, u: Usage) {
        if let Some(w) = self.lock().get_mut(root) {
            w.usage = Some(u);
        }
    }

    /// Measure the watched trees, least recently measured first, within `budget`.
    #[cfg_attr(not(test), allow(dead_code))] // called through Caches::refresh_usage
    /// Returns how many trees were measured.
    pub fn refresh(&self, budget: UsageBudget) -> usize {
        let deadline = Instant::now() + budget.max_time;
        let mut roots: Vec<(PathBuf, PathBuf, Option<SystemTime>)> = self
            .lock()
            .iter()
            .map(|(p, w)| (p.clone(), w.target.clone(), w.usage.map(|u| u.measured_at)))
            .collect();
        roots.sort_by_key(|(_, _, at)| *at);
        let mut n = 0;
        for (root, target, _) in roots {
            if Instant::now() > deadline {
                break;
            }
            match measure(&target, &root, budget.max_entries, deadline) {
                Ok(u) => {
                    self.set(&root, u);
                    n += 1;
                }
                Err(e) => log::debug!("usage of {}: {e}", root.display()),
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testutil::*;

    #[test]
    fn counts_without_following_symlinks_and_stops_at_the_budget() {
        let t = TempDir::new("usage");
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::write(t.path().join("a/b/f"), vec![1u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("/usr", t.path().join("a/usr")).unwrap();
        let far = Instant::now() + Duration::from_secs(60);
        let u = measure(t.path(), t.path(), 1000, far).unwrap();
        // root, a, a/b, a/b/f, a/usr
        assert_eq!((u.inodes, u.complete), (5, true));
        assert!(u.bytes >= 100_000, "{u:?}");
        let cut = measure(t.path(), t.path(), 2, far).unwrap();
        assert_eq!((cut.inodes, cut.complete), (2, false));
        // A root below the target: measured there, never through a symlink
        // the pod made of one of the components in between.
        let b = measure(t.path(), &t.path().join("a/b"), 1000, far).unwrap();
        assert_eq!(b.inodes, 2);
        std::os::unix::fs::symlink("/", t.path().join("a/escape")).unwrap();
        let e = measure(t.path(), &t.path().join("a/escape/usr"), 1000, far).unwrap_err();
        assert!(e.to_string().contains("open beneath"), "{e}");
        let e = measure(&t.path().join("a/b"), &t.path().join("a"), 1000, far).unwrap_err();
        assert!(e.to_string().contains("not below"), "{e}");
        let table = UsageTable::default();
        table.track(t.path(), t.path());
        assert_eq!(table.get(t.path()), None);
        assert_eq!(
            table.refresh(UsageBudget {
                max_entries: 1000,
                max_time: Duration::from_secs(60)
            }),
            1
        );
        // The five, and a/escape: counted, not followed.
        assert_eq!(table.get(t.path()).map(|u| u.inodes), Some(6));
        table.forget_below(t.path());
        assert_eq!(table.get(t.path()), None);
    }
}
