//! Builds of a cache's golden version: single-flight (every caller of one
//! build waits for it and gets its result, error code included).

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;
use std::time::Instant;

use log::{info, warn};

use crate::cache::decl::{self, Source};
use crate::cache::golden::pin::Pin;
use crate::cache::golden::Version;
use crate::cache::volume::{lock, Caches, Flight};
use crate::error::{Error, Result};
use crate::metrics;
use crate::mounter::{self, VolumeFiles};

/// The error every caller of one build gets: the build's own, with its
/// code (a source that is not there is INVALID_ARGUMENT for every pod that
/// waited, not only for the one that started the build).
fn build_failed(name: &str, cause: Arc<Error>) -> Error {
    Error::BuildFailed {
        cache: name.to_string(),
        cause,
    }
}

impl Caches {
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
}
