//! Warm cache volumes against the real thing: real trees, hardlinks,
//! reflinks on an XFS image, tmpfs, overlay mounts, as root inside the
//! private namespace of .ci/test (.ci/in-namespace).

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A daemon with one declared cache `nm` built from a generated tree.
struct CacheNode {
    d: Daemon,
    source: PathBuf,
    _src: Scratch,
}

fn cache_node(
    parent: &Path,
    strategy: &str,
    dirs: usize,
    files: usize,
    extra: &[&str],
) -> CacheNode {
    let src = Scratch::new_in(parent, "src");
    let source = src.path.join("node_modules");
    make_tree(&source, dirs, files);
    let conf = src.path.join("caches.conf");
    fs::write(
        &conf,
        format!(
            "[cache nm]\nsource = dir:{}\nstrategy = {strategy}\n",
            source.display()
        ),
    )
    .unwrap();
    let conf_flag = format!("--cache-config={}", conf.display());
    let mut args = vec![conf_flag.as_str()];
    args.extend_from_slice(extra);
    let d = Daemon::start_in(parent, &args);
    CacheNode {
        d,
        source,
        _src: src,
    }
}

impl CacheNode {
    fn target(&self, pod: &str) -> String {
        self.d
            .kpath(&format!("pods/{pod}/volumes/kubernetes.io~csi/cache/mount"))
    }

    fn publish(&self, pod: &str, attrs: &[&str]) -> Out {
        let target = self.target(pod);
        let mut a = vec!["node-publish", "--volume-id", pod, "--target-path", &target];
        let params: Vec<String> = attrs.iter().map(|kv| format!("--param={kv}")).collect();
        a.extend(params.iter().map(String::as_str));
        a.extend(["--param", "csi.storage.k8s.io/ephemeral=true"]);
        self.d.csi(&a)
    }

    fn unpublish(&self, pod: &str) -> Out {
        self.d.csi(&[
            "node-unpublish",
            "--volume-id",
            pod,
            "--target-path",
            &self.target(pod),
        ])
    }

    fn versions(&self) -> Vec<PathBuf> {
        let dir = self.d.state.join("golden/nm");
        let mut v: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.retain(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        });
        v.sort();
        v
    }

    /// The newest golden version, once the background build made one (the
    /// daemon answers before its caches are built).
    fn golden(&self) -> PathBuf {
        wait("a built version", 60, || !self.versions().is_empty());
        self.versions().pop().expect("a built version")
    }

    fn wait_trash_empty(&self) {
        let trash = self.d.kubelet.join("plugins/bindery.csi.dev/trash");
        wait("trash emptied", 30, || {
            fs::read_dir(&trash)
                .map(|mut r| r.next().is_none())
                .unwrap_or(true)
        });
    }
}

fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn ino(p: &Path) -> u64 {
    p.symlink_metadata().unwrap().ino()
}

