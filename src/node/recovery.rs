//! Recovery: before the socket serves any node call, every persisted record
//! is loaded and settled by its phase. Teardowns that were under way are
//! finished (never undone); starts are adopted when their result is there
//! and healthy, otherwise rolled back. Nothing slow happens here: health
//! checks, remounts and cache builds come after, under the volume guards.

use std::path::Path;
use std::time::Duration;

use log::{error, info, warn};

use super::Node;
use crate::error::Result;
use crate::lifecycle::{Publication, PublishPhase, StagePhase, Volume};
use crate::mounter::{Health, Running};
use crate::volumes::{Guard, Op};

impl Node {
    /// Load every record and settle it. Returns how many volumes are known.
    pub fn recover(&self) -> usize {
        let loaded = match self.journal.store().load_all() {
            Ok(r) => r,
            Err(e) => {
                warn!("cannot read state: {e}");
                Default::default()
            }
        };
        for q in &loaded.quarantined {
            error!(
                "state: the record of volume key {} is quarantined at {} (remove the file \
                 once that volume is unstaged and its pods gone)",
                q.key,
                q.path.display()
            );
        }
        for (id, volume) in loaded.records {
            match self.table.acquire(&id, Op::Long("recovery")) {
                Ok(guard) => {
                    *guard.data() = volume;
                    if let Err(e) = self.settle(&guard) {
                        warn!("volume {id:?}: recovery: {e}");
                    }
                }
                Err(e) => warn!("volume {id:?}: {e}"),
            }
        }
        let n = self.table.len();
        info!("state recovered: {n} volume(s)");
        n
    }

    /// Settle one volume's interrupted steps.
    fn settle(&self, guard: &Guard<Volume>) -> Result<()> {
        let id = guard.id().to_string();
        let rec = guard.data().clone();
        for p in &rec.publications {
            let target = p.target().to_path_buf();
            match p.phase() {
                PublishPhase::Binding => {
                    // The bind may or may not have happened: a retried
                    // publish finds it (or makes it) and records Bound.
                    info!(
                        "volume {id:?}: publish of {} was interrupted; the retry finishes it",
                        target.display()
                    );
                }
                PublishPhase::Unbinding => {
                    info!(
                        "volume {id:?}: finishing the unpublish of {}",
                        target.display()
                    );
                    self.unbind(guard, &target)?;
                }
                PublishPhase::Populating | PublishPhase::Removing => {
                    info!(
                        "volume {id:?}: removing the interrupted cache volume {}",
                        target.display()
                    );
                    self.cache_unpublish(guard, &target)?;
                }
                PublishPhase::Populated => {
                    let Publication::Cache(c) = p else {
                        continue;
                    };
                    // After a reboot the record stays and the mounts are gone:
                    // mount overlays and read-only binds again from disk.
                    if let Some(why) = self.caches.missing(c) {
                        match self.caches.restore(c) {
                            Ok(()) => info!(
                                "volume {id:?}: {} had lost its cache volume ({why}): restored",
                                target.display()
                            ),
                            Err(e) => warn!(
                                "volume {id:?}: {} lost its cache volume ({why}) and {e}; \
                                 its next publish fills it anew, its stats say abnormal",
                                target.display()
                            ),
                        }
                    }
                }
                PublishPhase::Bound => {}
            }
        }
        let Some(st) = guard.data().stage.clone() else {
            return Ok(());
        };
        let staging = st.staging_path.clone();
        let recorded = st.running();
        match st.phase {
            StagePhase::Stopping => {
                info!(
                    "volume {id:?}: finishing the unstage of {}",
                    staging.display()
                );
                self.teardown_stage(guard)
            }
            StagePhase::Starting => match self.adoptable(&staging, recorded) {
                Some(run) => {
                    info!(
                        "volume {id:?}: adopting mounter pid {} at {}",
                        run.pid,
                        staging.display()
                    );
                    self.journal.stage_ready(guard, run)
                }
                None => {
                    info!(
                        "volume {id:?}: rolling back the interrupted stage at {}",
                        staging.display()
                    );
                    self.teardown_stage(guard)
                }
            },
            // Unstaged with its mounter kept: kept while it serves (the
            // unstage-delay job ends it when due); after a reboot, gone.
            StagePhase::Lingering { .. } => match self.adoptable(&staging, recorded) {
                Some(run) if run == recorded => {
                    info!(
                        "volume {id:?}: unstaged, mounter pid {} kept at {} (unstageDelay)",
                        run.pid,
                        staging.display()
                    );
                    Ok(())
                }
                _ => {
                    info!(
                        "volume {id:?}: unstaged with its mounter kept, which is gone: cleaning up {}",
                        staging.display()
                    );
                    self.teardown_stage(guard)
                }
            },
            StagePhase::Ready if st.mounter.is_some() => {
                info!(
                    "volume {id:?}: staged at {}, mounter pid {} adopted (the health loop checks it)",
                    staging.display(),
                    recorded.pid
                );
                Ok(())
            }
            StagePhase::Ready => {
                // A heal interrupted after recording "no mounter": adopt the
                // one it started if it serves; the health loop does the rest.
                if let Some(run) = self.adoptable(&staging, recorded) {
                    info!(
                        "volume {id:?}: adopting mounter pid {} at {}",
                        run.pid,
                        staging.display()
                    );
                    self.journal.heal_done(guard, run)?;
                }
                Ok(())
            }
        }
    }

    /// The mounter serving `staging`, if exactly that: the recorded process,
    /// or the one session leader whose argv names the staging path, alive
    /// and answering on a FUSE mount there.
    pub(super) fn adoptable(&self, staging: &Path, recorded: Running) -> Option<Running> {
        let mut candidates = vec![recorded];
        candidates.extend(self.host.mounters_by_argv(staging));
        candidates.dedup();
        let alive: Vec<Running> = candidates
            .into_iter()
            .filter(|r| r.pid > 0 && self.host.is_alive(*r))
            .collect();
        match alive.as_slice() {
            [one] if self.host.check(staging, *one, Duration::from_secs(2)) == Health::Ok => {
                Some(*one)
            }
            _ => None,
        }
    }
}
