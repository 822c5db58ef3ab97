//! The mounter kinds, and which keys of a volume's parameters are the CO's
//! own rather than the volume's.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3fs,
    Rclone,
    Fuse,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::S3fs => "s3fs",
            Kind::Rclone => "rclone",
            Kind::Fuse => "fuse",
        }
    }
}

/// Keys the CO adds to volume contexts on its own (pod info on mount,
/// ephemeral marker, provisioner metadata): accepted and ignored.
pub fn is_co_key(key: &str) -> bool {
    key.starts_with("csi.storage.k8s.io/") || key.starts_with("storage.kubernetes.io/")
}

/// The mounter kind recorded in already validated parameters.
pub fn kind_of(params: &HashMap<String, String>) -> Kind {
    match params.get("mounter").map(String::as_str) {
        Some("rclone") => Kind::Rclone,
        Some("fuse") => Kind::Fuse,
        _ => Kind::S3fs,
    }
}
