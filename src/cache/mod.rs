//! Warm cache volumes (README, "Cache volumes"): the engine below the RPC layer.
//!
//! Pods get a writable tree filled from a node-local golden copy. This module is
//! plain library code: no gRPC, no volume table. Every syscall goes through
//! `crate::sys::fs`; every walk is fd-relative with `O_NOFOLLOW`.
//!
//! The whole API:
//!
//! ```text
//! populate::Strategy { Hardlink, Reflink, Copy }       FromStr ("hardlink"|"reflink"|"copy"), as_str()
//! populate::Owner { uid, gid: Option<u32>, mode: Option<u32>, group_writable: bool }
//! populate::Stats { files, dirs, symlinks, skipped, bytes: u64 }
//! populate::populate(golden, dest, Strategy, &Owner, threads) -> Result<Stats>
//! probe::ensure_probe_file(store) / probe_pair(store, dir) -> Probe { link, reflink, snapshot }
//!                                                       real linkat/FICLONE, never st_dev
//! usage::measure(target, root, max_entries, deadline) -> Usage   bounded, fd-relative, no symlinks/mounts
//!
//! remove::remove_tree(path) -> Result<()>               never follows symlinks, never crosses mounts
//! remove::parallel::remove_tree_with(path, threads)     the same, subtrees near the top in parallel
//! remove::trash::move_to_trash(path, trash_dir) -> Result<Option<PathBuf>>
//! remove::trash::Trash::new(dir) -> Result<Trash>        empties leftovers in the background
//!        .discard(path, bytes) -> Result<bool>          rename into the trash + queue deletion
//!        .backlog() -> (trees, bytes)                   what waits for deletion
//!        .wait_idle(timeout) -> bool                    (tests) true when nothing is queued or running
//!
//! manifest::Manifest::scan(dir) -> Result<Manifest>     size/mtime/ctime/inode/mode/owner per file
//!        .write_to(path) / Manifest::read_from(path)
//!        .verify_with(dir, &mut Confirmed) -> Result<Vec<PathBuf>>   changed or missing
//!                                                       entries; content hashed when the ctime moved
//!
//! golden::GoldenStore::new(root) -> GoldenStore         root = <kubelet-dir>/plugins/<driver>/golden
//!        .with_threads(n) -> GoldenStore                copy threads for builds (default 4)
//!        .build_from_dir(name, source) -> Result<Version>   temp dir, manifest, syncfs, rename
//!        .current(name) -> Result<Option<Version>>      newest complete, non-retired version
//!        .path(name, &Version) -> PathBuf
//!        .versions(name) -> Result<Vec<Version>>        sorted, oldest first
//!        .manifest(name, &Version) -> Result<Manifest>
//!        .verify(name, &Version) -> Result<Vec<PathBuf>>
//!        .retire(name, &Version) -> Result<()>          never handed out again
//!        .is_retired(name, &Version) -> bool
//!        .gc(name, in_use: &HashSet<String>) -> Result<Vec<Version>>   never pinned ones
//!        .layer_at(path) -> Option<(name, Version, Option<key>)>   whose tree a path is
//!        .gc_variants(name, used) -> Result<Vec<(Version, key)>>   unused owner variants
//!        .pin(name, version) -> Pin / .current_pinned(name) -> Option<(Version, Pin)>
//!        .variant(name, &Version, key, Strategy, &Owner, VariantLimit) -> PathBuf
//!                                                       built once; past max_variants RESOURCE_EXHAUSTED
//! volume::Caches (the node's API; builds in build.rs, publishes in publish.rs):
//!        ::open(cfg)                                    bad declarations disable one cache each
//!        .declarations().request(attrs, mount_group, readonly, pod_dir) -> CacheRequest
//!                                                       tenancy + strategy checks
//!        .version_counts() / .trash_backlog()           for the metrics
//!        .publish(&req, target, readonly) / .unpublish(target)
//!        .pin(name, version) -> Pin                     for publications in flight
//!        .maintain(in_use, hardlinked)                  verify, retire/rebuild, gc
//!        .usage_cached(root) -> Option<Usage>           never walks
//!        .refresh_usage(UsageBudget) -> usize           for a background thread
//!        .usage(target, root) -> (bytes, inodes)        cached, or a small first walk
//! golden::Version                                       zero-padded unix nanoseconds, sortable;
//!                                                       Version::parse(&str), as_str(), Display
//! ```
//!
//! What callers must know:
//! - `populate` fills an existing empty directory and leaves it partly filled on error:
//!   populate into a temporary name inside the target and rename it when complete, so a
//!   retry after a crash never sees a half-full volume as ready.
//! - Hardlink needs the golden store and the target on one mount, reflink on one
//!   filesystem: `probe_pair` says whether they work there (Caches caches it per mount).
//! - Snapshot needs the version to be a btrfs subvolume (the store makes them so on
//!   btrfs, except for caches whose strategies name hardlink: linkat out of a
//!   subvolume is EXDEV) and the target on the same btrfs filesystem.
//! - Unpublish: `Trash::discard` (a rename, O(1)) and the trash thread deletes.
//!   The trash dir must be on the pods' filesystem, outside the pod's volume dir.

