//! Is a staged FUSE mount alive? Health is not reachability: a mount is
//! DEAD when its process is gone, a zombie or stopped, its mountinfo entry
//! is gone, or statfs fails (ENOTCONN) or does not answer in time. An S3
//! endpoint that does not accept connections only makes it DEGRADED, which
//! is reported in VolumeCondition and never a reason to remount; a slow
//! bucket (a prefix of 30,000 keys takes seconds to list) is healthy.
//!
//! Calls that may hang on a FUSE server go through `probe`: per mount, a
//! statfs prober and a listing prober that only `start` uses, both kept
//! until `forget` (stop does it) and served by one small shared pool. A
//! call still in flight when the next check comes is joined, not
//! duplicated, so a hung server holds one thread, which the abort of its
//! connection releases.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::sys::{mount, mountinfo, mounts, process};

use super::files::{LOG_KEEP, LOG_MAX};
use super::probe::{Answer, Outcome, Prober};
use crate::sys::process::Running;

/// What a health check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Dead: the mount must be remounted.
    Abnormal(String),
}

/// What a condition check found: for VolumeCondition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Healthy,
    /// Alive, but its S3 endpoint does not answer (in time): reported, not healed.
    Degraded(String),
    /// Dead (same as Health::Abnormal).
    Dead(String),
}

/// How long a health check waits for a FUSE server to answer statfs before
/// it calls the mount dead.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

