//! Upkeep of the golden store: content checks of the versions pods share
//! inodes with (a tampered version is retired and rebuilt) and collection
//! of versions and owner variants nothing uses. "Uses" is read from the
//! records AND from the mount table: an overlay whose lower layer is a
//! version (or a variant of one) keeps it, even when no readable record
//! names that overlay any more.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use log::{info, warn};

use crate::cache::golden::Version;
use crate::cache::volume::{lock, Caches, SHARED_VARIANT};
use crate::error::Result;
use crate::sys::mountinfo::{self, MountInfo};

/// What the mounts in `table` use of the store below `root`: the lower
/// layers of overlays, each a version or a variant of one.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Mounted {
    /// Versions in use, per cache (a variant in use keeps its version).
    pub versions: HashMap<String, HashSet<String>>,
    /// Variants in use, per cache, as (version, key).
    pub variants: HashMap<String, HashSet<(String, String)>>,
}

pub(super) fn mounted_layers(
    root: &Path,
    table: &[MountInfo],
    layer_at: impl Fn(&Path) -> Option<(String, Version, Option<String>)>,
) -> Mounted {
    let mut out = Mounted::default();
    for m in table.iter().filter(|m| m.fs_type == "overlay") {
        for lower in m.option_values("lowerdir") {
            for layer in lower.split(':').map(Path::new) {
                if !layer.starts_with(root) {
                    continue;
                }
                let Some((name, v, key)) = layer_at(layer) else {
                    continue;
                };
                let v = v.as_str().to_string();
                if let Some(key) = key {
                    out.variants
                        .entry(name.clone())
                        .or_default()
                        .insert((v.clone(), key));
                }
                out.versions.entry(name).or_default().insert(v);
            }
        }
    }
    out
}

impl Caches {
    /// Whether a golden version was found modified and retired.
    pub fn is_retired(&self, name: &str, version: &str) -> bool {
        Version::parse(version).is_some_and(|v| self.store.is_retired(name, &v))
    }

    fn verify_one(&self, name: &str, v: &Version, variant: Option<&str>) -> Result<Vec<PathBuf>> {
        let key = (
            name.to_string(),
            v.as_str().to_string(),
            variant.unwrap_or("").to_string(),
        );
        let mut confirmed = lock(&self.confirmed).remove(&key).unwrap_or_default();
        let r = match variant {
            None => self.store.verify_with(name, v, &mut confirmed),
            Some(k) => self.store.verify_variant(name, v, k, &mut confirmed),
        };
        lock(&self.confirmed).insert(key, confirmed);
        r
    }

    /// Periodic upkeep: verify the content of current versions and of the versions
    /// that hardlink publications share (a same-size write with the mtime restored is
    /// caught by content): a tampered golden version is retired and rebuilt, a
    /// tampered shared variant dropped. Then delete versions that are neither
    /// current, nor in `in_use` (live publications), nor pinned.
    pub fn maintain(
        &self,
        in_use: &HashMap<String, HashSet<String>>,
        hardlinked: &HashSet<(String, String)>,
    ) {
        let mut in_use = in_use.clone();
        let mounted = match mountinfo::read_self() {
            Ok(table) => mounted_layers(self.store.root(), &table, |p| self.store.layer_at(p)),
            Err(e) => {
                // Without the mount table nothing may be collected.
                warn!("cache upkeep: {e}; no version is collected this time");
                return;
            }
        };
        for (name, versions) in &mounted.versions {
            in_use
                .entry(name.clone())
                .or_default()
                .extend(versions.iter().cloned());
        }
        let mut to_check: HashSet<(String, String)> = hardlinked.clone();
        for name in self.declared.decls.keys() {
            if let Ok(Some(v)) = self.store.current(name) {
                to_check.insert((name.clone(), v.as_str().to_string()));
            }
        }
        for (name, version) in to_check {
            let Some(v) = Version::parse(&version) else {
                continue;
            };
            if self.store.path(&name, &v).is_dir()
                && self.store.variant_path(&name, &v, SHARED_VARIANT).is_dir()
            {
                match self.verify_one(&name, &v, Some(SHARED_VARIANT)) {
                    Ok(changed) if changed.is_empty() => {}
                    Ok(changed) => {
                        warn!(
                            "cache {name:?} v{version}: {} file(s) of the shared hardlink copy modified (e.g. {}); new hardlink pods get a fresh copy",
                            changed.len(),
                            changed[0].display()
                        );
                        if let Err(e) = self.store.drop_variant(&name, &v, SHARED_VARIANT) {
                            warn!("cache {name:?}: dropping the shared copy failed: {e}");
                        }
                    }
                    Err(e) => warn!("cache {name:?} v{version}: verify failed: {e}"),
                }
            }
            if self.store.is_retired(&name, &v) {
                continue;
            }
            match self.verify_one(&name, &v, None) {
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
                    if self.declared.decls.contains_key(&name) {
                        if let Err(e) = self.build_once(&name) {
                            warn!("cache {name:?}: rebuild failed: {e}");
                        }
                    }
                }
                Err(e) => warn!("cache {name:?} v{version}: verify failed: {e}"),
            }
        }
        let empty = HashSet::new();
        for name in self.declared.decls.keys() {
            match self.store.gc(name, in_use.get(name).unwrap_or(&empty)) {
                Ok(gone) if !gone.is_empty() => {
                    lock(&self.confirmed)
                        .retain(|(n, v, _), _| n != name || !gone.iter().any(|g| g.as_str() == v));
                    info!(
                        "cache {name:?}: removed unused version(s) {}",
                        gone.iter()
                            .map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
                Ok(_) => {}
                Err(e) => warn!("cache {name:?}: gc failed: {e}"),
            }
            let empty = HashSet::new();
            let used = mounted.variants.get(name).unwrap_or(&empty);
            if let Err(e) = self.store.gc_variants(name, used) {
                warn!("cache {name:?}: variant gc failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::golden::GoldenStore;

    #[test]
    fn overlay_lower_layers_keep_their_versions() {
        let store = GoldenStore::new(Path::new("/g"));
        let v1 = "00000000000000000001";
        let v2 = "00000000000000000002";
        let text = format!(
            "1 0 8:1 / / rw - ext4 /dev/sda rw\n\
             2 1 0:50 / /pods/a rw - overlay overlay rw,lowerdir=/g/c/{v1},upperdir=/u,workdir=/w\n\
             3 1 0:51 / /pods/b rw - overlay overlay rw,lowerdir=/g/d/.v-{v2}-o-1-x-x-n,upperdir=/u,workdir=/w\n\
             4 1 0:52 / /pods/c rw - overlay overlay rw,lowerdir=/elsewhere/c/{v2},upperdir=/u,workdir=/w\n\
             5 1 0:53 / /pods/d rw - overlay overlay rw,lowerdir=/g/c/not-a-version,upperdir=/u,workdir=/w\n\
             6 1 0:54 / /pods/e rw - tmpfs tmpfs rw,lowerdir=/g/c/{v2}\n"
        );
        let table = mountinfo::parse(text.as_bytes());
        let got = mounted_layers(store.root(), &table, |p| store.layer_at(p));
        let versions: HashMap<String, HashSet<String>> = [
            ("c".to_string(), [v1.to_string()].into()),
            ("d".to_string(), [v2.to_string()].into()),
        ]
        .into();
        let variants: HashMap<String, HashSet<(String, String)>> = [(
            "d".to_string(),
            [(v2.to_string(), "o-1-x-x-n".to_string())].into(),
        )]
        .into();
        assert_eq!(got, Mounted { versions, variants });
    }
}
