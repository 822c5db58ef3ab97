//! Cache volumes on the node: declared caches, their golden versions, and
//! the pods' copies of them (publish, unpublish, usage, tamper checks).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use log::{info, warn};

use crate::cache::decl::{self, CacheDecl, Choice, Source};
use crate::cache::golden::{GoldenStore, Version};
use crate::cache::populate::{self, Owner, Strategy};
use crate::cache::remove::Trash;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::mounter::{self, VolumeFiles};
use crate::proto::bindery::Publication;
use crate::state::private_dir;
use crate::sys::{self, mount, mountinfo};

/// Volume attributes a cache volume may carry (plus the CO's own keys).
const ATTRS: &[&str] = &[
    "cache",
    "placeCacheAtPath",
    "strategy",
    "uid",
    "gid",
    "mode",
];

pub struct Caches {
    cfg: Arc<Config>,
    decls: BTreeMap<String, CacheDecl>,
    store: GoldenStore,
    /// None for `bindery cache build`, which never removes pod trees.
    trash: Option<Trash>,
    /// Golden store and kubelet dir share a filesystem (hardlink/reflink work).
    same_fs: bool,
    /// What `auto` means here, probed once (a FICLONE on the store).
    auto: std::sync::OnceLock<Strategy>,
}

/// A validated cache publish request.
pub struct CacheRequest {
    pub decl: CacheDecl,
    pub place: PathBuf,
    pub choice: Choice,
    pub owner: Owner,
    pub fingerprint: String,
}

/// `placeCacheAtPath`: relative, no `..`, `.`, empty segments or NUL.
pub fn place_path(v: &str) -> Result<PathBuf> {
    let field = "volume_context.placeCacheAtPath";
    if v.is_empty() {
        return Ok(PathBuf::new());
    }
    if v.contains('\0') || v.len() > 1024 {
        return Err(Error::invalid(field, "contains NUL or is too long"));
    }
    if v.starts_with('/') {
        return Err(Error::invalid(
            field,
            format!("{v:?} must be relative to the volume"),
        ));
    }
    if v.trim_end_matches('/')
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(Error::invalid(
            field,
            format!("{v:?} must not contain empty, '.' or '..' segments"),
        ));
    }
    Ok(PathBuf::from(v.trim_end_matches('/')))
}

fn attr_u32(attrs: &HashMap<String, String>, key: &str, radix: u32) -> Result<Option<u32>> {
    attrs
        .get(key)
        .map(|v| {
            u32::from_str_radix(v, radix).map_err(|_| {
                Error::invalid(
                    format!("volume_context.{key}"),
                    format!("{v:?} is not a number"),
                )
            })
        })
        .transpose()
}

/// Whether a publish request asks for a cache volume.
pub fn is_cache_request(attrs: &HashMap<String, String>) -> bool {
    attrs.contains_key("cache")
}

