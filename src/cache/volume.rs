//! Cache volumes on the node: declared caches, their golden store, strategy
//! probes and usage. Builds are in build.rs, publish and unpublish in
//! publish.rs, request validation in request.rs, tamper checks and
//! collection in upkeep.rs.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use log::{info, warn};

use crate::cache::decl::{self, Choice, Loaded, Namespaces};
use crate::cache::golden::{self, GoldenStore, Version};
use crate::cache::manifest::Confirmed;
use crate::cache::populate::Strategy;
use crate::cache::probe::{self, Probe};
use crate::cache::remove::trash::Trash;
use crate::cache::usage::{self, UsageBudget, UsageTable};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::state::private_dir;
use crate::sys::{self};

/// The variant of a version that writable hardlink publishes link to: its own inodes,
/// so that what such a pod writes never reaches the golden version.
pub(super) const SHARED_VARIANT: &str = "shared";

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// One build of a cache in flight: the others wait for its result.
#[derive(Default)]
pub(super) struct Flight {
    pub(super) result: Mutex<Option<std::result::Result<Version, Arc<Error>>>>,
    pub(super) done: Condvar,
}

pub struct Caches {
    pub(super) cfg: Arc<Config>,
    /// The declarations; those that are wrong are disabled, with the reason.
    pub(super) declared: Loaded,
    pub(super) store: GoldenStore,
    /// None for `bindery cache build`, which never removes pod trees.
    pub(super) trash: Option<Trash>,
    /// linkat/FICLONE from the store into a pod's directory, per (mount id, st_dev) of
    /// that directory: probed once per mount.
    pub(super) probes: Mutex<HashMap<(u64, u64), Probe>>,
    /// FICLONE within the store itself (for variants), probed once.
    pub(super) store_reflink: OnceLock<bool>,
    /// Builds in flight, per cache (single-flight).
    pub(super) builds: Mutex<HashMap<String, Arc<Flight>>>,
    /// Per (cache, version, variant or ""): ctimes at which file contents were confirmed.
    pub(super) confirmed: Mutex<HashMap<(String, String, String), Confirmed>>,
    pub(super) usage: UsageTable,
}

impl Caches {
    /// The daemon's view: declarations, golden store and the trash (whose
    /// leftovers from a crash are deleted in the background from now on).
    /// A bad declaration disables that cache only (logged); this fails only when
    /// the store or the trash cannot be created.
    pub fn open(cfg: Arc<Config>) -> Result<Caches> {
        // The trash must be on the pods' filesystem (renames into it are the
        // O(1) unpublish) and outside any pod's volume dir.
        let trash_dir = Self::trash_root(&cfg);
        fs::create_dir_all(&trash_dir).map_err(|e| Error::io("mkdir", &trash_dir, e))?;
        let trash = Trash::new(&trash_dir)?;
        let mut caches = Self::open_for_build(cfg)?;
        caches.trash = Some(trash);
        Ok(caches)
    }

    /// `<kubelet-dir>/plugins/<driver-name>`: on the mount of the pods' volumes.
    fn plugin_dir(cfg: &Config) -> PathBuf {
        cfg.kubelet_dir.join("plugins").join(&cfg.driver_name)
    }

    /// Where unpublished pod trees wait for their deletion.
    pub fn trash_root(cfg: &Config) -> PathBuf {
        Self::plugin_dir(cfg).join("trash")
    }

    /// Where the golden store lives: beside the trash, on the pods' mount, so that
    /// hardlinks (which fail across vfsmounts, even of one filesystem) can work.
    pub fn golden_root(cfg: &Config) -> PathBuf {
        Self::plugin_dir(cfg).join("golden")
    }

