//! Mounter functions against the real thing: real s3fs and rclone mounts of
//! `rclone serve s3` on 127.0.0.1. Root and a private mount namespace are
//! needed (.ci/in-namespace sets BINDERY_MOUNT_TESTS=1); otherwise each test
//! prints why it skips.

use std::collections::HashMap;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::config::{Config, Parsed};
use crate::testkit::{has_fusepy, prerequisite};

const AKID: &str = "real-akid";
const SECRET: &str = "real-secret-Zx1";

fn can_mount(test: &str) -> bool {
    prerequisite(
        test,
        nix::unistd::geteuid().is_root()
            && std::env::var("BINDERY_MOUNT_TESTS").as_deref() == Ok("1"),
        "needs root inside .ci/in-namespace (BINDERY_MOUNT_TESTS=1)",
    )
}

/// Root, the private namespace and fusepy (.ci/setup installs it).
fn can_mount_fusepy(test: &str) -> bool {
    can_mount(test)
        && prerequisite(
            test,
            has_fusepy(),
            "needs python3 fusepy (.ci/setup installs it)",
        )
}

struct Server {
    child: Child,
    endpoint: String,
    root: PathBuf,
}

impl Server {
    fn start(tag: &str, bucket: &str) -> Server {
        let root = std::env::temp_dir().join(format!("bindery-real-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = root.join("data");
        fs::create_dir_all(dir.join(bucket)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("rclone")
            .args(["serve", "s3", "--addr", &format!("127.0.0.1:{port}")])
            .args(["--dir-cache-time", "0", "--etag-hash", ""])
            .arg(&dir)
            .env("RCLONE_CONFIG", "/dev/null")
            .env("RCLONE_AUTH_KEY", format!("\"{AKID},{SECRET}\""))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rclone serve s3");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "S3 server did not start");
            thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
        }
    }

    fn secrets(&self) -> HashMap<String, String> {
        [
            ("accessKeyID", AKID),
            ("secretAccessKey", SECRET),
            ("endpoint", self.endpoint.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(&self.root)
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn config(timeout_secs: u64) -> Config {
    match Config::parse(
        [
            "--node-id=n".to_string(),
            format!("--mount-timeout={timeout_secs}"),
        ],
        &|_| None,
    ) {
        Ok(Parsed::Run(c)) => *c,
        _ => panic!("config"),
    }
}

fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Run `sh -c script` as uid 1000, primary gid 1000, supplementary group
/// 2000 (a pod with runAsUser/runAsGroup 1000 and fsGroup 2000).
fn as_pod(script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid", "1000", "--regid", "1000", "--groups", "2000", "sh", "-c", script,
        ])
        .output()
        .unwrap()
}

/// fsGroup given as volume_mount_group: a non-root process whose fsGroup is
/// a SUPPLEMENTARY group creates, writes, reads and deletes files and
/// directories, with s3fs and with rclone.
#[test]
fn fs_group_as_supplementary_group_can_write() {
    if !can_mount("fs_group_as_supplementary_group_can_write") {
        return;
    }
    let s3 = Server::start("fsgroup", "grp-bucket");
    let cfg = config(20);
    for mounter in ["s3fs", "rclone"] {
        let mnt = s3.root.join(format!("mnt-{mounter}"));
        fs::create_dir_all(&mnt).unwrap();
        let files = VolumeFiles::new(s3.root.join(format!("files-{mounter}")));
        let mut spec = parse_spec(
            &format!("grp-bucket/{mounter}"),
            &params(&[("mounter", mounter)]),
            &s3.secrets(),
            &[],
        )
        .unwrap();
        apply_mount_group(&mut spec, "2000").unwrap();
        let run = start("v", &spec, &mnt, &files, &cfg).unwrap();
        let m = mnt.display();
        // rclone serve s3 keeps directory markers as files, which breaks
        // s3fs's directories: s3fs gets files only.
        let dirs = if mounter == "rclone" {
            format!("mkdir {m}/dir; echo x > {m}/dir/f; rm {m}/dir/f; rmdir {m}/dir;")
        } else {
            String::new()
        };
        let out = as_pod(&format!(
            "set -e; id; echo hello > {m}/pod.txt; cat {m}/pod.txt; {dirs} \
             echo more >> {m}/pod.txt; rm {m}/pod.txt; echo DONE"
        ));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let pending = wait_for_uploads("v", spec.kind, &files, Duration::from_secs(20));
        stop(&mnt, run, Duration::from_secs(5));
        assert!(
            out.status.success() && text.contains("DONE"),
            "{mounter}: {text}"
        );
        assert!(
            text.contains("groups=1000") && text.contains("2000"),
            "{text}"
        );
        pending.unwrap();
        files.remove().unwrap();
    }
}

/// A start that fails keeps rclone's cache (acknowledged writes of an
/// earlier mounter wait there) and removes only credentials and the log.
#[test]
fn failed_start_keeps_the_rclone_cache() {
    if !can_mount("failed_start_keeps_the_rclone_cache") {
        return;
    }
    let root = std::env::temp_dir().join(format!("bindery-real-keep-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let mnt = root.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let files = VolumeFiles::new(root.join("files"));
    let meta = files.cache.join("vfsMeta/keep-bucket/acknowledged.bin");
    let data = files.cache.join("vfs/keep-bucket/acknowledged.bin");
    for (p, body) in [(&meta, r#"{"Dirty": true}"#), (&data, "written by a pod")] {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }
    // Nothing listens on port 9 of 127.0.0.1: the S3 side is down.
    let secrets = params(&[
        ("accessKeyID", AKID),
        ("secretAccessKey", SECRET),
        ("endpoint", "http://127.0.0.1:9"),
    ]);
    let spec = parse_spec(
        "keep-bucket",
        &params(&[
            ("mounter", "rclone"),
            ("options", "--contimeout=1s --low-level-retries=1"),
        ]),
        &secrets,
        &[],
    )
    .unwrap();
    let e = start("v", &spec, &mnt, &files, &config(3));
    let _ = Command::new("umount")
        .arg("-l")
        .arg(&mnt)
        .stderr(Stdio::null())
        .status();
    assert!(e.is_err(), "started against a dead endpoint");
    assert!(meta.exists() && data.exists(), "the cache was deleted");
    assert!(!files.passwd.exists() && !files.log.exists());
    assert!(!mounts::is_mount_point(&mnt).unwrap_or(true));
    let _ = fs::remove_dir_all(&root);
}

fn options_of(target: &Path) -> String {
    let t = mountinfo::read_self().unwrap();
    mountinfo::mount_at(&t, target).unwrap().options.clone()
}

/// A read-only bind keeps the source's nosuid/nodev/noexec; FUSE binds are
/// always nosuid,nodev.
#[test]
fn bind_flags_are_kept_and_added() {
    if !can_mount("bind_flags_are_kept_and_added") {
        return;
    }
    use crate::sys::mount;
    use nix::mount::MsFlags;
    let root = std::env::temp_dir().join(format!("bindery-real-flags-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let (src, plain, ro, fuse) = (
        root.join("src"),
        root.join("plain"),
        root.join("ro"),
        root.join("fuse"),
    );
    for d in [&src, &plain, &ro, &fuse] {
        fs::create_dir_all(d).unwrap();
    }
    nix::mount::mount(
        Some("tmpfs"),
        &src,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=1m"),
    )
    .unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &plain,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    mount::bind(&src, &ro).unwrap();
    mount::remount_bind_read_only(&ro).unwrap();
    let o = options_of(&ro);
    mount::bind(&plain, &fuse).unwrap();
    mount::remount_bind(
        &fuse,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
    .unwrap();
    let f = options_of(&fuse);
    for m in [&ro, &fuse, &plain, &src] {
        let _ = mount::unmount(m);
    }
    let _ = fs::remove_dir_all(&root);
    for want in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(
            o.split(',').any(|x| x == want),
            "read-only bind lost {want}: {o}"
        );
    }
    for want in ["rw", "nosuid", "nodev", "noexec"] {
        assert!(
            f.split(',').any(|x| x == want),
            "fuse bind lacks {want}: {f}"
        );
    }
}

use crate::sys::{mountinfo, mounts};

fn threads() -> usize {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// A FUSE server (fusepy) whose listing never answers but whose statfs
/// does: `background` makes it daemonize instead of staying in the
/// foreground.
fn slow_lister(dir: &Path, background: bool) -> PathBuf {
    let prog = dir.join(if background { "bgfs" } else { "slowfs" });
    fs::write(
        &prog,
        format!(
            r#"#!/bin/sh
exec python3 - "$@" <<'PY'
import errno, stat, sys, time
from fuse import FUSE, Operations, FuseOSError
class Slow(Operations):
    def getattr(self, path, fh=None):
        if path == "/":
            return {{"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}}
        raise FuseOSError(errno.ENOENT)
    def statfs(self, path):
        return {{"f_bsize": 4096, "f_blocks": 1, "f_bavail": 1}}
    def readdir(self, path, fh):
        time.sleep(3600)
        return [".", ".."]
FUSE(Slow(), sys.argv[1], foreground={fg}, allow_other=True)
PY
"#,
            fg = if background { "False" } else { "True" }
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
    prog
}

fn fuse_spec(prog: &Path) -> MountSpec {
    parse_spec(
        "slow",
        &params(&[
            ("mounter", "fuse"),
            ("bucket", "bkt"),
            ("command", &format!("{} {{mountpoint}}", prog.display())),
        ]),
        &HashMap::new(),
        &[prog.display().to_string()],
    )
    .unwrap()
}

/// A mount whose server hangs on lookups and listings but answers statfs is alive:
/// check() says Ok (no remount), observe() asks no FUSE call; repeated
/// checks reuse the mount's prober threads instead of piling up threads.
#[test]
fn slow_listing_is_degraded_not_dead() {
    if !can_mount_fusepy("slow_listing_is_degraded_not_dead") {
        return;
    }
    let root = std::env::temp_dir().join(format!("bindery-real-slow-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let mnt = root.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let prog = slow_lister(&root, false);
    let files = VolumeFiles::new(root.join("files"));
    // Mount it by hand: start() wants a listing, which this server never gives.
    let mut cmd = command(&fuse_spec(&prog), &mnt, &files).unwrap();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = Running {
        pid: child.id() as i32,
        start_ticks: crate::sys::process::stat(child.id() as i32)
            .unwrap()
            .start_ticks,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mounts::is_mount_point(&mnt).unwrap_or(false) {
        assert!(Instant::now() < deadline, "slowfs did not mount");
        thread::sleep(Duration::from_millis(20));
    }
    let t = Duration::from_millis(300);
    let first = check(&mnt, run, t);
    let (cond, figures) = observe(&mnt, run, "");
    let before = threads();
    let again: Vec<Health> = (0..30).map(|_| check(&mnt, run, t)).collect();
    let (cond_again, _) = observe(&mnt, run, "");
    let after = threads();
    abort(&mnt);
    stop(&mnt, run, Duration::from_millis(200));
    drop(child);
    let _ = fs::remove_dir_all(&root);
    assert_eq!(first, Health::Ok);
    assert!(again.iter().all(|h| *h == Health::Ok), "{again:?}");
    // Reachability is asked of the endpoint, never through the hung mount.
    assert_eq!(cond, Condition::Healthy);
    assert_eq!(cond_again, Condition::Healthy);
    assert!(
        figures.is_some_and(|f| f.fuse),
        "the checks' statfs figures"
    );
    assert!(after <= before + 1, "threads grew from {before} to {after}");
}

/// An allowed program that forks into the background leaves a mount served
/// by a process bindery would not track: start() refuses it and leaves
/// nothing behind.
#[test]
fn a_program_that_daemonizes_is_refused() {
    if !can_mount_fusepy("a_program_that_daemonizes_is_refused") {
        return;
    }
    let root = std::env::temp_dir().join(format!("bindery-real-bg-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let mnt = root.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let prog = slow_lister(&root, true);
    let files = VolumeFiles::new(root.join("files"));
    let e = start("bg", &fuse_spec(&prog), &mnt, &files, &config(10)).unwrap_err();
    let mounted = mounts::is_mount_point(&mnt).unwrap_or(true);
    let _ = Command::new("umount")
        .arg("-l")
        .arg(&mnt)
        .stderr(Stdio::null())
        .status();
    let _ = fs::remove_dir_all(&root);
    assert!(e.to_string().contains("background"), "{e}");
    assert!(!mounted, "the daemonized mount was left behind");
}

/// A FUSE server (fusepy) that answers like an empty directory and stays
/// alive after its mount is gone, as one does that ignores the unmount.
fn lingering_fs(dir: &Path) -> PathBuf {
    let prog = dir.join("lingerfs");
    fs::write(
        &prog,
        r#"#!/bin/sh
exec python3 - "$@" <<'PY'
import sys, time
from fuse import FUSE, Operations
try:
    FUSE(Operations(), sys.argv[1], foreground=True, allow_other=True)
finally:
    time.sleep(3600)
PY
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
    prog
}

/// Stopping a mounter that outlives its unmount aborts ITS FUSE connection,
/// never the mount that was given the freed connection number in between:
/// volume A's mounter is stopped, volume B mounts right after A's unmount
/// (and gets A's old number), and B must still serve when A's stop is done.
#[test]
fn stop_aborts_only_its_own_fuse_connection() {
    if !can_mount_fusepy("stop_aborts_only_its_own_fuse_connection") {
        return;
    }
    let root = std::env::temp_dir().join(format!("bindery-real-reuse-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let (mnt_a, mnt_b) = (root.join("a"), root.join("b"));
    fs::create_dir_all(&mnt_a).unwrap();
    fs::create_dir_all(&mnt_b).unwrap();
    let spec = fuse_spec(&lingering_fs(&root));
    let (files_a, files_b) = (
        VolumeFiles::new(root.join("fa")),
        VolumeFiles::new(root.join("fb")),
    );
    let cfg = config(20);
    // The kernel hands out the lowest free number, so B gets A's unless some
    // other mount on the machine takes it in that instant: try a few times,
    // and require that the reuse was seen at least once.
    let mut reused = 0;
    for _ in 0..3 {
        let run_a = start("a", &spec, &mnt_a, &files_a, &cfg).unwrap();
        let minor_a = mounts::fuse_minor_at(&mnt_a).expect("A is a FUSE mount");
        let mut run_b = None;
        stop_with(&mnt_a, run_a, Duration::from_secs(2), || {
            run_b = Some(start("b", &spec, &mnt_b, &files_b, &cfg).unwrap());
        });
        let run_b = run_b.unwrap();
        let a_gone = !crate::sys::process::is_alive(run_a.pid, run_a.start_ticks);
        let b_minor = mounts::fuse_minor_at(&mnt_b);
        let b_health = check(&mnt_b, run_b, Duration::from_secs(5));
        let b_lists = fs::read_dir(&mnt_b).map(|d| d.count());
        stop(&mnt_b, run_b, Duration::from_secs(2));
        assert!(a_gone, "A's mounter outlived its stop");
        assert_eq!(
            b_health,
            Health::Ok,
            "B (connection {b_minor:?}, A had {minor_a}) after A's stop"
        );
        assert!(b_lists.is_ok(), "listing B after A's stop: {b_lists:?}");
        if b_minor == Some(minor_a) {
            reused += 1;
        }
    }
    let _ = fs::remove_dir_all(&root);
    assert!(
        reused > 0,
        "B never got A's connection number: the race was not set up"
    );
}
