//! Cache volumes on the node: declared caches, their golden versions, and
//! the pods' copies of them (builds, strategy probes, publish, unpublish,
//! usage). Request validation is in request.rs, tamper checks and
//! collection in upkeep.rs.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use log::{info, warn};
use nix::errno::Errno;

use crate::cache::decl::{self, Choice, Loaded, Namespaces, Source, TRUST_KEY};
use crate::cache::golden::{self, GoldenStore, Pin, VariantLimit, Version, OWNER_VARIANT_PREFIX};
use crate::cache::manifest::Confirmed;
use crate::cache::populate::{self, Owner, Strategy};
use crate::cache::probe::{self, Probe};
use crate::cache::remove::Trash;
use crate::cache::request::CacheRequest;
use crate::cache::usage::{self, UsageBudget, UsageTable};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics;
use crate::mounter::{self, VolumeFiles};
use crate::proto::bindery::Publication;
use crate::state::private_dir;
use crate::sys::{self, mount, mountinfo, mounts};

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
struct Flight {
    result: Mutex<Option<std::result::Result<Version, Arc<Error>>>>,
    done: Condvar,
}

/// The error every caller of one build gets: the build's own, with its
/// code (a source that is not there is INVALID_ARGUMENT for every pod that
/// waited, not only for the one that started the build).
fn build_failed(name: &str, cause: Arc<Error>) -> Error {
    Error::BuildFailed {
        cache: name.to_string(),
        cause,
    }
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
    builds: Mutex<HashMap<String, Arc<Flight>>>,
    /// Per (cache, version, variant or ""): ctimes at which file contents were confirmed.
    pub(super) confirmed: Mutex<HashMap<(String, String, String), Confirmed>>,
    pub(super) usage: UsageTable,
}

/// Create `path` (or take the one the kubelet made) as a directory owned by
/// the pod, so that it can add, delete and replace files in it.
fn ensure_owned_dir(path: &Path, owner: &Owner) -> Result<()> {
    let mode = owner.dir_mode(0o755);
    match fs::DirBuilder::new().mode(mode & 0o777).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = path
                .symlink_metadata()
                .map_err(|e| Error::io("stat", path, e))?;
            if !meta.is_dir() {
                return Err(Error::io("mkdir", path, e));
            }
        }
        Err(e) => return Err(Error::io("mkdir", path, e)),
    }
    sys::fs::chown_path(path, owner.uid, owner.gid)?;
    if owner.mode.is_some() || owner.group_writable {
        // After chown (which clears setgid): exact bits whatever the umask.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("chmod", path, e))?;
    }
    Ok(())
}

/// What a recorded cache publication can lack on the node (see `Caches::missing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lack {
    Tree,
    Overlay,
    ReadOnlyBind,
}

impl Lack {
    fn describe(self, root: &Path) -> String {
        match self {
            Lack::Tree => format!("its tree {} is gone", root.display()),
            Lack::Overlay => format!("its overlay at {} is not mounted", root.display()),
            Lack::ReadOnlyBind => format!("its read-only bind at {} is gone", root.display()),
        }
    }
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
        let store = GoldenStore::new(&root)
            .with_threads(cfg.workers.max(1))
            .with_verity(verity.is_ok());
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

    /// Build every declared cache that has no usable version yet.
    pub fn build_missing(&self) {
        for name in self.declared.decls.keys() {
            if let Err(e) = self.ensure_version(name) {
                warn!("cache {name:?}: build failed: {e}");
            }
        }
    }

    /// The current version of `name`, pinned; built first when there is none. Builds
    /// are single-flight: callers that find a build of the same cache in flight wait
    /// for it and share its result (they are not ABORTED: each waits on its own
    /// volume's behalf, and the build is what they wait for anyway).
    pub fn ensure_version(&self, name: &str) -> Result<(Version, Pin)> {
        for _ in 0..3 {
            if let Some(vp) = self.store.current_pinned(name)? {
                return Ok(vp);
            }
            self.build_once(name)?;
        }
        Err(Error::Changed {
            path: self.store.root().join(name),
            what: "each version built was collected or replaced before it could be pinned".into(),
        })
    }

