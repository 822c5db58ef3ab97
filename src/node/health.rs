//! The health loop: one pass every `--watchdog-interval` over the staged
//! volumes. A volume whose mounter is dead (process gone, zombie or stopped,
//! mount gone, statfs failing or hanging) gets a new mounter at its staging
//! path and its Bound targets are bound again; a target that lost its bind
//! is bound again. A slow or failing bucket listing is not death: it is
//! reported in VolumeCondition, never healed by force.
//!
//! The check reads a snapshot without taking the volume's gate, so it never
//! turns a CO call away, and never waits on a mount (it reads what the
//! mount's statfs prober found, see `mounter::observe`). Each volume that
//! needs healing is healed on a thread of its own, at most `MAX_HEALS` at a
//! time: a volume whose new mounter takes the whole --mount-timeout to fail
//! delays no other volume's heal. A volume is taken under its guard (and
//! skipped until the next pass when an operation is in flight on it).

use std::sync::Arc;
use std::time::Instant;

use log::{debug, info, warn};

use super::Node;
use crate::error::Result;
use crate::lifecycle::Volume;
use crate::metrics;
use crate::mounter::{self, Health};
use nix::mount::MsFlags;

use super::publish::bind_flags;
use crate::sys::consumers::{self, Outcome};
use crate::sys::mountinfo::MountInfo;
use crate::sys::nodepath::NodePath;
use crate::volumes::{Guard, Op};

/// Logged (at debug level) at the end of every health pass.
pub const HEALTH_PASS_DONE: &str = "health pass done";

/// How long re-binding one container's mounts may take before the heal
/// gives up on it (the next pass tries again).
const REBIND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Heals running at once; more wait for a later pass.
const MAX_HEALS: usize = 8;

impl Node {
    /// Whether a Ready stage's mounter is dead, or a Bound target lost its
    /// bind, or a pod's containers may still show a dead mount, by the mount
    /// table `table` read once for the whole pass; with the operation the
    /// volume is taken for.
    pub(super) fn needs_healing(&self, rec: &Volume, table: &[MountInfo]) -> Option<(String, Op)> {
        let st = rec.ready_stage()?;
        let endpoint = ""; // reachability is no reason to heal
        if let (mounter::Condition::Dead(why), _) =
            self.host
                .observe(&st.staging_path, st.running(), endpoint, Some(table))
        {
            return Some((why, Op::Long("heal")));
        }
        if let Some(b) = rec
            .bound_binds()
            .find(|b| !self.is_mounted_in("target_path", &b.target, table))
        {
            return Some((
                format!("{} lost its bind", b.target.display()),
                Op::Long("heal"),
            ));
        }
        // Only containers to re-bind (a retry of one that could not be):
        // quick, and retried every pass while it fails, so the volume's
        // calls wait for it instead of being turned away.
        rec.bound_binds()
            .find(|b| !b.stale_devs.is_empty())
            .map(|b| {
                (
                    format!(
                        "the containers of {} may still show a dead mount",
                        b.target.display()
                    ),
                    Op::Short("re-bind containers"),
                )
            })
    }

    /// Heal one volume under its guard: a new mounter if the old one is dead,
    /// then every Bound target bound to the (new) staging mount.
    pub fn heal(&self, guard: &Guard<Volume>) -> Result<bool> {
        let id = guard.id().to_string();
        let Some(st) = guard.data().ready_stage().cloned() else {
            return Ok(false);
        };
        let staging = st.staging_path.clone();
        let mut healed = false;
        // Checked again under the guard: the pass looked at a snapshot, and
        // a stage or unstage may have run since.
        if let Health::Abnormal(why) =
            self.host
                .check(&staging, st.running(), mounter::PROBE_TIMEOUT)
        {
            warn!(
                "volume {id:?}: {why}; starting a new mounter at {}",
                staging.display()
            );
            let started = Instant::now();
            let restarted = self.restart_mounter(guard, None);
            let result = if restarted.is_ok() { "ok" } else { "failed" };
            metrics::HEAL_DURATION.observe(&[result], started.elapsed());
            restarted?;
            healed = true;
        }
        let rec = guard.data().clone();
        let Some((stage_np, stage_mount)) = self.mount_at("staging_target_path", &staging)? else {
            return Ok(healed);
        };
        let stage_dev = stage_mount.dev_string();
        for p in rec.bound_binds() {
            let target = p.target.clone();
            let current = self.mount_at("target_path", &target)?;
            if current
                .as_ref()
                .is_some_and(|(_, m)| m.dev_string() == stage_dev)
            {
                continue;
            }
            if current
                .as_ref()
                .is_some_and(|(_, m)| m.dev_string() != p.mount_dev)
            {
                warn!(
                    "volume {id:?}: {} holds a mount that is not ours; not re-binding",
                    target.display()
                );
                continue;
            }
            // A bind of a dead FUSE mount stays dead after its source is
            // remounted: detach ours and bind again. The pod's containers
            // keep their own view of the old one until they restart (see
            // stats: the publication's generation is older than the stage's).
            self.detach_ours(&target, &[&p.mount_dev])?;
            if self
                .kubelet
                .resolve("target_path", &target, false)?
                .is_none()
            {
                warn!(
                    "volume {id:?}: {} is gone; not re-binding",
                    target.display()
                );
                continue;
            }
            let flags = match MsFlags::from_bits(p.mount_flags) {
                Some(f) if !f.is_empty() => f,
                // Records from before flags were kept.
                _ => bind_flags(MsFlags::empty(), p.readonly),
            };
            self.bind_into(&stage_np, &target, flags, &stage_dev)?;
            self.journal
                .bound_again(guard, &target, Some(stage_dev.clone()))?;
            info!("volume {id:?}: re-bound {}", target.display());
        }
        self.rebind_consumers(guard, &stage_np, &stage_mount);
        Ok(healed)
    }

