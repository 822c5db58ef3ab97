//! Starting and stopping mounter processes.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::wait::WaitStatus;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::state::volume_key;
use crate::sys::mount::{self, FuseConnection};
use crate::sys::process::Running;
use crate::sys::{cgroup, mounts, process};

use super::command::command;
use super::files::{last_line, VolumeFiles};
use super::health::{self, Health};
use super::kind::Kind;
use super::spec::MountSpec;

/// How long a mounter may take to exit by itself once its mount is gone
/// before its connection is aborted and it is signalled.
pub const SELF_EXIT: Duration = Duration::from_millis(500);
/// Longest wait between SIGTERM and SIGKILL when stopping a mounter.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

/// Start the mounter for `spec` at `mnt` and wait until it serves the mount:
/// mountinfo shows FUSE there, statfs answers and a listing succeeds within
/// `--mount-timeout`. On failure the process is stopped, the mount removed
/// and the credentials and log deleted; the cache directory is kept (it may
/// hold acknowledged writes of an earlier mounter of the volume). The error
/// says what happened: the mounter's exit code and last line of output when
/// it exited, the probe that did not answer when it timed out.
///
/// The process is moved into each `--mounter-cgroup` so that a container
/// runtime stopping the daemon's container (which kills what is left in the
/// container's cgroup) does not take the mounts of running pods with it;
/// with `--mounter-memory-max`/`--mounter-pids-max`, into a cgroup of its own
/// below each, holding those limits.
pub fn start(
    volume: &str,
    spec: &MountSpec,
    mnt: &Path,
    files: &VolumeFiles,
    cfg: &Config,
) -> Result<Running> {
    let timeout = cfg.mount_timeout;
    let kind = spec.kind.as_str();
    let cmd = match command(spec, mnt, files) {
        Ok(c) => c,
        Err(e) => {
            let _ = files.remove_credentials();
            return Err(e);
        }
    };
    let _ = std::fs::remove_file(&files.log);
    let (pid, start_ticks) = match process::spawn_session(cmd, &files.log) {
        Ok(r) => r,
        Err(e) => {
            let _ = files.remove_after_failure();
            return Err(Error::mounter(volume, format!("cannot start {kind}: {e}")));
        }
    };
    let run = Running { pid, start_ticks };
    // The mounter runs, unrecorded, and has not mounted yet.
    crate::lifecycle::Step::MounterSpawned.reached();
    if let Err(e) = enter_cgroups(volume, pid, cfg) {
        stop(mnt, run, Duration::from_millis(200));
        remove_cgroups(volume, cfg);
        let _ = files.remove_after_failure();
        return Err(Error::mounter(volume, e));
    }
    let deadline = Instant::now() + timeout;
    let mut last;
    let mut exit: Option<WaitStatus> = None;
    loop {
        if let Some(st) = process::reap(pid) {
            exit = Some(st);
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        match health::liveness(mnt, run, left) {
            Health::Ok => match health::list(mnt, run, left) {
                Ok(()) => return Ok(run),
                Err(why) => last = why,
            },
            Health::Abnormal(why) => last = why,
        }
        if exit.is_some() || !process::is_alive(pid, start_ticks) || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    if exit.is_none() {
        exit = process::reap(pid);
    }
    // Before stop(): afterwards the process is gone in every case.
    let gone = exit.is_some() || !process::is_alive(pid, start_ticks);
    // A program that forked into the background left a mount served by a
    // process bindery does not track.
    let daemonized = matches!(exit, Some(WaitStatus::Exited(_, 0)))
        && spec.kind == Kind::Fuse
        && mounts::fuse_minor_at(mnt).is_some();
    abort(mnt);
    stop(mnt, run, Duration::from_millis(200));
    let line = last_line(&files.log, &spec.secrets);
    let _ = files.remove_after_failure();
    let program = spec.command.first().map(String::as_str).unwrap_or(kind);
    let reason = match (exit, daemonized) {
        (_, true) => format!(
            "{program} went to the background (it exited with code 0 while its mount \
             was up): allowed programs must run in the foreground"
        ),
        (Some(st), false) => format!(
            "{kind} did not become ready: {program} {}: {line}",
            process::describe_exit(&st)
        ),
        (None, false) if gone => {
            format!("{kind} did not become ready: {program} exited: {line}")
        }
        (None, false) => format!(
            "{kind} did not become ready within {timeout:?} ({last}); mounter output: {line}"
        ),
    };
    Err(Error::mounter(volume, reason))
}

/// Abort the FUSE connection behind `mnt` (fusectl): calls blocked on a
/// hung or stopped server fail with ENOTCONN instead of hanging the pods.
pub fn abort(mnt: &Path) {
    if let Some(conn) = FuseConnection::of_mount(mnt) {
        match conn.abort() {
            Ok(()) => log::info!("aborted the FUSE connection of {}", mnt.display()),
            Err(e) => log::warn!("abort FUSE connection of {}: {e}", mnt.display()),
        }
    }
}

/// Stop the mounter of `mnt` promptly. Call it once nothing is left to
/// upload (`wait_for_uploads`). Unmount `mnt` (lazily if the FUSE side is
/// dead or busy) and give the mounter SELF_EXIT to exit by itself. One that
/// is still running then is kept alive by a copy of the mount in another
/// mount namespace (an `unshare -m`, a PrivateTmp service, a sandbox made
/// while the volume was staged) or ignores the unmount: its FUSE connection
/// is aborted through fusectl (those copies then read ENOTCONN, as they
/// would after any unmount on a node), then it gets SIGTERM and, after
/// `grace` (at most TERM_GRACE), SIGKILL.
///
/// The connection is taken hold of BEFORE the unmount: afterwards its
/// number may already belong to another volume's new mount.
pub fn stop(mnt: &Path, run: Running, grace: Duration) {
    stop_with(mnt, run, grace, || {})
}

/// Stop the mounter `run` of `mnt` without touching the mount: SIGTERM to
/// its session, SIGKILL after `grace` (at most TERM_GRACE; zero: at once).
/// For a teardown that clears the mount itself AFTERWARDS, so that no
/// mounter of the volume is left alive that could still mount there once
/// the path was cleared.
pub fn terminate(mnt: &Path, run: Running, grace: Duration) {
    health::forget(mnt);
    if !process::terminate(run.pid, run.start_ticks, grace.min(TERM_GRACE)) {
        log::warn!("mounter {} did not exit after SIGKILL", run.pid);
    }
}

/// `stop`, running `after_unmount` right after the unmount (tests use it to
/// mount something else in the window where the old connection number is
/// free again).
pub(super) fn stop_with(mnt: &Path, run: Running, grace: Duration, after_unmount: impl FnOnce()) {
    let conn = FuseConnection::of_mount(mnt);
    health::forget(mnt);
    if let Err(e) = mount::unmount(mnt) {
        log::warn!("unmount {}: {e}", mnt.display());
    }
    after_unmount();
    if process::wait_gone(run.pid, run.start_ticks, SELF_EXIT.min(grace)) {
        return;
    }
    if let Some(conn) = conn {
        match conn.abort() {
            Ok(()) => log::info!(
                "mounter {} outlived its unmount at {}: aborted its FUSE connection",
                run.pid,
                mnt.display()
            ),
            Err(e) => log::warn!("abort FUSE connection of {}: {e}", mnt.display()),
        }
    }
    if !process::terminate(run.pid, run.start_ticks, grace.min(TERM_GRACE)) {
        log::warn!("mounter {} did not exit after SIGKILL", run.pid);
    }
}

/// Move mounter `pid` of `volume` into its cgroups (see `start`); the error
/// names the flag to look at.
fn enter_cgroups(volume: &str, pid: i32, cfg: &Config) -> std::result::Result<(), String> {
    let limits = cfg.mounter_limits;
    let mut took = cgroup::Applied::default();
    for dir in &cfg.mounter_cgroups {
        let target = if limits.is_empty() {
            dir.clone()
        } else {
            let (child, applied) = cgroup::limited_child(dir, &volume_key(volume), &limits)
                .map_err(|e| format!("--mounter-cgroup with limits: {e}"))?;
            took.memory |= applied.memory;
            took.pids |= applied.pids;
            child
        };
        cgroup::move_to_cgroup(pid, &target).map_err(|e| format!("--mounter-cgroup: {e}"))?;
    }
    for (flag, wanted, done) in [
        (
            "--mounter-memory-max",
            limits.memory_max.is_some(),
            took.memory,
        ),
        ("--mounter-pids-max", limits.pids_max.is_some(), took.pids),
    ] {
        if wanted && !done {
            return Err(format!(
                "{flag}: no --mounter-cgroup is in a hierarchy with that controller \
                 (on cgroup v1, give one --mounter-cgroup per hierarchy)"
            ));
        }
    }
    Ok(())
}

/// Remove the cgroups of `volume`'s mounter once it is gone (with limits
/// only: without, every mounter shares the `--mounter-cgroup` dirs).
pub fn remove_cgroups(volume: &str, cfg: &Config) {
    if cfg.mounter_limits.is_empty() {
        return;
    }
    for dir in &cfg.mounter_cgroups {
        if let Err(e) = cgroup::remove_child(dir, &volume_key(volume)) {
            log::warn!("volume {volume:?}: {e}");
        }
    }
}
