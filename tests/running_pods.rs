//! Pods keep their volumes: running containers get their volume back when
//! the volume's mounter dies, and a volume may keep its mounter for a while
//! after its last pod left (unstageDelay), for the pod that comes back.
//! A "container" here is what the runtime makes of a pod's volume: a
//! process in a mount namespace of its own holding a bind of the pod's
//! target (whole, or a subPath of it, read-write or read-only), with the
//! node's copies of the target and the staging mount gone from its view.
//! Real s3fs mounts of a real S3 server on 127.0.0.1, as root inside the
//! private namespace of .ci/test.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

const BUCKET: &str = "running-bucket";

fn stage(d: &Daemon, s3: &S3Server, volume: &str, staging: &str) {
    let mut extra = vec!["--param".to_string(), "mounter=s3fs".to_string()];
    extra.extend(s3.secret_args());
    let out = d.stage(volume, staging, &extra);
    assert!(out.ok(), "{out:?}");
}

/// One bind a container holds: `source` (on the node) at `at` (in the
/// container), read-only or not.
struct Bind<'a> {
    source: &'a str,
    at: &'a Path,
    readonly: bool,
}

/// A process in a private mount namespace of its own, holding `binds`, with
/// the node paths `hide` unmounted from its view (as a container's root
/// has no node mounts). Killed on drop.
struct Container {
    child: Child,
}