    /// Replace the dead mounts that the pods' containers still show (the
    /// devices each publication lists as stale) by the stage's current
    /// mount, inside each container's mount namespace (see
    /// `sys::consumers`). A publication whose containers all got it back is
    /// of the current generation again; one a container of which could not
    /// be re-bound keeps its stale devices: VolumeCondition reports it and
    /// the next health pass tries again.
    fn rebind_consumers(&self, guard: &Guard<Volume>, source: &NodePath, stage: &MountInfo) {
        let id = guard.id();
        let rec = guard.data().clone();
        let mut stale: Vec<(u32, u32)> = rec
            .bound_binds()
            .flat_map(|p| p.stale_devs.iter())
            .filter_map(|d| consumers::parse_dev(d))
            .collect();
        stale.sort_unstable();
        stale.dedup();
        if stale.is_empty() {
            return;
        }
        // (pod uid if known, device) of every mount that could not be replaced.
        let mut failed: Vec<(Option<String>, String)> = Vec::new();
        for r in self
            .host
            .rebind_containers(&stale, &stage.fs_type, source, REBIND_TIMEOUT)
        {
            match r.result {
                Ok(Outcome::Replaced) => info!(
                    "volume {id:?}: re-bound {} in the mount namespace of {}",
                    r.at.display(),
                    r.holder
                ),
                Ok(Outcome::Skipped(why)) => debug!(
                    "volume {id:?}: {} of {} left alone: {why}",
                    r.at.display(),
                    r.holder
                ),
                Err(why) => {
                    warn!(
                        "volume {id:?}: could not re-bind {} of {}: {why}",
                        r.at.display(),
                        r.holder
                    );
                    failed.push((r.pod, r.dev));
                }
            }
        }
        for p in rec.bound_binds() {
            if p.stale_devs.is_empty() {
                continue;
            }
            let target = p.target.display().to_string();
            // A failure counts against this publication if it was on one of
            // its devices, in its pod's containers (or in a process of no
            // known pod).
            let remaining: Vec<String> = p
                .stale_devs
                .iter()
                .filter(|d| {
                    failed.iter().any(|(pod, dev)| {
                        dev == *d
                            && pod
                                .as_ref()
                                .map_or(true, |uid| target.contains(&format!("/pods/{uid}/")))
                    })
                })
                .cloned()
                .collect();
            if let Err(e) = self.journal.consumers_rebound(guard, &p.target, remaining) {
                warn!("volume {id:?}: recording the re-bound containers of {target}: {e}");
            }
        }
    }

    /// Connect to the S3 endpoint of every Ready volume and keep the answers
    /// for NodeGetVolumeStats (blocking: for the endpoint thread only).
    pub fn check_endpoints(&self) {
        let endpoints: Vec<String> = self
            .table
            .ids()
            .iter()
            .filter_map(|id| self.table.snapshot(id)?.stage)
            .filter(|st| st.is_ready())
            .filter_map(|st| st.secrets.get("endpoint").cloned())
            .collect();
        mounter::endpoint::check_all(&endpoints, mounter::PROBE_TIMEOUT);
    }

    /// One health pass over every staged volume: each one that needs it is
    /// healed on a thread of its own (see the module doc).
    pub fn health_pass(self: &Arc<Self>) {
        let started = std::time::Instant::now();
        // The records first, then the mount table: a stage or publish
        // records Ready or Bound only after its mount is made, so every mount
        // these records promise is in a table read after them. (Read the
        // other way round, a volume staged in between looked dead.)
        let records: Vec<(String, Volume)> = self
            .table
            .ids()
            .into_iter()
            .filter_map(|id| self.table.snapshot(&id).map(|r| (id, r)))
            .collect();
        crate::crash::pause("health.between_reads");
        // One read of the mount table for the whole pass: per-volume reads
        // made a pass quadratic in the number of mounts.
        let mounts = match self.host.mount_table() {
            Ok(t) => t,
            Err(e) => {
                warn!("health pass skipped: {e}");
                return;
            }
        };
        for (id, rec) in records {
            let Some((why, op)) = self.needs_healing(&rec, &mounts) else {
                continue;
            };
            // A record that changed since it was read (an unpublish that
            // detached its bind meanwhile) is looked at again next pass.
            if self.table.snapshot(&id).as_ref() != Some(&rec) {
                continue;
            }
            {
                let mut healing = super::lock(&self.healing);
                if healing.contains(&id) || healing.len() >= MAX_HEALS {
                    continue;
                }
                healing.insert(id.clone());
            }
            info!("volume {id:?}: needs healing: {why}");
            let node = self.clone();
            let name = id.clone();
            let spawned = std::thread::Builder::new()
                .name("heal".into())
                .spawn(move || {
                    if let Ok(guard) = node.table.acquire(&name, op) {
                        if let Err(e) = node.heal(&guard) {
                            warn!("volume {name:?}: self-heal failed: {e}");
                        }
                    }
                    super::lock(&node.healing).remove(&name);
                });
            if let Err(e) = spawned {
                warn!("volume {id:?}: no thread to heal it ({e}); next pass");
                super::lock(&self.healing).remove(&id);
            }
        }
        // Tests count these lines to wait for passes instead of sleeping.
        debug!(
            "{HEALTH_PASS_DONE} in {:.3}ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}
