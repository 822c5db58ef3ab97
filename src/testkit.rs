//! Helpers shared by the unit tests and the integration tests (through
//! tests/common), so that both follow one rule for missing prerequisites
//! and clean up their scratch directories the same way.

// Test helpers fail the test that called them by panicking.
#![allow(clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::mountinfo;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh empty directory, named after the test's tag and unique in this
/// process; on drop everything mounted below it is detached (deepest first)
/// and the tree removed, even when the test failed.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    /// A scratch directory under the system's temp dir.
    pub fn new(tag: &str) -> Scratch {
        Self::new_in(&std::env::temp_dir(), tag)
    }

    /// A scratch directory under `parent` (e.g. on a filesystem of its own).
    pub fn new_in(parent: &Path, tag: &str) -> Scratch {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let path = parent.join(format!("bindery-t-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        if let Err(e) = std::fs::create_dir_all(&path) {
            panic!("scratch dir {}: {e}", path.display());
        }
        Scratch { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        unmount_below(&self.path);
        // Tests may leave read-only files and mode-000 dirs: they run as root.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mountinfo::read_self()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// Detach every mount at or below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    for m in mounts_below(dir) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Whether a test may go on: prints why not and returns false, except under
/// CI=true, where a missing prerequisite fails the test instead of letting it
/// pass as a skip.
pub fn prerequisite(test: &str, met: bool, why: &str) -> bool {
    if !met {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: {why} (CI=true: a missing prerequisite is a failure)"
        );
        eprintln!("SKIP {test}: {why}");
    }
    met
}

/// The directory named by `var` (.ci/in-namespace sets BINDERY_XFS_DIR,
/// BINDERY_BTRFS_DIR and BINDERY_TMPFS_DIR to mounted ones), or None after
/// `prerequisite` said why: a failure under CI=true.
pub fn env_dir(var: &str, test: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os(var) {
        Some(v) if std::path::Path::new(&v).is_dir() => Some(v.into()),
        _ => {
            let why = format!("set {var} to a mounted directory to run it (.ci/in-namespace does)");
            prerequisite(test, false, &why);
            None
        }
    }
}

/// Whether python3 can import fusepy (.ci/setup installs it): the FUSE
/// servers of the tests that need a misbehaving one are written with it.
pub fn has_fusepy() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import fuse"])
        .status()
        .is_ok_and(|s| s.success())
}
