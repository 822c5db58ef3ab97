//! The one error type of bindery and its one mapping to gRPC status codes.
//!
//! Every variant says what failed and carries the field, path or errno that
//! explains it. Messages never contain secrets: variants that could carry
//! user-provided text only carry field *names* or paths, and mounter output
//! is masked before it is stored here (see `mounter::mask_secrets`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use grpcio::RpcStatusCode;
use nix::errno::Errno;

#[derive(Debug)]
pub enum Error {
    /// A required request field is empty or absent.
    MissingField(&'static str),
    /// A field is present but its value is not acceptable.
    InvalidField { field: String, reason: String },
    /// The requested volume capability (access type or mode) is not supported.
    Unsupported { field: &'static str, reason: String },
    /// A capacity range this plugin cannot satisfy.
    OutOfRange(String),
    /// The volume is not known to this node.
    VolumeNotFound(String),
    /// Some other named object (a cache, a snapshot, a path) does not exist.
    NotFound { what: &'static str, name: String },
    /// The call violates the volume lifecycle (e.g. publish before stage).
    Precondition { volume: String, reason: String },
    /// The call conflicts with what already exists (e.g. same target, different flags).
    AlreadyExists { volume: String, reason: String },
    /// Another long operation is in flight on the volume; the CO retries.
    Aborted { volume: String, op: &'static str },
    /// A method this build does not implement.
    Unimplemented(&'static str),
    /// A system call failed.
    Sys {
        op: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    /// A file or process I/O operation failed.
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A mounter process failed to produce a working mount.
    Mounter { volume: String, reason: String },
    /// The volume's mount cannot serve right now (its mounter died and is
    /// being replaced): the CO retries, and the health loop heals meanwhile.
    NotServing { volume: String, reason: String },
    /// A record of the node's state (a volume's or the controller's)
    /// could not be encoded or decoded.
    Record { path: PathBuf, reason: String },
    /// A file the node wrote itself (a manifest, a kernel file it reads)
    /// does not say what it must: its line or field is named.
    Corrupt { path: PathBuf, reason: String },
    /// What the call works on changed while it ran (a bind just made is
    /// gone, a directory moved, a golden version collected, a path renamed
    /// during its walk): nothing was done that a retry does not redo.
    Changed { path: PathBuf, what: String },
    /// What the node's records promise is no longer on disk (a golden
    /// version, an overlay's dirs): the caller fills the volume anew.
    Gone { path: PathBuf, what: String },
    /// Something the call may not touch is in its way (a mount point
    /// inside a tree to remove).
    InTheWay { path: PathBuf, what: String },
    /// A transition the volume lifecycle does not allow: a bug, refused
    /// before anything was written.
    IllegalTransition { volume: String, step: String },
    /// A build of cache `cache` failed; every caller that waited for the
    /// same build gets the same cause, with its code.
    BuildFailed { cache: String, cause: Arc<Error> },
    /// A declared limit is reached (`what` names it): nothing was changed.
    Exhausted { what: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn sys(op: &'static str, path: impl AsRef<Path>, errno: Errno) -> Self {
        Error::Sys {
            op,
            path: path.as_ref().to_path_buf(),
            errno,
        }
    }

    pub fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn precondition(volume: &str, reason: impl Into<String>) -> Self {
        Error::Precondition {
            volume: volume.to_string(),
            reason: reason.into(),
        }
    }

    pub fn exists(volume: &str, reason: impl Into<String>) -> Self {
        Error::AlreadyExists {
            volume: volume.to_string(),
            reason: reason.into(),
        }
    }

    pub fn not_serving(volume: &str, reason: impl Into<String>) -> Self {
        Error::NotServing {
            volume: volume.to_string(),
            reason: reason.into(),
        }
    }

    pub fn mounter(volume: &str, reason: impl Into<String>) -> Self {
        Error::Mounter {
            volume: volume.to_string(),
            reason: reason.into(),
        }
    }

    /// The errno behind a system error, if there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Sys { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }

    /// The one mapping from errors to gRPC status codes. Exhaustive on purpose:
    /// a new variant does not compile until someone decides its code.
    pub fn code(&self) -> RpcStatusCode {
        match self {
            Error::MissingField(_) | Error::InvalidField { .. } => RpcStatusCode::INVALID_ARGUMENT,
            Error::Unsupported { .. } => RpcStatusCode::INVALID_ARGUMENT,
            Error::OutOfRange(_) => RpcStatusCode::OUT_OF_RANGE,
            Error::VolumeNotFound(_) | Error::NotFound { .. } => RpcStatusCode::NOT_FOUND,
            Error::Precondition { .. } => RpcStatusCode::FAILED_PRECONDITION,
            Error::AlreadyExists { .. } => RpcStatusCode::ALREADY_EXISTS,
            Error::Aborted { .. } => RpcStatusCode::ABORTED,
            Error::NotServing { .. } => RpcStatusCode::UNAVAILABLE,
            Error::Unimplemented(_) => RpcStatusCode::UNIMPLEMENTED,
            Error::Exhausted { .. } => RpcStatusCode::RESOURCE_EXHAUSTED,
            Error::Changed { .. } => RpcStatusCode::UNAVAILABLE,
            Error::InTheWay { .. } => RpcStatusCode::FAILED_PRECONDITION,
            Error::BuildFailed { cause, .. } => cause.code(),
            Error::Sys { .. }
            | Error::Io { .. }
            | Error::Mounter { .. }
            | Error::Record { .. }
            | Error::Corrupt { .. }
            | Error::Gone { .. }
            | Error::IllegalTransition { .. } => RpcStatusCode::INTERNAL,
        }
    }
}

/// The name of a gRPC status code, as a metric label ("OK", "NOT_FOUND").
pub fn code_name(code: RpcStatusCode) -> &'static str {
    const NAMES: [(RpcStatusCode, &str); 17] = [
        (RpcStatusCode::OK, "OK"),
        (RpcStatusCode::CANCELLED, "CANCELLED"),
        (RpcStatusCode::UNKNOWN, "UNKNOWN"),
        (RpcStatusCode::INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (RpcStatusCode::DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
        (RpcStatusCode::NOT_FOUND, "NOT_FOUND"),
        (RpcStatusCode::ALREADY_EXISTS, "ALREADY_EXISTS"),
        (RpcStatusCode::PERMISSION_DENIED, "PERMISSION_DENIED"),
        (RpcStatusCode::RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"),
        (RpcStatusCode::FAILED_PRECONDITION, "FAILED_PRECONDITION"),
        (RpcStatusCode::ABORTED, "ABORTED"),
        (RpcStatusCode::OUT_OF_RANGE, "OUT_OF_RANGE"),
        (RpcStatusCode::UNIMPLEMENTED, "UNIMPLEMENTED"),
        (RpcStatusCode::INTERNAL, "INTERNAL"),
        (RpcStatusCode::UNAVAILABLE, "UNAVAILABLE"),
        (RpcStatusCode::DATA_LOSS, "DATA_LOSS"),
        (RpcStatusCode::UNAUTHENTICATED, "UNAUTHENTICATED"),
    ];
    NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or("UNKNOWN", |(_, n)| n)
}

/// Longest message an error renders to. gRPC C-core clients refuse status
/// messages over 16 KiB (RESOURCE_EXHAUSTED, losing the real code), and a
/// message is for a human: every error is capped here, in one place.
pub const MAX_MESSAGE: usize = 1024;

/// Longest user-provided value quoted in a message.
pub const MAX_QUOTED: usize = 64;

/// `value` quoted for a message, cut to MAX_QUOTED bytes (at a character
/// boundary) with its full length noted. Never use it for a secret.
pub fn quoted(value: &str) -> String {
    if value.len() <= MAX_QUOTED {
        return format!("{value:?}");
    }
    let mut end = MAX_QUOTED;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &value[..end], value.len())
}

/// Cut `text` to at most `max` bytes at a character boundary, saying so.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    const MARK: &str = "... (truncated)";
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&truncate(&self.render(), MAX_MESSAGE))
    }
}

impl Error {
    /// The full, uncapped message (Display caps it).
    fn render(&self) -> String {
        match self {
            Error::MissingField(field) => format!("{field} is required"),
            Error::InvalidField { field, reason } => format!("{field}: {reason}"),
            Error::Unsupported { field, reason } => format!("{field}: unsupported: {reason}"),
            Error::OutOfRange(why) => format!("capacity_range: {why}"),
            Error::VolumeNotFound(id) => format!("volume {} not found on this node", quoted(id)),
            Error::NotFound { what, name } => format!("{what} {} not found", quoted(name)),
            Error::Precondition { volume, reason } => {
                format!("volume {}: {reason}", quoted(volume))
            }
            Error::AlreadyExists { volume, reason } => {
                format!("volume {}: {reason}", quoted(volume))
            }
            Error::Aborted { volume, op } => format!(
                "volume {}: {op} already in progress, retry later",
                quoted(volume)
            ),
            Error::Unimplemented(method) => format!("{method} is not implemented by bindery"),
            Error::Sys { op, path, errno } => {
                format!("{op} {}: {} ({errno})", path.display(), errno.desc())
            }
            Error::Io { op, path, source } => format!("{op} {}: {source}", path.display()),
            Error::Mounter { volume, reason } => {
                format!("volume {}: mount failed: {reason}", quoted(volume))
            }
            Error::NotServing { volume, reason } => {
                format!("volume {}: not serving: {reason}; retry", quoted(volume))
            }
            Error::Record { path, reason } => format!("state record {}: {reason}", path.display()),
            Error::Corrupt { path, reason } => format!("{}: {reason}", path.display()),
            Error::Changed { path, what } => format!("{}: {what}; retry", path.display()),
            Error::Gone { path, what } => format!("{}: {what}", path.display()),
            Error::InTheWay { path, what } => format!("{}: {what}", path.display()),
            Error::IllegalTransition { volume, step } => {
                format!("volume {}: illegal lifecycle step {step}", quoted(volume))
            }
            Error::BuildFailed { cache, cause } => {
                format!("cache {}: build failed: {cause}", quoted(cache))
            }
            Error::Exhausted { what, reason } => format!("{what}: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        assert_eq!(
            Error::MissingField("volume_id").code(),
            RpcStatusCode::INVALID_ARGUMENT
        );
        assert_eq!(
            Error::VolumeNotFound("v".into()).code(),
            RpcStatusCode::NOT_FOUND
        );
        assert_eq!(
            Error::precondition("v", "not staged").code(),
            RpcStatusCode::FAILED_PRECONDITION
        );
        assert_eq!(
            Error::exists("v", "other flags").code(),
            RpcStatusCode::ALREADY_EXISTS
        );
        assert_eq!(
            Error::Aborted {
                volume: "v".into(),
                op: "NodeStageVolume"
            }
            .code(),
            RpcStatusCode::ABORTED
        );
        assert_eq!(
            Error::not_serving("v", "mounter process 7 is gone").code(),
            RpcStatusCode::UNAVAILABLE
        );
        assert_eq!(
            Error::Exhausted {
                what: "cache c: max_variants".into(),
                reason: "2 reached".into()
            }
            .code(),
            RpcStatusCode::RESOURCE_EXHAUSTED
        );
        assert_eq!(
            Error::sys("mount", "/x", Errno::EPERM).code(),
            RpcStatusCode::INTERNAL
        );
        assert_eq!(
            Error::Unimplemented("CreateSnapshot").code(),
            RpcStatusCode::UNIMPLEMENTED
        );
        assert_eq!(
            Error::Changed {
                path: "/t".into(),
                what: "the bind just made is gone".into()
            }
            .code(),
            RpcStatusCode::UNAVAILABLE
        );
    }

    #[test]
    fn a_shared_build_failure_keeps_its_code() {
        let cause = Arc::new(Error::invalid("source", "no such bucket"));
        let e = Error::BuildFailed {
            cache: "c".into(),
            cause: Arc::clone(&cause),
        };
        assert_eq!(e.code(), RpcStatusCode::INVALID_ARGUMENT);
        assert_eq!(
            e.to_string(),
            "cache \"c\": build failed: source: no such bucket"
        );
    }

    #[test]
    fn messages_name_the_field_or_path() {
        assert_eq!(
            Error::MissingField("target_path").to_string(),
            "target_path is required"
        );
        let e = Error::sys("mount", "/var/lib/kubelet/x", Errno::ENOENT);
        assert!(e.to_string().contains("/var/lib/kubelet/x"));
    }

    #[test]
    fn messages_stay_short() {
        let huge = "é".repeat(600_000);
        for e in [
            Error::invalid("volume_context.bucket", format!("{huge} is not valid")),
            Error::VolumeNotFound(huge.clone()),
            Error::sys("mount", format!("/k/{huge}"), Errno::ENOENT),
            Error::mounter(&huge, huge.clone()),
        ] {
            let m = e.to_string();
            assert!(m.len() <= MAX_MESSAGE, "{} bytes", m.len());
            assert!(m.ends_with("(truncated)") || m.contains("bytes)"), "{m}");
        }
        let q = quoted(&"x".repeat(100));
        assert!(q.len() < 90 && q.ends_with("(100 bytes)"), "{q}");
        assert_eq!(quoted("ab"), "\"ab\"");
    }
}