impl Container {
    fn start(binds: &[Bind<'_>], hide: &[&str]) -> Container {
        let mut script = String::from("set -e\n");
        let mut argv: Vec<String> = Vec::new();
        for b in binds {
            fs::create_dir_all(b.at).unwrap();
            let (i, j) = (argv.len() + 1, argv.len() + 2);
            script += &format!("mount --bind \"${i}\" \"${j}\"\n");
            if b.readonly {
                script += &format!("mount -o remount,bind,ro \"${j}\"\n");
            }
            argv.push(b.source.to_string());
            argv.push(b.at.display().to_string());
        }
        for h in hide {
            argv.push(h.to_string());
            script += &format!("umount -l \"${}\"\n", argv.len());
        }
        script += "echo ready\nexec sleep 100000\n";
        let mut child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
                "sh",
            ])
            .args(&argv)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the container did not start");
        Container { child }
    }

    /// `path` as the container sees it (through its root, in its mounts).
    fn path(&self, path: &Path) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.child.id()))
            .join(path.strip_prefix("/").unwrap())
    }

    fn read(&self, path: &Path) -> std::io::Result<String> {
        fs::read_to_string(self.path(path))
    }

    /// The container's mount at `at` (its id and device).
    fn mount_at(&self, at: &Path) -> Option<bindery::sys::mountinfo::MountInfo> {
        let f = fs::File::open(format!("/proc/{}/mountinfo", self.child.id())).ok()?;
        bindery::sys::mountinfo::parse(f)
            .into_iter()
            .rev()
            .find(|m| m.mount_point == at)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

fn condition(d: &Daemon, volume: &str, target: &str) -> String {
    let out = d.csi(&["node-stats", "--volume-id", volume, "--target-path", target]);
    assert!(out.ok(), "{out:?}");
    out.stdout
}

/// kill -9 of the mounter under running containers: each container's view
/// (a whole bind, a subPath, a read-only bind) is replaced inside its own
/// mount namespace by the new mount, with its flags, and VolumeCondition is
/// healthy again, without waiting for the periodic health pass. A mount of
/// another volume in the same namespace is not touched.
#[test]
fn running_containers_get_their_volume_back_after_a_mounter_dies() {
    if !can_mount("running_containers_get_their_volume_back_after_a_mounter_dies") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET, "other-bucket"]);
    // The subPath's directory, put in the bucket by the server's own files.
    fs::create_dir_all(s3.dir.join(BUCKET).join("sub")).unwrap();
    fs::write(s3.dir.join(BUCKET).join("sub/g.txt"), "sub data").unwrap();
    // A health pass every 10 minutes: the heal can only come from the
    // mounter's exit waking the loop (src/node/exits.rs).
    let d = Daemon::start(&["--watchdog-interval=600"]);
    let scratch = Scratch::new("containers");
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/r1/globalmount");
    let other_staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/r2/globalmount");
    stage(&d, &s3, BUCKET, &staging);
    stage(&d, &s3, "other-bucket", &other_staging);
    let ta = d.kpath("pods/3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f/volumes/kubernetes.io~csi/v/mount");
    let tb = d.kpath("pods/b/volumes/kubernetes.io~csi/v/mount");
    let tother = d.kpath("pods/b/volumes/kubernetes.io~csi/w/mount");
    assert!(d.publish(BUCKET, &staging, &ta, &[]).ok());
    assert!(d.publish(BUCKET, &staging, &tb, &["--readonly"]).ok());
    assert!(d.publish("other-bucket", &other_staging, &tother, &[]).ok());
    fs::write(Path::new(&ta).join("f.txt"), "data").unwrap();
    fs::write(Path::new(&tother).join("o.txt"), "other").unwrap();

    let root = scratch.path();
    let (whole, sub, ro, other) = (
        root.join("a/data"),
        root.join("a/subpath"),
        root.join("b/data"),
        root.join("b/other"),
    );
    let sub_source = format!("{ta}/sub");
    let a = Container::start(
        &[
            Bind {
                source: &ta,
                at: &whole,
                readonly: false,
            },
            Bind {
                source: &sub_source,
                at: &sub,
                readonly: false,
            },
        ],
        &[&ta, &tb, &tother, &staging, &other_staging],
    );
    let b = Container::start(
        &[
            Bind {
                source: &tb,
                at: &ro,
                readonly: true,
            },
            Bind {
                source: &tother,
                at: &other,
                readonly: false,
            },
        ],
        &[&ta, &tb, &tother, &staging, &other_staging],
    );
    // The kubelet's own bind of a subPath, in the node's namespace (the
    // daemon's here), from which it binds the subPath into containers.
    let subpath_bind = scratch.path().join("volume-subpaths/data/c/0");
    fs::create_dir_all(&subpath_bind).unwrap();
    assert!(Command::new("mount")
        .args(["--bind", &sub_source])
        .arg(&subpath_bind)
        .status()
        .unwrap()
        .success());
    assert_eq!(a.read(&whole.join("f.txt")).unwrap(), "data");
    assert_eq!(a.read(&sub.join("g.txt")).unwrap(), "sub data");
    assert_eq!(b.read(&ro.join("f.txt")).unwrap(), "data");
    let other_before = b.mount_at(&other).expect("the other volume's mount");

    let old = mounter_pids(&staging);
    assert_eq!(old.len(), 1);
    kill9(old[0]);
    let e = a.read(&whole.join("f.txt")).unwrap_err();
    assert!(matches!(e.raw_os_error(), Some(107) | Some(103)), "{e}");

    // Every view comes back without the containers doing anything.
    wait_until("the containers read their volume again", 30, || {
        a.read(&whole.join("f.txt")).is_ok_and(|s| s == "data")
            && a.read(&sub.join("g.txt")).is_ok_and(|s| s == "sub data")
            && b.read(&ro.join("f.txt")).is_ok_and(|s| s == "data")
    });
    let new = mounter_pids(&staging);
    assert_eq!(new.len(), 1);
    assert_ne!(new, old);
    wait_until("the node's subPath bind reads again", 30, || {
        fs::read_to_string(subpath_bind.join("g.txt")).is_ok_and(|s| s == "sub data")
    });
    // Writes through the container reach the bucket through the new mounter.
    fs::write(a.path(&whole.join("new.txt")), "after").unwrap();
    assert_eq!(
        fs::read_to_string(Path::new(&ta).join("new.txt")).unwrap(),
        "after"
    );
    // The subPath shows the subdirectory, not the volume's root.
    assert!(!a.path(&sub.join("f.txt")).exists());
    // Read-only stays read-only.
    let e = fs::write(b.path(&ro.join("x")), "no").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(30), "{e}");
    // One mount at each place: the dead one is gone, not just covered.
    for (c, at) in [(&a, &whole), (&a, &sub), (&b, &ro)] {
        let n = fs::read_to_string(format!("/proc/{}/mountinfo", c.child.id()))
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(at.to_str().unwrap()))
            .count();
        assert_eq!(n, 1, "mounts at {}", at.display());
    }
    // The other volume's mount in the same namespace is the same mount.
    assert_eq!(b.mount_at(&other), Some(other_before));
    assert_eq!(b.read(&other.join("o.txt")).unwrap(), "other");
    // Healthy again, for both publications.
    wait_until("VolumeCondition healthy", 30, || {
        [&ta, &tb]
            .iter()
            .all(|t| !condition(&d, BUCKET, t).contains("abnormal: true"))
    });
    let log = d.log_text();
    assert!(log.contains("in the mount namespace of pid"), "{log}");

    drop((a, b));
    assert!(Command::new("umount")
        .arg(&subpath_bind)
        .status()
        .unwrap()
        .success());
    for (v, t) in [(BUCKET, &ta), (BUCKET, &tb), ("other-bucket", &tother)] {
        assert!(d.unpublish(v, t).ok());
    }
    assert!(d.unstage(BUCKET, &staging).ok());
    assert!(d.unstage("other-bucket", &other_staging).ok());
}

