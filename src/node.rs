//! The Node service as plain functions: shared FUSE mounts staged once per
//! node and bind-mounted into every pod.
//!
//! Every function validates its request in the fixed order (required fields,
//! capability, paths), then takes the volume guard, then looks at state.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};

use crate::cache::volume::{self as cachevol, CacheRequest, Caches};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::mounter::{self, Health, MountSpec, Running, VolumeFiles};
use crate::proto::bindery::{Publication, Stage, VolumeRecord};
use crate::proto::csi::*;
use crate::state::StateStore;
use crate::sys::{mount, mountinfo};
use crate::validate;
use crate::volumes::{Guard, Op, VolumeTable};

pub struct Node {
    pub cfg: Arc<Config>,
    pub table: Arc<VolumeTable<VolumeRecord>>,
    store: StateStore,
    ready: Arc<AtomicBool>,
    pub caches: Arc<Caches>,
    /// A cache publication went away: the next upkeep verifies and collects.
    cache_upkeep_due: AtomicBool,
}

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

fn running(stage: &Stage) -> Running {
    Running {
        pid: stage.get_mounter_pid(),
        start_ticks: stage.get_mounter_start_ticks(),
    }
}

/// Create `dir` (and parents) if it does not exist yet.
fn ensure_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io("mkdir", dir, e))
}

/// Remove the (empty) mount point directory the plugin created.
fn remove_target_dir(target: &Path) -> Result<()> {
    match fs::remove_dir(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("rmdir", target, e)),
    }
}

