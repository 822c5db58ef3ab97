//! Upkeep of the golden store: content checks of the versions pods share
//! inodes with (a tampered version is retired and rebuilt) and collection
//! of versions nothing uses.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use log::{info, warn};

use crate::cache::golden::Version;
use crate::cache::volume::{lock, Caches, SHARED_VARIANT};
use crate::error::Result;

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
                    if self.decls.contains_key(&name) {
                        if let Err(e) = self.build_once(&name) {
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
        }
    }
}
