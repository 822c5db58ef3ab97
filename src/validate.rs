//! Request validation shared by every RPC, in the order the design fixes:
//! required fields first (before any lookup), then capability / access mode,
//! then paths, then state (checked by the callers under the volume guard).

use std::path::{Path, PathBuf};

use crate::error::{quoted, Error, Result};
use crate::proto::csi::{VolumeCapability, VolumeCapability_AccessMode_Mode as AccessMode};

/// `field` must be non-empty.
pub fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str> {
    if value.is_empty() {
        Err(Error::MissingField(field))
    } else {
        Ok(value)
    }
}

/// A required message field (protobuf `has_x()`).
pub fn required_msg<'a, T>(field: &'static str, present: bool, value: &'a T) -> Result<&'a T> {
    if present {
        Ok(value)
    } else {
        Err(Error::MissingField(field))
    }
}

/// Longest volume id accepted. Ids name state files through a hash, so the
/// bound is about logs and messages, not file names; static PVs use
/// `bucket/prefix` ids, which the 1 KiB prefix limit keeps below it.
pub const MAX_VOLUME_ID: usize = 1024;
/// Longest node path (PATH_MAX less its NUL).
pub const MAX_PATH: usize = 4095;
/// Longest path component (NAME_MAX).
pub const MAX_COMPONENT: usize = 255;

/// Volume ids end up in file names (state files, credential files) and in
/// logs: refuse control characters and absurd lengths up front.
pub fn volume_id(id: &str) -> Result<&str> {
    required("volume_id", id)?;
    if id.len() > MAX_VOLUME_ID {
        return Err(Error::invalid(
            "volume_id",
            format!("{} bytes long, at most {MAX_VOLUME_ID} allowed", id.len()),
        ));
    }
    if id.chars().any(|c| c.is_control()) {
        return Err(Error::invalid("volume_id", "contains control characters"));
    }
    Ok(id)
}

/// The volume must be used as a filesystem (bindery has no block volumes) with
/// a known access mode.
pub fn capability(field: &'static str, cap: &VolumeCapability) -> Result<()> {
    if cap.has_block() {
        return Err(Error::Unsupported {
            field,
            reason: "block access is not supported, use a mount volume".into(),
        });
    }
    if !cap.has_mount() {
        return Err(Error::invalid(
            format!("{field}.access_type"),
            "must be mount",
        ));
    }
    if !cap.has_access_mode() || cap.get_access_mode().get_mode() == AccessMode::UNKNOWN {
        return Err(Error::invalid(
            format!("{field}.access_mode"),
            "is required",
        ));
    }
    Ok(())
}

/// Access modes under which a publish must be read-only.
pub fn read_only_mode(cap: &VolumeCapability) -> bool {
    matches!(
        cap.get_access_mode().get_mode(),
        AccessMode::SINGLE_NODE_READER_ONLY | AccessMode::MULTI_NODE_READER_ONLY
    )
}

/// A node path from the CO: absolute, no `.`/`..` components, within
/// PATH_MAX and NAME_MAX (refused here, before any syscall sees it), and
/// strictly below the kubelet dir (the only tree the kubelet hands to drivers).
pub fn node_path(field: &'static str, value: &str, kubelet_dir: &Path) -> Result<PathBuf> {
    required(field, value)?;
    if value.len() > MAX_PATH {
        return Err(Error::invalid(
            field,
            format!("{} bytes long, at most {MAX_PATH} allowed", value.len()),
        ));
    }
    if let Some(long) = value.split('/').find(|seg| seg.len() > MAX_COMPONENT) {
        return Err(Error::invalid(
            field,
            format!(
                "component {} is longer than {MAX_COMPONENT} bytes",
                quoted(long)
            ),
        ));
    }
    if value.contains('\0') {
        return Err(Error::invalid(field, "contains a NUL byte"));
    }
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err(Error::invalid(
            field,
            format!("{} is not absolute", quoted(value)),
        ));
    }
    // Path::components() silently drops `.`: look at the raw segments.
    if value.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(Error::invalid(
            field,
            format!("{} must not contain '.' or '..' components", quoted(value)),
        ));
    }
    // components() drops trailing and repeated slashes: compare normalised.
    let clean: PathBuf = path.components().collect();
    if clean == kubelet_dir || !clean.starts_with(kubelet_dir) {
        return Err(Error::invalid(
            field,
            format!(
                "{} is not below the kubelet dir {}",
                quoted(value),
                kubelet_dir.display()
            ),
        ));
    }
    Ok(clean)
}

