//! Fault injection: the daemon is killed (SIGKILL) at every crash point of
//! src/crash.rs, in the middle of a real stage, publish, cache publish,
//! unpublish and unstage; it is restarted, the CO's call is retried, and the
//! node must end exactly as if nothing had happened: one mounter, the mounts
//! the calls asked for and no other, no record left after the teardown.
//!
//! Needs the cargo feature `fault-injection` (.ci/test builds the tests
//! with it) and root in the private namespace of .ci/test.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const BUCKET: &str = "crash-bucket";
const VOLUME: &str = "crash-bucket/vol";

struct Node {
    d: Daemon,
    s3: S3Server,
    staging: String,
    target: String,
}

impl Node {
    fn new(extra: &[&str]) -> Option<Node> {
        if !can_mount("crash points") {
            return None;
        }
        if !cfg!(feature = "fault-injection") {
            panic!("tests/crash_points.rs needs --features fault-injection");
        }
        let s3 = S3Server::start(&[BUCKET]);
        let d = Daemon::start(extra);
        let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/crash/globalmount");
        let target = d.kpath("pods/p1/volumes/kubernetes.io~csi/pv/mount");
        Some(Node {
            d,
            s3,
            staging,
            target,
        })
    }

    fn stage(&self) -> Out {
        let mut a = vec!["--param".to_string(), "mounter=s3fs".to_string()];
        a.extend(self.s3.secret_args());
        self.d.stage(VOLUME, &self.staging, &a)
    }

    fn publish(&self) -> Out {
        self.d.publish(VOLUME, &self.staging, &self.target, &[])
    }

    fn unpublish(&self) -> Out {
        self.d.unpublish(VOLUME, &self.target)
    }

    fn unstage(&self) -> Out {
        self.d.unstage(VOLUME, &self.staging)
    }

    /// Restart the daemon so that it dies at `point`, run `call` (which must
    /// fail: the daemon is gone), check it died by SIGKILL, restart it clean.
    fn crash_at(&mut self, point: &str, call: impl FnOnce(&Node) -> Out) {
        self.d.stop();
        self.d.env = vec![("BINDERY_CRASH_AT".into(), point.into())];
        self.d.restart();
        let out = call(self);
        assert!(
            !out.ok(),
            "{point}: the call succeeded although the daemon should have died: {out:?}"
        );
        assert!(
            self.d.wait_crashed(Duration::from_secs(60)),
            "{point}: the daemon did not die at the crash point"
        );
        self.d.env.clear();
        self.d.restart();
    }

    fn mounters(&self) -> Vec<i32> {
        pids_matching(|c| c.starts_with("s3fs ") && c.contains(&self.staging))
    }

    fn mounts_at(&self, path: &str) -> usize {
        mounts_below(Path::new(path))
            .iter()
            .filter(|m| m.as_path() == Path::new(path))
            .count()
    }

