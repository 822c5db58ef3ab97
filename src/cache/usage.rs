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

/// Walk `root` without following symlinks or crossing mounts, within the budget.
pub fn measure(root: &Path, max_entries: u64, deadline: Instant) -> Result<Usage> {
    let fd = fs::open_dir(root)?;
    let st = fs::fstat(fd.as_fd()).map_err(|e| Error::sys("fstat", root, e))?;
    let mut u = Usage {
        bytes: st.st_blocks as u64 * 512,
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
            u.bytes += st.st_blocks as u64 * 512;
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

/// The figures of the trees being watched.
#[derive(Default)]
pub struct UsageTable {
    figures: Mutex<HashMap<PathBuf, Option<Usage>>>,
}

impl UsageTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Option<Usage>>> {
        match self.figures.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Watch `root` from now on (measured by the next refresh).
    pub fn track(&self, root: &Path) {
        self.lock().entry(root.to_path_buf()).or_insert(None);
    }

    /// Stop watching every tree at or below `target`.
    pub fn forget_below(&self, target: &Path) {
        self.lock().retain(|p, _| !p.starts_with(target));
    }

    pub fn get(&self, root: &Path) -> Option<Usage> {
        self.lock().get(root).copied().flatten()
    }

    pub fn set(&self, root: &Path, u: Usage) {
        if let Some(slot) = self.lock().get_mut(root) {
            *slot = Some(u);
        }
    }

    /// Measure the watched trees, least recently measured first, within `budget`.
    #[cfg_attr(not(test), allow(dead_code))] // called through Caches::refresh_usage
    /// Returns how many trees were measured.
    pub fn refresh(&self, budget: UsageBudget) -> usize {
        let deadline = Instant::now() + budget.max_time;
        let mut roots: Vec<(PathBuf, Option<SystemTime>)> = self
            .lock()
            .iter()
            .map(|(p, u)| (p.clone(), u.map(|u| u.measured_at)))
            .collect();
        roots.sort_by_key(|(_, at)| *at);
        let mut n = 0;
        for (root, _) in roots {
            if Instant::now() > deadline {
                break;
            }
            match measure(&root, budget.max_entries, deadline) {
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
        let u = measure(t.path(), 1000, far).unwrap();
        // root, a, a/b, a/b/f, a/usr
        assert_eq!((u.inodes, u.complete), (5, true));
        assert!(u.bytes >= 100_000, "{u:?}");
        let cut = measure(t.path(), 2, far).unwrap();
        assert_eq!((cut.inodes, cut.complete), (2, false));
        let table = UsageTable::default();
        table.track(t.path());
        assert_eq!(table.get(t.path()), None);
        assert_eq!(
            table.refresh(UsageBudget {
                max_entries: 1000,
                max_time: Duration::from_secs(60)
            }),
            1
        );
        assert_eq!(table.get(t.path()).map(|u| u.inodes), Some(5));
        table.forget_below(t.path());
        assert_eq!(table.get(t.path()), None);
    }
}
