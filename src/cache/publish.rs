//! Publish and unpublish of cache volumes: the strategy chosen for a pod,
//! its tree filled (or its overlay mounted), restored after a reboot, and
//! moved to the trash on unpublish.

use std::ffi::CString;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use log::{info, warn};
use nix::errno::Errno;

use crate::cache::decl::{Choice, TRUST_KEY};
use crate::cache::golden::{VariantLimit, Version, OWNER_VARIANT_PREFIX};
use crate::cache::populate::{self, Owner, Strategy};
use crate::cache::request::CacheRequest;
use crate::cache::volume::{Caches, SHARED_VARIANT};
use crate::error::{Error, Result};
use crate::lifecycle::{CacheCopy, Filled};
use crate::sys::{self, btrfs, mount, mountinfo, mounts};

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

/// Whether `path` is the root of a btrfs subvolume (the golden store makes
/// its versions subvolumes where it is on btrfs).
fn is_subvolume(path: &Path) -> bool {
    sys::fs::open_dir(path).is_ok_and(|fd| btrfs::is_subvolume(fd.as_fd()).unwrap_or(false))
}

/// Put a writable snapshot of the subvolume `source` at `dest`, in place of
/// the empty directory there (made by the kubelet or `ensure_owned_dir`).
/// On disk when this returns: the snapshot ioctl commits its transaction.
fn snapshot_into(source: &Path, dest: &Path) -> Result<()> {
    let (Some(parent), Some(leaf)) = (dest.parent(), dest.file_name()) else {
        return Err(Error::invalid(
            "target_path",
            format!("{}: no parent", dest.display()),
        ));
    };
    let name = CString::new(leaf.as_bytes())
        .map_err(|_| Error::invalid("target_path", format!("{}: NUL byte", dest.display())))?;
    let pfd = sys::fs::open_dir(parent)?;
    match sys::fs::unlink_at(pfd.as_fd(), &name, true) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(Error::sys("rmdir before snapshot", dest, e)),
    }
    let sfd = sys::fs::open_dir(source)?;
    btrfs::snapshot(sfd.as_fd(), pfd.as_fd(), &name, false)
        .map_err(|e| Error::sys("btrfs snapshot", dest, e))
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
    /// The strategy used for `req` into `dest`, or why none can be. `auto` is snapshot
    /// where the golden version is a btrfs subvolume and a snapshot of the store's
    /// probe subvolume into `dest` works, else reflink where FICLONE from the store
    /// into `dest` works, else overlay. Hardlink shares inodes between pods, so it is
    /// allowed only when the pod cannot change them (a read-only publish), or when the
    /// declaration trusts its tenants with shared inodes. fs-verity is no substitute: it
    /// seals contents, but a root pod can still chmod, chown or set xattrs (file
    /// capabilities, ACLs) on a sealed inode.
    fn resolve(
        &self,
        req: &CacheRequest,
        golden: &Path,
        dest: &Path,
        readonly: bool,
    ) -> Result<Choice> {
        let name = &req.decl.name;
        let field = if req.requested {
            "volume_context.strategy".to_string()
        } else {
            format!("cache {name}: strategies")
        };
        match req.choice {
            Choice::Auto => {
                let probe = self.probe(dest)?;
                Ok(if probe.snapshot.is_ok() && is_subvolume(golden) {
                    Choice::Snapshot
                } else if probe.reflink.is_ok() {
                    Choice::Fill(Strategy::Reflink)
                } else {
                    Choice::Overlay
                })
            }
            Choice::Snapshot => {
                let why = match self.probe(dest)?.snapshot {
                    Err(e) => format!(
                        "a btrfs snapshot from the golden store into {} fails ({e})",
                        dest.display()
                    ),
                    Ok(()) if !is_subvolume(golden) => format!(
                        "golden version {} is not a btrfs subvolume (built by an older bindery, \
                         or where no subvolume could be created)",
                        golden.display()
                    ),
                    Ok(()) => return Ok(req.choice),
                };
                Err(Error::invalid(
                    field,
                    format!("snapshot: {why}; use reflink, overlay or copy"),
                ))
            }
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
                if is_subvolume(golden) {
                    return Err(Error::invalid(
                        field,
                        format!(
                            "hardlink: golden version {} is a btrfs subvolume (built while the \
                             cache's strategies did not name hardlink), and linkat out of a \
                             subvolume fails (EXDEV); `bindery cache build {name}` makes a version \
                             for hardlink, or use snapshot, reflink or copy",
                            golden.display()
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

    /// The overlay lower dir (and snapshot source) for `owner`: the golden version
    /// itself when the pod takes root's tree as it is, else a variant owned as asked
    /// (directories the pod can write in, copy-up keeps their owner and modes), built
    /// once per owner.
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
    pub fn publish(&self, req: &CacheRequest, target: &Path, readonly: bool) -> Result<Filled> {
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
        let choice = self.resolve(req, &golden, &dest, readonly)?;
        let mut overlay_lower = None;
        match choice {
            Choice::Overlay => {
                let lower = self.overlay_lower(name, &version, &req.owner)?;
                overlay_lower = Some(lower.clone());
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
            Choice::Snapshot => {
                let source = self.overlay_lower(name, &version, &req.owner)?;
                snapshot_into(&source, &dest)?;
                // The root directory as the other strategies make it for this owner.
                ensure_owned_dir(&dest, &req.owner)?;
                if req.owner != Owner::default() {
                    sys::fs::fsync(sys::fs::open_dir(&dest)?.as_fd(), &dest)?;
                }
                info!(
                    "cache {name:?} v{version}: snapshot of {} at {} in {:.1?}",
                    source.display(),
                    dest.display(),
                    started.elapsed()
                );
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
        Ok(Filled {
            version: version.as_str().to_string(),
            strategy: choice.as_str().to_string(),
            root: dest,
            overlay_lower,
        })
    }

    /// Where a copy's tree is (its target while it is not filled).
    fn root(c: &CacheCopy) -> &Path {
        c.filled.as_ref().map_or(&c.target, |f| &f.root)
    }

    /// The first thing a recorded publication lacks on the node now, in the
    /// order it is made: its tree at the cache root, the overlay mounted
    /// there, the read-only bind over it. Mount table and stat only: nothing
    /// is read inside a pod's tree.
    fn lack(c: &CacheCopy) -> Result<Option<Lack>> {
        let Some(f) = &c.filled else {
            return Ok(Some(Lack::Tree));
        };
        let root = f.root.as_path();
        if !fs::symlink_metadata(root).is_ok_and(|m| m.is_dir()) {
            return Ok(Some(Lack::Tree));
        }
        let here = mounts::lookup(root)?;
        let here = here.as_ref();
        if f.strategy == "overlay" && !here.is_some_and(|m| m.fs_type == "overlay") {
            return Ok(Some(Lack::Overlay));
        }
        if c.readonly && !here.is_some_and(|m| m.options.split(',').any(|o| o == "ro")) {
            return Ok(Some(Lack::ReadOnlyBind));
        }
        Ok(None)
    }

    /// What a recorded publication lacks on the node now, in words, or None
    /// when it is whole. A reboot takes every mount away while the record
    /// stays; a pod must then never be handed an empty directory as its
    /// cache.
    pub fn missing(&self, c: &CacheCopy) -> Option<String> {
        match Self::lack(c) {
            Ok(None) => None,
            Ok(Some(l)) => Some(l.describe(Self::root(c))),
            Err(e) => Some(e.to_string()),
        }
    }

    /// Make a recorded publication whole again from what is still on disk:
    /// mount its overlay again (over the pod's own upper dir, so its writes
    /// are kept) and its read-only bind. Ok only when it is whole; an error
    /// when the data itself is gone (the tree, the upper dir or the lower
    /// version): the caller then fills the volume anew.
    pub fn restore(&self, c: &CacheCopy) -> Result<()> {
        let root = Self::root(c);
        let cannot = |what: String| Error::Gone {
            path: root.to_path_buf(),
            what: format!("cannot restore: {what}"),
        };
        let mut lack = Self::lack(c)?;
        if lack == Some(Lack::Overlay) {
            let Some(lower) = c
                .filled
                .as_ref()
                .and_then(|f| f.overlay_lower.as_deref())
                .filter(|l| l.is_dir())
            else {
                return Err(cannot(
                    "the overlay's lower dir is not recorded or gone".into(),
                ));
            };
            let (upper, work) = Self::overlay_dirs(&c.target);
            if !upper.is_dir() || !work.is_dir() {
                return Err(cannot("the overlay's upper or work dir is gone".into()));
            }
            mount::overlay(lower, &upper, &work, root)?;
            lack = Self::lack(c)?;
        }
        if lack == Some(Lack::ReadOnlyBind) {
            mount::bind(root, root)?;
            mount::remount_bind_read_only(root)?;
            lack = Self::lack(c)?;
        }
        match lack {
            None => {
                self.usage.track(&c.target, root);
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
}