/// A container that still holds the dead mount, and that bindery cannot
/// re-bind, is reported: its publication's VolumeCondition is abnormal
/// until a later pass succeeds. Here the container's mount point is covered
/// by a mount of its own before the kill, so the dead mount stays in its
/// table out of reach; once the cover goes, the next pass re-binds it.
#[test]
fn a_container_that_cannot_be_rebound_is_reported_then_retried() {
    if !can_mount("a_container_that_cannot_be_rebound_is_reported_then_retried") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&["--watchdog-interval=1"]);
    let scratch = Scratch::new("containers");
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/r3/globalmount");
    stage(&d, &s3, BUCKET, &staging);
    let ta = d.kpath("pods/c/volumes/kubernetes.io~csi/v/mount");
    assert!(d.publish(BUCKET, &staging, &ta, &[]).ok());
    fs::write(Path::new(&ta).join("f.txt"), "data").unwrap();
    let at = scratch.path().join("c/data");
    let c = Container::start(
        &[Bind {
            source: &ta,
            at: &at,
            readonly: false,
        }],
        &[&ta, &staging],
    );
    let old = mounter_pids(&staging);
    // Cover the container's mount point with a tmpfs of its own: the dead
    // FUSE mount is still in its table, but beneath another mount.
    let status = Command::new("nsenter")
        .args([
            "-t",
            &c.child.id().to_string(),
            "-m",
            "mount",
            "-t",
            "tmpfs",
            "cover",
        ])
        .arg(&at)
        .status()
        .unwrap();
    assert!(status.success());
    kill9(old[0]);
    wait_until("the node's side healed", 30, || {
        fs::read_to_string(Path::new(&ta).join("f.txt")).is_ok_and(|s| s == "data")
    });
    d.wait_health_passes(2, 30);
    let cond = condition(&d, BUCKET, &ta);
    assert!(
        cond.contains("abnormal: true") && cond.contains("could not be re-bound"),
        "{cond}"
    );
    // The retries (every pass) never turn the volume's calls away: stats
    // asked back to back across three passes all answer.
    let passes = || d.log_text().matches("health pass done").count();
    let start = passes();
    let mut asked = 0;
    wait_until("three passes of retries", 30, || {
        assert!(condition(&d, BUCKET, &ta).contains("abnormal: true"));
        asked += 1;
        passes() >= start + 3
    });
    assert!(asked > 3, "{asked} calls");
    // The cover goes: the next pass re-binds the container.
    let status = Command::new("nsenter")
        .args(["-t", &c.child.id().to_string(), "-m", "umount"])
        .arg(&at)
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("the container re-bound", 30, || {
        c.read(&at.join("f.txt")).is_ok_and(|s| s == "data")
    });
    wait_until("VolumeCondition healthy", 30, || {
        !condition(&d, BUCKET, &ta).contains("abnormal: true")
    });
    drop(c);
    assert!(d.unpublish(BUCKET, &ta).ok());
    assert!(d.unstage(BUCKET, &staging).ok());
}

fn is_mount_point(path: &str) -> bool {
    !mounts_below(Path::new(path))
        .iter()
        .all(|m| m.as_path() != Path::new(path))
}

fn record_exists(d: &Daemon, volume: &str) -> bool {
    bindery::state::StateStore::open(&d.state)
        .map(|s| s.record_path(volume).exists())
        .unwrap_or(false)
}

/// unstageDelay: the unstage answers at once and the mounter stays; a stage
/// before the delay is over takes the same mount back (the data, the same
/// process); the next unstage's delay ends with the mounter stopped and
/// nothing left. A daemon restart during the delay keeps the promise.
#[test]
fn a_volume_lingers_after_its_last_pod_and_comes_back_warm() {
    if !can_mount("a_volume_lingers_after_its_last_pod_and_comes_back_warm") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let mut d = Daemon::start(&["--watchdog-interval=1"]);
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/l1/globalmount");
    let target = d.kpath("pods/l/volumes/kubernetes.io~csi/v/mount");
    let stage_with = |d: &Daemon, delay: &str| {
        let mut extra = vec![
            "--param".to_string(),
            "mounter=s3fs".to_string(),
            "--param".to_string(),
            format!("unstageDelay={delay}"),
        ];
        extra.extend(s3.secret_args());
        d.stage(BUCKET, &staging, &extra)
    };
    let out = stage_with(&d, "10m");
    assert!(out.ok(), "{out:?}");
    assert!(d.publish(BUCKET, &staging, &target, &[]).ok());
    fs::write(Path::new(&target).join("job.txt"), "run 1").unwrap();
    let pid = mounter_pids(&staging);
    assert_eq!(pid.len(), 1);
    assert!(d.unpublish(BUCKET, &target).ok());
    assert!(d.unstage(BUCKET, &staging).ok());
    // Kept: the same mounter still serves the staging path.
    assert_eq!(mounter_pids(&staging), pid);
    assert!(is_mount_point(&staging));
    assert!(d.log_text().contains("keeps serving"));
    // A repeated unstage is answered the same way.
    assert!(d.unstage(BUCKET, &staging).ok());
    // The daemon restarts during the delay: the promise holds.
    d.kill9();
    d.restart();
    assert_eq!(mounter_pids(&staging), pid);
    // The pod comes back: the same mount, its data, the same process.
    let out = stage_with(&d, "10m");
    assert!(out.ok(), "{out:?}");
    assert_eq!(mounter_pids(&staging), pid);
    assert!(d.publish(BUCKET, &staging, &target, &[]).ok());
    assert_eq!(
        fs::read_to_string(Path::new(&target).join("job.txt")).unwrap(),
        "run 1"
    );
    assert!(d.unpublish(BUCKET, &target).ok());
    // A stage with other parameters while it lingers gets a new mounter.
    assert!(d.unstage(BUCKET, &staging).ok());
    let out = stage_with(&d, "1s");
    assert!(out.ok(), "{out:?}");
    let second = mounter_pids(&staging);
    assert_eq!(second.len(), 1);
    assert_ne!(second, pid);
    // This one keeps its mounter one second: then nothing is left.
    assert!(d.unstage(BUCKET, &staging).ok());
    wait_until("the delay ended", 30, || {
        mounter_pids(&staging).is_empty() && !record_exists(&d, BUCKET)
    });
    assert!(!is_mount_point(&staging));
}

