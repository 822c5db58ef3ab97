//! Owner variants of a golden version: a copy made once per owner (uid,
//! gid, mode) for the pods whose files must belong to them, built under the
//! cache's lock, verified against a manifest of its own, collected when no
//! pod uses it.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Instant;

use log::{info, warn};

use super::*;

impl GoldenStore {
    /// Where variant `key` of `version` lives (whether or not it exists).
    pub fn variant_path(&self, name: &str, version: &Version, key: &str) -> PathBuf {
        self.root
            .join(name)
            .join(format!("{VARIANT_PREFIX}{version}-{key}"))
    }

    fn variant_manifest(&self, name: &str, version: &Version, key: &str) -> PathBuf {
        self.root
            .join(name)
            .join(META)
            .join(format!("{version}-{key}.manifest"))
    }

    /// Variant `key` of `version`, built once (under the cache's lock, so concurrent
    /// callers build it once): a copy of the version made with `strategy` (reflink or
    /// copy, never hardlink: a variant never shares inodes with the version) and owned
    /// as `owner` says. `key` must be made of `[A-Za-z0-9_-]`.
    pub fn variant(
        &self,
        name: &str,
        version: &Version,
        key: &str,
        strategy: Strategy,
        owner: &Owner,
        limit: VariantLimit,
    ) -> Result<PathBuf> {
        let path = self.variant_path(name, version, key);
        if path.is_dir() {
            return Ok(path);
        }
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            || strategy == Strategy::Hardlink
        {
            return Err(Error::invalid("variant", format!("bad variant {key:?}")));
        }
        let _lock = self.lock(name)?;
        if path.is_dir() {
            return Ok(path);
        }
        if let VariantLimit::Owners(max) = limit {
            let have = self
                .variants(name, version)?
                .iter()
                .filter(|k| k.starts_with(OWNER_VARIANT_PREFIX))
                .count();
            if have >= max as usize {
                return Err(Error::Exhausted {
                    what: format!("cache {name}: max_variants"),
                    reason: format!(
                        "version {version} already has {have} owner variant(s), each a copy of \
                         the cache, and max_variants is {max}; pods asking for another uid, gid, \
                         mode or fsGroup wait until one is collected (when no pod uses it), \
                         or the admin raises max_variants"
                    ),
                });
            }
        }
        let golden = self.path(name, version);
        if !golden.is_dir() {
            return Err(Error::Gone {
                path: golden,
                what: "golden version is gone".into(),
            });
        }
        let started = Instant::now();
        let dir = self.cache_dir(name)?;
        let tmp_name = format!("{TMP_PREFIX}{VARIANT_PREFIX}{version}-{key}");
        let tmp = dir.join(&tmp_name);
        let built = (|| {
            if tmp.exists() {
                remove_tree(&tmp)?;
            }
            create_tree(&dir, &tmp_name, self.subvolumes(name))?;
            populate_masked(&golden, &tmp, strategy, owner, self.threads, 0o7777)?;
            freeze_tree(&tmp)?;
            // Whole on disk before it is renamed into place, as a version is.
            fs::syncfs(fs::open_dir(&tmp)?.as_fd(), &tmp)?;
            Manifest::scan(&tmp)?.write_to(&self.variant_manifest(name, version, key))?;
            let dfd = fs::open_dir(&dir)?;
            fs::rename_at(
                dfd.as_fd(),
                OsStr::new(&tmp_name),
                dfd.as_fd(),
                path.file_name().unwrap_or_default(),
            )
            .map_err(|e| Error::sys("rename into place", &tmp, e))?;
            fs::fsync(dfd.as_fd(), &dir)
        })();
        if let Err(e) = built {
            let _ = remove_tree(&tmp);
            return Err(e);
        }
        info!(
            "cache {name}: variant {key} of version {version} built by {strategy} in {:.1?}",
            started.elapsed()
        );
        Ok(path)
    }

    /// Entries of a variant changed since it was built (empty: intact).
    pub fn verify_variant(
        &self,
        name: &str,
        version: &Version,
        key: &str,
        confirmed: &mut Confirmed,
    ) -> Result<Vec<PathBuf>> {
        Manifest::read_from(&self.variant_manifest(name, version, key))?
            .verify_with(&self.variant_path(name, version, key), confirmed)
    }

    /// Stop handing out a variant (it was tampered with): renamed aside for `gc`; pods
    /// that hold links into it keep them, the next caller builds a fresh one.
    pub fn drop_variant(&self, name: &str, version: &Version, key: &str) -> Result<()> {
        let _lock = self.lock(name)?;
        let dir = self.cache_dir(name)?;
        let from = self.variant_path(name, version, key);
        let to = dir.join(format!(
            "{TMP_PREFIX}dropped-{version}-{key}-{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::rename_path(&from, &to)?;
        let _ = fs::unlink_path(&self.variant_manifest(name, version, key), false);
        warn!("cache {name}: variant {key} of version {version} dropped");
        Ok(())
    }

    /// Remove the owner variants of `name` that no mount uses (`used`: version
    /// and key of every overlay lower layer on the node) and whose version is
    /// not pinned (a publish in flight may be about to mount one). Returns
    /// what was removed, as (version, key).
    pub fn gc_variants(
        &self,
        name: &str,
        used: &HashSet<(String, String)>,
    ) -> Result<Vec<(Version, String)>> {
        let _lock = self.lock(name)?;
        let dir = self.cache_dir(name)?;
        let mut removed = Vec::new();
        for v in self.versions(name)? {
            for key in self.variants(name, &v)? {
                if !key.starts_with(OWNER_VARIANT_PREFIX)
                    || used.contains(&(v.as_str().to_string(), key.clone()))
                {
                    continue;
                }
                {
                    // Checked and moved aside under the pins lock, as in gc.
                    let pins = lock_pins(&self.pins);
                    if pins.contains_key(&(name.to_string(), v.as_str().to_string())) {
                        continue;
                    }
                    self.variant_aside(name, &v, &key)?;
                }
                removed.push((v.clone(), key));
            }
        }
        for (v, key) in &removed {
            remove_tree(&dir.join(Self::variant_aside_name(v, key)))?;
            info!("cache {name}: removed unused variant {key} of version {v}");
        }
        Ok(removed)
    }

    /// Where a collected variant waits for its removal (a `.tmp-` name: a
    /// crash's leftover is removed by the next gc).
    fn variant_aside_name(version: &Version, key: &str) -> String {
        format!("{TMP_PREFIX}gc-{version}-{key}")
    }

    /// Move variant `key` of `version` out of the way (and drop its
    /// manifest), for removal: no new publish can find it from then on.
    pub(super) fn variant_aside(&self, name: &str, version: &Version, key: &str) -> Result<()> {
        let dir = self.cache_dir(name)?;
        fs::rename_path(
            &self.variant_path(name, version, key),
            &dir.join(Self::variant_aside_name(version, key)),
        )?;
        let _ = fs::unlink_path(&self.variant_manifest(name, version, key), false);
        Ok(())
    }

    /// Variants of `version` that exist, by key.
    pub fn variants(&self, name: &str, version: &Version) -> Result<Vec<String>> {
        let dir = self.cache_dir(name)?;
        let prefix = format!("{VARIANT_PREFIX}{version}-");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &dir, e)),
        };
        Ok(rd
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(&prefix).map(str::to_string))
            })
            .collect())
    }
}