    fn records(&self) -> usize {
        fs::read_dir(self.d.state.join("volumes"))
            .map(|r| {
                r.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "pb"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Staged: one s3fs serving a FUSE mount at the staging path.
    fn assert_staged(&self, point: &str) {
        wait_until(&format!("{point}: one mounter"), 20, || {
            self.mounters().len() == 1
        });
        assert_eq!(
            self.mounts_at(&self.staging),
            1,
            "{point}: one mount at the staging path"
        );
        assert!(
            fs::read_dir(&self.staging).is_ok(),
            "{point}: the staging mount answers"
        );
    }

    /// Published: exactly one bind at the target, showing the bucket.
    fn assert_published(&self, point: &str) {
        assert_eq!(
            self.mounts_at(&self.target),
            1,
            "{point}: exactly one bind at the target"
        );
        let marker = format!("{}/marker-{}", self.target, std::process::id());
        fs::write(&marker, point).unwrap();
        wait_until(&format!("{point}: write reaches the bucket"), 20, || {
            self.s3
                .dir
                .join(BUCKET)
                .join("vol")
                .join(Path::new(&marker).file_name().unwrap())
                .exists()
        });
        fs::remove_file(&marker).unwrap();
    }

    /// Nothing left: no mounter, no mount, no record, no target dir.
    fn assert_clean(&self, point: &str) {
        wait_until(&format!("{point}: mounters gone"), 20, || {
            self.mounters().is_empty()
        });
        assert_eq!(
            self.mounts_at(&self.staging),
            0,
            "{point}: staging unmounted"
        );
        assert_eq!(self.mounts_at(&self.target), 0, "{point}: target unmounted");
        assert!(
            !Path::new(&self.target).exists(),
            "{point}: target dir removed"
        );
        assert_eq!(self.records(), 0, "{point}: no record left");
    }

    fn must(&self, what: &str, out: Out) {
        assert!(out.ok(), "{what}: {out:?}\n{}", self.d.log_text());
    }
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection"
)]
fn stage_survives_a_crash_at_every_point() {
    for point in ["stage.recorded", "stage.started"] {
        let Some(mut n) = Node::new(&[]) else { return };
        n.crash_at(point, Node::stage);
        // Recovery settled the interrupted start before the socket came up:
        // at most the adopted mounter is left, never a second one.
        assert!(n.mounters().len() <= 1, "{point}: {:?}", n.mounters());
        let before = n.mounters();
        n.must("retried stage", n.stage());
        n.assert_staged(point);
        if point == "stage.started" {
            assert_eq!(
                n.mounters(),
                before,
                "{point}: the running mounter is adopted, not replaced"
            );
        }
        n.must("stage again", n.stage());
        assert_eq!(n.mounters().len(), 1);
        n.must("publish", n.publish());
        n.assert_published(point);
        n.must("unpublish", n.unpublish());
        n.must("unstage", n.unstage());
        n.assert_clean(point);
    }
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection"
)]
fn publish_survives_a_crash_at_every_point() {
    for point in ["publish.recorded", "publish.bound"] {
        let Some(mut n) = Node::new(&[]) else { return };
        n.must("stage", n.stage());
        n.crash_at(point, Node::publish);
        n.must("retried publish", n.publish());
        n.assert_staged(point);
        n.assert_published(point);
        n.must("publish again", n.publish());
        assert_eq!(n.mounts_at(&n.target), 1, "{point}: no stacked binds");
        n.must("unpublish", n.unpublish());
        n.must("unstage", n.unstage());
        n.assert_clean(point);
    }
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection"
)]
fn unpublish_survives_a_crash_at_every_point() {
    for point in ["unpublish.recorded", "unpublish.unbound"] {
        let Some(mut n) = Node::new(&[]) else { return };
        n.must("stage", n.stage());
        n.must("publish", n.publish());
        n.crash_at(point, Node::unpublish);
        // Recovery finished the unpublish: the teardown is never undone.
        assert_eq!(
            n.mounts_at(&n.target),
            0,
            "{point}: recovery finished the unbind"
        );
        n.must("retried unpublish", n.unpublish());
        n.must("unstage", n.unstage());
        n.assert_clean(point);
    }
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection"
)]
fn unstage_survives_a_crash_at_every_point() {
    for point in ["unstage.recorded", "unstage.stopped"] {
        let Some(mut n) = Node::new(&[]) else { return };
        n.must("stage", n.stage());
        n.crash_at(point, Node::unstage);
        // Recovery finished the teardown before serving.
        n.assert_clean(point);
        n.must("retried unstage", n.unstage());
        n.assert_clean(point);
    }
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection"
)]
fn heal_survives_a_crash() {
    let point = "heal.recorded";
    let Some(mut n) = Node::new(&["--watchdog-interval=1"]) else {
        return;
    };
    n.must("stage", n.stage());
    n.must("publish", n.publish());
    n.d.stop();
    n.d.env = vec![("BINDERY_CRASH_AT".into(), point.into())];
    n.d.restart();
    for pid in n.mounters() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    assert!(
        n.d.wait_crashed(Duration::from_secs(60)),
        "the heal reached its crash point"
    );
    n.d.env.clear();
    n.d.restart();
    // The next health pass starts a new mounter and binds the target again.
    wait_until("healed", 30, || {
        n.mounters().len() == 1 && fs::read_dir(&n.staging).is_ok()
    });
    wait_until("target bound again", 30, || fs::read_dir(&n.target).is_ok());
    n.assert_staged(point);
    n.assert_published(point);
    n.must("unpublish", n.unpublish());
    n.must("unstage", n.unstage());
    n.assert_clean(point);
}

