//! What the node knows of a volume, as plain typed values: the stage and
//! its phase, each publication as a bind or a cache copy with its own
//! phases. The protobuf records of the state dir are read into these and
//! written from them in ONE place (`wire.rs`); nothing else sees them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::sys::process::Running;
use crate::volumes::Vacant;

/// A volume on this node: its stage (S3 volumes) and its publications.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Volume {
    pub stage: Option<Stage>,
    pub publications: Vec<Publication>,
}

/// The node-local mount of a volume that pods bind (NodeStageVolume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub staging_path: PathBuf,
    /// Volume context / parameters as given to NodeStageVolume.
    pub parameters: HashMap<String, String>,
    /// Node-stage secrets, kept so that a heal can mount again.
    pub secrets: HashMap<String, String>,
    /// What makes two stage requests "the same".
    pub fingerprint: String,
    /// fsGroup the mounter applies (empty: none).
    pub volume_mount_group: String,
    pub phase: StagePhase,
    /// The mounter serving the staging path. None: none recorded (Starting,
    /// or Ready while a heal starts the next one).
    pub mounter: Option<Running>,
    /// Bumped each time a new mounter serves the staging path (first: 1).
    pub generation: u64,
}

/// Where a stage is in its life (see the diagram in mod.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StagePhase {
    /// The mounter is being started.
    Starting,
    /// NodeStageVolume answered OK.
    Ready,
    /// NodeUnstageVolume answered OK; the mounter is kept until `until`
    /// (seconds since the Unix epoch).
    Lingering { until: u64 },
    /// NodeUnstageVolume is tearing it down.
    Stopping,
}

/// One pod's view of a volume (NodePublishVolume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publication {
    /// A bind of the staged mount into the pod.
    Bind(Bind),
    /// A copy of a cache volume's golden version, filled into the pod.
    Cache(CacheCopy),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub target: PathBuf,
    pub readonly: bool,
    /// The publish arguments; others on the same target are ALREADY_EXISTS.
    pub fingerprint: String,
    pub phase: BindPhase,
    /// The stage generation whose mount was bound here.
    pub generation: u64,
    /// That mount's device ("major:minor"): only a mount showing it is ever
    /// unmounted at the target.
    pub mount_dev: String,
    /// The per-mount flags (MS_* bits) the bind was given; 0: not recorded.
    pub mount_flags: u64,
    /// Devices of dead mounts of this volume that the pod's containers may
    /// still show after a heal (re-bound by the health loop).
    pub stale_devs: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindPhase {
    Binding,
    Bound,
    Unbinding,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheCopy {
    pub target: PathBuf,
    pub readonly: bool,
    /// The cache request; another on the same target is ALREADY_EXISTS.
    pub fingerprint: String,
    pub phase: CachePhase,
    /// The declared cache it is a copy of.
    pub name: String,
    /// How it was filled; None until Populated (and for a population that
    /// never finished).
    pub filled: Option<Filled>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePhase {
    Populating,
    Populated,
    Removing,
}

/// How a cache copy was filled: enough to check it and to make it whole
/// again after a reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filled {
    pub version: String,
    /// The strategy that filled it ("copy", "overlay", ...).
    pub strategy: String,
    /// Where the tree is (the target, or `placeCacheAtPath` below it).
    pub root: PathBuf,
    /// Overlay copies: the lower dir the overlay was mounted with.
    pub overlay_lower: Option<PathBuf>,
}

/// A publication's phase, bind or cache: what the machine checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublishPhase {
    Binding,
    Bound,
    Unbinding,
    Populating,
    Populated,
    Removing,
}

impl Stage {
    /// The recorded mounter (pid 0: none).
    pub fn running(&self) -> Running {
        self.mounter.unwrap_or_default()
    }

    pub fn is_ready(&self) -> bool {
        self.phase == StagePhase::Ready
    }

    /// Unstaged, with its mounter kept (unstageDelay).
    pub fn is_lingering(&self) -> bool {
        matches!(self.phase, StagePhase::Lingering { .. })
    }
}

