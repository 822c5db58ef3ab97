//! Finding the mounters bindery started for a staging path, by what their
//! command lines say: a daemon killed between spawning a mounter and
//! recording its PID must still find (and adopt or stop) it.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The NUL-separated arguments of a /proc/PID/cmdline.
pub fn parse_cmdline(bytes: &[u8]) -> Vec<&OsStr> {
    bytes
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(OsStr::from_bytes)
        .collect()
}

/// Field 6 (session id) of /proc/PID/stat.
fn session_of(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// PIDs of session leaders (how bindery starts every mounter) with `arg`
/// as one of their arguments exactly, other than this process.
pub fn session_leaders_with_arg(arg: &Path) -> Vec<i32> {
    let me = nix::unistd::getpid().as_raw();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if !parse_cmdline(&cmdline).contains(&arg.as_os_str()) {
            continue;
        }
        let leader = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| session_of(&s))
            == Some(pid);
        if leader {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdlines_and_sessions() {
        let args = parse_cmdline(b"s3fs\0bkt:/p\0/var/lib/kubelet/x/globalmount\0-f\0");
        assert_eq!(args.len(), 4);
        assert!(args.contains(&OsStr::new("/var/lib/kubelet/x/globalmount")));
        assert_eq!(
            session_of("4242 (s3fs (x) y) S 1 4242 4242 0 -1 4194560 1 0"),
            Some(4242)
        );
        assert_eq!(session_of("garbage"), None);
    }
}