#[test]
fn hardlink_copy_and_overlay_give_independent_pods() {
    if !can_mount("hardlink_copy_and_overlay_give_independent_pods") {
        return;
    }
    let n = cache_node(&std::env::temp_dir(), "auto", 20, 10, &[]);
    let golden = n.golden();
    let want = tree_listing(&golden);
    assert_eq!(tree_listing(&n.source).len(), want.len());

    let a = n.publish(
        "pod-a",
        &[
            "cache=nm",
            "placeCacheAtPath=app/node_modules",
            "uid=1000",
            "gid=2000",
        ],
    );
    assert!(a.ok(), "{a:?}");
    let b = n.publish(
        "pod-b",
        &["cache=nm", "strategy=copy", "uid=1000", "gid=2000"],
    );
    assert!(b.ok(), "{b:?}");
    let c = n.publish("pod-c", &["cache=nm", "strategy=overlay"]);
    assert!(c.ok(), "{c:?}");
    let ra = PathBuf::from(n.target("pod-a")).join("app/node_modules");
    let rb = PathBuf::from(n.target("pod-b"));
    let rc = PathBuf::from(n.target("pod-c"));
    for root in [&ra, &rb, &rc] {
        assert_eq!(
            tree_listing(root),
            want,
            "content and modes of {}",
            root.display()
        );
    }
    // Hardlink (auto on this filesystem): the files are the golden inodes;
    // the directories are the pod's own.
    let f = "pkg-3/lib/f1.js";
    assert_eq!(ino(&ra.join(f)), ino(&golden.join(f)));
    let dmeta = ra.join("pkg-3").symlink_metadata().unwrap();
    assert_eq!((dmeta.uid(), dmeta.gid()), (1000, 2000));
    let top = PathBuf::from(n.target("pod-a"))
        .join("app")
        .symlink_metadata()
        .unwrap();
    assert_eq!(
        (top.uid(), top.gid()),
        (1000, 2000),
        "placeCacheAtPath parents belong to the pod"
    );
    // Copy: own inodes and owner; writes stay in the pod.
    assert_ne!(ino(&rb.join(f)), ino(&golden.join(f)));
    assert_eq!(rb.join(f).symlink_metadata().unwrap().uid(), 1000);
    fs::write(rb.join(f), "changed by pod-b").unwrap();
    // Overlay: a mount whose writes go to the pod's upper dir.
    assert!(
        mounts_below(&rc).contains(&rc),
        "overlay mounted at the target"
    );
    fs::write(rc.join(f), "changed by pod-c").unwrap();
    fs::write(rc.join("new-file"), "pod-c only").unwrap();
    // A pod replacing a hardlinked file (what package managers do) is fine.
    fs::remove_file(ra.join(f)).unwrap();
    fs::write(ra.join(f), "replaced by pod-a").unwrap();
    for root in [&rb, &rc] {
        assert_ne!(tree_listing(root), tree_listing(&golden));
    }
    assert_eq!(tree_listing(&golden), want, "the golden copy never changes");
    assert!(!ra.join("new-file").exists() && !rb.join("new-file").exists());
    // Idempotent publish; other attributes on the same target: ALREADY_EXISTS.
    assert!(n
        .publish(
            "pod-b",
            &["cache=nm", "strategy=copy", "uid=1000", "gid=2000"]
        )
        .ok());
    assert_eq!(
        n.publish("pod-b", &["cache=nm", "strategy=hardlink"]).code,
        6
    );
    // Stats report the pod's tree.
    let st = n.d.csi(&[
        "node-stats",
        "--volume-id",
        "pod-b",
        "--target-path",
        &n.target("pod-b"),
    ]);
    assert!(
        st.ok() && st.stdout.contains("INODES") && st.stdout.contains("healthy"),
        "{st:?}"
    );
    // Unpublish removes the pod's whole tree and nothing else.
    for pod in ["pod-a", "pod-b", "pod-c"] {
        let out = n.unpublish(pod);
        assert!(out.ok(), "{out:?}");
        assert!(!Path::new(&n.target(pod)).exists(), "{pod} target left");
        assert!(n.unpublish(pod).ok(), "idempotent");
    }
    let vol_c = PathBuf::from(n.target("pod-c"))
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(!vol_c.join("bindery-upper").exists() && !vol_c.join("bindery-work").exists());
    assert!(mounts_below(&n.d.kubelet).is_empty());
    n.wait_trash_empty();
    assert_eq!(tree_listing(&golden), want);
    assert_eq!(
        tree_listing(&n.source).len(),
        want.len(),
        "source untouched"
    );
}

#[test]
fn bad_attributes_are_refused_and_change_nothing() {
    if !can_mount("bad_attributes_are_refused_and_change_nothing") {
        return;
    }
    let n = cache_node(&std::env::temp_dir(), "hardlink", 2, 2, &[]);
    let cases: &[(&[&str], &str)] = &[
        (&["cache=nope"], "declared: nm"),
        (
            &["cache=nm", "placeCacheAtPath=../escape"],
            "placeCacheAtPath",
        ),
        (&["cache=nm", "placeCacheAtPath=/etc"], "placeCacheAtPath"),
        (
            &["cache=nm", "placeCacheAtPath=a/../../b"],
            "placeCacheAtPath",
        ),
        (&["cache=nm", "strategy=teleport"], "strategy"),
        (&["cache=nm", "colour=blue"], "colour"),
        (&["cache=nm", "uid=root"], "uid"),
    ];
    for (attrs, needle) in cases {
        let out = n.publish("pod-x", attrs);
        assert_eq!(out.code, 3, "{attrs:?}: {out:?}");
        assert!(out.stderr.contains(needle), "{attrs:?}: {}", out.stderr);
    }
    assert!(
        !n.d.kubelet.join("pods").exists(),
        "nothing created for refused requests"
    );
}

