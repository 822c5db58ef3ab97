//! NodePublishVolume / NodeUnpublishVolume of staged volumes: a bind of the
//! staging mount into the pod's target, and its removal.
//!
//! Publish:   record Binding → bind (+ read-only remount) → record Bound.
//! Unpublish: record Unbinding → detach bindery's bind → rmdir → forget.
//! Only a mount that shows this volume's FUSE filesystem (the device the
//! publication recorded, or the staging mount's) is ever detached.

use std::path::{Path, PathBuf};

use log::{debug, info, warn};
use nix::mount::MsFlags;

use super::Node;
use crate::cache::request as cachevol;
use crate::error::{Error, Result};
use crate::lifecycle::{Bind, BindPhase, Publication, PublishPhase, Volume};
use crate::mounter;
use crate::proto::csi::*;
use crate::sys::mount;
use crate::sys::nodepath::{self, NodePath};
use crate::validate;
use crate::volumes::{Guard, Op};

/// What a publish request asks for, compared on repeat calls.
fn publish_fingerprint(readonly: bool, cap: &VolumeCapability) -> String {
    let m = cap.get_mount();
    format!(
        "ro={readonly};mode={:?};flags={};group={}",
        cap.get_access_mode().get_mode(),
        m.get_mount_flags().join(","),
        m.get_volume_mount_group()
    )
}

/// The per-mount flags of a pod's bind of a FUSE mount: always nosuid and
/// nodev (a FUSE server decides what its files claim to be), read-only when
/// asked, plus the CSI mount_flags.
pub(super) fn bind_flags(csi: MsFlags, readonly: bool) -> MsFlags {
    let mut f = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | csi;
    if readonly {
        f |= MsFlags::MS_RDONLY;
    }
    f
}

/// How many stacked binds of one volume a single unpublish removes at most
/// (older versions could stack them; a loop must end).
const MAX_STACKED: usize = 16;

