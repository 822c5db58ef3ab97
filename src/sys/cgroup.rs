//! Mounters' cgroups. Every mounter leaves the daemon's container cgroup
//! (`--mounter-cgroup`), so that stopping the container does not kill the
//! FUSE mounts of running pods. With limits, each mounter gets a cgroup of
//! its own below each of those directories, named after its volume, whose
//! memory and PID limits keep one volume's FUSE process from taking the
//! node: it is killed (and healed) alone.

use std::fs;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, Result};

/// Limits of a mounter's own cgroup (None: not limited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_max: Option<u64>,
    pub pids_max: Option<u64>,
}

impl CgroupLimits {
    pub fn is_empty(&self) -> bool {
        self.memory_max.is_none() && self.pids_max.is_none()
    }
}

/// Which of the limits a cgroup took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub memory: bool,
    pub pids: bool,
}

/// A limit's controller and the files that hold it: cgroup v2's, then v1's.
const MEMORY: (&str, &[&str]) = ("memory", &["memory.max", "memory.limit_in_bytes"]);
const PIDS: (&str, &[&str]) = ("pids", &["pids.max"]);

/// Move `pid` into the cgroup directory `dir` (created if missing; cgroup v2,
/// or one hierarchy of v1): lets a mounter leave the daemon's container
/// cgroup, which the container runtime empties when the container stops.
pub fn move_to_cgroup(pid: i32, dir: &Path) -> Result<()> {
    check_cgroupfs(dir)?;
    fs::create_dir_all(dir).map_err(|e| Error::io("mkdir", dir, e))?;
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, pid.to_string()).map_err(|e| Error::io("write", &procs, e))
}

/// Only a directory of a cgroup filesystem moves anything: elsewhere writing
/// "cgroup.procs" just makes a file, and the mounter would silently stay in
/// the daemon's cgroup (and die with its container).
fn check_cgroupfs(dir: &Path) -> Result<()> {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};
    let fs_of = |p: &Path| statfs(p).map(|s| s.filesystem_type());
    // An existing dir must be a cgroup itself (a v1 hierarchy's root is one,
    // on a tmpfs parent); a new one is made inside a cgroup.
    let checked = if dir.exists() {
        dir
    } else {
        dir.parent().unwrap_or(dir)
    };
    match fs_of(checked) {
        Ok(t) if t != CGROUP2_SUPER_MAGIC && t != CGROUP_SUPER_MAGIC => Err(Error::sys(
            "move into cgroup (not on a cgroup filesystem)",
            checked,
            Errno::ENOTDIR,
        )),
        Err(e) => Err(Error::sys("statfs", checked, e)),
        Ok(_) => Ok(()),
    }
}

/// Make `parent/name` a cgroup holding `limits` in the files its hierarchy
/// has (a v1 hierarchy has one controller; on v2 the controllers are first
/// enabled in `parent`'s cgroup.subtree_control). Returns it and which
/// limits it took.
pub fn limited_child(
    parent: &Path,
    name: &str,
    limits: &CgroupLimits,
) -> Result<(PathBuf, Applied)> {
    check_cgroupfs(parent)?;
    fs::create_dir_all(parent).map_err(|e| Error::io("mkdir", parent, e))?;
    let wanted = [(MEMORY, limits.memory_max), (PIDS, limits.pids_max)];
    let subtree = parent.join("cgroup.subtree_control");
    if subtree.exists() {
        let available = fs::read_to_string(parent.join("cgroup.controllers"))
            .map_err(|e| Error::io("read", parent.join("cgroup.controllers"), e))?;
        for ((controller, _), value) in wanted {
            if value.is_some() && available.split_whitespace().any(|c| c == controller) {
                // EBUSY here: `parent` holds processes itself (cgroup v2's no
                // internal processes rule), e.g. mounters an older daemon put there.
                fs::write(&subtree, format!("+{controller}"))
                    .map_err(|e| Error::io("enable controller in", &subtree, e))?;
            }
        }
    }
    let child = parent.join(name);
    match fs::create_dir(&child) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("mkdir", &child, e)),
    }
    let mut applied = Applied::default();
    for (((_, files), value), took) in wanted
        .into_iter()
        .zip([&mut applied.memory, &mut applied.pids])
    {
        let (Some(value), Some(file)) = (
            value,
            files.iter().map(|f| child.join(f)).find(|f| f.exists()),
        ) else {
            continue;
        };
        fs::write(&file, value.to_string()).map_err(|e| Error::io("write", &file, e))?;
        *took = true;
    }
    Ok((child, applied))
}

/// Remove `parent/name` once its processes are gone (a cgroup directory is
/// removed with rmdir; its files go with it). Ok when it is not there.
pub fn remove_child(parent: &Path, name: &str) -> Result<()> {
    let child = parent.join(name);
    match fs::remove_dir(&child) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove cgroup", &child, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_off_cgroupfs_is_no_cgroup() {
        let dir = std::env::temp_dir().join(format!("bindery-not-a-cgroup-{}", std::process::id()));
        let e = move_to_cgroup(std::process::id() as i32, &dir).unwrap_err();
        assert!(e.to_string().contains("not on a cgroup filesystem"), "{e}");
        assert!(
            !e.to_string().contains("--mounter-cgroup: --mounter-cgroup"),
            "{e}"
        );
        assert!(!dir.exists(), "nothing was created");
        // An existing directory elsewhere is refused too.
        let tmp = std::env::temp_dir();
        assert!(move_to_cgroup(std::process::id() as i32, &tmp).is_err());
        assert!(!tmp.join("cgroup.procs").exists());
    }

    #[test]
    fn limits_go_to_the_files_a_hierarchy_has() {
        // The pids controller: a v1 hierarchy of its own, or enabled in the
        // root of cgroup v2. End to end: tests/shared_mounts.rs.
        let v2_pids = fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control")
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"));
        let root = if v2_pids {
            Path::new("/sys/fs/cgroup")
        } else {
            Path::new("/sys/fs/cgroup/pids")
        };
        let met = root.join("cgroup.procs").exists() && nix::unistd::geteuid().is_root();
        if !crate::testkit::prerequisite(
            "limits_go_to_the_files_a_hierarchy_has",
            met,
            "root and a pids cgroup hierarchy (v1, or v2 with pids enabled at the root)",
        ) {
            return;
        }
        let parent = root.join(format!("bindery-unit-{}", std::process::id()));
        let limits = CgroupLimits {
            memory_max: Some(64 << 20),
            pids_max: Some(32),
        };
        let (child, applied) = limited_child(&parent, "vol", &limits).unwrap();
        assert_eq!(
            applied,
            Applied {
                memory: false,
                pids: true
            }
        );
        assert_eq!(
            fs::read_to_string(child.join("pids.max")).unwrap().trim(),
            "32"
        );
        remove_child(&parent, "vol").unwrap();
        remove_child(&parent, "vol").unwrap();
        fs::remove_dir(&parent).unwrap();
    }
}
