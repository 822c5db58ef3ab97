//! The seam between the node's logic (src/node/) and the machine: starting,
//! checking and stopping mounters, finding the ones a crash left
//! unrecorded, waiting for their uploads; and the mounts at the paths the
//! node resolved (what is mounted there, binds, remounts, detaches, the
//! mount table). `RealHost` does it (through src/mounter/ and src/sys/);
//! `fake::RecordingHost` records each call and answers from tables of
//! processes and mounts, so the lifecycle logic of stage, publish, heal,
//! unpublish, unstage and the unstage delay is unit-tested without root,
//! without a mounter, in milliseconds.
//!
//! Paths are resolved before they reach the seam, always for real
//! (`sys::nodepath`, fd-relative, no symlinks): a fake's mounts sit at real
//! directories of a test's temporary kubelet dir. Cache volumes' mounts
//! (overlays, read-only binds) and the re-binding of containers are not
//! behind it yet.

use std::path::Path;
use std::time::Duration;

use nix::mount::MsFlags;

use crate::config::Config;
use crate::error::Result;
use crate::mounter::{self, Health, Kind, MountSpec, VolumeFiles};
use crate::sys::mountinfo::{self, MountInfo};
use crate::sys::nodepath::{self, NodePath};
use crate::sys::process::{self, Running};
use crate::sys::{mount, procscan};

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
}

/// A host for unit tests: every call is recorded ("start /path"), mounters
/// are entries of a table that the test can kill, and a start can be made
/// to fail.
#[cfg(test)]
pub mod fake {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use nix::errno::Errno;
    use nix::mount::MsFlags;

    use super::Host;
    use crate::config::Config;
    use crate::error::{Error, Result};
    use crate::mounter::{Health, Kind, MountSpec, VolumeFiles};
    use crate::sys::mountinfo::MountInfo;
    use crate::sys::nodepath::NodePath;
    use crate::sys::process::Running;

    /// The filesystem type of the fake's FUSE mounts (never a real one's).
    pub const FS_TYPE: &str = "fuse.fake";

    #[derive(Default)]
    pub struct RecordingHost {
        calls: Mutex<Vec<String>>,
        /// Live mounters and the path each serves.
        live: Mutex<HashMap<Running, PathBuf>>,
        next_pid: AtomicI32,
        /// The mount table, oldest first (the last at a path is on top).
        mounts: Mutex<Vec<MountInfo>>,
        next_mount: AtomicU32,
        /// The next start fails (as a mounter that exits at once).
        pub fail_start: AtomicBool,
        /// The next bind fails (EPERM).
        pub fail_bind: AtomicBool,
    }

    impl RecordingHost {
        fn record(&self, call: String) {
            self.calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(call);
        }