    /// Build a new version of `name`, or wait for the build of it in flight and
    /// share its result.
    pub(super) fn build_once(&self, name: &str) -> Result<Version> {
        let (flight, leader) = {
            let mut builds = lock(&self.builds);
            match builds.get(name) {
                Some(f) => (Arc::clone(f), false),
                None => {
                    let f = Arc::new(Flight::default());
                    builds.insert(name.to_string(), Arc::clone(&f));
                    (f, true)
                }
            }
        };
        if leader {
            let r = self.build(name).map_err(Arc::new);
            *lock(&flight.result) = Some(r.clone());
            lock(&self.builds).remove(name);
            flight.done.notify_all();
            return r.map_err(|cause| build_failed(name, cause));
        }
        info!("cache {name:?}: waiting for the build in flight");
        let mut res = lock(&flight.result);
        loop {
            match res.as_ref() {
                Some(Ok(v)) => return Ok(v.clone()),
                Some(Err(cause)) => return Err(build_failed(name, Arc::clone(cause))),
                None => {}
            }
            res = match flight.done.wait(res) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }

    /// Keep `version` of cache `name` from garbage collection while the handle lives
    /// (the node holds one per publication in flight; live ones are passed to `maintain`).
    #[allow(dead_code)] // node API (see the module doc)
    pub fn pin(&self, name: &str, version: &str) -> Pin {
        self.store.pin(name, version)
    }

    /// Build a new version of cache `name` from its source.
    pub fn build(&self, name: &str) -> Result<Version> {
        crate::crash::pause("cache.build");
        let started = Instant::now();
        let built = self.build_from_source(name);
        let result = if built.is_ok() { "ok" } else { "failed" };
        metrics::CACHE_BUILD_DURATION.observe(&[name, result], started.elapsed());
        built
    }

    fn build_from_source(&self, name: &str) -> Result<Version> {
        let decl = self.declared.get(name)?;
        let started = Instant::now();
        let version = match &decl.source {
            Source::Dir(dir) => self.store.build_from_dir(name, dir)?,
            Source::S3 {
                bucket,
                prefix,
                endpoint,
                region,
                credentials,
            } => {
                let mut secrets = decl::read_credentials(credentials)?;
                secrets.insert("endpoint".into(), endpoint.clone());
                secrets.insert("region".into(), region.clone());
                let params: HashMap<String, String> = [
                    ("bucket".to_string(), bucket.clone()),
                    ("prefix".to_string(), prefix.clone()),
                ]
                .into();
                let id = format!("cache:{name}");
                let spec = mounter::parse_spec(&id, &params, &secrets, &[])?;
                let mnt = self.store.root().join(format!(".mnt-{name}"));
                fs::create_dir_all(&mnt).map_err(|e| Error::io("mkdir", &mnt, e))?;
                let files = VolumeFiles::new(self.store.root().join(format!(".files-{name}")));
                let run = mounter::start(&id, &spec, &mnt, &files, &self.cfg)?;
                let built = self.store.build_from_dir(name, &mnt);
                mounter::stop(&mnt, run, self.cfg.unstage_grace);
                let _ = files.remove();
                let _ = fs::remove_dir(&mnt);
                built?
            }
        };
        info!(
            "cache {name:?}: built version {version} in {:.1?}",
            started.elapsed()
        );
        Ok(version)
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
    fn variant_strategy(&self) -> Strategy {
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

    /// The strategy used for `req` into `dest`, or why none can be. `auto` is reflink
    /// where FICLONE from the store into `dest` works, else overlay. Hardlink shares
    /// inodes between pods, so it is allowed only when the pod cannot change them (a
    /// read-only publish), or when the declaration trusts its tenants with shared
    /// inodes. fs-verity is no substitute: it seals contents, but a root pod can still
    /// chmod, chown or set xattrs (file capabilities, ACLs) on a sealed inode.
    fn resolve(&self, req: &CacheRequest, dest: &Path, readonly: bool) -> Result<Choice> {
        let name = &req.decl.name;
        let field = if req.requested {
            "volume_context.strategy".to_string()
        } else {
            format!("cache {name}: strategies")
        };
        match req.choice {
            Choice::Auto => Ok(match self.probe(dest)?.reflink {
                Ok(()) => Choice::Fill(Strategy::Reflink),
                Err(_) => Choice::Overlay,
            }),
            Choice::Fill(Strategy::Reflink) => match self.probe(dest)?.reflink {
                Ok(()) => Ok(req.choice),
                Err(e) => Err(Error::invalid(
                    field,
                    format!(
                        "reflink: FICLONE from the golden store {} into {} fails ({e}); \
                         use overlay or copy",
                        self.store.root().display(),
                        dest.display()
                    ),
                )),
            },
            Choice::Fill(Strategy::Hardlink) => {
                if !readonly && !req.decl.trust_shared_inodes {
                    return Err(Error::invalid(
                        field,
                        format!(
                            "hardlink shares inodes between pods, whose contents, modes, \
                             owners and xattrs a root pod could change for every other pod; \
                             it is allowed for read-only publishes, or with {TRUST_KEY} = true \
                             in the declaration; use reflink, overlay or copy"
                        ),
                    ));
                }
                match self.probe(dest)?.link {
                    Ok(()) => Ok(req.choice),
                    Err(e) => Err(Error::invalid(
                        field,
                        format!(
                            "hardlink: linkat from the golden store {} into {} fails ({e}{}); \
                             use reflink, overlay or copy",
                            self.store.root().display(),
                            dest.display(),
                            if e == Errno::EXDEV {
                                ": another mount or filesystem"
                            } else {
                                ""
                            }
                        ),
                    )),
                }
            }
            other => Ok(other),
        }
    }

    /// The pod's volume dir (the kubelet removes it after unpublish): overlay
    /// keeps its upper and work dirs there, beside the target.
    fn overlay_dirs(target: &Path) -> (PathBuf, PathBuf) {
        let vol = target.parent().unwrap_or(target);
        (vol.join("bindery-upper"), vol.join("bindery-work"))
    }

    /// The overlay lower dir for `owner`: the golden version itself when the pod takes
    /// root's tree as it is, else a variant owned as asked (directories the pod can
    /// write in, copy-up keeps their owner and modes), built once per owner.
    fn overlay_lower(&self, name: &str, version: &Version, owner: &Owner) -> Result<PathBuf> {
        if *owner == Owner::default() {
            return Ok(self.store.path(name, version));
        }
        let id = |v: Option<u32>| v.map_or("x".to_string(), |n| n.to_string());
        let key = format!(
            "{OWNER_VARIANT_PREFIX}{}-{}-{}-{}",
            id(owner.uid),
            id(owner.gid),
            owner.mode.map_or("x".to_string(), |m| format!("{m:o}")),
            if owner.group_writable { "g" } else { "n" }
        );
        let max = self.declared.decls.get(name).map_or(0, |d| d.max_variants);
        self.store.variant(
            name,
            version,
            &key,
            self.variant_strategy(),
            owner,
            VariantLimit::Owners(max),
        )
    }

    /// Fill `target` from the current golden version. The caller records the
    /// publication as incomplete first, so a crash midway is redone by the
    /// retry instead of being reported ready half full. The version is pinned
    /// while this runs; the node reports live publications' versions to `maintain`.
    pub fn publish(
        &self,
        req: &CacheRequest,
        target: &Path,
        readonly: bool,
    ) -> Result<Publication> {
        let name = &req.decl.name;
        let (version, _pin) = self.ensure_version(name)?;
        let golden = self.store.path(name, &version);
        let started = Instant::now();
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io("mkdir", parent, e))?;
        }
        ensure_owned_dir(target, &req.owner)?;
        let mut dest = target.to_path_buf();
        for part in req.place.components() {
            dest.push(part);
            ensure_owned_dir(&dest, &req.owner)?;
        }
        let choice = self.resolve(req, &dest, readonly)?;
        let mut overlay_lower = String::new();
        match choice {
            Choice::Overlay => {
                let lower = self.overlay_lower(name, &version, &req.owner)?;
                overlay_lower = lower.display().to_string();
                let (upper, work) = Self::overlay_dirs(target);
                ensure_owned_dir(&upper, &req.owner)?;
                ensure_owned_dir(
                    &work,
                    &Owner {
                        uid: None,
                        gid: None,
                        mode: Some(0o700),
                        group_writable: false,
                    },
                )?;
                mount::overlay(&lower, &upper, &work, &dest)?;
            }
            Choice::Fill(strategy) => {
                // Writable hardlinks link a variant with inodes of its own: what a
                // trusted tenant writes reaches the other hardlink pods, never the
                // golden version that every other strategy copies from.
                let source = if strategy == Strategy::Hardlink && !readonly {
                    let root = Owner {
                        uid: Some(0),
                        gid: Some(0),
                        mode: None,
                        group_writable: false,
                    };
                    self.store.variant(
                        name,
                        &version,
                        SHARED_VARIANT,
                        self.variant_strategy(),
                        &root,
                        VariantLimit::Shared,
                    )?
                } else {
                    golden.clone()
                };
                let stats = populate::populate(
                    &source,
                    &dest,
                    strategy,
                    &req.owner,
                    self.cfg.workers.max(1),
                )?;
                // On disk before the publication is recorded Populated: after
                // a power cut, a tree the record calls complete must be whole,
                // not files the page cache never wrote back.
                let fd = sys::fs::open_dir(&dest)?;
                sys::fs::syncfs(fd.as_fd(), &dest)?;
                info!(
                    "cache {name:?} v{version}: {} files, {} dirs, {} symlinks into {} by {} in {:.1?}",
                    stats.files,
                    stats.dirs,
                    stats.symlinks,
                    dest.display(),
                    strategy.as_str(),
                    started.elapsed()
                );
            }
            #[allow(clippy::unreachable)] // an invariant of resolve(), not an input
            Choice::Auto => unreachable!("resolve() never returns Auto"),
        }
        if readonly {
            mount::bind(&dest, &dest)?;
            mount::remount_bind_read_only(&dest)?;
        }
        self.usage.track(target, &dest);
        let mut p = Publication::new();
        p.set_target_path(target.display().to_string());
        p.set_readonly(readonly);
        p.set_fingerprint(req.fingerprint.clone());
        p.set_cache_name(name.clone());
        p.set_cache_version(version.as_str().to_string());
        p.set_strategy(choice.as_str().to_string());
        p.set_cache_root(dest.display().to_string());
        p.set_overlay_lower(overlay_lower);
        p.set_complete(true);
        Ok(p)
    }

    /// The first thing a recorded publication lacks on the node now, in the
    /// order it is made: its tree at the cache root, the overlay mounted
    /// there, the read-only bind over it. Mount table and stat only: nothing
    /// is read inside a pod's tree.
    fn lack(p: &Publication) -> Result<Option<Lack>> {
        let root = Path::new(p.get_cache_root());
        if !fs::symlink_metadata(root).is_ok_and(|m| m.is_dir()) {
            return Ok(Some(Lack::Tree));
        }
        let here = mounts::lookup(root)?;
        let here = here.as_ref();
        if p.get_strategy() == "overlay" && !here.is_some_and(|m| m.fs_type == "overlay") {
            return Ok(Some(Lack::Overlay));
        }
        if p.get_readonly() && !here.is_some_and(|m| m.options.split(',').any(|o| o == "ro")) {
            return Ok(Some(Lack::ReadOnlyBind));
        }
        Ok(None)
    }

    /// What a recorded publication lacks on the node now, in words, or None
    /// when it is whole. A reboot takes every mount away while the record
    /// stays; a pod must then never be handed an empty directory as its
    /// cache.
    pub fn missing(&self, p: &Publication) -> Option<String> {
        match Self::lack(p) {
            Ok(None) => None,
            Ok(Some(l)) => Some(l.describe(Path::new(p.get_cache_root()))),
            Err(e) => Some(e.to_string()),
        }
    }

    /// Make a recorded publication whole again from what is still on disk:
    /// mount its overlay again (over the pod's own upper dir, so its writes
    /// are kept) and its read-only bind. Ok only when it is whole; an error
    /// when the data itself is gone (the tree, the upper dir or the lower
    /// version): the caller then fills the volume anew.
    pub fn restore(&self, p: &Publication) -> Result<()> {
        let root = Path::new(p.get_cache_root());
        let cannot = |what: String| Error::Gone {
            path: root.to_path_buf(),
            what: format!("cannot restore: {what}"),
        };
        let mut lack = Self::lack(p)?;
        if lack == Some(Lack::Overlay) {
            let lower = Path::new(p.get_overlay_lower());
            let (upper, work) = Self::overlay_dirs(Path::new(p.get_target_path()));
            if p.get_overlay_lower().is_empty() || !lower.is_dir() {
                return Err(cannot(
                    "the overlay's lower dir is not recorded or gone".into(),
                ));
            }
            if !upper.is_dir() || !work.is_dir() {
                return Err(cannot("the overlay's upper or work dir is gone".into()));
            }
            mount::overlay(lower, &upper, &work, root)?;
            lack = Self::lack(p)?;
        }
        if lack == Some(Lack::ReadOnlyBind) {
            mount::bind(root, root)?;
            mount::remount_bind_read_only(root)?;
            lack = Self::lack(p)?;
        }
        match lack {
            None => {
                self.usage.track(Path::new(p.get_target_path()), root);
                Ok(())
            }
            Some(l) => Err(cannot(l.describe(root))),
        }
    }

    /// Remove a pod's copy: unmount what bindery mounted inside the target,
    /// rename the tree into the trash (O(1)) and let the trash thread delete
    /// it. Never follows the pod's symlinks, never touches the golden copy.
    pub fn unpublish(&self, target: &Path) -> Result<()> {
        let bytes = self.usage.forget_below(target);
        // Deepest mounts first: a read-only bind or overlay at the cache root.
        let table = mountinfo::read_self()?;
        let mut inside: Vec<&Path> = table
            .iter()
            .map(|m| m.mount_point.as_path())
            .filter(|m| m.starts_with(target))
            .collect();
        inside.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        inside.dedup();
        // Detach each mount now and let a helper thread drop the last
        // reference, where the kernel's teardown of the tree happens.
        let mut held = Vec::new();
        for m in inside {
            while mounts::is_mount_point(m)? {
                held.push(mount::detach_holding(m)?);
            }
        }
        if !held.is_empty() {
            let spawned = std::thread::Builder::new()
                .name("unmount".into())
                .spawn(move || drop(held));
            if let Err(e) = spawned {
                warn!("no thread to finish unmounting in the background ({e}); finished inline");
            }
        }
        let trash = self.trash.as_ref().ok_or(Error::Unimplemented(
            "removing a pod's tree outside the daemon",
        ))?;
        let started = Instant::now();
        trash.discard(target, bytes)?;
        let (upper, work) = Self::overlay_dirs(target);
        for d in [upper, work] {
            if d.exists() {
                trash.discard(&d, 0)?;
            }
        }
        log::debug!(
            "moved {} to the trash in {:.1?}",
            target.display(),
            started.elapsed()
        );
        Ok(())
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