impl Node {
    /// `ready` is shared with the Identity service: Probe reports it.
    pub fn new(cfg: Arc<Config>, ready: Arc<AtomicBool>) -> Result<Self> {
        let store = StateStore::open(&cfg.state_dir)?;
        let caches = Arc::new(Caches::open(cfg.clone())?);
        Ok(Node {
            cfg,
            table: Arc::new(VolumeTable::new()),
            store,
            ready,
            caches,
            cache_upkeep_due: AtomicBool::new(true),
        })
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    fn volume_files(&self, id: &str) -> VolumeFiles {
        VolumeFiles::new(self.store.volume_dir(id))
    }

    fn save(&self, rec: &VolumeRecord) -> Result<()> {
        self.store.save(rec)
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

    // ---- NodeStageVolume -------------------------------------------------

    /// Validation and admission of NodeStageVolume (runs inline, never blocks
    /// for long). Spec: "volume_id ... This field is REQUIRED",
    /// "staging_target_path ... REQUIRED", "volume_capability ... REQUIRED".
    pub fn admit_stage(
        &self,
        req: &NodeStageVolumeRequest,
    ) -> Result<(Guard<VolumeRecord>, PathBuf)> {
        validate::volume_id(req.get_volume_id())?;
        validate::required("staging_target_path", req.get_staging_target_path())?;
        validate::required_msg(
            "volume_capability",
            req.has_volume_capability(),
            req.get_volume_capability(),
        )?;
        validate::capability("volume_capability", req.get_volume_capability())?;
        self.take_staged(
            req.get_volume_id(),
            req.get_staging_target_path(),
            "NodeStageVolume",
        )
    }

    /// The rest of stage/unstage admission: the staging path (after the
    /// required fields and capability), then the volume as a long operation.
    fn take_staged(
        &self,
        id: &str,
        staging: &str,
        op: &'static str,
    ) -> Result<(Guard<VolumeRecord>, PathBuf)> {
        let staging = validate::node_path("staging_target_path", staging, &self.cfg.kubelet_dir)?;
        Ok((self.table.acquire(id, Op::Long(op))?, staging))
    }

    /// Start one mounter for the volume at the staging path. A repeated call
    /// with the same arguments returns OK without a second process.
    pub fn stage(
        &self,
        req: &NodeStageVolumeRequest,
        guard: Guard<VolumeRecord>,
        staging: PathBuf,
    ) -> Result<NodeStageVolumeResponse> {
        let id = req.get_volume_id();
        let fingerprint = stage_fingerprint(req.get_volume_context(), req.get_volume_capability());
        let existing = guard.data().clone();
        if existing.has_stage() {
            let st = existing.get_stage();
            if Path::new(st.get_staging_path()) != staging {
                return Err(Error::precondition(
                    id,
                    format!(
                        "already staged at {}, not {}",
                        st.get_staging_path(),
                        staging.display()
                    ),
                ));
            }
            if st.get_fingerprint() != fingerprint {
                return Err(Error::exists(
                    id,
                    "already staged with different parameters or capability",
                ));
            }
            if mounter::check(&staging, running(st), mounter::PROBE_TIMEOUT) == Health::Ok {
                return Ok(NodeStageVolumeResponse::new());
            }
            warn!("volume {id:?}: staged mount is not healthy, mounting again");
            mounter::stop(&staging, running(st), Duration::from_millis(200));
        }
        let group = req
            .get_volume_capability()
            .get_mount()
            .get_volume_mount_group();
        let mut spec = mounter::parse_spec(
            id,
            req.get_volume_context(),
            req.get_secrets(),
            &self.cfg.fuse_programs,
        )?;
        apply_mount_group(&mut spec, group)?;
        if mountinfo::is_mount_point(&staging)? {
            return Err(Error::precondition(
                id,
                format!(
                    "{} is already a mount point not made by bindery",
                    staging.display()
                ),
            ));
        }
        ensure_dir(&staging)?;
        let files = self.volume_files(id);
        let run = mounter::start(id, &spec, &staging, &files, &self.cfg)?;
        let mut stage = Stage::new();
        stage.set_staging_path(staging.display().to_string());
        stage.set_parameters(req.get_volume_context().clone());
        stage.set_secrets(req.get_secrets().clone());
        stage.set_mounter_pid(run.pid);
        stage.set_mounter_start_ticks(run.start_ticks);
        stage.set_fingerprint(fingerprint);
        stage.set_volume_mount_group(group.to_string());
        let mut rec = existing;
        rec.set_volume_id(id.to_string());
        rec.set_stage(stage);
        if let Err(e) = self.save(&rec) {
            mounter::stop(&staging, run, Duration::from_millis(200));
            let _ = files.remove();
            return Err(e);
        }
        *guard.data() = rec;
        info!(
            "volume {id:?}: {} mounter pid {} serves {}",
            spec.kind.as_str(),
            run.pid,
            staging.display()
        );
        Ok(NodeStageVolumeResponse::new())
    }

    // ---- NodeUnstageVolume -----------------------------------------------

    pub fn admit_unstage(
        &self,
        req: &NodeUnstageVolumeRequest,
    ) -> Result<(Guard<VolumeRecord>, PathBuf)> {
        validate::volume_id(req.get_volume_id())?;
        validate::required("staging_target_path", req.get_staging_target_path())?;
        self.take_staged(
            req.get_volume_id(),
            req.get_staging_target_path(),
            "NodeUnstageVolume",
        )
    }

    /// Stop the mounter once no pod uses the volume: unmount, let it exit by
    /// itself (pending uploads finish), SIGTERM/SIGKILL after the grace
    /// period, remove credentials. Unknown volume → OK (idempotent).
    pub fn unstage(
        &self,
        guard: Guard<VolumeRecord>,
        staging: PathBuf,
    ) -> Result<NodeUnstageVolumeResponse> {
        let id = guard.id().to_string();
        let mut rec = guard.data().clone();
        if !rec.has_stage() {
            return Ok(NodeUnstageVolumeResponse::new());
        }
        if Path::new(rec.get_stage().get_staging_path()) != staging {
            return Err(Error::precondition(
                &id,
                format!(
                    "staged at {}, not {}",
                    rec.get_stage().get_staging_path(),
                    staging.display()
                ),
            ));
        }
        let published: Vec<&str> = rec
            .get_publications()
            .iter()
            .filter(|p| p.get_cache_name().is_empty())
            .map(|p| p.get_target_path())
            .collect();
        if !published.is_empty() {
            return Err(Error::precondition(
                &id,
                format!("still published at {}", published.join(", ")),
            ));
        }
        let files = self.volume_files(&id);
        let kind = mounter::kind_of(rec.get_stage().get_parameters());
        mounter::wait_for_uploads(&id, kind, &files, self.cfg.unstage_grace)?;
        mounter::stop(&staging, running(rec.get_stage()), self.cfg.unstage_grace);
        files.remove()?;
        rec.clear_stage();
        self.save(&rec)?;
        *guard.data() = rec;
        Ok(NodeUnstageVolumeResponse::new())
    }

    // ---- NodePublishVolume -----------------------------------------------

    /// The fields every publish needs, validated in order: volume_id,
    /// target_path and volume_capability present, the capability usable, the
    /// target below the kubelet dir.
    fn publish_request<'r>(
        &self,
        req: &'r NodePublishVolumeRequest,
    ) -> Result<(&'r str, &'r VolumeCapability, PathBuf)> {
        let id = validate::volume_id(req.get_volume_id())?;
        validate::required("target_path", req.get_target_path())?;
        let cap = validate::required_msg(
            "volume_capability",
            req.has_volume_capability(),
            req.get_volume_capability(),
        )?;
        validate::capability("volume_capability", cap)?;
        let target =
            validate::node_path("target_path", req.get_target_path(), &self.cfg.kubelet_dir)?;
        Ok((id, cap, target))
    }

    /// Bind the staged mount into the pod's target (created if missing),
    /// read-only when asked. Spec: "volume_id ... REQUIRED", "target_path
    /// ... REQUIRED", "volume_capability ... REQUIRED"; publishing a volume
    /// that is not staged is FAILED_PRECONDITION.
    pub fn publish(&self, req: &NodePublishVolumeRequest) -> Result<NodePublishVolumeResponse> {
        let (id, cap, target) = self.publish_request(req)?;
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
        debug_assert!(!cachevol::is_cache_request(req.get_volume_context()));

        let guard = self.table.acquire(id, Op::Short("NodePublishVolume"))?;
        let mut rec = guard.data().clone();
        if !rec.has_stage() {
            return Err(Error::precondition(
                id,
                "volume is not staged on this node: call NodeStageVolume first",
            ));
        }
        let staged_at = PathBuf::from(rec.get_stage().get_staging_path());
        match &staging {
            None => {
                return Err(Error::precondition(
                    id,
                    "staging_target_path is required for a staged volume",
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
        if let Some(p) = rec
            .get_publications()
            .iter()
            .find(|p| Path::new(p.get_target_path()) == target)
        {
            if p.get_fingerprint() != fingerprint {
                return Err(Error::exists(
                    id,
                    format!("{} is already published with other flags", target.display()),
                ));
            }
            if mountinfo::is_mount_point(&target)? {
                return Ok(NodePublishVolumeResponse::new());
            }
            warn!(
                "volume {id:?}: {} lost its bind mount, binding again",
                target.display()
            );
        } else if mountinfo::is_mount_point(&target)? {
            return Err(Error::exists(
                id,
                format!("{} is already a mount point", target.display()),
            ));
        }
        ensure_dir(&target)?;
        bind_target(&staged_at, &target, readonly)?;
        rec.mut_publications()
            .retain(|p| Path::new(p.get_target_path()) != target);
        let mut p = Publication::new();
        p.set_target_path(target.display().to_string());
        p.set_readonly(readonly);
        p.set_fingerprint(fingerprint);
        p.set_complete(true);
        rec.mut_publications().push(p);
        if let Err(e) = self.save(&rec) {
            let _ = mount::unmount(&target);
            return Err(e);
        }
        *guard.data() = rec;
        Ok(NodePublishVolumeResponse::new())
    }

    // ---- NodeUnpublishVolume ---------------------------------------------

    /// Remove only this pod's bind and its target dir. Spec: "volume_id ...
    /// REQUIRED", "target_path ... REQUIRED"; an unknown or already removed
    /// target is OK (idempotent).
    pub fn unpublish(
        &self,
        req: &NodeUnpublishVolumeRequest,
    ) -> Result<NodeUnpublishVolumeResponse> {
        let id = validate::volume_id(req.get_volume_id())?;
        validate::required("target_path", req.get_target_path())?;
        let target =
            validate::node_path("target_path", req.get_target_path(), &self.cfg.kubelet_dir)?;
        let guard = self.table.acquire(id, Op::Short("NodeUnpublishVolume"))?;
        let mut rec = guard.data().clone();
        let found = rec
            .get_publications()
            .iter()
            .find(|p| Path::new(p.get_target_path()) == target);
        let known = found.is_some();
        if found.is_some_and(|p| !p.get_cache_name().is_empty()) {
            self.caches.unpublish(&target)?;
            self.cache_upkeep_due.store(true, Ordering::SeqCst);
        } else {
            if known || mountinfo::is_mount_point(&target)? {
                mount::unmount(&target)?;
            }
            remove_target_dir(&target)?;
        }
        if known {
            rec.mut_publications()
                .retain(|p| Path::new(p.get_target_path()) != target);
            self.save(&rec)?;
            *guard.data() = rec;
        }
        Ok(NodeUnpublishVolumeResponse::new())
    }

    // ---- NodeGetVolumeStats ----------------------------------------------

    /// Usage from statfs and a VolumeCondition. Spec: "volume_id ...
    /// REQUIRED", "volume_path ... REQUIRED"; a volume or path this node does
    /// not know is NOT_FOUND.
    pub fn stats(&self, req: &NodeGetVolumeStatsRequest) -> Result<NodeGetVolumeStatsResponse> {
        let id = validate::volume_id(req.get_volume_id())?;
        validate::required("volume_path", req.get_volume_path())?;
        let guard = self.table.acquire(id, Op::Short("NodeGetVolumeStats"))?;
        let rec = guard.data().clone();
        drop(guard);
        if !rec.has_stage() && rec.get_publications().is_empty() {
            return Err(Error::VolumeNotFound(id.to_string()));
        }
        let path = Path::new(req.get_volume_path());
        let clean: PathBuf = path.components().collect();
        let known = rec.get_stage().get_staging_path() == clean.to_string_lossy()
            || rec
                .get_publications()
                .iter()
                .any(|p| Path::new(p.get_target_path()) == clean);
        if !path.is_absolute() || !known {
            return Err(Error::NotFound {
                what: "volume_path",
                name: req.get_volume_path().to_string(),
            });
        }
        if let Some(p) = rec
            .get_publications()
            .iter()
            .find(|p| Path::new(p.get_target_path()) == clean && !p.get_cache_name().is_empty())
        {
            return self.cache_stats(p);
        }
        let mut resp = NodeGetVolumeStatsResponse::new();
        let mut condition = VolumeCondition::new();
        let health = if rec.has_stage() {
            // Answered inline on a gRPC thread: wait less than a watchdog does.
            mounter::check(
                Path::new(rec.get_stage().get_staging_path()),
                running(rec.get_stage()),
                Duration::from_secs(2),
            )
        } else {
            Health::Ok
        };
        // statfs on a dead or stopped FUSE mount fails or hangs: only a
        // healthy one is asked.
        let (s, health) = match health {
            Health::Ok => match mount::fs_stats(&clean) {
                Ok(s) => (s, Health::Ok),
                Err(e) => (mount::FsStats::default(), Health::Abnormal(e.to_string())),
            },
            abnormal => (mount::FsStats::default(), abnormal),
        };
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
        match health {
            Health::Ok => {
                condition.set_abnormal(false);
                condition.set_message("volume is healthy".into());
            }
            Health::Abnormal(why) => {
                condition.set_abnormal(true);
                condition.set_message(why);
            }
        }
        resp.set_volume_condition(condition);
        Ok(resp)
    }

    // ---- recovery and self-healing ---------------------------------------

    /// Rebuild the table from the state dir and the mount table: adopt live
    /// mounters, heal dead ones, re-bind lost targets. Probe reports ready
    /// once this is done.
    pub fn recover(&self) {
        let records = match self.store.load_all() {
            Ok(r) => r,
            Err(e) => {
                warn!("cannot read state: {e}");
                Vec::new()
            }
        };
        for rec in records {
            let id = rec.get_volume_id().to_string();
            match self.table.acquire(&id, Op::Long("recovery")) {
                Ok(guard) => {
                    *guard.data() = rec;
                    if let Err(e) = self.heal(&guard) {
                        warn!("volume {id:?}: recovery failed: {e}");
                    }
                }
                Err(e) => warn!("volume {id:?}: {e}"),
            }
        }
        info!("state recovered: {} volume(s)", self.table.len());
    }

    /// Check one volume; when its FUSE mount is dead, start the mounter again
    /// at the staging path and re-bind every published target, so pods see
    /// their data again without a restart.
    pub fn heal(&self, guard: &Guard<VolumeRecord>) -> Result<bool> {
        let id = guard.id().to_string();
        let mut rec = guard.data().clone();
        if !rec.has_stage() {
            return Ok(false);
        }
        let staging = PathBuf::from(rec.get_stage().get_staging_path());
        let mut healed = false;
        if let Health::Abnormal(why) =
            mounter::check(&staging, running(rec.get_stage()), mounter::PROBE_TIMEOUT)
        {
            warn!("volume {id:?}: {why}; remounting {}", staging.display());
            mounter::abort(&staging);
            mounter::stop(
                &staging,
                running(rec.get_stage()),
                Duration::from_millis(200),
            );
            let st = rec.get_stage();
            let mut spec: MountSpec = mounter::parse_spec(
                &id,
                st.get_parameters(),
                st.get_secrets(),
                &self.cfg.fuse_programs,
            )?;
            apply_mount_group(&mut spec, st.get_volume_mount_group())?;
            ensure_dir(&staging)?;
            let run = mounter::start(&id, &spec, &staging, &self.volume_files(&id), &self.cfg)?;
            rec.mut_stage().set_mounter_pid(run.pid);
            rec.mut_stage().set_mounter_start_ticks(run.start_ticks);
            self.save(&rec)?;
            *guard.data() = rec.clone();
            healed = true;
        }
        let table = mountinfo::read_self()?;
        for p in rec
            .get_publications()
            .iter()
            .filter(|p| p.get_cache_name().is_empty())
        {
            let target = Path::new(p.get_target_path());
            let bound = mountinfo::mount_at(&table, target).is_some();
            if healed || !bound {
                // A bind of a dead FUSE mount stays dead after its source is
                // remounted: it has to be unmounted and bound again.
                mount::unmount_lazy(target)?;
                ensure_dir(target)?;
                bind_target(&staging, target, p.get_readonly())?;
                info!("volume {id:?}: re-bound {}", target.display());
            }
        }
        Ok(healed)
    }

    /// Whether a staged volume needs healing: its FUSE mount is dead, its
    /// mounter gone, or a published target lost its bind.
    fn needs_healing(&self, rec: &VolumeRecord) -> bool {
        if !rec.has_stage() {
            return false;
        }
        let st = rec.get_stage();
        if mounter::check(
            Path::new(st.get_staging_path()),
            running(st),
            mounter::PROBE_TIMEOUT,
        ) != Health::Ok
        {
            return true;
        }
        let Ok(table) = mountinfo::read_self() else {
            return false;
        };
        rec.get_publications()
            .iter()
            .filter(|p| p.get_cache_name().is_empty())
            .any(|p| mountinfo::mount_at(&table, Path::new(p.get_target_path())).is_none())
    }

    /// One watchdog pass over every staged volume. The health check looks at
    /// a snapshot without taking the volume's gate, so it never turns a CO
    /// call away; only a volume that needs healing is taken (and skipped
    /// until the next pass when an operation is in flight on it).
    pub fn watchdog_pass(&self) {
        for id in self.table.ids() {
            let Some(rec) = self.table.snapshot(&id) else {
                continue;
            };
            if !self.needs_healing(&rec) {
                continue;
            }
            if let Ok(guard) = self.table.acquire(&id, Op::Long("watchdog")) {
                if let Err(e) = self.heal(&guard) {
                    warn!("volume {id:?}: self-heal failed: {e}");
                }
            }
        }
    }

    /// Cache upkeep (tamper checks of shared golden versions, collection of
    /// unused ones): after a cache volume went away, or when `force`d.
    pub fn cache_upkeep(&self, force: bool) {
        if !self.cache_upkeep_due.swap(false, Ordering::SeqCst) && !force {
            return;
        }
        let mut in_use: HashMap<String, HashSet<String>> = HashMap::new();
        let mut hardlinked = HashSet::new();
        for id in self.table.ids() {
            // Populations in flight hold the guard: their versions are in use.
            let Ok(guard) = self.table.acquire(&id, Op::Short("upkeep")) else {
                self.cache_upkeep_due.store(true, Ordering::SeqCst);
                return;
            };
            for p in guard
                .data()
                .get_publications()
                .iter()
                .filter(|p| !p.get_cache_name().is_empty())
            {
                let (name, version) = (
                    p.get_cache_name().to_string(),
                    p.get_cache_version().to_string(),
                );
                if p.get_strategy() == "hardlink" {
                    hardlinked.insert((name.clone(), version.clone()));
                }
                in_use.entry(name).or_default().insert(version);
            }
        }
        self.caches.maintain(&in_use, &hardlinked);
    }

    // ---- cache volumes -----------------------------------------------------

    /// Validation and admission of a cache volume publish: population takes
    /// time, so it is a long operation on the volume.
    pub fn admit_cache_publish(
        &self,
        req: &NodePublishVolumeRequest,
    ) -> Result<(Guard<VolumeRecord>, PathBuf, CacheRequest, bool)> {
        let (id, cap, target) = self.publish_request(req)?;
        let readonly = req.get_readonly() || validate::read_only_mode(cap);
        let creq = self.caches.request(
            req.get_volume_context(),
            cap.get_mount().get_volume_mount_group(),
            readonly,
        )?;
        let guard = self.table.acquire(id, Op::Long("NodePublishVolume"))?;
        Ok((guard, target, creq, readonly))
    }

    /// Fill the target from the golden copy; return only when complete. The
    /// publication is recorded as incomplete before population starts, so a
    /// crash midway makes the retry start over instead of reporting a half
    /// full volume ready.
    pub fn cache_publish(
        &self,
        guard: Guard<VolumeRecord>,
        target: PathBuf,
        creq: CacheRequest,
        readonly: bool,
    ) -> Result<NodePublishVolumeResponse> {
        let id = guard.id().to_string();
        let mut rec = guard.data().clone();
        if let Some(p) = rec
            .get_publications()
            .iter()
            .find(|p| Path::new(p.get_target_path()) == target)
        {
            if p.get_fingerprint() != creq.fingerprint {
                return Err(Error::exists(
                    &id,
                    format!(
                        "{} is already published with other attributes",
                        target.display()
                    ),
                ));
            }
            if p.get_complete() {
                return Ok(NodePublishVolumeResponse::new());
            }
            warn!(
                "volume {id:?}: population of {} was interrupted, starting over",
                target.display()
            );
            self.caches.unpublish(&target)?;
        }
        rec.set_volume_id(id.clone());
        rec.mut_publications()
            .retain(|p| Path::new(p.get_target_path()) != target);
        let mut pending = Publication::new();
        pending.set_target_path(target.display().to_string());
        pending.set_fingerprint(creq.fingerprint.clone());
        pending.set_cache_name(creq.decl.name.clone());
        pending.set_complete(false);
        rec.mut_publications().push(pending);
        self.save(&rec)?;
        *guard.data() = rec.clone();
        let done = self.caches.publish(&creq, &target, readonly);
        rec.mut_publications()
            .retain(|p| Path::new(p.get_target_path()) != target);
        match done {
            Ok(p) => {
                rec.mut_publications().push(p);
                self.save(&rec)?;
                *guard.data() = rec;
                Ok(NodePublishVolumeResponse::new())
            }
            Err(e) => {
                if let Err(clean) = self.caches.unpublish(&target) {
                    warn!("volume {id:?}: cleaning up {}: {clean}", target.display());
                }
                self.save(&rec)?;
                *guard.data() = rec;
                Err(e)
            }
        }
    }

    fn cache_stats(&self, p: &Publication) -> Result<NodeGetVolumeStatsResponse> {
        let root = Path::new(p.get_cache_root());
        let mut condition = VolumeCondition::new();
        let (bytes, inodes) = match self.caches.usage(root) {
            Ok(u) => u,
            Err(e) => {
                condition.set_abnormal(true);
                condition.set_message(e.to_string());
                (0, 0)
            }
        };
        if !condition.get_abnormal() {
            if self
                .caches
                .is_retired(p.get_cache_name(), p.get_cache_version())
            {
                condition.set_abnormal(true);
                condition.set_message(format!(
                    "golden version {} of cache {:?} was modified through a hardlink; new pods get a rebuilt copy",
                    p.get_cache_version(),
                    p.get_cache_name()
                ));
            } else {
                condition.set_message("volume is healthy".into());
            }
        }
        let mut resp = NodeGetVolumeStatsResponse::new();
        resp.mut_usage()
            .push(volume_usage(VolumeUsage_Unit::BYTES, 0, 0, bytes));
        resp.mut_usage()
            .push(volume_usage(VolumeUsage_Unit::INODES, 0, 0, inodes));
        resp.set_volume_condition(condition);
        Ok(resp)
    }
}

/// One usage entry of NodeGetVolumeStats (0 = unknown, as the spec allows).
fn volume_usage(unit: VolumeUsage_Unit, total: u64, available: u64, used: u64) -> VolumeUsage {
    let mut u = VolumeUsage::new();
    u.set_unit(unit);
    u.set_total(total as i64);
    u.set_available(available as i64);
    u.set_used(used as i64);
    u
}

/// fsGroup (VOLUME_MOUNT_GROUP): files of the mount belong to that group.
fn apply_mount_group(spec: &mut MountSpec, group: &str) -> Result<()> {
    if group.is_empty() {
        return Ok(());
    }
    let gid = group.parse::<u32>().map_err(|_| {
        Error::invalid(
            "volume_capability.mount.volume_mount_group",
            format!("{group:?} is not a numeric gid"),
        )
    })?;
    spec.gid = spec.gid.or(Some(gid));
    spec.umask = spec.umask.or(Some(0o002));
    Ok(())
}

/// Bind `source` onto `target`, then make it read-only if asked; on failure
/// the bind is undone so nothing half-done stays behind.
fn bind_target(source: &Path, target: &Path, readonly: bool) -> Result<()> {
    mount::bind(source, target)?;
    if readonly {
        if let Err(e) = mount::remount_bind_read_only(target) {
            let _ = mount::unmount(target);
            return Err(e);
        }
    }
    Ok(())
}
