//! NodeStageVolume and NodeUnstageVolume: one mounter per volume per node,
//! started at the staging path, stopped when no pod uses the volume.
//!
//! Stage:   record Starting → start the mounter → record Ready{pid}.
//! Unstage: uploads finished → record Stopping → unmount, stop the process,
//!          remove its files → delete the stage record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{info, warn};

use super::{linger, Node};
use crate::error::{Error, Result};
use crate::lifecycle::{Stage, StagePhase, Volume};
use crate::metrics;
use crate::mounter::{self, Health, MountSpec, Running};
use crate::proto::csi::*;
use crate::validate;
use crate::volumes::{Guard, Op};

/// What a stage request asks for (secrets excluded: they may rotate).
fn stage_fingerprint(params: &HashMap<String, String>, cap: &VolumeCapability) -> String {
    let mut keys: Vec<_> = params
        .iter()
        .filter(|(k, _)| !mounter::is_co_key(k))
        .collect();
    keys.sort();
    let m = cap.get_mount();
    format!(
        "{keys:?};flags={};group={}",
        m.get_mount_flags().join(","),
        m.get_volume_mount_group()
    )
}

/// A validated stage request, ready to run on a worker.
pub struct StageArgs {
    staging: PathBuf,
    spec: MountSpec,
}

impl Node {
    /// Validation and admission of NodeStageVolume (runs inline, never blocks
    /// for long). Spec: "volume_id ... This field is REQUIRED",
    /// "staging_target_path ... REQUIRED", "volume_capability ... REQUIRED".
    pub fn admit_stage(&self, req: &NodeStageVolumeRequest) -> Result<(Guard<Volume>, StageArgs)> {
        // mount_flags are applied to each pod's bind at publish; refused here
        // if unknown.
        let (id, cap, staging, _flags) = self.request_head(
            req.get_volume_id(),
            "staging_target_path",
            req.get_staging_target_path(),
            (req.has_volume_capability(), req.get_volume_capability()),
        )?;
        let mut spec =
            mounter::parse_spec_for(id, req.get_volume_context(), req.get_secrets(), &self.cfg)?;
        mounter::apply_mount_group(&mut spec, cap.get_mount().get_volume_mount_group())?;
        linger::delay_of(req.get_volume_context(), self.cfg.unstage_delay)?;
        let guard = self.table.acquire(id, Op::Long("NodeStageVolume"))?;
        Ok((guard, StageArgs { staging, spec }))
    }

    /// Start one mounter for the volume at the staging path. A repeated call
    /// finds its own healthy mount and returns OK (updating rotated
    /// secrets); its own dead mount is replaced.
    pub fn stage(
        &self,
        req: &NodeStageVolumeRequest,
        guard: Guard<Volume>,
        args: StageArgs,
    ) -> Result<NodeStageVolumeResponse> {
        let id = guard.id().to_string();
        let staging = args.staging;
        let fingerprint = stage_fingerprint(req.get_volume_context(), req.get_volume_capability());
        let existing = guard.data().stage.clone();
        if let Some(st) = existing.as_ref().filter(|st| st.is_lingering()) {
            let same = st.staging_path == staging && st.fingerprint == fingerprint;
            if same && self.revive(&guard)? {
                return self
                    .rotate_secrets(&guard, req.get_secrets())
                    .map(|()| NodeStageVolumeResponse::new());
            }
            // No pod uses it: a stage that differs (or a dead kept mounter,
            // torn down already) gets a new mounter.
            self.teardown_stage(&guard)?;
        } else if let Some(st) = &existing {
            if st.staging_path != staging {
                return Err(Error::precondition(
                    &id,
                    format!(
                        "already staged at {}, not {}",
                        st.staging_path.display(),
                        staging.display()
                    ),
                ));
            }
            if st.fingerprint != fingerprint {
                return Err(Error::exists(
                    &id,
                    "already staged with different parameters or capability",
                ));
            }
            if st.is_ready() {
                if self
                    .host
                    .check(&staging, st.running(), mounter::PROBE_TIMEOUT)
                    == Health::Ok
                {
                    return self
                        .rotate_secrets(&guard, req.get_secrets())
                        .map(|()| NodeStageVolumeResponse::new());
                }
                warn!("volume {id:?}: its staged mount is not healthy, starting its mounter again");
                self.restart_mounter(&guard, Some(req.get_secrets()))?;
                return Ok(NodeStageVolumeResponse::new());
            }
            // A start or a teardown that a crash interrupted (recovery
            // normally settles these first): finish it, then start anew.
            self.teardown_stage(&guard)?;
        }
        // Nothing recorded: the staging dir (created if missing) must be ours
        // to mount on.
        let vanished = || Error::invalid("staging_target_path", "vanished while being created");
        let (parent, name) = self
            .kubelet
            .resolve_parent("staging_target_path", &staging, true)?
            .ok_or_else(vanished)?;
        let dir = parent
            .child("staging_target_path", &name, true)?
            .ok_or_else(vanished)?;
        // A volume whose record was quarantined may still have its mounter.
        let adopted = match self.quarantined(&id) {
            Some(record) => self.stage_by_path(&guard, &record, &staging)?,
            None => None,
        };
        if let (None, Some(m)) = (adopted, self.host.mount_here(&dir, &parent)?) {
            return Err(Error::precondition(
                &id,
                format!(
                    "{} is already a mount point ({}) that bindery did not record",
                    staging.display(),
                    m.fs_type
                ),
            ));
        }
        drop((parent, dir));
        let stage = Stage {
            staging_path: staging.clone(),
            parameters: req.get_volume_context().clone(),
            secrets: req.get_secrets().clone(),
            fingerprint,
            volume_mount_group: req
                .get_volume_capability()
                .get_mount()
                .get_volume_mount_group()
                .to_string(),
            phase: StagePhase::Starting,
            mounter: None,
            generation: 1,
        };
        self.journal.stage_begin(&guard, stage)?;
        let started = match adopted {
            Some(run) => Ok(run),
            None => self.host.start_mounter(
                &id,
                &args.spec,
                &staging,
                &self.volume_files(&id),
                &self.cfg,
            ),
        };
        let run = match started {
            Ok(run) => run,
            Err(e) => {
                if let Err(undo) = self.journal.stage_abandon(&guard) {
                    warn!("volume {id:?}: recording the failed start: {undo}");
                }
                return Err(e);
            }
        };
        if let Err(e) = self.journal.stage_ready(&guard, run) {
            self.host
                .stop_mounter(&staging, run, Duration::from_millis(200));
            // The record still says Starting: recovery or the retry cleans up.
            return Err(e);
        }
        info!(
            "volume {id:?}: {} mounter pid {} serves {}",
            args.spec.kind.as_str(),
            run.pid,
            staging.display()
        );
        Ok(NodeStageVolumeResponse::new())
    }