/// unstageDelay: the daemon dies right after recording Lingering (the
/// unstage answered with the mounter kept), then right after a stage took
/// the volume back. Each time the restarted daemon keeps the very mounter,
/// the retried call succeeds, and the volume ends cleanly once a last
/// unstage's delay is over.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection"
)]
fn linger_survives_a_crash_at_every_point() {
    let Some(mut n) = Node::new(&["--unstage-delay=600", "--watchdog-interval=1"]) else {
        return;
    };
    n.must("stage", n.stage());
    let kept = n.mounters();
    assert_eq!(kept.len(), 1);
    n.crash_at("linger.recorded", Node::unstage);
    n.assert_staged("linger.recorded");
    assert_eq!(n.mounters(), kept, "linger.recorded: the same mounter");
    n.must("retried unstage", n.unstage());
    n.crash_at("linger.revived", Node::stage);
    n.assert_staged("linger.revived");
    assert_eq!(n.mounters(), kept, "linger.revived: the same mounter");
    n.must("retried stage", n.stage());
    n.must("publish", n.publish());
    n.assert_published("linger.revived");
    n.must("unpublish", n.unpublish());
    // An upgrade to a one-second delay; the last unstage keeps it that long.
    n.d.stop();
    n.d.args = vec!["--unstage-delay=1".into(), "--watchdog-interval=1".into()];
    n.d.restart();
    n.must("unstage", n.unstage());
    wait_until("the delay ended", 30, || n.records() == 0);
    n.assert_clean("linger");
}

/// A node under `parent` with one declared cache built from a small tree.
fn cache_daemon(parent: &Path, src: &Scratch, strategy: &str) -> Daemon {
    let source = src.path.join("tree");
    make_tree(&source, 20, 10);
    let conf = src.path.join("caches.conf");
    fs::write(
        &conf,
        format!(
            "[cache nm]\nsource = dir:{}\nstrategy = {strategy}\nnamespaces = *\n",
            source.display()
        ),
    )
    .unwrap();
    Daemon::start_in(parent, &[&format!("--cache-config={}", conf.display())])
}

fn cache_publish(d: &Daemon, target: &str) -> Out {
    d.csi(&[
        "node-publish",
        "--volume-id",
        "csi-crash-cache",
        "--target-path",
        target,
        "--param",
        "cache=nm",
        "--param",
        "placeCacheAtPath=app/nm",
        "--param",
        "csi.storage.k8s.io/ephemeral=true",
    ])
}

fn cache_unpublish(d: &Daemon, target: &str) -> Out {
    d.unpublish("csi-crash-cache", target)
}

fn crash_cache_call(d: &mut Daemon, point: &str, call: impl FnOnce(&Daemon) -> Out) {
    d.stop();
    d.env = vec![("BINDERY_CRASH_AT".into(), point.into())];
    d.restart();
    let out = call(d);
    assert!(!out.ok(), "{point}: {out:?}");
    assert!(d.wait_crashed(Duration::from_secs(60)), "{point}: no crash");
    d.env.clear();
    d.restart();
}

fn count_files(root: &Path) -> usize {
    tree_listing(root)
        .values()
        .filter(|(k, _, _)| *k == 'f')
        .count()
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection"
)]
fn cache_volumes_survive_a_crash_at_every_point() {
    if !can_mount("cache crash points") {
        return;
    }
    cache_crash_points(&std::env::temp_dir(), "copy");
}

/// The same crash points with btrfs snapshots: a snapshot made but not yet
/// recorded is destroyed by recovery, never served.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection"
)]
fn snapshot_cache_volumes_survive_a_crash_at_every_point() {
    if !can_mount("snapshot cache crash points") {
        return;
    }
    if let Some(dir) = env_dir("BINDERY_BTRFS_DIR", "snapshot cache crash points") {
        cache_crash_points(Path::new(&dir), "snapshot");
    }
}