#[test]
fn symlinks_planted_by_a_pod_are_never_followed() {
    if !can_mount("symlinks_planted_by_a_pod_are_never_followed") {
        return;
    }
    let n = cache_node(&std::env::temp_dir(), "hardlink", 3, 3, &[]);
    let outside = Scratch::new("outside");
    fs::write(outside.path.join("keep.txt"), "keep").unwrap();
    assert!(n.publish("pod-a", &["cache=nm"]).ok());
    let t = PathBuf::from(n.target("pod-a"));
    let golden = n.golden();
    let before = tree_listing(&golden);
    symlink("/etc", t.join("etc-link")).unwrap();
    symlink(&golden, t.join("golden-link")).unwrap();
    symlink(&outside.path, t.join("pkg-0/outside-link")).unwrap();
    fs::create_dir(t.join("locked")).unwrap();
    fs::set_permissions(
        t.join("locked"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    assert!(n.unpublish("pod-a").ok());
    n.wait_trash_empty();
    assert!(Path::new("/etc/hostname").exists() || Path::new("/etc/passwd").exists());
    assert_eq!(
        fs::read_to_string(outside.path.join("keep.txt")).unwrap(),
        "keep"
    );
    assert_eq!(tree_listing(&golden), before, "golden copy untouched");
    assert!(!t.exists());
}

#[test]
fn hardlink_tamper_is_detected_and_the_version_rebuilt() {
    if !can_mount("hardlink_tamper_is_detected_and_the_version_rebuilt") {
        return;
    }
    let n = cache_node(
        &std::env::temp_dir(),
        "hardlink",
        4,
        4,
        &["--watchdog-interval=1"],
    );
    assert!(n.publish("pod-a", &["cache=nm"]).ok());
    let v1 = n.golden();
    let f = "pkg-1/lib/f2.js";
    let original = fs::read_to_string(n.source.join(f)).unwrap();
    // A root pod writes in place through its hardlink: the shared inode changes.
    fs::write(PathBuf::from(n.target("pod-a")).join(f), "evil").unwrap();
    assert_eq!(fs::read_to_string(v1.join(f)).unwrap(), "evil");
    // Unpublishing triggers a check: the version is retired and rebuilt.
    assert!(n.unpublish("pod-a").ok());
    wait("rebuilt version", 30, || n.golden() != v1);
    let v2 = n.golden();
    assert_eq!(fs::read_to_string(v2.join(f)).unwrap(), original);
    // New pods get the rebuilt copy, never the tampered one.
    assert!(n.publish("pod-b", &["cache=nm"]).ok());
    let got = fs::read_to_string(PathBuf::from(n.target("pod-b")).join(f)).unwrap();
    assert_eq!(got, original);
    assert!(n.d.log_text().contains("retiring the version"));
    // The tampered version, now unused, is collected.
    wait("tampered version collected", 30, || !v1.exists());
    assert!(n.unpublish("pod-b").ok());
}

#[test]
fn new_versions_are_picked_up_and_old_ones_collected() {
    if !can_mount("new_versions_are_picked_up_and_old_ones_collected") {
        return;
    }
    let n = cache_node(
        &std::env::temp_dir(),
        "hardlink",
        2,
        2,
        &["--watchdog-interval=1"],
    );
    assert!(n.publish("pod-a", &["cache=nm"]).ok());
    let v1 = n.golden();
    fs::write(n.source.join("VERSION"), "2").unwrap();
    // Build a new version while the daemon runs.
    let conf = format!(
        "--cache-config={}",
        n.source.parent().unwrap().join("caches.conf").display()
    );
    let out = Command::new(BIN)
        .args(["cache", "build", "nm", &conf])
        .arg(format!("--state-dir={}", n.d.state.display()))
        .arg(format!("--kubelet-dir={}", n.d.kubelet.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v2 = n.golden();
    assert_ne!(v1, v2);
    assert!(n.publish("pod-b", &["cache=nm"]).ok());
    assert_eq!(
        fs::read_to_string(PathBuf::from(n.target("pod-b")).join("VERSION")).unwrap(),
        "2"
    );
    assert!(
        !PathBuf::from(n.target("pod-a")).join("VERSION").exists(),
        "pod-a keeps its version"
    );
    assert!(v1.exists(), "v1 is in use by pod-a");
    assert!(n.unpublish("pod-a").ok());
    wait("v1 collected", 30, || !v1.exists());
    assert!(v2.exists());
    assert!(n.unpublish("pod-b").ok());
}

#[test]
fn crash_during_population_then_retry_yields_a_complete_volume() {
    if !can_mount("crash_during_population_then_retry_yields_a_complete_volume") {
        return;
    }
    let mut n = cache_node(&std::env::temp_dir(), "copy", 300, 60, &["--workers=1"]);
    let want = tree_listing(&n.golden());
    let target = PathBuf::from(n.target("pod-a"));
    let socket = n.d.socket.clone();
    let t2 = target.display().to_string();
    let publish = thread::spawn(move || {
        Command::new(BIN)
            .args([
                "csi",
                "node-publish",
                "--volume-id",
                "pod-a",
                "--target-path",
                &t2,
                "--param",
                "cache=nm",
            ])
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .output()
            .unwrap()
    });
    wait("population started", 30, || target.join("pkg-1").exists());
    n.d.kill9();
    let _ = publish.join();
    n.d.restart();
    let out = n.publish("pod-a", &["cache=nm"]);
    assert!(out.ok(), "{out:?}");
    assert_eq!(
        tree_listing(&target),
        want,
        "retry after a crash yields the complete tree"
    );
    assert!(
        n.d.log_text().contains("starting over"),
        "the retry saw the interrupted population"
    );
    assert!(n.unpublish("pod-a").ok());
}

fn strategies_on(dir: &Path, expect_auto: &str) {
    let n = cache_node(dir, "auto", 10, 10, &[]);
    let golden = n.golden();
    let want = tree_listing(&golden);
    assert!(n.publish("pod-a", &["cache=nm"]).ok());
    assert!(n.publish("pod-b", &["cache=nm", "strategy=copy"]).ok());
    assert!(
        n.d.log_text().contains(&format!("by {expect_auto}")),
        "auto should pick {expect_auto}"
    );
    let f = "pkg-2/lib/f3.js";
    for pod in ["pod-a", "pod-b"] {
        let root = PathBuf::from(n.target(pod));
        assert_eq!(tree_listing(&root), want);
    }
    let a = PathBuf::from(n.target("pod-a"));
    if expect_auto == "reflink" {
        assert_ne!(ino(&a.join(f)), ino(&golden.join(f)));
        fs::write(a.join(f), "pod-a's own bytes").unwrap();
        assert_eq!(
            tree_listing(&golden),
            want,
            "copy-on-write: golden bytes unchanged"
        );
    } else {
        assert_eq!(ino(&a.join(f)), ino(&golden.join(f)));
    }
    for pod in ["pod-a", "pod-b"] {
        assert!(n.unpublish(pod).ok());
    }
    n.wait_trash_empty();
    assert_eq!(tree_listing(&golden), want);
}

#[test]
fn reflink_on_xfs() {
    if !can_mount("reflink_on_xfs") {
        return;
    }
    match std::env::var_os("BINDERY_XFS_DIR") {
        Some(dir) => strategies_on(Path::new(&dir), "reflink"),
        None => {
            eprintln!("SKIP reflink_on_xfs: BINDERY_XFS_DIR not set (.ci/in-namespace sets it)")
        }
    }
}

#[test]
fn hardlink_on_tmpfs() {
    if !can_mount("hardlink_on_tmpfs") {
        return;
    }
    match std::env::var_os("BINDERY_TMPFS_DIR") {
        Some(dir) => strategies_on(Path::new(&dir), "hardlink"),
        None => eprintln!(
            "SKIP hardlink_on_tmpfs: BINDERY_TMPFS_DIR not set (.ci/in-namespace sets it)"
        ),
    }
}

/// An s3: cache source is fetched through a short-lived mount of the real
/// S3 server, then served like any other golden version.
#[test]
fn s3_source_is_fetched_through_a_mounter() {
    if !can_mount("s3_source_is_fetched_through_a_mounter") {
        return;
    }
    let s3 = S3Server::start(&["models"]);
    let obj = s3.dir.join("models/resnet");
    fs::create_dir_all(obj.join("layers")).unwrap();
    fs::write(obj.join("config.json"), "{\"layers\": 50}").unwrap();
    fs::write(obj.join("layers/0.bin"), vec![7u8; 100_000]).unwrap();
    let conf_dir = Scratch::new("s3conf");
    let creds = conf_dir.path.join("credentials");
    fs::write(
        &creds,
        format!("accessKeyID={ACCESS_KEY}\nsecretAccessKey={SECRET_KEY}\n"),
    )
    .unwrap();
    let conf = conf_dir.path.join("caches.conf");
    fs::write(
        &conf,
        format!(
            "[cache models]\nsource = s3:models/resnet\nendpoint = {}\ncredentials = {}\nstrategy = copy\n",
            s3.endpoint,
            creds.display()
        ),
    )
    .unwrap();
    let d = Daemon::start(&[&format!("--cache-config={}", conf.display())]);
    let target = d.kpath("pods/p/volumes/kubernetes.io~csi/m/mount");
    let out = d.csi(&[
        "node-publish",
        "--volume-id",
        "csi-m",
        "--target-path",
        &target,
        "--param",
        "cache=models",
    ]);
    assert!(out.ok(), "{out:?}");
    let t = PathBuf::from(&target);
    assert_eq!(
        fs::read_to_string(t.join("config.json")).unwrap(),
        "{\"layers\": 50}"
    );
    assert_eq!(
        fs::read(t.join("layers/0.bin")).unwrap(),
        vec![7u8; 100_000]
    );
    assert!(!d.log_text().contains(SECRET_KEY), "secret in the log");
    assert!(
        pids_matching(|c| c.starts_with("s3fs ")).is_empty(),
        "the fetch mount is gone"
    );
    assert!(d
        .csi(&[
            "node-unpublish",
            "--volume-id",
            "csi-m",
            "--target-path",
            &target
        ])
        .ok());
    assert!(mounts_below(&d.scratch.path).is_empty());
}