    /// A re-stage with new credentials: later heals must use them.
    fn rotate_secrets(
        &self,
        guard: &Guard<Volume>,
        secrets: &HashMap<String, String>,
    ) -> Result<()> {
        if !self.journal.stage_secrets(guard, secrets)? {
            return Ok(());
        }
        info!(
            "volume {:?}: node-stage secrets updated for later remounts",
            guard.id()
        );
        Ok(())
    }

    /// Replace the volume's dead mounter by a new one at the same staging
    /// path (a retried stage, or the health loop). The record stays Ready; it
    /// first says "no mounter" (pid 0, next generation), so a crash during
    /// the start leaves a record that the next health pass heals again.
    /// Publications are bound again by the caller (health) or by the pods'
    /// next publish.
    pub(super) fn restart_mounter(
        &self,
        guard: &Guard<Volume>,
        new_secrets: Option<&HashMap<String, String>>,
    ) -> Result<Running> {
        let id = guard.id().to_string();
        let Some(old) = guard.data().stage.clone() else {
            return Err(Self::not_staged(&id));
        };
        let staging = old.staging_path.clone();
        self.stop_own_mounters(&id, &staging, old.running());
        let st = self.journal.heal_begin(guard, new_secrets)?;
        let mut spec = mounter::parse_spec_for(&id, &st.parameters, &st.secrets, &self.cfg)?;
        mounter::apply_mount_group(&mut spec, &st.volume_mount_group)?;
        self.kubelet
            .resolve("staging_target_path", &staging, true)?;
        let run =
            self.host
                .start_mounter(&id, &spec, &staging, &self.volume_files(&id), &self.cfg)?;
        if let Err(e) = self.journal.heal_done(guard, run) {
            self.host
                .stop_mounter(&staging, run, Duration::from_millis(200));
            return Err(e);
        }
        info!(
            "volume {id:?}: mounter pid {} serves {} again",
            run.pid,
            staging.display()
        );
        metrics::MOUNTER_RESTARTS.inc(&[spec.kind.as_str()]);
        Ok(run)
    }