impl StagePhase {
    /// The phase's name in logs, labels and `bindery status`.
    pub fn name(self) -> &'static str {
        match self {
            StagePhase::Starting => "starting",
            StagePhase::Ready => "ready",
            StagePhase::Lingering { .. } => "lingering",
            StagePhase::Stopping => "stopping",
        }
    }
}

impl PublishPhase {
    /// The phase's name in logs, labels and `bindery status`.
    pub fn name(self) -> &'static str {
        match self {
            PublishPhase::Binding => "binding",
            PublishPhase::Bound => "bound",
            PublishPhase::Unbinding => "unbinding",
            PublishPhase::Populating => "populating",
            PublishPhase::Populated => "populated",
            PublishPhase::Removing => "removing",
        }
    }
}

impl From<BindPhase> for PublishPhase {
    fn from(p: BindPhase) -> Self {
        match p {
            BindPhase::Binding => PublishPhase::Binding,
            BindPhase::Bound => PublishPhase::Bound,
            BindPhase::Unbinding => PublishPhase::Unbinding,
        }
    }
}

impl From<CachePhase> for PublishPhase {
    fn from(p: CachePhase) -> Self {
        match p {
            CachePhase::Populating => PublishPhase::Populating,
            CachePhase::Populated => PublishPhase::Populated,
            CachePhase::Removing => PublishPhase::Removing,
        }
    }
}

impl Publication {
    pub fn target(&self) -> &Path {
        match self {
            Publication::Bind(b) => &b.target,
            Publication::Cache(c) => &c.target,
        }
    }

    pub fn fingerprint(&self) -> &str {
        match self {
            Publication::Bind(b) => &b.fingerprint,
            Publication::Cache(c) => &c.fingerprint,
        }
    }

    pub fn phase(&self) -> PublishPhase {
        match self {
            Publication::Bind(b) => b.phase.into(),
            Publication::Cache(c) => c.phase.into(),
        }
    }

    pub fn as_bind(&self) -> Option<&Bind> {
        match self {
            Publication::Bind(b) => Some(b),
            Publication::Cache(_) => None,
        }
    }

    pub fn as_cache(&self) -> Option<&CacheCopy> {
        match self {
            Publication::Cache(c) => Some(c),
            Publication::Bind(_) => None,
        }
    }
}

impl Volume {
    /// The stage, if the volume is staged and Ready (whatever its
    /// mounter's state).
    pub fn ready_stage(&self) -> Option<&Stage> {
        self.stage.as_ref().filter(|st| st.is_ready())
    }

    /// The publication at `target`, if there is one.
    pub fn publication(&self, target: &Path) -> Option<&Publication> {
        self.publications.iter().find(|p| p.target() == target)
    }

    /// The bind publications that are Bound: what pods use.
    pub fn bound_binds(&self) -> impl Iterator<Item = &Bind> {
        self.publications
            .iter()
            .filter_map(Publication::as_bind)
            .filter(|b| b.phase == BindPhase::Bound)
    }

    /// The cache copies.
    pub fn caches(&self) -> impl Iterator<Item = &CacheCopy> {
        self.publications.iter().filter_map(Publication::as_cache)
    }
}

impl Vacant for Volume {
    /// Nothing staged, nothing published: the volume id alone is not state.
    fn is_vacant(&self) -> bool {
        self.stage.is_none() && self.publications.is_empty()
    }
}

impl Bind {
    /// The devices of dead mounts the pod may still show once its target
    /// is bound to the mount `dev`: those already listed, and the one it
    /// was bound to until now (if that is another).
    pub fn stale_after_rebind(&self, dev: &str) -> Vec<String> {
        let mut stale = self.stale_devs.clone();
        let old = &self.mount_dev;
        if !old.is_empty() && old != dev && !stale.iter().any(|d| d == old) {
            stale.push(old.clone());
        }
        stale
    }
}
