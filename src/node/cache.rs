//! Cache volumes on the node's side: admission, and the persisted phases
//! around filling and removing a pod's copy.
//!
//! Publish:   record Populating → fill from the golden copy → record Populated.
//! Unpublish: record Removing → detach bindery's mounts inside, move the tree
//!            to the trash → forget.

use std::path::{Path, PathBuf};
use std::time::Instant;

use log::warn;

use super::Node;
use crate::cache::request::CacheRequest;
use crate::crash;
use crate::error::{Error, Result};
use crate::lifecycle::{CacheCopy, CachePhase, Publication, Volume};
use crate::metrics;
use crate::proto::csi::*;
use crate::validate;
use crate::volumes::{Guard, Op};

impl Node {
    /// Validation and admission of a cache volume publish: population takes
    /// time, so it is a long operation on the volume.
    pub fn admit_cache_publish(
        &self,
        req: &NodePublishVolumeRequest,
    ) -> Result<(Guard<Volume>, PathBuf, CacheRequest, bool)> {
        let (id, cap, target, _flags) = self.publish_request(req)?;
        let readonly = req.get_readonly() || validate::read_only_mode(cap);
        let creq = self.caches.declarations().request(
            req.get_volume_context(),
            cap.get_mount().get_volume_mount_group(),
            readonly,
            validate::pod_dir(&target, &self.cfg.kubelet_dir),
        )?;
        let guard = self.table.acquire(id, Op::Long("NodePublishVolume"))?;
        Ok((guard, target, creq, readonly))
    }

    /// Fill the target from the golden copy; return only when complete. A
    /// population that a crash interrupted is removed and started over.
    pub fn cache_publish(
        &self,
        guard: Guard<Volume>,
        target: PathBuf,
        creq: CacheRequest,
        readonly: bool,
    ) -> Result<NodePublishVolumeResponse> {
        let id = guard.id().to_string();
        let existing = Self::publication(&guard, &target);
        if let Some(p) = existing {
            if p.fingerprint() != creq.fingerprint {
                return Err(Error::exists(
                    &id,
                    format!(
                        "{} is already published with other attributes",
                        target.display()
                    ),
                ));
            }
            let populated = match p {
                Publication::Cache(c) if c.phase == CachePhase::Populated => Some(c),
                _ => None,
            };
            if let Some(c) = populated {
                // The kubelet publishes again after a restart or a reboot:
                // what was published must still be there, or be made whole.
                let Some(why) = self.caches.missing(&c) else {
                    return Ok(NodePublishVolumeResponse::new());
                };
                warn!(
                    "volume {id:?}: {} lost its cache volume ({why}): restoring it",
                    target.display()
                );
                match self.caches.restore(&c) {
                    Ok(()) => return Ok(NodePublishVolumeResponse::new()),
                    Err(e) => warn!("volume {id:?}: {e}: filling it anew"),
                }
            } else {
                warn!(
                    "volume {id:?}: population of {} was interrupted, starting over",
                    target.display()
                );
            }
            self.cache_unpublish(&guard, &target)?;
        } else if let Some((_, m)) = self.mount_at("target_path", &target)? {
            // Never fill (or later clean up) a directory that is some other
            // mount: it is not this pod's empty volume dir.
            return Err(Error::exists(
                &id,
                format!(
                    "{} is already a mount point ({})",
                    target.display(),
                    m.fs_type
                ),
            ));
        }
        // The target dir itself, created beneath the kubelet dir without
        // following symlinks, before anything is written into it. It must be
        // empty: a pod's new volume dir is, and anything else (another
        // volume's tree) is not ours to fill or, on failure, to remove.
        let dir = self
            .kubelet
            .resolve("target_path", &target, true)?
            .ok_or_else(|| Error::invalid("target_path", "vanished while being created"))?;
        if std::fs::read_dir(dir.proc_path())
            .map_err(|e| Error::io("readdir", &target, e))?
            .next()
            .is_some()
        {
            return Err(Error::exists(
                &id,
                format!("{} is not empty", target.display()),
            ));
        }
        drop(dir);
        let pending = CacheCopy {
            target: target.clone(),
            readonly,
            fingerprint: creq.fingerprint.clone(),
            phase: CachePhase::Populating,
            name: creq.decl.name.clone(),
            filled: None,
        };
        self.journal.populate_begin(&guard, pending)?;
        crash::pause("cache_publish.filling");
        let started = Instant::now();
        match self.caches.publish(&creq, &target, readonly) {
            Ok(filled) => {
                metrics::CACHE_PUBLISH_DURATION
                    .observe(&[&creq.decl.name, &filled.strategy], started.elapsed());
                self.journal.populated(&guard, &target, filled)?;
                Ok(NodePublishVolumeResponse::new())
            }
            Err(e) => {
                if let Err(clean) = self.cache_unpublish(&guard, &target) {
                    warn!("volume {id:?}: cleaning up {}: {clean}", target.display());
                }
                Err(e)
            }
        }
    }

    /// Record Removing, remove the pod's tree (never the golden copy), forget.
    pub(super) fn cache_unpublish(&self, guard: &Guard<Volume>, target: &Path) -> Result<()> {
        if Self::publication(guard, target).is_none() {
            return Ok(());
        }
        self.journal.remove_begin(guard, target)?;
        self.caches.unpublish(target)?;
        self.journal.remove_done(guard, target)?;
        self.cache_upkeep_due
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Cache upkeep (tamper checks of shared golden versions, collection of
    /// unused ones): after a cache volume went away, or when `force`d.
    ///
    /// A volume busy with a long call is passed over, not waited for (one busy
    /// volume must not stop every other's upkeep), and upkeep is due again.
    /// Passing it over is safe for collection: a population in flight pins
    /// its version, and a finished one depends on its version only through
    /// an overlay, which `maintain` finds in the mount table.
    pub fn cache_upkeep(&self, force: bool) {
        use std::collections::{HashMap, HashSet};
        use std::sync::atomic::Ordering;
        if !self.cache_upkeep_due.swap(false, Ordering::SeqCst) && !force {
            return;
        }
        let mut in_use: HashMap<String, HashSet<String>> = HashMap::new();
        let mut hardlinked = HashSet::new();
        for id in self.table.ids() {
            // Populations in flight hold the guard: their versions are in use.
            let Ok(guard) = self.table.acquire(&id, Op::Short("upkeep")) else {
                self.cache_upkeep_due.store(true, Ordering::SeqCst);
                continue;
            };
            for c in guard.data().caches() {
                let (version, strategy) = c
                    .filled
                    .as_ref()
                    .map_or(("", ""), |f| (f.version.as_str(), f.strategy.as_str()));
                let (name, version) = (c.name.clone(), version.to_string());
                if strategy == "hardlink" {
                    hardlinked.insert((name.clone(), version.clone()));
                }
                in_use.entry(name).or_default().insert(version);
            }
        }
        self.caches.maintain(&in_use, &hardlinked);
    }
}