    /// Stop every mounter of this volume: first any that a crash left
    /// unrecorded (found by the staging path in its argv), killed at once;
    /// then the FUSE mount at the staging path, if there is one, is aborted
    /// and detached, and the recorded mounter stopped (it exits by itself
    /// once its mount is gone, else SIGTERM, then SIGKILL). Never touches a
    /// mount that is not FUSE.
    ///
    /// Unrecorded mounters go first: one that a crash left starting may
    /// mount at any moment until it is dead. Stopped after the unmount, it
    /// could still mount in between and then die, leaving a dead mount that
    /// no record explains (and that refuses every later stage of the
    /// volume). Such a mounter never served an acknowledged write (it was
    /// never recorded as serving), so it gets no grace.
    pub(super) fn stop_own_mounters(&self, id: &str, staging: &Path, recorded: Running) {
        for stray in self.host.mounters_by_argv(staging) {
            if stray != recorded {
                warn!(
                    "volume {id:?}: stopping mounter pid {}, which no record names",
                    stray.pid
                );
                self.host.terminate_mounter(staging, stray, Duration::ZERO);
            }
        }
        if let Ok(Some((np, m))) = self.mount_at("staging_target_path", staging) {
            if m.is_fuse() {
                self.host.abort_connection(staging);
                if let Err(e) = self.host.detach(&np) {
                    warn!("volume {id:?}: {e}");
                }
            } else {
                warn!(
                    "volume {id:?}: {} is a {} mount, not bindery's: left alone",
                    staging.display(),
                    m.fs_type
                );
            }
        }
        if recorded.pid > 0 {
            self.host
                .stop_mounter(staging, recorded, Duration::from_millis(500));
        }
    }

    /// What stopping a volume's mounter leaves to do, in order: stop every
    /// mounter of it (`stop_own_mounters`), remove its cgroups, then its
    /// files. Shared by unstage and the cleanup of a quarantined volume.
    pub(super) fn release_stage(&self, id: &str, staging: &Path, recorded: Running) -> Result<()> {
        self.stop_own_mounters(id, staging, recorded);
        self.host.remove_cgroups(id, &self.cfg);
        self.volume_files(id).remove()
    }

    /// Undo a stage whatever its phase: stop the mounter(s), remove the
    /// volume's files, delete the stage record. Used by unstage (after the
    /// Stopping record), and to settle an interrupted start or teardown.
    pub(super) fn teardown_stage(&self, guard: &Guard<Volume>) -> Result<()> {
        let id = guard.id().to_string();
        let Some(st) = guard.data().stage.clone() else {
            return Ok(());
        };
        self.journal.unstage_begin(guard)?;
        self.release_stage(&id, &st.staging_path, st.running())?;
        self.journal.unstage_done(guard)
    }

    pub fn admit_unstage(
        &self,
        req: &NodeUnstageVolumeRequest,
    ) -> Result<(Guard<Volume>, PathBuf)> {
        let id = validate::volume_id(req.get_volume_id())?;
        validate::required("staging_target_path", req.get_staging_target_path())?;
        let staging = validate::node_path(
            "staging_target_path",
            req.get_staging_target_path(),
            &self.cfg.kubelet_dir,
        )?;
        // A symlink in the path is refused even when there is nothing to do.
        self.kubelet
            .resolve("staging_target_path", &staging, false)?;
        Ok((
            self.table.acquire(id, Op::Long("NodeUnstageVolume"))?,
            staging,
        ))
    }

    /// Stop the mounter once no pod uses the volume. rclone's acknowledged
    /// writes are uploaded first (the call fails, and the volume stays
    /// staged, rather than lose them). Unknown volume → OK (idempotent).
    pub fn unstage(
        &self,
        guard: Guard<Volume>,
        staging: PathBuf,
    ) -> Result<NodeUnstageVolumeResponse> {
        let id = guard.id().to_string();
        let rec = guard.data().clone();
        let Some(st) = &rec.stage else {
            if let Some(record) = self.quarantined(&id) {
                self.unstage_by_path(&id, &record, &staging)?;
            }
            return Ok(NodeUnstageVolumeResponse::new());
        };
        if st.staging_path != staging {
            // Spec: "If the volume corresponding to the volume_id is not
            // staged to the staging_target_path, the Plugin MUST reply 0 OK."
            warn!(
                "volume {id:?} is staged at {}, not {}: nothing to unstage there",
                st.staging_path.display(),
                staging.display()
            );
            return Ok(NodeUnstageVolumeResponse::new());
        }
        let published: Vec<String> = rec
            .publications
            .iter()
            .filter_map(|p| p.as_bind())
            .map(|b| b.target.display().to_string())
            .collect();
        if !published.is_empty() {
            return Err(Error::precondition(
                &id,
                format!("still published at {}", published.join(", ")),
            ));
        }
        match st.phase {
            // Already answered, the mounter kept: nothing more to do.
            StagePhase::Lingering { .. } => return Ok(NodeUnstageVolumeResponse::new()),
            StagePhase::Ready => {
                if self.linger(&guard)? {
                    return Ok(NodeUnstageVolumeResponse::new());
                }
                let kind = mounter::kind_of(&st.parameters);
                self.host.wait_for_uploads(
                    &id,
                    kind,
                    &self.volume_files(&id),
                    self.cfg.unstage_grace,
                )?;
            }
            _ => {}
        }
        self.teardown_stage(&guard)?;
        Ok(NodeUnstageVolumeResponse::new())
    }
}
