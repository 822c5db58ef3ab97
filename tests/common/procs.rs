//! Processes a test started or must find: by command line, by session.

use std::fs;
use std::path::Path;

/// Kill every process whose command line names `dir` (each test's scratch
/// dir is its own: no other test's or user's process matches).
pub fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.display().to_string();
    for pid in pids_matching(|cmdline| cmdline.contains(&needle)) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The s3fs / rclone processes serving `staging`.
pub fn mounter_pids(staging: &str) -> Vec<i32> {
    pids_matching(|c| {
        (c.starts_with("s3fs ") || c.starts_with("rclone mount")) && c.contains(staging)
    })
}

/// The session id of process `pid` (field 6 of /proc/PID/stat).
pub fn session_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces, in parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// PIDs whose command line (NULs read as spaces) satisfies `f`.
pub fn pids_matching(f: impl Fn(&str) -> bool) -> Vec<i32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(b) = fs::read(e.path().join("cmdline")) {
            if f(&String::from_utf8_lossy(&b).replace('\0', " ")) {
                out.push(pid);
            }
        }
    }
    out
}