/// The pod directory a (validated) target path is in: `<uid>` of
/// `<kubelet-dir>/pods/<uid>/volumes/…`, where the kubelet publishes pods'
/// volumes. None for any other path.
pub fn pod_dir<'p>(target: &'p Path, kubelet_dir: &Path) -> Option<&'p str> {
    let mut parts = target.strip_prefix(kubelet_dir).ok()?.components();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(pods), Some(uid), Some(volumes))
            if pods.as_os_str() == "pods" && volumes.as_os_str() == "volumes" =>
        {
            uid.as_os_str().to_str()
        }
        _ => None,
    }
}

/// S3 bucket names: 3–63 of [a-z0-9.-]; refuse anything else before it
/// reaches a command line.
pub fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
}

/// Prefixes: relative key paths without empty, `.` or `..` segments.
pub fn valid_prefix(p: &str) -> bool {
    p.is_empty()
        || (p.len() <= 512
            && p.split('/').all(|s| {
                !s.is_empty()
                    && s != "."
                    && s != ".."
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.=+@".contains(c))
            }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::csi::{
        VolumeCapability_AccessMode, VolumeCapability_BlockVolume, VolumeCapability_MountVolume,
    };

    fn cap(mode: AccessMode, mount: bool) -> VolumeCapability {
        let mut c = VolumeCapability::new();
        if mount {
            c.set_mount(VolumeCapability_MountVolume::new());
        } else {
            c.set_block(VolumeCapability_BlockVolume::new());
        }
        let mut m = VolumeCapability_AccessMode::new();
        m.set_mode(mode);
        c.set_access_mode(m);
        c
    }

    #[test]
    fn required_fields() {
        assert!(matches!(
            required("volume_id", ""),
            Err(Error::MissingField("volume_id"))
        ));
        assert_eq!(required("volume_id", "v").unwrap(), "v");
        assert!(volume_id("a\nb").is_err());
        assert!(volume_id(&"x".repeat(2000)).is_err());
        assert!(volume_id("bucket/prefix").is_ok());
    }

    #[test]
    fn capabilities() {
        assert!(capability(
            "volume_capability",
            &cap(AccessMode::SINGLE_NODE_WRITER, true)
        )
        .is_ok());
        let e = capability(
            "volume_capability",
            &cap(AccessMode::SINGLE_NODE_WRITER, false),
        )
        .unwrap_err();
        assert_eq!(e.code(), grpcio::RpcStatusCode::INVALID_ARGUMENT);
        assert!(capability("volume_capability", &cap(AccessMode::UNKNOWN, true)).is_err());
        assert!(capability("volume_capability", &VolumeCapability::new()).is_err());
        assert!(read_only_mode(&cap(
            AccessMode::MULTI_NODE_READER_ONLY,
            true
        )));
        assert!(!read_only_mode(&cap(
            AccessMode::MULTI_NODE_MULTI_WRITER,
            true
        )));
    }

    #[test]
    fn pod_dirs() {
        let k = Path::new("/var/lib/kubelet");
        let t = Path::new("/var/lib/kubelet/pods/0f9c-uid/volumes/kubernetes.io~csi/v/mount");
        assert_eq!(pod_dir(t, k), Some("0f9c-uid"));
        for other in [
            "/var/lib/kubelet/pods/0f9c-uid",
            "/var/lib/kubelet/pods/0f9c-uid/plugins/x",
            "/var/lib/kubelet/plugins/pods/u/volumes/x",
            "/elsewhere/pods/u/volumes/x",
        ] {
            assert_eq!(pod_dir(Path::new(other), k), None, "{other}");
        }
    }

    #[test]
    fn node_paths() {
        let k = Path::new("/var/lib/kubelet");
        let ok = node_path("target_path", "/var/lib/kubelet/pods/x/volumes/y/mount/", k).unwrap();
        assert_eq!(ok, PathBuf::from("/var/lib/kubelet/pods/x/volumes/y/mount"));
        for bad in [
            "relative/path",
            "/var/lib/kubelet/../../etc",
            "/var/lib/kubelet/./x",
            "/etc/passwd",
            "/var/lib/kubeletx/y",
            "/var/lib/kubelet",
            "/var/lib/kubelet/a\0b",
        ] {
            let e = node_path("target_path", bad, k).unwrap_err();
            assert!(e.to_string().starts_with("target_path"), "{bad}: {e}");
            assert_eq!(e.code(), grpcio::RpcStatusCode::INVALID_ARGUMENT);
        }
        assert!(matches!(
            node_path("target_path", "", k),
            Err(Error::MissingField("target_path"))
        ));
        let long_component = format!("/var/lib/kubelet/pods/{}/x", "a".repeat(256));
        let long_path = format!("/var/lib/kubelet/{}", "abcdefgh/".repeat(500));
        for bad in [long_component, long_path] {
            let e = node_path("target_path", &bad, k).unwrap_err();
            assert_eq!(e.code(), grpcio::RpcStatusCode::INVALID_ARGUMENT);
            assert!(e.to_string().len() < 300, "{e}");
        }
    }
}
