//! Mounter exits, seen the moment they happen: one thread holds a pidfd of
//! every recorded mounter and polls them all; when one becomes readable
//! (the process exited: kill -9, OOM, a crash) the health loop is woken to
//! run a pass at once instead of at its next `--watchdog-interval`. A
//! stopped or hung mounter does not exit: the periodic pass still finds it.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use log::warn;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::Node;
use crate::sys::process::{self, Running};

/// How often the set of recorded mounters is read again (a mounter started
/// since is watched from then on).
const REFRESH: Duration = Duration::from_millis(500);

impl Node {
    /// The recorded mounters of every Ready volume, with the volume's id.
    fn recorded_mounters(&self) -> HashMap<Running, String> {
        self.table
            .ids()
            .into_iter()
            .filter_map(|id| self.table.snapshot(&id).map(|rec| (id, rec)))
            .filter_map(|(id, rec)| Some((rec.stage.filter(|st| st.is_ready())?.running(), id)))
            .filter(|(r, _)| r.pid > 0)
            .collect()
    }

    /// Watch the recorded mounters until `stop` says so (or is dropped);
    /// each exit sends on `wake` (a full channel already has a pass due).
    pub fn watch_mounter_exits(&self, wake: &Sender<()>, stop: &Receiver<()>) {
        let mut watched: HashMap<Running, OwnedFd> = HashMap::new();
        // Exits already reported: their records name them until the heal
        // replaces them, and must not wake the loop again and again.
        let mut exited: HashSet<Running> = HashSet::new();
        while let Err(TryRecvError::Empty) = stop.try_recv() {
            let want = self.recorded_mounters();
            watched.retain(|r, _| want.contains_key(r));
            exited.retain(|r| want.contains_key(r));
            for &r in want.keys() {
                if !watched.contains_key(&r) && !exited.contains(&r) {
                    match process::pidfd(r) {
                        Some(fd) => {
                            watched.insert(r, fd);
                        }
                        // Gone already: the pass will find it dead.
                        None => {
                            exited.insert(r);
                            let _ = wake.try_send(());
                        }
                    }
                }
            }
            let keys: Vec<Running> = watched.keys().copied().collect();
            let mut fds: Vec<PollFd<'_>> = keys
                .iter()
                .filter_map(|r| watched.get(r))
                .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                .collect();
            let timeout = PollTimeout::try_from(REFRESH).unwrap_or(PollTimeout::MAX);
            let ready: Vec<Running> = match poll(&mut fds, timeout) {
                Ok(0) => Vec::new(),
                Ok(_) => keys
                    .iter()
                    .zip(&fds)
                    .filter(|(_, fd)| fd.revents().is_some_and(|e| !e.is_empty()))
                    .map(|(r, _)| *r)
                    .collect(),
                Err(nix::errno::Errno::EINTR) => Vec::new(),
                Err(e) => {
                    warn!("watching mounter exits: poll: {e}; checking every pass only");
                    return;
                }
            };
            drop(fds);
            for r in ready {
                let id = want.get(&r).map_or("?", String::as_str);
                warn!("volume {id:?}: mounter pid {} exited; healing now", r.pid);
                watched.remove(&r);
                exited.insert(r);
                let _ = wake.try_send(());
            }
        }
    }
}
