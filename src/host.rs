//! The seam between the node's logic (src/node/) and the machine: starting,
//! checking, observing and stopping mounters, finding the ones a crash left
//! unrecorded, waiting for their uploads; the mounts at the paths the node
//! resolved (what is mounted there, binds, remounts, detaches, the mount
//! table); and the re-binding of running containers to a healed mount. `RealHost` does it (through src/mounter/ and src/sys/);
//! the recording fake (fake.rs) records each call and answers from tables of
//! processes and mounts, so the lifecycle logic of stage, publish, heal,
//! unpublish, unstage and the unstage delay is unit-tested without root,
//! without a mounter, in milliseconds.
//!
//! Paths are resolved before they reach the seam, always for real
//! (`sys::nodepath`, fd-relative, no symlinks): a fake's mounts sit at real
//! directories of a test's temporary kubelet dir; the fake's containers are
//! a table of the device each one shows. Cache volumes' mounts (overlays,
//! read-only binds) and the pidfd watch of mounter exits are not behind it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::MsFlags;

use crate::config::Config;
use crate::error::Result;
use crate::mounter::{self, Condition, Health, Kind, MountSpec, VolumeFiles};
use crate::sys::consumers::{self, Outcome};
use crate::sys::mount::FsStats;
use crate::sys::mountinfo::{self, MountInfo};
use crate::sys::nodepath::{self, NodePath};
use crate::sys::process::{self, Running};
use crate::sys::{mount, procscan};

/// One mount of a dead FUSE filesystem that a process (a pod's container)
/// still showed, and what replacing it by the healed mount did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebound {
    /// The uid of the pod the process belongs to, if known.
    pub pod: Option<String>,
    /// The process, in words (for logs).
    pub holder: String,
    /// Where the mount is, in the process's namespace.
    pub at: PathBuf,
    /// The dead mount's device ("major:minor").
    pub dev: String,
    pub result: std::result::Result<Outcome, String>,
}

/// What the node asks of the machine about mounter processes.
pub trait Host: Send + Sync {
    /// Start a mounter for `volume` at `mnt` and wait until it serves.
    fn start_mounter(
        &self,
        volume: &str,
        spec: &MountSpec,
        mnt: &Path,
        files: &VolumeFiles,
        cfg: &Config,
    ) -> Result<Running>;
    /// Stop a mounter whose mount is gone (it exits by itself, else signals).
    fn stop_mounter(&self, mnt: &Path, run: Running, grace: Duration);
    /// Signal a mounter to exit now (TERM, KILL after `grace`).
    fn terminate_mounter(&self, mnt: &Path, run: Running, grace: Duration);
    /// Abort the FUSE connection of the mount at `mnt`.
    fn abort_connection(&self, mnt: &Path);
    /// Whether `run` serves `mnt`, asking the mount (bounded by `timeout`).
    fn check(&self, mnt: &Path, run: Running, timeout: Duration) -> Health;
    /// Whether `run` serves `mnt`, by the process and the mount table only.
    fn serving(&self, mnt: &Path, run: Running) -> Health;
    /// What the health probes last saw of `run` serving `mnt`, and the
    /// figures its statfs prober found; never waits on the mount or the
    /// `endpoint`. `table`: a mount table the caller read once for many
    /// mounts (None: read now).
    fn observe(
        &self,
        mnt: &Path,
        run: Running,
        endpoint: &str,
        table: Option<&[MountInfo]>,
    ) -> (Condition, Option<FsStats>);
    /// Mounter session leaders whose argv names `staging`, recorded or not.
    fn mounters_by_argv(&self, staging: &Path) -> Vec<Running>;
    /// Whether `run` still runs (not a zombie, not a reused pid).
    fn is_alive(&self, run: Running) -> bool;
    /// Wait until the mounter has uploaded what it acknowledged.
    fn wait_for_uploads(
        &self,
        volume: &str,
        kind: Kind,
        files: &VolumeFiles,
        timeout: Duration,
    ) -> Result<()>;
    /// Remove the volume's mounter cgroups.
    fn remove_cgroups(&self, volume: &str, cfg: &Config);

