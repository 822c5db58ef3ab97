//! NodeGetVolumeStats: usage and a VolumeCondition, answered without waiting
//! on a FUSE server or the network: figures and reachability come from
//! probes on other threads (src/mounter/health.rs, src/mounter/endpoint.rs).

use std::path::{Path, PathBuf};

use super::Node;
use crate::error::{Error, Result};
use crate::lifecycle::{CacheCopy, Publication};
use crate::mounter::{Condition, Health};
use crate::proto::csi::*;
use crate::validate;
use crate::volumes::Op;

/// One usage entry of NodeGetVolumeStats (0 = unknown, as the spec allows).
fn volume_usage(unit: VolumeUsage_Unit, total: u64, available: u64, used: u64) -> VolumeUsage {
    let mut u = VolumeUsage::new();
    u.set_unit(unit);
    let wire = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    u.set_total(wire(total));
    u.set_available(wire(available));
    u.set_used(wire(used));
    u
}

fn condition(health: Health) -> VolumeCondition {
    let mut c = VolumeCondition::new();
    match health {
        Health::Ok => c.set_message("volume is healthy".into()),
        Health::Abnormal(why) => {
            c.set_abnormal(true);
            c.set_message(why);
        }
    }
    c
}

impl Node {
    /// Spec: "volume_id ... REQUIRED", "volume_path ... REQUIRED"; a volume
    /// or path this node does not know is NOT_FOUND.
    pub fn stats(&self, req: &NodeGetVolumeStatsRequest) -> Result<NodeGetVolumeStatsResponse> {
        let id = validate::volume_id(req.get_volume_id())?;
        validate::required("volume_path", req.get_volume_path())?;
        let guard = self.table.acquire(id, Op::Short("NodeGetVolumeStats"))?;
        let rec = guard.data().clone();
        drop(guard);
        if rec.stage.is_none() && rec.publications.is_empty() {
            return match self.quarantined(id) {
                Some(record) => {
                    let mut r = NodeGetVolumeStatsResponse::new();
                    r.set_volume_condition(condition(Health::Abnormal(format!(
                        "bindery's record of this volume could not be read and is quarantined \
                         at {}: unpublish and unstage clean it up by path; restage it to serve \
                         again",
                        record.display()
                    ))));
                    Ok(r)
                }
                None => Err(Error::VolumeNotFound(id.to_string())),
            };
        }
        let path = Path::new(req.get_volume_path());
        let clean: PathBuf = path.components().collect();
        let publication = rec.publication(&clean);
        let known = rec
            .stage
            .as_ref()
            .is_some_and(|st| st.staging_path == clean)
            || publication.is_some();
        if !path.is_absolute() || !known {
            return Err(Error::NotFound {
                what: "volume_path",
                name: req.get_volume_path().chars().take(256).collect(),
            });
        }
        let bind = match publication {
            Some(Publication::Cache(c)) => return self.cache_stats(c),
            Some(Publication::Bind(b)) => Some(b),
            None => None,
        };
        let (health, figures) = match rec.ready_stage() {
            None => (
                Health::Abnormal("the volume is being staged or unstaged".into()),
                None,
            ),
            Some(st) => {
                // Never waits: the figures and the endpoint's answer come from
                // probes that run on other threads.
                let endpoint = st.secrets.get("endpoint").map(String::as_str).unwrap_or("");
                let (condition, figures) =
                    self.host
                        .observe(&st.staging_path, st.running(), endpoint, None);
                let health = match condition {
                    Condition::Healthy => match bind {
                        Some(p) if !p.stale_devs.is_empty() => Health::Abnormal(
                            "the volume's mounter was restarted and a container of this pod \
                         could not be re-bound to the new mount yet (bindery retries on \
                         every health pass; the node's log says why): restarting the pod \
                         also fixes it"
                                .into(),
                        ),
                        Some(p) if p.generation != 0 && p.generation < st.generation => {
                            Health::Abnormal(
                                "the volume's mounter was restarted after this pod started: \
                             the pod still sees the old, dead mount and must be restarted"
                                    .into(),
                            )
                        }
                        _ => Health::Ok,
                    },
                    // Alive but its endpoint does not answer: reported, never healed.
                    Condition::Degraded(why) => Health::Abnormal(format!("degraded: {why}")),
                    Condition::Dead(why) => Health::Abnormal(why),
                };
                (health, figures)
            }
        };
        // Unknown figures (no statfs answered yet) are 0, as the spec allows.
        let s = figures.unwrap_or_default();
        let mut resp = NodeGetVolumeStatsResponse::new();
        resp.mut_usage().push(volume_usage(
            VolumeUsage_Unit::BYTES,
            s.total_bytes,
            s.available_bytes,
            s.used_bytes,
        ));
        resp.mut_usage().push(volume_usage(
            VolumeUsage_Unit::INODES,
            s.total_inodes,
            s.free_inodes,
            s.used_inodes,
        ));
        resp.set_volume_condition(condition(health));
        Ok(resp)
    }

    fn cache_stats(&self, c: &CacheCopy) -> Result<NodeGetVolumeStatsResponse> {
        let missing = self.caches.missing(c);
        let Some(filled) = c.filled.as_ref().filter(|_| missing.is_none()) else {
            let why = missing.unwrap_or_else(|| "is not filled".into());
            // Never "healthy" for an empty directory where a cache was.
            let mut resp = NodeGetVolumeStatsResponse::new();
            resp.set_volume_condition(condition(Health::Abnormal(format!(
                "cache volume {why}; publish it again to restore it"
            ))));
            return Ok(resp);
        };
        let (usage, mut health) = match self.caches.usage(&c.target, &filled.root) {
            Ok(u) => (u, Health::Ok),
            Err(e) => ((0, 0), Health::Abnormal(e.to_string())),
        };
        if health == Health::Ok && self.caches.is_retired(&c.name, &filled.version) {
            health = Health::Abnormal(format!(
                "golden version {} of cache {:?} was modified through a hardlink; new pods get a rebuilt copy",
                filled.version, c.name
            ));
        }
        let mut resp = NodeGetVolumeStatsResponse::new();
        resp.mut_usage()
            .push(volume_usage(VolumeUsage_Unit::BYTES, 0, 0, usage.0));
        resp.mut_usage()
            .push(volume_usage(VolumeUsage_Unit::INODES, 0, 0, usage.1));
        resp.set_volume_condition(condition(health));
        Ok(resp)
    }
}