/// Create `path` (or take the one the kubelet made) as a directory owned by
/// the pod, so that it can add, delete and replace files in it.
fn ensure_owned_dir(path: &Path, owner: &Owner) -> Result<()> {
    match fs::DirBuilder::new()
        .mode(owner.mode.unwrap_or(0o755))
        .create(path)
    {
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
    sys::fs::chown_path(path, owner.uid, owner.gid)
}

impl Caches {
    /// The daemon's view: declarations, golden store and the trash (whose
    /// leftovers from a crash are deleted in the background from now on).
    pub fn open(cfg: Arc<Config>) -> Result<Caches> {
        // The trash must be on the pods' filesystem (renames into it are the
        // O(1) unpublish) and outside any pod's volume dir.
        let trash_dir = cfg
            .kubelet_dir
            .join("plugins")
            .join(&cfg.driver_name)
            .join("trash");
        fs::create_dir_all(&trash_dir).map_err(|e| Error::io("mkdir", &trash_dir, e))?;
        let trash = Trash::new(&trash_dir)?;
        let mut caches = Self::open_for_build(cfg)?;
        caches.trash = Some(trash);
        Ok(caches)
    }

    /// Declarations and golden store only (`bindery cache build`).
    pub fn open_for_build(cfg: Arc<Config>) -> Result<Caches> {
        let decls = decl::load(cfg.cache_config.as_deref(), &cfg.caches)?;
        let root = cfg.state_dir.join("golden");
        private_dir(&cfg.state_dir)?;
        private_dir(&root)?;
        let same_fs = populate::same_filesystem(&root, &cfg.kubelet_dir)?;
        if !same_fs && !decls.is_empty() {
            warn!(
                "golden store {} and kubelet dir {} are on different filesystems: \
                 hardlink and reflink are impossible, auto falls back to copy",
                root.display(),
                cfg.kubelet_dir.display()
            );
        }
        let store = GoldenStore::new(&root).with_threads(cfg.workers.max(1));
        Ok(Caches {
            cfg,
            decls,
            store,
            trash: None,
            same_fs,
            auto: std::sync::OnceLock::new(),
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.decls.keys().cloned().collect()
    }

    /// Build every declared cache that has no usable version yet.
    pub fn build_missing(&self) {
        for name in self.decls.keys() {
            match self.store.current(name) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    if let Err(e) = self.build(name) {
                        warn!("cache {name:?}: build failed: {e}");
                    }
                }
                Err(e) => warn!("cache {name:?}: {e}"),
            }
        }
    }

    /// Build a new version of cache `name` from its source.
    pub fn build(&self, name: &str) -> Result<Version> {
        let decl = self.decls.get(name).ok_or_else(|| self.unknown(name))?;
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

    fn unknown(&self, name: &str) -> Error {
        let names = self.names();
        Error::invalid(
            "volume_context.cache",
            format!(
                "{name:?} is not declared on this node (declared: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        )
    }

    /// Validate a cache publish request's attributes.
    pub fn request(
        &self,
        attrs: &HashMap<String, String>,
        mount_group: &str,
        readonly: bool,
    ) -> Result<CacheRequest> {
        let mut unknown: Vec<&str> = attrs
            .keys()
            .map(String::as_str)
            .filter(|k| !ATTRS.contains(k) && !mounter::is_co_key(k))
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            return Err(Error::invalid(
                "volume_context",
                format!(
                    "unknown attributes for a cache volume: {}",
                    unknown.join(", ")
                ),
            ));
        }
        let name = attrs.get("cache").map(String::as_str).unwrap_or("");
        let decl = self
            .decls
            .get(name)
            .ok_or_else(|| self.unknown(name))?
            .clone();
        let place = place_path(
            attrs
                .get("placeCacheAtPath")
                .map(String::as_str)
                .unwrap_or(""),
        )?;
        let choice = match attrs.get("strategy") {
            Some(s) => s.parse::<Choice>().map_err(|e| match e {
                Error::InvalidField { reason, .. } => {
                    Error::invalid("volume_context.strategy", reason)
                }
                other => other,
            })?,
            None => decl.strategy,
        };
        let group = if mount_group.is_empty() {
            None
        } else {
            Some(mount_group.parse::<u32>().map_err(|_| {
                Error::invalid(
                    "volume_capability.mount.volume_mount_group",
                    format!("{mount_group:?} is not a numeric gid"),
                )
            })?)
        };
        let mode = attr_u32(attrs, "mode", 8)?.or(decl.mode);
        if mode.is_some_and(|m| m > 0o7777) {
            return Err(Error::invalid(
                "volume_context.mode",
                "must be an octal mode",
            ));
        }
        let owner = Owner {
            uid: attr_u32(attrs, "uid", 10)?.or(decl.uid),
            gid: attr_u32(attrs, "gid", 10)?.or(group).or(decl.gid),
            mode,
        };
        let fingerprint = format!(
            "cache={};place={};strategy={};owner={:?}/{:?}/{:?};ro={readonly}",
            decl.name,
            place.display(),
            choice.as_str(),
            owner.uid,
            owner.gid,
            owner.mode
        );
        Ok(CacheRequest {
            decl,
            place,
            choice,
            owner,
            fingerprint,
        })
    }

    /// auto → reflink where the store supports it, else hardlink; neither is
    /// possible across filesystems, where auto means copy and an explicit
    /// hardlink/reflink is refused.
    fn resolve(&self, choice: Choice) -> Result<Choice> {
        match choice {
            Choice::Auto if !self.same_fs => Ok(Choice::Fill(Strategy::Copy)),
            Choice::Auto => Ok(Choice::Fill(*self.auto.get_or_init(|| Strategy::auto(self.store.root())))),
            Choice::Fill(s @ (Strategy::Hardlink | Strategy::Reflink)) if !self.same_fs => Err(Error::invalid(
                "volume_context.strategy",
                format!(
                    "{} needs the golden store ({}) on the kubelet dir's filesystem; use copy or overlay",
                    s.as_str(),
                    self.store.root().display()
                ),
            )),
            other => Ok(other),
        }
    }

    /// The pod's volume dir (the kubelet removes it after unpublish): overlay
    /// keeps its upper and work dirs there, beside the target.
    fn overlay_dirs(target: &Path) -> (PathBuf, PathBuf) {
        let vol = target.parent().unwrap_or(target);
        (vol.join("bindery-upper"), vol.join("bindery-work"))
    }

    /// Fill `target` from the current golden version. The caller records the
    /// publication as incomplete first, so a crash midway is redone by the
    /// retry instead of being reported ready half full.
    pub fn publish(
        &self,
        req: &CacheRequest,
        target: &Path,
        readonly: bool,
    ) -> Result<Publication> {
        let name = &req.decl.name;
        let version = match self.store.current(name)? {
            Some(v) => v,
            None => self.build(name)?,
        };
        let golden = self.store.path(name, &version);
        let choice = self.resolve(req.choice)?;
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
        match choice {
            Choice::Overlay => {
                let (upper, work) = Self::overlay_dirs(target);
                ensure_owned_dir(&upper, &req.owner)?;
                ensure_owned_dir(
                    &work,
                    &Owner {
                        uid: None,
                        gid: None,
                        mode: Some(0o700),
                    },
                )?;
                mount::overlay(&golden, &upper, &work, &dest)?;
            }
            Choice::Fill(strategy) => {
                let stats = populate::populate(
                    &golden,
                    &dest,
                    strategy,
                    &req.owner,
                    self.cfg.workers.max(1),
                )?;
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
            Choice::Auto => unreachable!("resolve() never returns Auto"),
        }
        if readonly {
            mount::bind(&dest, &dest)?;
            mount::remount_bind_read_only(&dest)?;
        }
        let mut p = Publication::new();
        p.set_target_path(target.display().to_string());
        p.set_readonly(readonly);
        p.set_fingerprint(req.fingerprint.clone());
        p.set_cache_name(name.clone());
        p.set_cache_version(version.as_str().to_string());
        p.set_strategy(choice.as_str().to_string());
        p.set_cache_root(dest.display().to_string());
        p.set_complete(true);
        Ok(p)
    }

    /// Remove a pod's copy: unmount what bindery mounted inside the target,
    /// rename the tree into the trash (O(1)) and let the trash thread delete
    /// it. Never follows the pod's symlinks, never touches the golden copy.
    pub fn unpublish(&self, target: &Path) -> Result<()> {
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
            while mountinfo::is_mount_point(m)? {
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
        let trash = self.trash.as_ref().ok_or_else(|| Error::State {
            path: target.to_path_buf(),
            reason: "no trash: only the daemon removes pod trees".into(),
        })?;
        let started = Instant::now();
        trash.discard(target)?;
        let (upper, work) = Self::overlay_dirs(target);
        for d in [upper, work] {
            if d.exists() {
                trash.discard(&d)?;
            }
        }
        log::debug!(
            "moved {} to the trash in {:.1?}",
            target.display(),
            started.elapsed()
        );
        Ok(())
    }

    /// Bytes and inodes used by the pod's tree (symlinks not followed, mounts
    /// not crossed).
    pub fn usage(&self, root: &Path) -> Result<(u64, u64)> {
        fn walk(dir: &Path, dev: u64, acc: &mut (u64, u64)) {
            let Ok(entries) = fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let Ok(m) = e.path().symlink_metadata() else {
                    continue;
                };
                acc.1 += 1;
                if m.is_dir() {
                    if m.dev() == dev {
                        walk(&e.path(), dev, acc);
                    }
                } else {
                    acc.0 += m.blocks() * 512;
                }
            }
        }
        let meta = root
            .symlink_metadata()
            .map_err(|e| Error::io("stat", root, e))?;
        let mut acc = (0, 1);
        walk(root, meta.dev(), &mut acc);
        Ok(acc)
    }

    /// Whether a golden version was found modified and retired.
    pub fn is_retired(&self, name: &str, version: &str) -> bool {
        Version::parse(version).is_some_and(|v| self.store.is_retired(name, &v))
    }

    /// Periodic upkeep: verify the versions that hardlink publications share
    /// with the golden copy (a root pod writing in place changes the shared
    /// inode): a tampered version is retired and rebuilt from the source.
    /// Then delete versions that are neither current nor in use.
    pub fn maintain(
        &self,
        in_use: &HashMap<String, HashSet<String>>,
        hardlinked: &HashSet<(String, String)>,
    ) {
        let mut to_check: HashSet<(String, String)> = hardlinked.clone();
        for name in self.decls.keys() {
            if let Ok(Some(v)) = self.store.current(name) {
                to_check.insert((name.clone(), v.as_str().to_string()));
            }
        }
        for (name, version) in to_check {
            let Some(v) = Version::parse(&version) else {
                continue;
            };
            if self.store.is_retired(&name, &v) {
                continue;
            }
            match self.store.verify(&name, &v) {
                Ok(changed) if changed.is_empty() => {}
                Ok(changed) => {
                    warn!(
                        "cache {name:?} v{version}: {} golden file(s) modified (e.g. {}); retiring the version and rebuilding",
                        changed.len(),
                        changed[0].display()
                    );
                    if let Err(e) = self.store.retire(&name, &v) {
                        warn!("cache {name:?}: retire failed: {e}");
                    }
                    if self.decls.contains_key(&name) {
                        if let Err(e) = self.build(&name) {
                            warn!("cache {name:?}: rebuild failed: {e}");
                        }
                    }
                }
                Err(e) => warn!("cache {name:?} v{version}: verify failed: {e}"),
            }
        }
        let empty = HashSet::new();
        for name in self.decls.keys() {
            match self.store.gc(name, in_use.get(name).unwrap_or(&empty)) {
                Ok(gone) if !gone.is_empty() => info!(
                    "cache {name:?}: removed unused version(s) {}",
                    gone.iter()
                        .map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Ok(_) => {}
                Err(e) => warn!("cache {name:?}: gc failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn place_paths() {
        assert_eq!(place_path("").unwrap(), PathBuf::new());
        assert_eq!(
            place_path("node_modules").unwrap(),
            PathBuf::from("node_modules")
        );
        assert_eq!(place_path("a/b/").unwrap(), PathBuf::from("a/b"));
        for bad in [
            "/etc",
            "../x",
            "a/../../b",
            "a//b",
            "./a",
            "a\0b",
            "..",
            "a/.",
        ] {
            let e = place_path(bad).unwrap_err();
            assert!(e.to_string().contains("placeCacheAtPath"), "{bad:?}: {e}");
        }
    }
}