/// A bad unstageDelay is refused by name before anything is mounted; a
/// kept mounter that dies is cleaned up without waiting for the delay; the
/// daemon-wide --unstage-delay applies to volumes without the parameter.
#[test]
fn unstage_delays_are_checked_and_a_dead_kept_mounter_is_cleaned_up() {
    if !can_mount("unstage_delays_are_checked_and_a_dead_kept_mounter_is_cleaned_up") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&["--watchdog-interval=1", "--unstage-delay=600"]);
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/l2/globalmount");
    let mut extra = vec!["--param".to_string(), "mounter=s3fs".to_string()];
    extra.extend(s3.secret_args());
    let mut bad = extra.clone();
    bad.extend(["--param".to_string(), "unstageDelay=25h".to_string()]);
    let out = d.stage(BUCKET, &staging, &bad);
    assert!(!out.ok());
    assert_eq!(out.code, 3, "INVALID_ARGUMENT: {out:?}");
    assert!(
        out.stderr.contains("volume_context.unstageDelay"),
        "{out:?}"
    );
    assert!(mounter_pids(&staging).is_empty());
    assert!(!is_mount_point(&staging));
    // The daemon's default: kept after the unstage.
    assert!(d.stage(BUCKET, &staging, &extra).ok());
    let pid = mounter_pids(&staging);
    assert!(d.unstage(BUCKET, &staging).ok());
    assert_eq!(mounter_pids(&staging), pid);
    // It dies while kept: nothing is left to keep warm.
    kill9(pid[0]);
    wait_until("the dead kept mounter cleaned up", 30, || {
        !record_exists(&d, BUCKET) && !is_mount_point(&staging)
    });
    assert!(d.log_text().contains("its mounter had died"));
}

/// A reboot during the delay: the daemon, the mounter and every mount are
/// gone and the record stays. The restarted daemon cleans the record up at
/// recovery; the next stage starts a new mounter.
#[test]
fn a_reboot_during_the_unstage_delay_leaves_nothing_stale() {
    if !can_mount("a_reboot_during_the_unstage_delay_leaves_nothing_stale") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let mut d = Daemon::start(&["--watchdog-interval=1", "--unstage-delay=600"]);
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/l3/globalmount");
    stage(&d, &s3, BUCKET, &staging);
    let pid = mounter_pids(&staging);
    assert!(d.unstage(BUCKET, &staging).ok());
    assert!(record_exists(&d, BUCKET));
    // The "reboot": no daemon, no mounter, no mount.
    d.kill9();
    kill9(pid[0]);
    wait_until("the mounter gone", 30, || mounter_pids(&staging).is_empty());
    let _ = Command::new("umount").arg("-l").arg(&staging).status();
    d.restart();
    assert!(!record_exists(&d, BUCKET), "recovery cleaned the record up");
    assert!(d.log_text().contains("which is gone: cleaning up"));
    stage(&d, &s3, BUCKET, &staging);
    let fresh = mounter_pids(&staging);
    assert_eq!(fresh.len(), 1);
    assert_ne!(fresh, pid);
    // Without the delay (a restart with other flags), the unstage stops it.
    d.args = vec!["--watchdog-interval=1".into()];
    d.stop();
    d.restart();
    assert!(d.unstage(BUCKET, &staging).ok());
    assert!(mounter_pids(&staging).is_empty());
}