struct Probers {
    run: Running,
    statfs: Arc<Prober>,
    list: Option<Arc<Prober>>,
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<Mutex<Probers>>>> {
    static R: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<Probers>>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

fn statfs_work(path: &Path) -> Outcome {
    match mount::fs_stats(path) {
        Ok(s) if s.fuse => Ok(Some(s)),
        Ok(_) => Err(format!("statfs {}: not a FUSE filesystem", path.display())),
        Err(e) => Err(e.to_string()),
    }
}

/// A listing of the mount's root: what readiness at start asks (the
/// mounter must serve its bucket, not just a mount point). Only asked
/// before any pod has the mount: a listing waits behind any pod's listing
/// of the root (FUSE serialises directory operations on the inode), so
/// ongoing checks never list (see `condition`).
fn list_work(path: &Path) -> Outcome {
    fs::read_dir(path)
        .and_then(|mut d| d.next().transpose())
        .map(|_| None)
        .map_err(|e| format!("listing {}: {e}", path.display()))
}

fn probers(mnt: &Path, run: Running) -> Arc<Mutex<Probers>> {
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = reg.get(mnt) {
        if p.lock().unwrap_or_else(|e| e.into_inner()).run == run {
            return p.clone();
        }
    }
    let p = Arc::new(Mutex::new(Probers {
        run,
        statfs: Arc::new(Prober::new(mnt, statfs_work)),
        list: None,
    }));
    reg.insert(mnt.to_path_buf(), p.clone());
    p
}

/// Drop the probers of `mnt` (a call in flight still runs to its end).
pub fn forget(mnt: &Path) {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(mnt);
}

/// Whether the mounter `run` still serves the FUSE mount at `mnt`, from the
/// process and the mount table only: no call that touches the FUSE server,
/// so a caller on an RPC thread never waits on a hung mount.
pub fn serving(mnt: &Path, run: Running) -> Health {
    if run.pid <= 0 {
        return Health::Abnormal("its mounter is being restarted".into());
    }
    process_and_table(mnt, run)
}

/// Process and mount table only: no call that touches the FUSE server.
pub(super) fn process_and_table(mnt: &Path, run: Running) -> Health {
    match mounts::lookup(mnt) {
        Ok(here) => process_and_mount(mnt, run, here.as_ref()),
        Err(e) => Health::Abnormal(e.to_string()),
    }
}

/// `process_and_table` against a mount table read once by the caller (a
/// health pass reads it once for all its volumes, not once per volume).
fn process_and_table_in(mnt: &Path, run: Running, table: &[mountinfo::MountInfo]) -> Health {
    process_and_mount(mnt, run, mountinfo::mount_at(table, mnt))
}

/// The process, and `here`: what is mounted at `mnt`.
fn process_and_mount(mnt: &Path, run: Running, here: Option<&mountinfo::MountInfo>) -> Health {
    if !process::is_alive(run.pid, run.start_ticks) {
        return Health::Abnormal(format!("mounter process {} is gone", run.pid));
    }
    // A stopped FUSE server makes every call on its mount hang: look at the
    // process first, not the mount.
    if process::stat(run.pid).is_some_and(|s| s.state == 'T' || s.state == 't') {
        return Health::Abnormal(format!("mounter process {} is stopped", run.pid));
    }
    match here {
        Some(m) if m.is_fuse() => Health::Ok,
        Some(m) => Health::Abnormal(format!("{} is {} not FUSE", mnt.display(), m.fs_type)),
        None => Health::Abnormal(format!("nothing is mounted at {}", mnt.display())),
    }
}

/// Liveness without reaping (start() reaps itself to keep the exit status).
pub(super) fn liveness(mnt: &Path, run: Running, timeout: Duration) -> Health {
    let h = process_and_table(mnt, run);
    if h != Health::Ok {
        return h;
    }
    let _ = process::cap_output(run.pid, LOG_MAX, LOG_KEEP);
    let p = probers(mnt, run);
    let statfs = p.lock().unwrap_or_else(|e| e.into_inner()).statfs.clone();
    match statfs.ask(timeout) {
        Answer::Done(Ok(_)) => Health::Ok,
        Answer::Done(Err(why)) => Health::Abnormal(why),
        Answer::Pending(after) => {
            let waiting = mounts::fuse_minor_at(mnt)
                .and_then(mount::fuse_waiting)
                .map(|n| format!(", {n} request(s) waiting"))
                .unwrap_or_default();
            Health::Abnormal(format!(
                "{} did not answer statfs within {:?}{waiting}",
                mnt.display(),
                after
            ))
        }
    }
}

/// The mount at `mnt` is alive: its process runs (not a zombie, not
/// stopped), mountinfo shows FUSE there, and statfs answers within
/// `timeout`. No listing: a slow bucket is not a dead mount (see
/// `condition`). Exit codes are not evidence: s3fs exits 0 on bad
/// credentials without mounting, rclone mounts a missing bucket as empty.
/// Also keeps the mounter's log bounded.
pub fn check(mnt: &Path, run: Running, timeout: Duration) -> Health {
    process::reap(run.pid);
    liveness(mnt, run, timeout)
}

/// A listing of `mnt` on its prober, waiting at most `timeout` (start only).
pub(super) fn list(mnt: &Path, run: Running, timeout: Duration) -> std::result::Result<(), String> {
    let list = {
        let p = probers(mnt, run);
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
        match &p.list {
            Some(l) => l.clone(),
            None => {
                let l = Arc::new(Prober::new(mnt, list_work));
                p.list = Some(l.clone());
                l
            }
        }
    };
    match list.ask(timeout) {
        Answer::Done(r) => r.map(|_| ()),
        Answer::Pending(after) => Err(format!(
            "{} did not answer a listing within {after:?}",
            mnt.display()
        )),
    }
}

/// What VolumeCondition should say, and the mount's figures, without ever
/// waiting: for NodeGetVolumeStats on a gRPC thread. Dead when the process
/// or mount table says so, or when a statfs probe has been running for
/// longer than PROBE_TIMEOUT (the health loop heals it); degraded when the
/// last answer of the endpoint pass (src/mounter/endpoint.rs) was no; else
/// healthy, with the last statfs figures (a new probe is started for the
/// next caller when none is running).
///
/// Reachability is asked of the endpoint, never through the mount: every
/// lookup or listing in the mount's root waits behind any pod's listing of
/// it (FUSE serialises directory operations on the inode), which for a big
/// prefix takes minutes, in uninterruptible sleep that not even SIGKILL ends.
/// The mount is looked up on its own (see `mounts::lookup`).
pub fn observe(mnt: &Path, run: Running, endpoint: &str) -> (Condition, Option<mount::FsStats>) {
    process::reap(run.pid);
    observed(mnt, run, endpoint, process_and_table(mnt, run))
}

/// `observe` against the mount table `table`, read once by the caller for
/// many mounts (a health pass).
pub fn observe_in(
    mnt: &Path,
    run: Running,
    endpoint: &str,
    table: &[mountinfo::MountInfo],
) -> (Condition, Option<mount::FsStats>) {
    process::reap(run.pid);
    observed(mnt, run, endpoint, process_and_table_in(mnt, run, table))
}

/// The rest of `observe`, once the process and the mount table said `seen`.
fn observed(
    mnt: &Path,
    run: Running,
    endpoint: &str,
    seen: Health,
) -> (Condition, Option<mount::FsStats>) {
    if let Health::Abnormal(why) = seen {
        return (Condition::Dead(why), None);
    }
    let p = probers(mnt, run);
    let statfs = p.lock().unwrap_or_else(|e| e.into_inner()).statfs.clone();
    let (last, running) = statfs.peek();
    if let Some(after) = running.filter(|r| *r >= PROBE_TIMEOUT) {
        return (
            Condition::Dead(format!(
                "{} did not answer statfs within {after:?}",
                mnt.display()
            )),
            None,
        );
    }
    let figures = match last {
        Some(Err(why)) => return (Condition::Dead(why), None),
        Some(Ok(f)) => f,
        None => None,
    };
    match super::endpoint::last_answer(endpoint) {
        Some(Err(why)) => (Condition::Degraded(why), figures),
        _ => (Condition::Healthy, figures),
    }
}