        /// The calls so far, and forget them.
        pub fn take_calls(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()))
        }

        /// The live mounters.
        pub fn live(&self) -> Vec<Running> {
            self.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .copied()
                .collect()
        }

        /// What is mounted at `path`, bottom first.
        pub fn mounts_at(&self, path: &Path) -> Vec<MountInfo> {
            self.mounts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|m| m.mount_point == path)
                .cloned()
                .collect()
        }

        fn top(&self, path: &Path) -> Option<MountInfo> {
            self.mounts_at(path).pop()
        }

        fn add_mount(&self, path: &Path, dev: (u32, u32), options: &str) {
            let id = 100 + self.next_mount.fetch_add(1, Ordering::SeqCst);
            self.mounts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(MountInfo {
                    id,
                    parent: 1,
                    dev,
                    root: PathBuf::from("/"),
                    mount_point: path.to_path_buf(),
                    options: options.to_string(),
                    fs_type: FS_TYPE.into(),
                    source: "fake".into(),
                    super_options: String::new(),
                });
        }

        /// A mounter dies (kill -9).
        pub fn kill(&self, run: Running) {
            self.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&run);
        }
    }

    impl Host for RecordingHost {
        fn start_mounter(
            &self,
            volume: &str,
            _spec: &MountSpec,
            mnt: &Path,
            _files: &VolumeFiles,
            _cfg: &Config,
        ) -> Result<Running> {
            self.record(format!("start {}", mnt.display()));
            if self.fail_start.swap(false, Ordering::SeqCst) {
                return Err(Error::mounter(volume, "exited at once (a test's failure)"));
            }
            let run = Running {
                pid: 1000 + self.next_pid.fetch_add(1, Ordering::SeqCst),
                start_ticks: 7,
            };
            // Each mounter's FUSE connection is a device of its own.
            self.add_mount(mnt, (0, 500 + run.pid.unsigned_abs()), "rw,nosuid,nodev");
            self.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(run, mnt.to_path_buf());
            Ok(run)
        }

        fn stop_mounter(&self, mnt: &Path, run: Running, _grace: Duration) {
            self.record(format!("stop {} {}", run.pid, mnt.display()));
            self.kill(run);
        }

        fn terminate_mounter(&self, mnt: &Path, run: Running, _grace: Duration) {
            self.record(format!("terminate {} {}", run.pid, mnt.display()));
            self.kill(run);
        }

        fn abort_connection(&self, mnt: &Path) {
            self.record(format!("abort {}", mnt.display()));
        }

        fn check(&self, mnt: &Path, run: Running, _timeout: Duration) -> Health {
            self.serving(mnt, run)
        }

        fn serving(&self, mnt: &Path, run: Running) -> Health {
            let live = self
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&run)
                .is_some_and(|p| p == mnt);
            if !live {
                return Health::Abnormal(format!("mounter process {} is gone", run.pid));
            }
            if self.top(mnt).is_none() {
                return Health::Abnormal(format!("nothing is mounted at {}", mnt.display()));
            }
            Health::Ok
        }

        fn mounters_by_argv(&self, staging: &Path) -> Vec<Running> {
            self.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(_, p)| p.as_path() == staging)
                .map(|(r, _)| *r)
                .collect()
        }

        fn is_alive(&self, run: Running) -> bool {
            self.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&run)
        }

        fn wait_for_uploads(
            &self,
            _volume: &str,
            _kind: Kind,
            _files: &VolumeFiles,
            _timeout: Duration,
        ) -> Result<()> {
            self.record("wait for uploads".into());
            Ok(())
        }

        fn remove_cgroups(&self, volume: &str, _cfg: &Config) {
            self.record(format!("remove cgroups {volume}"));
        }

        fn mount_here(&self, here: &NodePath, _parent: &NodePath) -> Result<Option<MountInfo>> {
            Ok(self.top(&here.path))
        }

        fn mount_here_in(
            &self,
            here: &NodePath,
            _parent: &NodePath,
            table: &[MountInfo],
        ) -> Result<Option<MountInfo>> {
            Ok(table
                .iter()
                .rev()
                .find(|m| m.mount_point == here.path)
                .cloned())
        }

        fn mount_table(&self) -> Result<Vec<MountInfo>> {
            Ok(self
                .mounts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone())
        }

        fn bind(&self, source: &NodePath, target: &NodePath) -> Result<()> {
            self.record(format!(
                "bind {} {}",
                source.path.display(),
                target.path.display()
            ));
            if self.fail_bind.swap(false, Ordering::SeqCst) {
                return Err(Error::sys("bind mount", &target.path, Errno::EPERM));
            }
            let src = self
                .top(&source.path)
                .ok_or_else(|| Error::sys("bind mount", &source.path, Errno::EINVAL))?;
            self.add_mount(&target.path, src.dev, &src.options);
            Ok(())
        }

        fn remount_bind(&self, target: &NodePath, _keep: MsFlags, flags: MsFlags) -> Result<()> {
            let mut mounts = self.mounts.lock().unwrap_or_else(|p| p.into_inner());
            let top = mounts
                .iter_mut()
                .rev()
                .find(|m| m.mount_point == target.path)
                .ok_or_else(|| Error::sys("remount", &target.path, Errno::EINVAL))?;
            if flags.contains(MsFlags::MS_RDONLY) {
                top.options = top.options.replacen("rw", "ro", 1);
            }
            Ok(())
        }

        fn detach(&self, target: &NodePath) -> Result<()> {
            self.record(format!("detach {}", target.path.display()));
            let mut mounts = self.mounts.lock().unwrap_or_else(|p| p.into_inner());
            let i = mounts
                .iter()
                .rposition(|m| m.mount_point == target.path)
                .ok_or_else(|| Error::sys("unmount", &target.path, Errno::EINVAL))?;
            mounts.remove(i);
            Ok(())
        }
    }
}
