//! Volumes whose record was quarantined (src/state.rs): the record is gone,
//! its mounts and mounter may not be. The kubelet still unpublishes and
//! unstages such a volume; instead of answering OK without touching
//! anything (and leaving the pod's mount and the mounter behind for good),
//! bindery cleans up by the paths the kubelet names:
//! - unpublish: every mount at or below the target is detached, then the
//!   pod's tree is moved to the trash (the same removal as a cache volume's);
//! - unstage: mounters whose argv names the staging path are stopped, the
//!   FUSE mount there aborted and detached, the volume's files removed;
//! - stage: a healthy mounter found there by its argv is adopted under a new
//!   record; a dead one is cleaned up as by unstage, then the stage runs.
//!
//! Only the target and staging paths the kubelet gives for THIS volume id
//! are touched, and only while its quarantined record exists.

use std::path::{Path, PathBuf};

use log::{info, warn};

use super::Node;
use crate::error::Result;
use crate::lifecycle::Volume;
use crate::mounter::Running;
use crate::volumes::Guard;

impl Node {
    /// The quarantined record of volume `id`, if there is one.
    pub(super) fn quarantined(&self, id: &str) -> Option<PathBuf> {
        self.journal.store().quarantined_record(id)
    }

    /// Unpublish of a target that no record names, for a quarantined volume.
    pub(super) fn unpublish_by_path(&self, id: &str, record: &Path, target: &Path) -> Result<()> {
        if self
            .kubelet
            .resolve("target_path", target, false)?
            .is_none()
        {
            return Ok(());
        }
        self.caches.unpublish(target)?;
        // A version that only this tree's overlay kept may be collected now.
        self.cache_upkeep_due
            .store(true, std::sync::atomic::Ordering::SeqCst);
        warn!(
            "volume {id:?}: its record is quarantined at {}; cleaned up {} by path",
            record.display(),
            target.display()
        );
        Ok(())
    }

    /// Unstage at a staging path that no record names, for a quarantined volume.
    pub(super) fn unstage_by_path(&self, id: &str, record: &Path, staging: &Path) -> Result<()> {
        self.release_stage(id, staging, Running::default())?;
        warn!(
            "volume {id:?}: its record is quarantined at {}; stopped its mounter at {} by path",
            record.display(),
            staging.display()
        );
        Ok(())
    }

    /// Stage of a quarantined volume: the one healthy mounter serving
    /// `staging` (found by its argv), to adopt; else whatever is left there
    /// is cleaned up and None is returned (the stage then runs as new).
    pub(super) fn stage_by_path(
        &self,
        guard: &Guard<Volume>,
        record: &Path,
        staging: &Path,
    ) -> Result<Option<Running>> {
        let id = guard.id();
        // No process is recorded: only one found by its argv can be adopted.
        if let Some(run) = self.adoptable(staging, Running::default()) {
            info!(
                "volume {id:?}: its record is quarantined at {}; adopting mounter pid {} at {}",
                record.display(),
                run.pid,
                staging.display()
            );
            return Ok(Some(run));
        }
        self.unstage_by_path(id, record, staging)?;
        Ok(None)
    }
}
