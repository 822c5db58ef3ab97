//! The Node service as plain functions, one file per concern:
//! - stage.rs: NodeStageVolume / NodeUnstageVolume (one mounter per volume)
//! - publish.rs: NodePublishVolume / NodeUnpublishVolume of staged volumes
//! - cache.rs: publish / unpublish of cache volumes
//! - recovery.rs: reconciling persisted phases before the socket serves
//! - quarantine.rs: cleanup by path for volumes whose record was unreadable
//! - health.rs: the health loop (dead mounters healed, lost binds re-bound,
//!   containers re-bound)
//! - exits.rs: mounter exits seen at once (pidfds), waking the health loop
//! - linger.rs: unstageDelay (a mounter kept after its last pod left)
//! - stats.rs: NodeGetVolumeStats
//! - gauges.rs: the node's gauges for /metrics
//!
//! Every change to a volume goes through the state machine of
//! src/lifecycle/: the phase is persisted before the side effect. Every
//! function validates its request in the fixed order (required fields,
//! capability, paths), then takes the volume guard, then looks at state.

mod cache;
mod exits;
mod gauges;
mod health;
mod linger;
mod publish;
mod quarantine;
mod recovery;
mod stage;
mod stats;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use nix::mount::MsFlags;

use crate::cache::volume::Caches;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::host::{Host, RealHost};
use crate::lifecycle::{Journal, Publication, Volume};
use crate::mounter::VolumeFiles;
use crate::proto::csi::*;
use crate::state::StateStore;
use crate::sys::mount;
use crate::sys::mountinfo::MountInfo;
use crate::sys::nodepath::{KubeletDir, NodePath};
use crate::validate;
use crate::volumes::{Guard, VolumeTable};

pub struct Node {
    pub cfg: Arc<Config>,
    pub table: Arc<VolumeTable<Volume>>,
    journal: Journal,
    kubelet: KubeletDir,
    pub caches: Arc<Caches>,
    /// A cache publication went away: the next upkeep verifies and collects.
    cache_upkeep_due: AtomicBool,
    /// Volumes being healed on a heal thread (src/node/health.rs).
    healing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Mounter processes: the machine, or a test's fake (src/host.rs).
    host: Arc<dyn Host>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    pub fn new(cfg: Arc<Config>) -> Result<Self> {
        Self::with_host(cfg, Arc::new(RealHost))
    }

    /// A node whose mounter processes go through `host`.
    pub fn with_host(cfg: Arc<Config>, host: Arc<dyn Host>) -> Result<Self> {
        let store = StateStore::open(&cfg.state_dir)?;
        let caches = Arc::new(Caches::open(cfg.clone())?);
        let kubelet = KubeletDir::open(&cfg.kubelet_dir)?;
        Ok(Node {
            cfg,
            table: Arc::new(VolumeTable::new()),
            journal: Journal::new(store),
            kubelet,
            caches,
            cache_upkeep_due: AtomicBool::new(true),
            healing: Default::default(),
            host,
        })
    }

    fn volume_files(&self, id: &str) -> VolumeFiles {
        VolumeFiles::new(self.journal.store().volume_dir(id))
    }

    pub fn get_info(&self) -> NodeGetInfoResponse {
        let mut r = NodeGetInfoResponse::new();
        r.set_node_id(self.cfg.node_id.clone());
        r.set_max_volumes_per_node(self.cfg.max_volumes_per_node);
        r
    }

    /// Only what this node really implements.
    pub fn get_capabilities(&self) -> NodeGetCapabilitiesResponse {
        use NodeServiceCapability_RPC_Type as T;
        let mut r = NodeGetCapabilitiesResponse::new();
        for t in [
            T::STAGE_UNSTAGE_VOLUME,
            T::GET_VOLUME_STATS,
            T::VOLUME_CONDITION,
            T::VOLUME_MOUNT_GROUP,
        ] {
            let mut rpc = NodeServiceCapability_RPC::new();
            rpc.set_field_type(t);
            let mut cap = NodeServiceCapability::new();
            cap.set_rpc(rpc);
            r.mut_capabilities().push(cap);
        }
        r
    }

    /// The mount whose root `path` is right now (None: a plain directory, or
    /// the path does not exist), resolved beneath the kubelet dir without
    /// following symlinks, with the fd that names it.
    fn mount_at(
        &self,
        field: &'static str,
        path: &std::path::Path,
    ) -> Result<Option<(NodePath, MountInfo)>> {
        let Some((parent, name)) = self.kubelet.resolve_parent(field, path, false)? else {
            return Ok(None);
        };
        let Some(here) = parent.child(field, &name, false)? else {
            return Ok(None);
        };
        Ok(self.host.mount_here(&here, &parent)?.map(|m| (here, m)))
    }

    /// Whether something is mounted at `path` right now, in `table` (a mount
    /// table the caller read once for many paths); resolved as `mount_at`.
    fn is_mounted_in(&self, field: &'static str, path: &Path, table: &[MountInfo]) -> bool {
        let Ok(Some((parent, name))) = self.kubelet.resolve_parent(field, path, false) else {
            return false;
        };
        let Ok(Some(here)) = parent.child(field, &name, false) else {
            return false;
        };
        matches!(self.host.mount_here_in(&here, &parent, table), Ok(Some(_)))
    }

    /// The volume's publication at `target`, if it has one.
    fn publication(guard: &Guard<Volume>, target: &Path) -> Option<Publication> {
        guard.data().publication(target).cloned()
    }

    /// The head every stage and publish request shares, validated in the
    /// fixed order: volume_id, the path field and volume_capability present,
    /// then the capability (access type, mode, mount_flags), then the path
    /// (absolute, below the kubelet dir, no `.`/`..`, bounded).
    fn request_head<'r>(
        &self,
        id: &'r str,
        path_field: &'static str,
        path: &str,
        (has_cap, cap): (bool, &'r VolumeCapability),
    ) -> Result<(&'r str, &'r VolumeCapability, PathBuf, MsFlags)> {
        let id = validate::volume_id(id)?;
        validate::required(path_field, path)?;
        let cap = validate::required_msg("volume_capability", has_cap, cap)?;
        validate::capability("volume_capability", cap)?;
        let flags = mount::csi_mount_flags(cap.get_mount().get_mount_flags())?;
        let path = validate::node_path(path_field, path, &self.cfg.kubelet_dir)?;
        Ok((id, cap, path, flags))
    }

    /// Lifecycle errors name the volume; a missing record is this error.
    fn not_staged(id: &str) -> Error {
        Error::precondition(
            id,
            "volume is not staged on this node: call NodeStageVolume first",
        )
    }
}