mod build;
pub mod decl;
pub mod golden;
pub mod manifest;
pub mod populate;
pub mod probe;
mod publish;
pub mod remove;
pub mod request;
pub mod status;
mod upkeep;
pub mod usage;
pub mod volume;

#[cfg(test)]
pub(crate) mod testutil {
    //! Trees in temp dirs under /tmp for the cache tests (the tests run as root).

    use std::collections::BTreeMap;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    pub use crate::testkit::env_dir;
    pub use crate::testkit::Scratch as TempDir;

    pub fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// Skip (with a printed reason) when not root; returns true when the test should stop.
    pub fn skip_unless_root(test: &str) -> bool {
        if !is_root() {
            eprintln!("SKIP {test}: needs root");
            return true;
        }
        false
    }

    /// A small tree with the shapes population must handle.
    pub fn sample_tree(root: &Path) {
        use std::fs;
        use std::os::unix::fs::symlink;
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::create_dir_all(root.join("ro")).unwrap();
        fs::write(root.join("top.txt"), b"top").unwrap();
        fs::write(root.join("a/one"), vec![1u8; 10_000]).unwrap();
        fs::write(root.join("a/b/two"), b"two").unwrap();
        fs::write(root.join("a/b/c/three"), vec![3u8; 200_000]).unwrap();
        fs::write(root.join("a/b/c/empty-file"), b"").unwrap();
        fs::write(root.join("exec.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("exec.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(root.join("ro/file"), b"ro").unwrap();
        fs::set_permissions(root.join("ro/file"), fs::Permissions::from_mode(0o444)).unwrap();
        fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::write(root.join("weird\nname %41"), b"w").unwrap();
        symlink("a/b/two", root.join("rel-link")).unwrap();
        symlink("/etc/passwd", root.join("abs-link")).unwrap();
        symlink("does/not/exist", root.join("a/dangling")).unwrap();
        symlink("..", root.join("a/b/up")).unwrap();
        nix::unistd::mkfifo(
            &root.join("a/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
    }

    /// What a tree looks like: path → (kind, permission bits, content or link target).
    pub fn describe(root: &Path, with_fifos: bool) -> BTreeMap<PathBuf, (char, u32, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for e in std::fs::read_dir(root.join(&rel)).unwrap() {
                let e = e.unwrap();
                let r = rel.join(e.file_name());
                let m = std::fs::symlink_metadata(e.path()).unwrap();
                let ft = m.file_type();
                let mode = m.mode() & 0o7777;
                if ft.is_dir() {
                    out.insert(r.clone(), ('d', mode, vec![]));
                    stack.push(r);
                } else if ft.is_symlink() {
                    let t = std::fs::read_link(e.path()).unwrap();
                    use std::os::unix::ffi::OsStrExt;
                    out.insert(r, ('l', 0, t.as_os_str().as_bytes().to_vec()));
                } else if ft.is_file() {
                    out.insert(r, ('f', mode, std::fs::read(e.path()).unwrap()));
                } else if with_fifos {
                    out.insert(r, ('p', mode, vec![]));
                }
            }
        }
        out
    }

    pub fn ino(p: &Path) -> u64 {
        std::fs::symlink_metadata(p).unwrap().ino()
    }

    pub fn owner(p: &Path) -> (u32, u32, u32) {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    }
}
