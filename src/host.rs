//! The seam between the node's logic (src/node/) and the processes it runs:
//! starting, checking and stopping mounters, finding the ones a crash left
//! unrecorded, waiting for their uploads. `RealHost` does it (through
//! src/mounter/ and src/sys/); `fake::RecordingHost` records each call and
//! answers from a table, so the lifecycle logic of stage, unstage and the
//! unstage delay is unit-tested without root, without a mounter, in
//! milliseconds.
//!
//! Mounts and binds are not behind it yet: the node resolves and inspects
//! them through fd-relative `sys::nodepath`, which works on any directory
//! (a test's temporary kubelet dir shows no mount at all).

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::error::Result;
use crate::mounter::{self, Health, Kind, MountSpec, VolumeFiles};
use crate::sys::process::{self, Running};
use crate::sys::procscan;

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
}

/// A host for unit tests: every call is recorded ("start /path"), mounters
/// are entries of a table that the test can kill, and a start can be made
/// to fail.
#[cfg(test)]
pub mod fake {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use super::Host;
    use crate::config::Config;
    use crate::error::{Error, Result};
    use crate::mounter::{Health, Kind, MountSpec, VolumeFiles};
    use crate::sys::process::Running;

    #[derive(Default)]
    pub struct RecordingHost {
        calls: Mutex<Vec<String>>,
        /// Live mounters and the path each serves.
        live: Mutex<HashMap<Running, PathBuf>>,
        next_pid: AtomicI32,
        /// The next start fails (as a mounter that exits at once).
        pub fail_start: AtomicBool,
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
            match self
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&run)
            {
                Some(p) if p == mnt => Health::Ok,
                _ => Health::Abnormal(format!("mounter process {} is gone", run.pid)),
            }
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
    }
}
