//! What a cache declaration says, as typed values.

use std::path::PathBuf;
use std::str::FromStr;

use crate::cache::populate::Strategy;
use crate::error::{Error, Result};

/// How a cache volume is filled: a copy strategy or an overlay mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Auto,
    Fill(Strategy),
    Overlay,
    /// One btrfs snapshot of the golden subvolume (or of an owner variant).
    Snapshot,
}

impl FromStr for Choice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Choice> {
        match s {
            "auto" | "" => Ok(Choice::Auto),
            "overlay" => Ok(Choice::Overlay),
            "snapshot" => Ok(Choice::Snapshot),
            other => other.parse::<Strategy>().map(Choice::Fill).map_err(|_| {
                Error::invalid(
                    "strategy",
                    format!(
                        "{other:?}: expected hardlink, reflink, copy, overlay, snapshot or auto"
                    ),
                )
            }),
        }
    }
}

impl Choice {
    pub fn as_str(self) -> &'static str {
        match self {
            Choice::Auto => "auto",
            Choice::Overlay => "overlay",
            Choice::Snapshot => "snapshot",
            Choice::Fill(s) => s.as_str(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Dir(PathBuf),
    S3 {
        bucket: String,
        prefix: String,
        endpoint: String,
        region: String,
        credentials: PathBuf,
    },
}

/// Which pod namespaces may use a cache (`csi.storage.k8s.io/pod.namespace`).
/// A declaration that does not say is usable by no pod: a cache's content
/// may be private to a team, so sharing it is the admin's explicit choice
/// (`namespaces = *` for every namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// `namespaces = *`.
    Any,
    List(Vec<String>),
    /// No `namespaces` key: no pod may use the cache (the daemon logs one
    /// warning per such cache when it loads the declarations, and a publish
    /// to it is refused saying what to add).
    Undeclared,
}

impl Namespaces {
    pub fn allows(&self, ns: &str) -> bool {
        match self {
            Namespaces::Any => true,
            Namespaces::List(l) => l.iter().any(|n| n == ns),
            Namespaces::Undeclared => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDecl {
    pub name: String,
    pub source: Source,
    /// The default: the first of `strategies`.
    pub strategy: Choice,
    /// What a pod's `strategy` attribute may ask for.
    pub strategies: Vec<Choice>,
    pub namespaces: Namespaces,
    /// `trust_tenants_with_shared_inodes = true`: writable hardlink publishes are
    /// allowed, and every tenant can then rewrite what the others receive.
    pub trust_shared_inodes: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
    /// `max_variants`: how many owner variants (a copy of the version per
    /// uid/gid/mode/fsGroup that overlay pods ask for) a version may have.
    pub max_variants: u32,
}
