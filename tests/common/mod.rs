//! Test harness shared by the integration tests: the real `bindery` binary
//! on a temp socket with temp kubelet and state dirs (daemon.rs), a real S3
//! server on 127.0.0.1 (s3.rs), the processes a test started (procs.rs),
//! trees to fill caches from (trees.rs); mountinfo and scratch dirs come
//! from the library (`bindery::testkit`). Everything a test mounts or
//! starts is cleaned up even when it fails.
#![allow(dead_code)]

mod daemon;
mod procs;
mod s3;
mod trees;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use bindery::sys::mountinfo;

#[allow(unused_imports)]
pub use daemon::{Daemon, Out};
#[allow(unused_imports)]
pub use procs::*;
#[allow(unused_imports)]
pub use s3::S3Server;
#[allow(unused_imports)]
pub use trees::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_bindery");
pub const ACCESS_KEY: &str = "bindery-test-akid";
pub const SECRET_KEY: &str = "bindery-test-secret-Zq81x";

#[allow(unused_imports)]
pub use bindery::testkit::{mounts_below, unmount_below, Scratch};

/// The per-mount options ("rw,nosuid,nodev,relatime") of the topmost mount
/// at exactly `path`.
pub fn mount_options(path: &Path) -> Option<String> {
    let table = mountinfo::read_self().unwrap_or_default();
    mountinfo::mount_at(&table, path).map(|m| m.options.clone())
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Tests that mount need root and a private mount namespace (.ci/test runs
/// the suite under `unshare`). Returns false, printing why, when missing.
#[allow(unused_imports)]
pub use bindery::testkit::{env_dir, has_fusepy, prerequisite};

pub fn can_mount(test: &str) -> bool {
    prerequisite(test, is_root(), "needs root")
        && prerequisite(
            test,
            std::env::var("BINDERY_MOUNT_TESTS").as_deref() == Ok("1"),
            "mount tests run only inside the private namespace of .ci/test (BINDERY_MOUNT_TESTS=1)",
        )
}

/// `can_mount`, and fusepy for the tests' own misbehaving FUSE servers.
pub fn can_mount_with_fusepy(test: &str) -> bool {
    can_mount(test)
        && prerequisite(
            test,
            has_fusepy(),
            "python3 fusepy missing (.ci/setup installs it)",
        )
}

/// Write `path`: a mounter program that runs the shell lines `before`, then
/// serves its first argument with a fusepy server. `methods` are the Python
/// methods of its Operations class (indented four spaces; `errno`, `os`,
/// `stat`, `time` and `FuseOSError` are imported); `/` is a directory.
pub fn fusepy_server(path: &Path, before: &str, methods: &str, options: &str) {
    script(
        path,
        &format!(
            r#"{before}
exec python3 - "$@" <<'PY'
import errno, os, stat, sys, time
from fuse import FUSE, Operations, FuseOSError
class Fs(Operations):
    def getattr(self, path, fh=None):
        if path == "/":
            return {{"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}}
        raise FuseOSError(errno.ENOENT)
{methods}
FUSE(Fs(), sys.argv[1], foreground=True, allow_other=True{options})
PY"#
        ),
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` every 50 ms until it holds; fail the test after `secs` seconds.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Write an executable script.
pub fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

pub fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