impl Node {
    /// The fields every publish needs, validated in order: volume_id,
    /// target_path and volume_capability present, the capability usable, the
    /// target below the kubelet dir.
    pub(super) fn publish_request<'r>(
        &self,
        req: &'r NodePublishVolumeRequest,
    ) -> Result<(&'r str, &'r VolumeCapability, PathBuf, MsFlags)> {
        let (id, cap, target, flags) = self.request_head(
            req.get_volume_id(),
            "target_path",
            req.get_target_path(),
            (req.has_volume_capability(), req.get_volume_capability()),
        )?;
        let group = cap.get_mount().get_volume_mount_group();
        if !group.is_empty() && group.parse::<u32>().is_err() {
            return Err(Error::invalid(
                "volume_capability.mount.volume_mount_group",
                format!("{} is not a numeric gid", crate::error::quoted(group)),
            ));
        }
        Ok((id, cap, target, flags))
    }

    /// Bind the staged mount into the pod's target (created if missing),
    /// read-only when asked. Spec: "volume_id ... REQUIRED", "target_path
    /// ... REQUIRED", "volume_capability ... REQUIRED"; publishing a volume
    /// that is not staged is FAILED_PRECONDITION; a repeat with the same
    /// arguments is OK, with others ALREADY_EXISTS.
    pub fn publish(&self, req: &NodePublishVolumeRequest) -> Result<NodePublishVolumeResponse> {
        let (id, cap, target, csi_flags) = self.publish_request(req)?;
        let staging = if req.get_staging_target_path().is_empty() {
            None
        } else {
            Some(validate::node_path(
                "staging_target_path",
                req.get_staging_target_path(),
                &self.cfg.kubelet_dir,
            )?)
        };
        let readonly = req.get_readonly() || validate::read_only_mode(cap);
        let fingerprint = publish_fingerprint(readonly, cap);
        let flags = bind_flags(csi_flags, readonly);
        debug_assert!(!cachevol::is_cache_request(req.get_volume_context()));

        let guard = self.table.acquire(id, Op::Short("NodePublishVolume"))?;
        let Some(st) = guard.data().ready_stage().cloned() else {
            return Err(Self::not_staged(id));
        };
        let staged_at = st.staging_path.clone();
        // fsGroup is applied by the mounter for the whole volume: a pod
        // asking for another group would silently get the first pod's.
        let group = cap.get_mount().get_volume_mount_group();
        let staged_group = st.volume_mount_group.as_str();
        if !group.is_empty() && group != staged_group {
            return Err(Error::precondition(
                id,
                format!(
                    "volume_mount_group {} differs from the group the volume was staged with ({}): \
                     pods sharing a staged volume must use the same fsGroup",
                    crate::error::quoted(group),
                    if staged_group.is_empty() { "none" } else { staged_group }
                ),
            ));
        }
        match &staging {
            None => {
                return Err(Error::precondition(
                    id,
                    "staging_target_path is required for a staged volume",
                ))
            }
            Some(_) if target.starts_with(&staged_at) || staged_at.starts_with(&target) => {
                return Err(Error::invalid(
                    "target_path",
                    "must not be the staging path, inside it, or above it",
                ))
            }
            Some(s) if *s != staged_at => {
                return Err(Error::precondition(
                    id,
                    format!("staged at {}, not {}", staged_at.display(), s.display()),
                ))
            }
            Some(_) => {}
        }
        let (stage_np, stage_mount) = self
            .mount_at("staging_target_path", &staged_at)?
            .filter(|(_, m)| m.is_fuse())
            .ok_or_else(|| {
                Error::not_serving(
                    id,
                    "the staged mount is not there (its mounter is being restarted)",
                )
            })?;
        // Never bind a dead mount: the pod would start with a volume that
        // answers ENOTCONN. The health loop restarts the mounter; the
        // kubelet retries the publish.
        if let mounter::Health::Abnormal(why) = self.host.serving(&staged_at, st.running()) {
            return Err(Error::not_serving(id, why));
        }
        let stage_dev = stage_mount.dev_string();
        let generation = st.generation;
        if let Some(p) = Self::publication(&guard, &target) {
            if p.fingerprint() != fingerprint {
                return Err(Error::exists(
                    id,
                    format!("{} is already published with other flags", target.display()),
                ));
            }
            if p.phase() == PublishPhase::Unbinding {
                self.unbind(&guard, &target)?;
            }
        }
        // Again: a finished unbind has just forgotten it. (A cache copy's
        // fingerprint never equals a bind's: it was refused above.)
        let existing = guard
            .data()
            .publication(&target)
            .and_then(Publication::as_bind)
            .cloned();
        // What is mounted at the target now: our current bind, our stale
        // one, or something that is not ours.
        let here = self.mount_at("target_path", &target)?;
        let ours_now = here
            .as_ref()
            .is_some_and(|(_, m)| m.dev_string() == stage_dev);
        if let Some(b) = &existing {
            if ours_now && b.generation == generation {
                if b.phase == BindPhase::Binding {
                    self.journal.bound_again(&guard, &target, None)?;
                }
                return Ok(NodePublishVolumeResponse::new());
            }
            // Lost, or a bind of a mount that has been healed since: bind again.
            self.detach_ours(&target, &[&b.mount_dev, &stage_dev])?;
        } else if let Some((_, m)) = &here {
            if !ours_now {
                return Err(Error::exists(
                    id,
                    format!(
                        "{} is already a mount point ({}) of something else",
                        target.display(),
                        m.fs_type
                    ),
                ));
            }
            // Our bind without a record: only older versions left these.
            self.detach_ours(&target, &[&stage_dev])?;
        }
        let bind = Bind {
            target: target.clone(),
            readonly,
            fingerprint,
            phase: BindPhase::Binding,
            generation,
            mount_dev: stage_dev.clone(),
            mount_flags: flags.bits(),
            // A bind made again after a heal: the pod's containers may still
            // show the dead mounts the old record listed (the health loop
            // re-binds them).
            stale_devs: existing
                .as_ref()
                .map(|old| old.stale_after_rebind(&stage_dev))
                .unwrap_or_default(),
        };
        self.journal.bind_begin(&guard, bind)?;
        if let Err(e) = self.bind_into(&stage_np, &target, flags, &stage_dev) {
            // A first bind that failed leaves nothing to remember. A target
            // the CO was already told is published stays Bound: the health
            // loop binds it again, an unpublish tears it down.
            let first = existing
                .as_ref()
                .map_or(true, |b| b.phase == BindPhase::Binding);
            if first {
                if let Err(undo) = self.journal.bind_abandon(&guard, &target) {
                    warn!("volume {id:?}: recording the failed publish: {undo}");
                }
            }
            return Err(e);
        }
        self.journal.bound(&guard, &target)?;
        Ok(NodePublishVolumeResponse::new())
    }

    /// Bind the staged mount onto `target` (created beneath the kubelet dir
    /// without following symlinks), then give the bind its per-mount flags:
    /// on the fd of the bind itself, keeping the source's. A failure undoes
    /// the bind, so nothing half-done stays behind.
    pub(super) fn bind_into(
        &self,
        stage: &NodePath,
        target: &Path,
        flags: MsFlags,
        dev: &str,
    ) -> Result<()> {
        // Everything below goes through the parent's fd: a swap of any
        // ancestor after this point cannot move the bind or its remount.
        let (parent, name) = self
            .kubelet
            .resolve_parent("target_path", target, true)?
            .ok_or_else(|| Error::invalid("target_path", "vanished while being created"))?;
        let dir = parent
            .child("target_path", &name, true)?
            .ok_or_else(|| Error::invalid("target_path", "vanished while being created"))?;
        self.host.bind(stage, &dir)?;
        drop(dir);
        let bound = parent.child("target_path", &name, false)?;
        let here = match &bound {
            Some(b) => self.host.mount_here(b, &parent)?,
            None => None,
        };
        let remounted = match (&bound, here) {
            (Some(b), Some(m)) if m.dev_string() == dev => {
                self.host
                    .remount_bind(b, mount::per_mount_flags(&m.options), flags)
            }
            _ => Err(Error::Changed {
                path: target.to_path_buf(),
                what: "the bind just made is gone".into(),
            }),
        };
        if let Err(e) = remounted {
            if let Some(b) = &bound {
                let _ = self.host.detach(b);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Detach every bind at `target` that shows one of `devs` (this volume's
    /// FUSE filesystems), topmost first; stop at the first mount that is not
    /// ours. Returns how many were detached.
    pub(super) fn detach_ours(&self, target: &Path, devs: &[&str]) -> Result<usize> {
        let mut n = 0;
        while n < MAX_STACKED {
            match self.mount_at("target_path", target)? {
                Some((np, m)) if devs.contains(&m.dev_string().as_str()) => {
                    self.host.detach(&np)?;
                    n += 1;
                }
                Some((_, m)) => {
                    debug!(
                        "{}: {} mount is not ours, left alone",
                        target.display(),
                        m.fs_type
                    );
                    break;
                }
                None => break,
            }
        }
        Ok(n)
    }

    /// Remove only this pod's bind and its target dir. Spec: "volume_id ...
    /// REQUIRED", "target_path ... REQUIRED"; a target this volume is not
    /// published at is OK (idempotent) and is not touched.
    pub fn unpublish(
        &self,
        req: &NodeUnpublishVolumeRequest,
    ) -> Result<NodeUnpublishVolumeResponse> {
        let id = validate::volume_id(req.get_volume_id())?;
        validate::required("target_path", req.get_target_path())?;
        let target =
            validate::node_path("target_path", req.get_target_path(), &self.cfg.kubelet_dir)?;
        // A symlink in the path is refused even when there is nothing to do.
        self.kubelet.resolve("target_path", &target, false)?;
        let guard = self.table.acquire(id, Op::Short("NodeUnpublishVolume"))?;
        let found = Self::publication(&guard, &target);
        match found {
            None => match self.quarantined(id) {
                Some(record) => self.unpublish_by_path(id, &record, &target)?,
                None => debug!(
                    "volume {id:?} is not published at {}: nothing to do",
                    target.display()
                ),
            },
            Some(Publication::Cache(_)) => self.cache_unpublish(&guard, &target)?,
            Some(Publication::Bind(_)) => self.unbind(&guard, &target)?,
        }
        Ok(NodeUnpublishVolumeResponse::new())
    }

    /// Record Unbinding, detach bindery's bind(s) at the target, remove the
    /// target dir, forget the publication.
    pub(super) fn unbind(&self, guard: &Guard<Volume>, target: &Path) -> Result<()> {
        let rec = guard.data().clone();
        let Some(b) = rec.publication(target).and_then(Publication::as_bind) else {
            return Ok(());
        };
        self.journal.unbind_begin(guard, target)?;
        let mut devs = vec![b.mount_dev.clone()];
        if let Some(st) = &rec.stage {
            if let Ok(Some((_, m))) = self.mount_at("staging_target_path", &st.staging_path) {
                if m.is_fuse() {
                    devs.push(m.dev_string());
                }
            }
        }
        let devs: Vec<&str> = devs
            .iter()
            .map(String::as_str)
            .filter(|d| !d.is_empty())
            .collect();
        let n = self.detach_ours(target, &devs)?;
        if let Some((parent, name)) = self.kubelet.resolve_parent("target_path", target, false)? {
            nodepath::rmdir_at(&parent, &name)?;
        }
        self.journal.unbind_done(guard, target)?;
        if n > 0 {
            info!("volume {:?}: unbound {}", guard.id(), target.display());
        } else {
            warn!(
                "volume {:?}: {} had no bind of it left",
                guard.id(),
                target.display()
            );
        }
        Ok(())
    }
}