    /// Declarations and golden store only (`bindery cache build`).
    pub fn open_for_build(cfg: Arc<Config>) -> Result<Caches> {
        let loaded = decl::load(cfg.cache_config.as_deref(), &cfg.caches);
        for e in &loaded.errors {
            warn!("cache config: {e}");
        }
        for (name, why) in &loaded.broken {
            warn!("cache {name:?} is disabled: {why}");
        }
        for d in loaded.decls.values() {
            if d.namespaces == Namespaces::Undeclared {
                warn!(
                    "cache {:?}: no namespaces key, so no pod may use it \
                     (list them, or say `namespaces = *` for every namespace)",
                    d.name
                );
            }
        }
        let root = Self::golden_root(&cfg);
        let old = cfg.state_dir.join("golden");
        if old.is_dir() {
            warn!(
                "{} is no longer used (the golden store is now {}); remove it to free the space",
                old.display(),
                root.display()
            );
        }
        if let Some(parent) = root.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io("mkdir", parent, e))?;
        }
        private_dir(&root)?;
        probe::ensure_probe_file(&root)?;
        let verity = golden::probe_verity(&root);
        match verity {
            Ok(()) => info!(
                "fs-verity works in {}: the contents of new golden versions are sealed",
                root.display()
            ),
            Err(e) => info!(
                "fs-verity probe in {}: {e}: golden versions are checked by their manifests only",
                root.display()
            ),
        }
        let hardlinked = loaded
            .decls
            .iter()
            .filter(|(_, d)| d.strategies.contains(&Choice::Fill(Strategy::Hardlink)))
            .map(|(name, _)| name.clone());
        let store = GoldenStore::new(&root)
            .with_threads(cfg.workers.max(1))
            .with_verity(verity.is_ok())
            .with_plain_dirs(hardlinked);
        Ok(Caches {
            cfg,
            declared: loaded,
            store,
            trash: None,
            probes: Mutex::new(HashMap::new()),
            store_reflink: OnceLock::new(),
            builds: Mutex::new(HashMap::new()),
            confirmed: Mutex::new(HashMap::new()),
            usage: UsageTable::default(),
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.declared.names()
    }

    /// The declarations, which check a cache publish request
    /// ([`Loaded::request`]).
    pub fn declarations(&self) -> &Loaded {
        &self.declared
    }

    /// Per declared cache, how many golden versions the store holds (a
    /// directory listing of the store: never a pod's tree, never FUSE).
    pub fn version_counts(&self) -> Vec<(String, usize)> {
        self.declared
            .decls
            .keys()
            .map(|n| (n.clone(), self.store.versions(n).map_or(0, |v| v.len())))
            .collect()
    }

    /// Pod trees waiting for their deletion, and their bytes as last measured.
    pub fn trash_backlog(&self) -> (usize, u64) {
        self.trash.as_ref().map_or((0, 0), Trash::backlog)
    }

    /// Disabled caches and why (a bad declaration).
    #[allow(dead_code)] // node API (see the module doc)
    pub fn disabled(&self) -> &BTreeMap<String, String> {
        &self.declared.broken
    }

    /// linkat/FICLONE from the store into `dir`, probed once per mount of `dir`.
    pub fn probe(&self, dir: &Path) -> Result<Probe> {
        let fd = sys::fs::open_dir(dir)?;
        let key = match (sys::fs::mount_id(fd.as_fd()), sys::fs::fstat(fd.as_fd())) {
            (Ok(m), Ok(st)) => Some((m, st.st_dev)),
            _ => None,
        };
        if let Some(p) = key.and_then(|k| lock(&self.probes).get(&k).copied()) {
            return Ok(p);
        }
        let p = probe::probe_pair(self.store.root(), dir)?;
        if let Some(k) = key {
            lock(&self.probes).insert(k, p);
        }
        Ok(p)
    }

    /// Whether FICLONE works inside the store (variants are then reflinked, else copied).
    pub(super) fn variant_strategy(&self) -> Strategy {
        let works = *self.store_reflink.get_or_init(|| {
            let dir = self.store.root().join(".probe-dir");
            let _ = fs::create_dir(&dir);
            probe::probe_pair(self.store.root(), &dir)
                .map(|p| p.reflink.is_ok())
                .unwrap_or(false)
        });
        if works {
            Strategy::Reflink
        } else {
            Strategy::Copy
        }
    }

    /// Measure the trees of live publications within `budget` (fd-relative, symlinks
    /// not followed, mounts not crossed). For a background thread; returns how many
    /// trees were measured.
    pub fn refresh_usage(&self, budget: UsageBudget) -> usize {
        self.usage.refresh(budget)
    }

    /// Bytes and inodes used by the pod's tree at `root` (at or below its
    /// `target`), for NodeGetVolumeStats: the last figure `refresh_usage`
    /// measured; a tree never measured yet (e.g. after a restart) is watched
    /// from now on and measured here with a small budget (50 ms, 10,000
    /// entries), never through a symlink or into another mount.
    pub fn usage(&self, target: &Path, root: &Path) -> Result<(u64, u64)> {
        if let Some(u) = self.usage.get(root) {
            return Ok((u.bytes, u.inodes));
        }
        self.usage.track(target, root);
        let u = usage::measure(
            target,
            root,
            10_000,
            Instant::now() + std::time::Duration::from_millis(50),
        )?;
        self.usage.set(root, u);
        Ok((u.bytes, u.inodes))
    }
}