    /// The mount whose root `here` is right now (None: a plain directory of
    /// `parent`'s filesystem).
    fn mount_here(&self, here: &NodePath, parent: &NodePath) -> Result<Option<MountInfo>>;
    /// `mount_here` by a mount table read once (`mount_table`).
    fn mount_here_in(
        &self,
        here: &NodePath,
        parent: &NodePath,
        table: &[MountInfo],
    ) -> Result<Option<MountInfo>>;
    /// This process's mount table.
    fn mount_table(&self) -> Result<Vec<MountInfo>>;
    /// Bind `source` onto `target`.
    fn bind(&self, source: &NodePath, target: &NodePath) -> Result<()>;
    /// Give the bind at `target` the per-mount `flags`, keeping `keep`.
    fn remount_bind(&self, target: &NodePath, keep: MsFlags, flags: MsFlags) -> Result<()>;
    /// Detach exactly the mount `target` was opened on.
    fn detach(&self, target: &NodePath) -> Result<()>;
    /// In every other mount namespace, replace each mount of a FUSE
    /// filesystem of type `fs_type` showing one of the dead devices `stale`
    /// by a clone of the mount whose root `source` is (each process given
    /// at most `timeout`); one result per mount found.
    fn rebind_containers(
        &self,
        stale: &[(u32, u32)],
        fs_type: &str,
        source: &NodePath,
        timeout: Duration,
    ) -> Vec<Rebound>;
}

/// The machine itself.
pub struct RealHost;

impl Host for RealHost {
    fn start_mounter(
        &self,
        volume: &str,
        spec: &MountSpec,
        mnt: &Path,
        files: &VolumeFiles,
        cfg: &Config,
    ) -> Result<Running> {
        mounter::start(volume, spec, mnt, files, cfg)
    }

    fn stop_mounter(&self, mnt: &Path, run: Running, grace: Duration) {
        mounter::stop(mnt, run, grace)
    }

    fn terminate_mounter(&self, mnt: &Path, run: Running, grace: Duration) {
        mounter::terminate(mnt, run, grace)
    }

    fn abort_connection(&self, mnt: &Path) {
        mounter::abort(mnt)
    }

    fn check(&self, mnt: &Path, run: Running, timeout: Duration) -> Health {
        mounter::check(mnt, run, timeout)
    }

    fn serving(&self, mnt: &Path, run: Running) -> Health {
        mounter::serving(mnt, run)
    }

    fn observe(
        &self,
        mnt: &Path,
        run: Running,
        endpoint: &str,
        table: Option<&[MountInfo]>,
    ) -> (Condition, Option<FsStats>) {
        match table {
            Some(t) => mounter::observe_in(mnt, run, endpoint, t),
            None => mounter::observe(mnt, run, endpoint),
        }
    }

    fn mounters_by_argv(&self, staging: &Path) -> Vec<Running> {
        procscan::session_leaders_with_arg(staging)
            .into_iter()
            .filter_map(|pid| {
                process::stat(pid).map(|s| Running {
                    pid,
                    start_ticks: s.start_ticks,
                })
            })
            .collect()
    }

    fn is_alive(&self, run: Running) -> bool {
        process::is_alive(run.pid, run.start_ticks)
    }

    fn wait_for_uploads(
        &self,
        volume: &str,
        kind: Kind,
        files: &VolumeFiles,
        timeout: Duration,
    ) -> Result<()> {
        mounter::wait_for_uploads(volume, kind, files, timeout)
    }

    fn remove_cgroups(&self, volume: &str, cfg: &Config) {
        mounter::remove_cgroups(volume, cfg)
    }

    fn mount_here(&self, here: &NodePath, parent: &NodePath) -> Result<Option<MountInfo>> {
        here.mount_here_now(parent)
    }

    fn mount_here_in(
        &self,
        here: &NodePath,
        parent: &NodePath,
        table: &[MountInfo],
    ) -> Result<Option<MountInfo>> {
        here.mount_here(parent, table)
    }

    fn mount_table(&self) -> Result<Vec<MountInfo>> {
        mountinfo::read_self()
    }

    fn bind(&self, source: &NodePath, target: &NodePath) -> Result<()> {
        nodepath::bind(source, target)
    }

    fn remount_bind(&self, target: &NodePath, keep: MsFlags, flags: MsFlags) -> Result<()> {
        mount::remount_bind_keeping(&target.proc_path(), keep, flags)
    }

    fn detach(&self, target: &NodePath) -> Result<()> {
        nodepath::detach(target)
    }

    fn rebind_containers(
        &self,
        stale: &[(u32, u32)],
        fs_type: &str,
        source: &NodePath,
        timeout: Duration,
    ) -> Vec<Rebound> {
        let mut out = Vec::new();
        for holder in consumers::holders(stale, fs_type) {
            let describe = holder.describe();
            for (at, result) in consumers::replace(&holder, source.fd(), timeout) {
                let dev = holder
                    .mounts
                    .iter()
                    .find(|m| m.mount_point == at)
                    .map(MountInfo::dev_string)
                    .unwrap_or_default();
                out.push(Rebound {
                    pod: holder.pod.clone(),
                    holder: describe.clone(),
                    at,
                    dev,
                    result,
                });
            }
        }
        out
    }
}

/// A host for unit tests (src/host/fake.rs).
#[cfg(test)]
pub mod fake;
