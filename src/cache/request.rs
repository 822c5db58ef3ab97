//! Cache volume requests: the attributes a pod may give, checked against the
//! admin's declaration (tenancy, strategies, ownership).

use std::collections::HashMap;
use std::path::PathBuf;

use crate::cache::decl::{CacheDecl, Choice, Loaded, Namespaces};
use crate::cache::populate::Owner;
use crate::error::{Error, Result};
use crate::mounter;

/// The volume context key the kubelet fills with the pod's namespace (podInfoOnMount).
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
/// The volume context key the kubelet fills with the pod's UID (podInfoOnMount).
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";

/// Volume attributes a cache volume may carry (plus the CO's own keys).
const ATTRS: &[&str] = &[
    "cache",
    "placeCacheAtPath",
    "strategy",
    "uid",
    "gid",
    "mode",
];

/// A validated cache publish request.
pub struct CacheRequest {
    pub decl: CacheDecl,
    pub place: PathBuf,
    pub choice: Choice,
    /// The choice came from the pod's `strategy` attribute (else the declaration's default).
    pub requested: bool,
    pub owner: Owner,
    pub fingerprint: String,
}

/// Keep an error message short: values quoted into it are cut.
pub(super) fn short(s: &str) -> String {
    if s.len() <= 300 {
        return s.to_string();
    }
    let mut end = 300;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
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
    if v.split('/')
        .any(|s| s.len() > crate::validate::MAX_COMPONENT)
    {
        return Err(Error::invalid(
            field,
            format!(
                "a component is longer than {} bytes",
                crate::validate::MAX_COMPONENT
            ),
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

impl Loaded {
    /// The declaration of cache `name`, or why a pod may not use it.
    pub fn get(&self, name: &str) -> Result<&CacheDecl> {
        if let Some(why) = self.broken.get(name) {
            return Err(Error::invalid(
                "volume_context.cache",
                format!(
                    "cache {:?} is disabled on this node: {}",
                    short(name),
                    short(why)
                ),
            ));
        }
        self.decls.get(name).ok_or_else(|| self.unknown(name))
    }

    /// The declared caches' names.
    pub fn names(&self) -> Vec<String> {
        self.decls.keys().cloned().collect()
    }

    fn unknown(&self, name: &str) -> Error {
        let names = self.names();
        Error::invalid(
            "volume_context.cache",
            format!(
                "{:?} is not declared on this node (declared: {})",
                short(name),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    short(&names.join(", "))
                }
            ),
        )
    }

    /// Validate a cache publish request's attributes: the cache, the pod's namespace
    /// against the declaration's `namespaces`, the strategy against its `strategies`.
    ///
    /// `pod_dir` is the pod directory the target path is in (`<uid>` of
    /// `<kubelet-dir>/pods/<uid>/volumes/…`). An inline volume's attributes come
    /// from the pod's own spec; only with podInfoOnMount does the kubelet replace
    /// the `csi.storage.k8s.io/pod.*` keys with the truth. So where the namespace
    /// matters, the pod UID must be there and name the pod whose directory the
    /// kubelet publishes into: a pod author cannot know its pod's UID when
    /// writing the spec, and a driver object without podInfoOnMount is refused
    /// instead of trusting a namespace the pod chose.
    pub fn request(
        &self,
        attrs: &HashMap<String, String>,
        mount_group: &str,
        readonly: bool,
        pod_dir: Option<&str>,
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
                    short(&unknown.join(", "))
                ),
            ));
        }
        let name = attrs.get("cache").map(String::as_str).unwrap_or("");
        let decl = self.get(name)?.clone();
        if decl.namespaces == Namespaces::Undeclared {
            return Err(Error::invalid(
                "volume_context.cache",
                format!(
                    "cache {name:?} declares no namespaces: the node's admin must add \
                     `namespaces = …` (or `*`) to its declaration"
                ),
            ));
        }
        if let Namespaces::List(_) = decl.namespaces {
            let field = format!("volume_context.{POD_NAMESPACE}");
            match attrs.get(POD_NAMESPACE) {
                None => {
                    return Err(Error::invalid(
                        field,
                        format!(
                            "is required: cache {name:?} is limited to some namespaces \
                             (the CSIDriver needs podInfoOnMount: true)"
                        ),
                    ))
                }
                Some(ns) if !decl.namespaces.allows(ns) => {
                    return Err(Error::invalid(
                        field,
                        format!("namespace {:?} may not use cache {name:?}", short(ns)),
                    ))
                }
                Some(_) => {}
            }
            let field = format!("volume_context.{POD_UID}");
            match (attrs.get(POD_UID), pod_dir) {
                (Some(uid), Some(dir)) if uid == dir => {}
                (None, _) => {
                    return Err(Error::invalid(
                        field,
                        format!(
                            "is required: cache {name:?} is limited to some namespaces, and \
                             only the kubelet's pod information can say which (the CSIDriver \
                             needs podInfoOnMount: true)"
                        ),
                    ))
                }
                (Some(_), _) => {
                    return Err(Error::invalid(
                        field,
                        "does not name the pod whose directory target_path is in: pod \
                         information must come from the kubelet (podInfoOnMount: true), \
                         not from the pod's volumeAttributes",
                    ))
                }
            }
        }
        let place = place_path(
            attrs
                .get("placeCacheAtPath")
                .map(String::as_str)
                .unwrap_or(""),
        )?;
        let requested = attrs.contains_key("strategy");
        let choice = match attrs.get("strategy") {
            Some(s) => {
                let c = s.parse::<Choice>().map_err(|e| match e {
                    Error::InvalidField { reason, .. } => {
                        Error::invalid("volume_context.strategy", short(&reason))
                    }
                    other => other,
                })?;
                if !decl.strategies.contains(&c) {
                    return Err(Error::invalid(
                        "volume_context.strategy",
                        format!(
                            "{} is not allowed for cache {name:?} (allowed: {})",
                            c.as_str(),
                            decl.strategies
                                .iter()
                                .map(|c| c.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                c
            }
            None => decl.strategy,
        };
        let group = if mount_group.is_empty() {
            None
        } else {
            Some(mount_group.parse::<u32>().map_err(|_| {
                Error::invalid(
                    "volume_capability.mount.volume_mount_group",
                    format!("{:?} is not a numeric gid", short(mount_group)),
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
        // fsGroup (volume_mount_group) owns the tree, as the kubelet does for its volumes.
        let owner = Owner {
            uid: attr_u32(attrs, "uid", 10)?.or(decl.uid),
            gid: group.or(attr_u32(attrs, "gid", 10)?).or(decl.gid),
            mode,
            group_writable: group.is_some(),
        };
        let fingerprint = format!(
            "cache={};place={};strategy={};owner={:?}/{:?}/{:?}/{};ro={readonly}",
            decl.name,
            place.display(),
            choice.as_str(),
            owner.uid,
            owner.gid,
            owner.mode,
            owner.group_writable
        );
        Ok(CacheRequest {
            decl,
            place,
            choice,
            requested,
            owner,
            fingerprint,
        })
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