fn cache_crash_points(parent: &Path, strategy: &str) {
    for point in [
        "cache_publish.recorded",
        "cache_publish.populated",
        "cache_unpublish.recorded",
        "cache_unpublish.removed",
    ] {
        let src = Scratch::new_in(parent, "crash-src");
        let mut d = cache_daemon(parent, &src, strategy);
        let target = d.kpath("pods/c1/volumes/kubernetes.io~csi/cache/mount");
        let source_files = count_files(&src.path.join("tree"));
        if point.starts_with("cache_publish") {
            crash_cache_call(&mut d, point, |d| cache_publish(d, &target));
            // Recovery removed the half-filled tree; the retry fills it whole.
            let out = cache_publish(&d, &target);
            assert!(out.ok(), "{point}: {out:?}");
        } else {
            assert!(cache_publish(&d, &target).ok());
            crash_cache_call(&mut d, point, |d| cache_unpublish(d, &target));
            assert!(
                !Path::new(&target).exists(),
                "{point}: recovery finished the removal"
            );
            assert!(cache_unpublish(&d, &target).ok());
            assert!(cache_publish(&d, &target).ok(), "{point}: publish again");
        }
        let root = PathBuf::from(&target).join("app/nm");
        assert_eq!(count_files(&root), source_files, "{point}: a complete copy");
        let made = if strategy == "snapshot" {
            "snapshot of"
        } else {
            "by copy"
        };
        assert!(
            d.log_text().contains(made),
            "{point}: not made by {strategy}"
        );
        assert!(cache_unpublish(&d, &target).ok());
        assert!(!Path::new(&target).exists(), "{point}: removed");
        let records = fs::read_dir(d.state.join("volumes"))
            .map(|r| {
                r.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "pb"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(records, 0, "{point}: no record left");
    }
}

#[test]
fn every_crash_point_has_a_test() {
    let tests = include_str!("crash_points.rs");
    for step in bindery::lifecycle::Step::ALL {
        let name = step.point();
        assert!(
            tests.contains(&format!("\"{name}\"")),
            "crash point {name} has no test"
        );
    }
    // Pause points hold the daemon for the race tests of the other suites.
    let suites = [
        include_str!("cache_volumes.rs"),
        include_str!("shared_mounts.rs"),
    ];
    for name in bindery::crash::PAUSES {
        assert!(
            suites.iter().any(|s| s.contains(&format!("\"{name}\""))),
            "pause point {name} has no test"
        );
    }
}

/// A stage killed between the mounter's spawn and its mount, with a mounter
/// that mounts only when it is told to stop (the worst moment: after a
/// teardown that unmounts first has cleared the staging path). Recovery
/// rolls the stage back; it must leave no mount behind that no record
/// explains, and the retried stage must succeed.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection"
)]
fn stage_crash_before_the_mount_leaves_nothing_unowned() {
    let point = "mounter.spawned";
    if !can_mount(point) {
        return;
    }
    if !prerequisite(
        point,
        has_fusepy(),
        "python3 fusepy missing (.ci/setup installs it)",
    ) {
        return;
    }
    let scratch = Scratch::new("gated");
    let gate = scratch.path.join("open");
    let prog = scratch.path.join("gatedfs");
    // Mounts at once when the gate exists; otherwise waits, and mounts in
    // its SIGTERM handler.
    script(
        &prog,
        &format!(
            r#"mount_now() {{
exec python3 - "$1" <<'PY'
import sys
from fuse import FUSE, Operations
FUSE(Operations(), sys.argv[1], foreground=True, allow_other=True)
PY
}}
[ -e {gate} ] && mount_now "$1"
trap 'mount_now "$1"' TERM
while :; do sleep 0.05; done"#,
            gate = gate.display()
        ),
    );
    let mut d = Daemon::start(&[
        &format!("--fuse-programs={}", prog.display()),
        "--mount-timeout=60",
        "--watchdog-interval=0",
    ]);
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/gated/globalmount");
    let command = format!("--param=command={} {{mountpoint}}", prog.display());
    let stage = |d: &Daemon| {
        d.csi(&[
            "node-stage",
            "--volume-id",
            "gated",
            "--staging-path",
            &staging,
            "--param=mounter=fuse",
            "--param=bucket=bkt",
            &command,
        ])
    };
    // The script, and the python3 it becomes: the session leader only (a
    // child it forks shows the same command line until it execs).
    let mounters = || {
        pids_matching(|c| {
            c.contains(&staging) && (c.starts_with("/bin/sh") || c.starts_with("python3"))
        })
        .into_iter()
        .filter(|&pid| session_of(pid) == Some(pid))
        .collect::<Vec<_>>()
    };
    let mounted = || mounts_below(Path::new(&staging)).len();
    d.stop();
    d.env = vec![("BINDERY_CRASH_AT".into(), point.into())];
    d.restart();
    assert!(!stage(&d).ok(), "{point}: the daemon should have died");
    assert!(d.wait_crashed(Duration::from_secs(60)), "{point}: no crash");
    assert_eq!(
        mounters().len(),
        1,
        "{point}: the spawned mounter outlives the daemon"
    );
    assert_eq!(mounted(), 0, "{point}: it has not mounted");
    d.env.clear();
    d.restart();
    // Recovery rolled the start back before the socket served: the
    // mounter is gone, and the mount it made when told to stop with it.
    assert!(
        mounters().is_empty(),
        "{point}: {:?}\n{}",
        mounters(),
        d.log_text()
    );
    assert_eq!(
        mounted(),
        0,
        "{point}: a mount was left at the staging path\n{}",
        d.log_text()
    );
    fs::write(&gate, "").unwrap();
    let out = stage(&d);
    assert!(
        out.ok(),
        "{point}: retried stage: {out:?}\n{}",
        d.log_text()
    );
    assert_eq!(mounters().len(), 1);
    assert_eq!(mounted(), 1);
    assert!(d.unstage("gated", &staging).ok());
    wait_until("mounter gone", 20, || mounters().is_empty());
    assert_eq!(mounted(), 0);
}
