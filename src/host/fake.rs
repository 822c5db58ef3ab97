//! A host for unit tests: every call is recorded ("start /path"), mounters
//! are entries of a table that the test can kill, mounts a table of their
//! own, containers a table of the device each one shows; a start, a bind
//! or the re-bind of a pod's containers can be made to fail.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::MsFlags;

use super::{Host, Rebound};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::mounter::{Condition, Health, Kind, MountSpec, VolumeFiles};
use crate::sys::consumers::Outcome;
use crate::sys::mount::FsStats;
use crate::sys::mountinfo::MountInfo;
use crate::sys::nodepath::NodePath;
use crate::sys::process::Running;

/// The filesystem type of the fake's FUSE mounts (never a real one's).
pub const FS_TYPE: &str = "fuse.fake";

/// A process of a pod that shows a mount of a volume in its own mount
/// namespace (a container that started while the bind was there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub pod: Option<String>,
    pub at: PathBuf,
    pub dev: (u32, u32),
}

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
    /// Containers and the device each shows.
    containers: Mutex<Vec<Container>>,
    /// Pods (uids) whose containers cannot be re-bound (EPERM).
    fail_rebind: Mutex<Vec<String>>,
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

    /// A container of `pod` starts, showing what is mounted at
    /// `target` now at `at` in its own namespace.
    pub fn start_container(&self, pod: Option<&str>, target: &Path, at: &Path) {
        let dev = self.top(target).map(|m| m.dev).unwrap_or_default();
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Container {
                pod: pod.map(str::to_string),
                at: at.to_path_buf(),
                dev,
            });
    }

    /// Re-binding the containers of `pod` fails (`None`: none fails).
    pub fn fail_rebind_of(&self, pod: Option<&str>) {
        *self.fail_rebind.lock().unwrap_or_else(|p| p.into_inner()) =
            pod.into_iter().map(str::to_string).collect();
    }

    /// The containers, each with the device it shows now.
    pub fn containers(&self) -> Vec<Container> {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

    /// Healthy when the mounter lives and `table` (or the fake's own)
    /// has a mount at `mnt`; no figures.
    fn observe(
        &self,
        mnt: &Path,
        run: Running,
        _endpoint: &str,
        table: Option<&[MountInfo]>,
    ) -> (Condition, Option<FsStats>) {
        let mounted = match table {
            Some(t) => t.iter().any(|m| m.mount_point == mnt),
            None => self.top(mnt).is_some(),
        };
        let condition = match self.serving(mnt, run) {
            Health::Ok if mounted => Condition::Healthy,
            Health::Ok => Condition::Dead(format!("nothing is mounted at {}", mnt.display())),
            Health::Abnormal(why) => Condition::Dead(why),
        };
        (condition, None)
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

    fn rebind_containers(
        &self,
        stale: &[(u32, u32)],
        fs_type: &str,
        source: &NodePath,
        _timeout: Duration,
    ) -> Vec<Rebound> {
        self.record(format!("rebind containers {}", source.path.display()));
        let Some(new) = self.top(&source.path).filter(|m| m.fs_type == fs_type) else {
            return Vec::new();
        };
        let fail = self
            .fail_rebind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for c in containers.iter_mut().filter(|c| stale.contains(&c.dev)) {
            let dev = format!("{}:{}", c.dev.0, c.dev.1);
            let result = if c.pod.as_ref().is_some_and(|p| fail.contains(p)) {
                Err("setns: Operation not permitted (a test's failure)".to_string())
            } else {
                c.dev = new.dev;
                Ok(Outcome::Replaced)
            };
            out.push(Rebound {
                pod: c.pod.clone(),
                holder: format!("a container of pod {:?}", c.pod),
                at: c.at.clone(),
                dev,
                result,
            });
        }
        out
    }
}
