//! Warm cache volumes against the real thing: real trees, hardlinks,
//! reflinks on an XFS image, tmpfs, overlay mounts, as root inside the
//! private namespace of .ci/test (.ci/in-namespace).

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

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
    cache_node_conf(
        parent,
        &format!("strategy = {strategy}\n"),
        dirs,
        files,
        extra,
    )
}

/// A daemon whose cache `nm` has the declaration lines `keys` (besides its source);
/// `{source}` in `keys` names the generated source tree.
fn cache_node_conf(
    parent: &Path,
    keys: &str,
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
            "[cache nm]\nsource = dir:{}\n{}{}",
            source.display(),
            // Open to every namespace unless the test restricts it.
            if keys.contains("namespaces") {
                ""
            } else {
                "namespaces = *\n"
            },
            keys.replace("{source}", &source.display().to_string())
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
        self.publish_with(pod, attrs, &[])
    }

    /// Publish with extra client flags (`--readonly`, `--mount-group=G`).
    fn publish_with(&self, pod: &str, attrs: &[&str], flags: &[&str]) -> Out {
        let target = self.target(pod);
        let mut a = vec!["node-publish", "--volume-id", pod, "--target-path", &target];
        a.extend_from_slice(flags);
        // What the kubelet adds with podInfoOnMount (a test's attrs come later
        // and can override it).
        let uid = format!("csi.storage.k8s.io/pod.uid={pod}");
        a.extend(["--param", &uid]);
        let params: Vec<String> = attrs.iter().map(|kv| format!("--param={kv}")).collect();
        a.extend(params.iter().map(String::as_str));
        a.extend(["--param", "csi.storage.k8s.io/ephemeral=true"]);
        self.d.csi(&a)
    }

    fn unpublish(&self, pod: &str) -> Out {
        self.d.unpublish(pod, &self.target(pod))
    }

    fn versions(&self) -> Vec<PathBuf> {
        let dir = self.d.kubelet.join("plugins/bindery.csi.dev/golden/nm");
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
        wait_until("a built version", 60, || !self.versions().is_empty());
        self.versions().pop().expect("a built version")
    }

    /// `bindery cache build nm` while the daemon runs: a new current version.
    fn build_cli(&self) {
        let conf = format!(
            "--cache-config={}",
            self.source.parent().unwrap().join("caches.conf").display()
        );
        let out = Command::new(BIN)
            .args(["cache", "build", "nm", &conf])
            .arg(format!("--state-dir={}", self.d.state.display()))
            .arg(format!("--kubelet-dir={}", self.d.kubelet.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn wait_trash_empty(&self) {
        let trash = self.d.kubelet.join("plugins/bindery.csi.dev/trash");
        wait_until("trash emptied", 30, || {
            fs::read_dir(&trash)
                .map(|mut r| r.next().is_none())
                .unwrap_or(true)
        });
    }
}

fn ino(p: &Path) -> u64 {
    p.symlink_metadata().unwrap().ino()
}

#[test]
fn auto_copy_and_overlay_give_independent_pods() {
    if !can_mount("auto_copy_and_overlay_give_independent_pods") {
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
    // What a pod's overlay claims (a setuid file, a device node) grants nothing.
    let opts = mount_options(Path::new(&n.target("pod-c"))).unwrap();
    for want in ["nosuid", "nodev"] {
        assert!(
            opts.split(',').any(|o| o == want),
            "{want} missing from {opts}"
        );
    }
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
    // auto (reflink or overlay): never the golden inodes; directories are the pod's.
    let f = "pkg-3/lib/f1.js";
    assert_ne!(ino(&ra.join(f)), ino(&golden.join(f)));
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
    // A pod replacing a file (what package managers do) is fine.
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
        n.publish("pod-b", &["cache=nm", "strategy=overlay"]).code,
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
    let n = cache_node_conf(
        &std::env::temp_dir(),
        "strategies = copy, overlay\n",
        2,
        2,
        &[],
    );
    let cases: &[(&[&str], &str)] = &[
        (&["cache=nm", "strategy=reflink"], "volume_context.strategy"),
        (&["cache=nm", "strategy=hardlink"], "allowed: copy, overlay"),
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
    let n = cache_node(&std::env::temp_dir(), "copy", 3, 3, &[]);
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

/// Write `data` over the start of `p` in place (same size) and put the mtime back,
/// as a root pod hiding a change would.
fn write_in_place_keep_mtime(p: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    let before = fs::metadata(p)?;
    let mut f = fs::OpenOptions::new().write(true).open(p)?;
    f.seek(std::io::SeekFrom::Start(0))?;
    f.write_all(data)?;
    f.set_times(fs::FileTimes::new().set_modified(before.modified()?))?;
    drop(f);
    let after = fs::metadata(p)?;
    assert_eq!(
        (after.len(), after.mtime(), after.mtime_nsec()),
        (before.len(), before.mtime(), before.mtime_nsec())
    );
    Ok(())
}

/// Tenants trusted with shared inodes: hardlink pods share a copy of their own, so
/// a root pod's in-place write (mtime restored) never reaches the golden version;
/// the shared copy is found changed by content and replaced for later pods.
#[test]
fn trusted_hardlink_tamper_never_reaches_other_strategies() {
    if !can_mount("trusted_hardlink_tamper_never_reaches_other_strategies") {
        return;
    }
    let n = cache_node_conf(
        &std::env::temp_dir(),
        "strategies = hardlink, copy\ntrust_tenants_with_shared_inodes = true\n",
        4,
        4,
        &["--watchdog-interval=1"],
    );
    assert!(n.publish("pod-a", &["cache=nm"]).ok());
    let v1 = n.golden();
    let f = "pkg-1/lib/f2.js";
    let original = fs::read(n.source.join(f)).unwrap();
    let pod_a = PathBuf::from(n.target("pod-a")).join(f);
    assert_ne!(ino(&pod_a), ino(&v1.join(f)), "not the golden inode");
    let evil = vec![b'X'; original.len()];
    write_in_place_keep_mtime(&pod_a, &evil).unwrap();
    assert_eq!(fs::read(v1.join(f)).unwrap(), original, "golden untouched");
    // Later publishes by another strategy see the original bytes at once.
    assert!(n.publish("pod-b", &["cache=nm", "strategy=copy"]).ok());
    let pod_b = PathBuf::from(n.target("pod-b")).join(f);
    assert_eq!(fs::read(&pod_b).unwrap(), original);
    // The shared copy is checked by content: replaced, and later hardlink pods get
    // the original bytes.
    assert!(n.unpublish("pod-b").ok());
    wait_until("shared copy replaced", 30, || {
        n.d.log_text().contains("shared hardlink copy modified")
    });
    assert!(n.publish("pod-c", &["cache=nm"]).ok());
    let pod_c = PathBuf::from(n.target("pod-c")).join(f);
    assert_eq!(fs::read(&pod_c).unwrap(), original);
    assert_ne!(ino(&pod_c), ino(&pod_a));
    assert_eq!(n.golden(), v1, "the golden version was never touched");
    for pod in ["pod-a", "pod-c"] {
        assert!(n.unpublish(pod).ok());
    }
}

/// Defence in depth: a same-size write with the mtime restored, made on a golden
/// version itself, is found by content; the version is retired and rebuilt.
#[test]
fn golden_tamper_is_found_by_content_and_the_version_rebuilt() {
    if !can_mount("golden_tamper_is_found_by_content_and_the_version_rebuilt") {
        return;
    }
    let n = cache_node(
        &std::env::temp_dir(),
        "copy",
        4,
        4,
        &["--watchdog-interval=1"],
    );
    assert!(n.publish("pod-a", &["cache=nm"]).ok());
    let v1 = n.golden();
    let f = "pkg-1/lib/f2.js";
    let original = fs::read(n.source.join(f)).unwrap();
    write_in_place_keep_mtime(&v1.join(f), &vec![b'Y'; original.len()]).unwrap();
    assert!(n.unpublish("pod-a").ok());
    wait_until("rebuilt version", 30, || n.golden() != v1);
    let v2 = n.golden();
    assert_eq!(fs::read(v2.join(f)).unwrap(), original);
    assert!(n.publish("pod-b", &["cache=nm"]).ok());
    let got = fs::read(PathBuf::from(n.target("pod-b")).join(f)).unwrap();
    assert_eq!(got, original);
    assert!(n.d.log_text().contains("retiring the version"));
    wait_until("tampered version collected", 30, || !v1.exists());
    assert!(n.unpublish("pod-b").ok());
}

#[test]
fn new_versions_are_picked_up_and_old_ones_collected() {
    if !can_mount("new_versions_are_picked_up_and_old_ones_collected") {
        return;
    }
    let n = cache_node(
        &std::env::temp_dir(),
        "copy",
        2,
        2,
        &["--watchdog-interval=1"],
    );
    assert!(n.publish("pod-a", &["cache=nm"]).ok());
    let v1 = n.golden();
    fs::write(n.source.join("VERSION"), "2").unwrap();
    n.build_cli();
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
    wait_until("v1 collected", 30, || !v1.exists());
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
    wait_until("population started", 30, || target.join("pkg-1").exists());
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
        n.d.log_text()
            .contains("removing the interrupted cache volume"),
        "recovery removed the interrupted population before serving"
    );
    assert!(n.unpublish("pod-a").ok());
}

fn strategies_on(dir: &Path, expect_auto: &str) {
    let n = cache_node(dir, "auto", 10, 10, &[]);
    let golden = n.golden();
    let want = tree_listing(&golden);
    assert!(n.publish("pod-a", &["cache=nm"]).ok());
    assert!(n.publish("pod-b", &["cache=nm", "strategy=copy"]).ok());
    let a = PathBuf::from(n.target("pod-a"));
    if expect_auto == "reflink" {
        assert!(
            n.d.log_text().contains("by reflink"),
            "auto should pick reflink"
        );
        assert!(!mounts_below(&a).contains(&a));
    } else {
        assert!(mounts_below(&a).contains(&a), "auto should pick overlay");
    }
    let f = "pkg-2/lib/f3.js";
    for pod in ["pod-a", "pod-b"] {
        let root = PathBuf::from(n.target(pod));
        assert_eq!(tree_listing(&root), want);
    }
    if expect_auto == "reflink" {
        // (overlay shows the lower inode numbers of files not copied up)
        assert_ne!(ino(&a.join(f)), ino(&golden.join(f)));
    }
    fs::write(a.join(f), "pod-a's own bytes").unwrap();
    assert_eq!(
        tree_listing(&golden),
        want,
        "copy-on-write: golden bytes unchanged"
    );
    // Reflink where FICLONE does not work is refused, naming the field.
    if expect_auto != "reflink" {
        let out = n.publish("pod-c", &["cache=nm", "strategy=reflink"]);
        assert_eq!(out.code, 3, "{out:?}");
        assert!(out.stderr.contains("FICLONE"), "{}", out.stderr);
    }
    // So is a snapshot where the store is not on btrfs, leaving the target empty.
    let out = n.publish("pod-s", &["cache=nm", "strategy=snapshot"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("volume_context.strategy") && out.stderr.contains("snapshot:"),
        "{}",
        out.stderr
    );
    let left = fs::read_dir(n.target("pod-s")).map_or(0, |r| r.count());
    assert_eq!(left, 0, "a refused snapshot leaves nothing in the target");
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
    if let Some(dir) = env_dir("BINDERY_XFS_DIR", "reflink_on_xfs") {
        strategies_on(Path::new(&dir), "reflink");
    }
}

/// btrfs subvolumes whose path (relative to the filesystem's top) contains
/// `part`, as `btrfs subvolume list` prints them.
fn subvolumes_named(fs_root: &Path, part: &str) -> Vec<String> {
    let out = Command::new("btrfs")
        .args(["subvolume", "list"])
        .arg(fs_root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(" path ").nth(1))
        .filter(|p| p.contains(part))
        .map(str::to_string)
        .collect()
}

/// On btrfs the golden versions are read-only subvolumes and auto publishes
/// one snapshot per pod: the pod's own writable, private tree (with the
/// owner it asked for). Unpublish destroys the snapshot, even when the pod
/// made a subvolume of its own inside it; the golden bytes never change.
#[test]
fn snapshot_on_btrfs() {
    if !can_mount("snapshot_on_btrfs") {
        return;
    }
    let Some(fs_root) = env_dir("BINDERY_BTRFS_DIR", "snapshot_on_btrfs") else {
        return;
    };
    let n = cache_node_conf(&fs_root, "strategies = auto, snapshot, copy\n", 10, 10, &[]);
    let golden = n.golden();
    let want = tree_listing(&golden);
    let err = fs::write(golden.join("pkg-1/lib/f1.js"), "root writes").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS even for root: {err}");

    assert!(n.publish("pod-a", &["cache=nm"]).ok());
    assert!(
        n.d.log_text().contains("snapshot of"),
        "auto picks snapshot"
    );
    let a = PathBuf::from(n.target("pod-a"));
    assert_eq!(ino(&a), 256, "the pod's tree is a subvolume");
    assert!(!mounts_below(&a).contains(&a), "no mount");
    let b = n.publish(
        "pod-b",
        &[
            "cache=nm",
            "strategy=snapshot",
            "placeCacheAtPath=app/nm",
            "uid=1000",
            "gid=2000",
        ],
    );
    assert!(b.ok(), "{b:?}");
    let rb = PathBuf::from(n.target("pod-b")).join("app/nm");
    let f = "pkg-2/lib/f3.js";
    for (root, owner) in [(&a, (0, 0)), (&rb, (1000, 2000))] {
        assert_eq!(tree_listing(root), want, "{}", root.display());
        let m = root.join(f).symlink_metadata().unwrap();
        assert_eq!((m.uid(), m.gid()), owner, "{}", root.display());
        let d = root.join("pkg-2").symlink_metadata().unwrap();
        assert_eq!((d.uid(), d.gid()), owner, "{}", root.display());
    }
    let ro = n.publish_with("pod-r", &["cache=nm", "strategy=snapshot"], &["--readonly"]);
    assert!(ro.ok(), "{ro:?}");
    let rr = PathBuf::from(n.target("pod-r"));
    let err = fs::write(rr.join(f), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "read-only publish: {err}");

    // What pod-a does stays in pod-a.
    fs::remove_file(a.join(f)).unwrap();
    fs::write(a.join(f), "pod-a's own bytes").unwrap();
    fs::remove_dir_all(a.join("pkg-3")).unwrap();
    let nested = Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(a.join("pods-own"))
        .output()
        .unwrap();
    assert!(nested.status.success(), "{nested:?}");
    fs::write(a.join("pods-own/f"), "x").unwrap();
    assert_eq!(tree_listing(&golden), want, "golden unchanged");
    assert_eq!(tree_listing(&rb), want, "pod-b unchanged");
    let c = n.publish("pod-c", &["cache=nm"]);
    assert!(c.ok(), "{c:?}");
    assert_eq!(tree_listing(Path::new(&n.target("pod-c"))), want);

    let hl = n.publish_with("pod-h", &["cache=nm", "strategy=hardlink"], &["--readonly"]);
    assert_eq!(hl.code, 3, "{hl:?}");

    let pods = n.d.kubelet.join("pods");
    let rel = pods.strip_prefix(&fs_root).unwrap().display().to_string();
    assert_eq!(
        subvolumes_named(&fs_root, &rel).len(),
        5,
        "a, nested, b, r, c"
    );
    for pod in ["pod-a", "pod-b", "pod-r", "pod-c"] {
        assert!(n.unpublish(pod).ok(), "{pod}");
        assert!(!Path::new(&n.target(pod)).exists(), "{pod}");
    }
    n.wait_trash_empty();
    let kubelet =
        n.d.kubelet
            .strip_prefix(&fs_root)
            .unwrap()
            .display()
            .to_string();
    let left = subvolumes_named(&fs_root, &kubelet);
    assert!(
        left.iter().all(|p| p.contains("/golden/")),
        "only the golden store's subvolumes are left: {left:?}"
    );
    assert_eq!(tree_listing(&golden), want);
}

/// On btrfs, a cache whose strategies name hardlink keeps its versions as
/// plain directories: read-only hardlink pods work there as elsewhere, and a
/// snapshot of such a version is refused, saying why.
#[test]
fn hardlink_caches_on_btrfs_keep_plain_versions() {
    if !can_mount("hardlink_caches_on_btrfs_keep_plain_versions") {
        return;
    }
    let Some(fs_root) = env_dir(
        "BINDERY_BTRFS_DIR",
        "hardlink_caches_on_btrfs_keep_plain_versions",
    ) else {
        return;
    };
    let n = cache_node_conf(
        &fs_root,
        "strategies = copy, hardlink, snapshot\n",
        5,
        5,
        &[],
    );
    let golden = n.golden();
    assert_ne!(ino(&golden), 256, "a plain directory, not a subvolume");
    let hl = n.publish_with("pod-h", &["cache=nm", "strategy=hardlink"], &["--readonly"]);
    assert!(hl.ok(), "{hl:?}");
    let f = "pkg-1/lib/f1.js";
    let h = PathBuf::from(n.target("pod-h"));
    assert_eq!(ino(&h.join(f)), ino(&golden.join(f)), "linked");
    let snap = n.publish("pod-s", &["cache=nm", "strategy=snapshot"]);
    assert_eq!(snap.code, 3, "{snap:?}");
    assert!(
        snap.stderr.contains("not a btrfs subvolume"),
        "{}",
        snap.stderr
    );
    assert!(n.unpublish("pod-h").ok());
    n.wait_trash_empty();
    assert_eq!(
        fs::read(golden.join(f)).unwrap(),
        fs::read(n.source.join(f)).unwrap()
    );
}

#[test]
fn overlay_on_tmpfs() {
    if !can_mount("overlay_on_tmpfs") {
        return;
    }
    if let Some(dir) = env_dir("BINDERY_TMPFS_DIR", "overlay_on_tmpfs") {
        strategies_on(Path::new(&dir), "overlay");
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
            "[cache models]\nsource = s3:models/resnet\nendpoint = {}\ncredentials = {}\nstrategy = copy\nnamespaces = *\n",
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
    assert!(d.unpublish("csi-m", &target).ok());
    assert!(mounts_below(&d.scratch.path).is_empty());
}

/// The golden store lives on the pods' mount, and strategies follow real probes:
/// with the store on a bind mount of its own (same filesystem, same st_dev, as a
/// separate hostPath volume would be), linkat fails with EXDEV and hardlink is
/// refused saying so; copy and overlay still work.
#[test]
fn golden_store_on_the_pods_mount_and_strategies_follow_probes() {
    if !can_mount("golden_store_on_the_pods_mount_and_strategies_follow_probes") {
        return;
    }
    let n = cache_node_conf(
        &std::env::temp_dir(),
        "strategies = copy, hardlink, overlay\n",
        3,
        3,
        &[],
    );
    let store = n.d.kubelet.join("plugins/bindery.csi.dev/golden");
    assert!(n.golden().starts_with(&store), "{:?}", n.golden());
    assert!(
        !n.d.state.join("golden").exists(),
        "nothing under --state-dir"
    );
    let st = Command::new("mount")
        .arg("--bind")
        .arg(&store)
        .arg(&store)
        .status()
        .unwrap();
    assert!(st.success());
    let pods = n.d.kubelet.join("pods");
    fs::create_dir_all(&pods).unwrap();
    assert_eq!(
        pods.metadata().unwrap().dev(),
        store.metadata().unwrap().dev(),
        "same filesystem: st_dev cannot tell"
    );
    let out = n.publish_with("pod-x", &["cache=nm", "strategy=hardlink"], &["--readonly"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("EXDEV") && out.stderr.contains("volume_context.strategy"),
        "{}",
        out.stderr
    );
    assert!(n.publish("pod-y", &["cache=nm"]).ok());
    assert!(n.publish("pod-z", &["cache=nm", "strategy=overlay"]).ok());
    for pod in ["pod-x", "pod-y", "pod-z"] {
        let out = n.unpublish(pod);
        assert!(out.ok(), "{out:?}");
    }
    let _ = Command::new("umount").arg("-l").arg(&store).status();
}

/// A declaration says who may use a cache and which strategies; refusals name the
/// attribute; a bad declaration disables only its own cache.
#[test]
fn tenancy_and_a_bad_declaration() {
    if !can_mount("tenancy_and_a_bad_declaration") {
        return;
    }
    let n = cache_node_conf(
        &std::env::temp_dir(),
        "namespaces = team-a, team-b\nstrategies = overlay, copy\n\
         [cache broken]\nsource = dir:relative/path\n\
         [cache open]\nsource = dir:{source}\nnamespaces = *\nstrategies = copy\n",
        2,
        2,
        &[],
    );
    let ns = |v: &str| format!("csi.storage.k8s.io/pod.namespace={v}");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["cache=nm".into()], "csi.storage.k8s.io/pod.namespace"),
        (vec!["cache=nm".into(), ns("team-c")], "may not use"),
        // A namespace the pod wrote itself: the pod UID is not the kubelet's.
        (
            vec![
                "cache=nm".into(),
                ns("team-a"),
                "csi.storage.k8s.io/pod.uid=another-pod".into(),
            ],
            "csi.storage.k8s.io/pod.uid",
        ),
        (
            vec!["cache=nm".into(), ns("team-a"), "strategy=reflink".into()],
            "volume_context.strategy",
        ),
        (vec!["cache=broken".into(), ns("team-a")], "disabled"),
    ];
    for (attrs, needle) in &cases {
        let a: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let out = n.publish("pod-x", &a);
        assert_eq!(out.code, 3, "{attrs:?}: {out:?}");
        assert!(out.stderr.contains(needle), "{attrs:?}: {}", out.stderr);
    }
    assert!(n.d.log_text().contains("cache \"broken\" is disabled"));
    // Allowed: the first strategy is the default (overlay).
    assert!(n.publish("pod-a", &["cache=nm", &ns("team-a")]).ok());
    let a = PathBuf::from(n.target("pod-a"));
    assert!(mounts_below(&a).contains(&a), "default strategy is overlay");
    assert!(n
        .publish("pod-b", &["cache=nm", &ns("team-b"), "strategy=copy"])
        .ok());
    // `namespaces = *`: any namespace, even without the key.
    assert!(n.publish("pod-c", &["cache=open"]).ok());
    // No `namespaces` key: no pod may use the cache.
    let closed = cache_node_conf(
        &std::env::temp_dir(),
        "# no namespaces key here\nstrategy = copy\n",
        1,
        1,
        &[],
    );
    let out = closed.publish("pod-d", &["cache=nm", &ns("team-a")]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("declares no namespaces"),
        "{}",
        out.stderr
    );
    assert!(!Path::new(&closed.target("pod-d")).exists());
    for pod in ["pod-a", "pod-b", "pod-c"] {
        assert!(n.unpublish(pod).ok());
    }
}

/// Hardlink gives the pod the golden inodes: refused for a writable publish unless
/// the declaration trusts its tenants (fs-verity or not: it seals contents, not
/// modes, owners or xattrs); a read-only publish is a read-only mount that even
/// root cannot write through.
#[test]
fn hardlink_only_read_only_here_and_root_gets_erofs() {
    if !can_mount("hardlink_only_read_only_here_and_root_gets_erofs") {
        return;
    }
    let n = cache_node_conf(
        &std::env::temp_dir(),
        "strategies = hardlink, copy\n",
        3,
        3,
        &[],
    );
    let out = n.publish("pod-w", &["cache=nm"]);
    assert_eq!(out.code, 3, "{out:?}");
    for needle in [
        "read-only",
        "xattrs",
        "trust_tenants_with_shared_inodes",
        "strategies",
    ] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
    assert!(n.d.log_text().contains("fs-verity probe in"));
    let ro = n.publish_with("pod-r", &["cache=nm"], &["--readonly"]);
    assert!(ro.ok(), "{ro:?}");
    let golden = n.golden();
    let f = "pkg-0/lib/f1.js";
    let t = PathBuf::from(n.target("pod-r"));
    assert_eq!(
        ino(&t.join(f)),
        ino(&golden.join(f)),
        "shares the golden inode"
    );
    let original = fs::read(golden.join(f)).unwrap();
    let e = write_in_place_keep_mtime(&t.join(f), &vec![b'Z'; original.len()]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(nix::libc::EROFS), "{e}");
    assert_eq!(fs::read(golden.join(f)).unwrap(), original);
    assert!(n.unpublish("pod-r").ok());
}

/// Root writes in place through a pod's tree with the mtime restored: for copy,
/// reflink and overlay, other pods and later publishes see the original bytes.
fn tamper_per_strategy_on(dir: &Path, strategies: &[&str]) {
    let n = cache_node(dir, "auto", 3, 3, &[]);
    let f = "pkg-1/lib/f1.js";
    let original = fs::read(n.source.join(f)).unwrap();
    for s in strategies {
        let (a, b, c) = (format!("{s}-a"), format!("{s}-b"), format!("{s}-c"));
        let attr = format!("strategy={s}");
        assert!(n.publish(&a, &["cache=nm", &attr]).ok(), "{s}");
        assert!(n.publish(&b, &["cache=nm", &attr]).ok(), "{s}");
        let pa = PathBuf::from(n.target(&a)).join(f);
        write_in_place_keep_mtime(&pa, &vec![b'Q'; original.len()]).unwrap();
        assert_ne!(fs::read(&pa).unwrap(), original);
        let pb = PathBuf::from(n.target(&b)).join(f);
        assert_eq!(fs::read(&pb).unwrap(), original, "{s}: other pod");
        assert!(n.publish(&c, &["cache=nm", &attr]).ok(), "{s}");
        let pc = PathBuf::from(n.target(&c)).join(f);
        assert_eq!(fs::read(&pc).unwrap(), original, "{s}: later publish");
        assert_eq!(fs::read(n.golden().join(f)).unwrap(), original);
        for pod in [a, b, c] {
            assert!(n.unpublish(&pod).ok());
        }
    }
}

#[test]
fn tamper_through_copy_and_overlay_stays_in_the_pod() {
    if !can_mount("tamper_through_copy_and_overlay_stays_in_the_pod") {
        return;
    }
    tamper_per_strategy_on(&std::env::temp_dir(), &["copy", "overlay"]);
}

#[test]
fn tamper_through_reflink_stays_in_the_pod() {
    if !can_mount("tamper_through_reflink_stays_in_the_pod") {
        return;
    }
    if let Some(dir) = env_dir("BINDERY_XFS_DIR", "tamper_through_reflink_stays_in_the_pod") {
        tamper_per_strategy_on(Path::new(&dir), &["reflink"]);
    }
}

/// fsGroup: published for volume_mount_group 2000, a pod running as 1000:1000 with
/// supplementary group 2000 creates, writes and deletes files anywhere in its tree.
fn fsgroup_on(dir: &Path, strategies: &[&str]) {
    // mktemp -d parents are 0700: let the unprivileged writer reach the scratch dirs.
    if let Some(parent) = dir.parent() {
        let _ = fs::set_permissions(parent, std::os::unix::fs::PermissionsExt::from_mode(0o711));
    }
    let n = cache_node(dir, "auto", 3, 3, &[]);
    for s in strategies {
        let pod = format!("fsg-{s}");
        let out = n.publish_with(
            &pod,
            &["cache=nm", &format!("strategy={s}")],
            &["--mount-group=2000"],
        );
        assert!(out.ok(), "{s}: {out:?}");
        let t = PathBuf::from(n.target(&pod));
        let m = t.join("pkg-0").symlink_metadata().unwrap();
        assert_eq!(m.gid(), 2000, "{s}");
        assert_eq!(m.mode() & 0o2070, 0o2070, "{s}: group rwx + setgid");
        let script = format!(
            "set -e; cd {t}; echo new > pkg-0/new-file; echo more >> pkg-0/lib/f1.js; \
             rm pkg-1/lib/f2.js; mkdir pkg-2/lib/sub; echo deep > pkg-2/lib/sub/f; \
             rm -r pkg-2/lib/sub; echo top > top-file; rm top-file",
            t = t.display()
        );
        let out = Command::new("setpriv")
            .args([
                "--reuid=1000",
                "--regid=1000",
                "--groups=2000",
                "sh",
                "-c",
                &script,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{s}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let created = t.join("pkg-0/new-file").symlink_metadata().unwrap();
        assert_eq!(
            (created.uid(), created.gid()),
            (1000, 2000),
            "{s}: setgid dirs"
        );
        assert!(!t.join("pkg-1/lib/f2.js").exists());
        assert!(n.unpublish(&pod).ok());
    }
}

#[test]
fn fsgroup_non_root_writer_copy_and_overlay() {
    if !can_mount("fsgroup_non_root_writer_copy_and_overlay") {
        return;
    }
    fsgroup_on(&std::env::temp_dir(), &["copy", "overlay"]);
}

#[test]
fn fsgroup_non_root_writer_reflink() {
    if !can_mount("fsgroup_non_root_writer_reflink") {
        return;
    }
    if let Some(dir) = env_dir("BINDERY_XFS_DIR", "fsgroup_non_root_writer_reflink") {
        fsgroup_on(Path::new(&dir), &["reflink", "overlay"]);
    }
}

/// Several pods starting together on a node without a built version: one build.
#[test]
fn concurrent_first_publishes_build_once() {
    if !can_mount("concurrent_first_publishes_build_once") {
        return;
    }
    let n = cache_node(
        &std::env::temp_dir(),
        "copy",
        200,
        20,
        &["--no-wait-for-caches"],
    );
    let socket = n.d.socket.clone();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let target = n.target(&format!("sf-{i}"));
            let socket = socket.clone();
            thread::spawn(move || {
                Command::new(BIN)
                    .args([
                        "csi",
                        "node-publish",
                        "--volume-id",
                        &format!("sf-{i}"),
                        "--target-path",
                        &target,
                        "--param",
                        "cache=nm",
                    ])
                    .arg(format!("--endpoint=unix://{}", socket.display()))
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(n.versions().len(), 1, "one build for all");
    assert_eq!(n.d.log_text().matches("cache nm: built version").count(), 1);
    for i in 0..4 {
        assert!(n.unpublish(&format!("sf-{i}")).ok());
    }
}

/// A node reboot takes every mount away and keeps the state dir. A recorded
/// overlay publication (and a read-only one) must never be handed back as
/// an empty directory called healthy: the stats say what is missing, a
/// repeated publish (the kubelet's, for a pod it still runs) mounts it
/// again over the pod's own upper dir, and a restarted daemon's recovery
/// does the same before it serves.
#[test]
fn lost_cache_mounts_are_restored_never_served_empty() {
    if !can_mount("lost_cache_mounts_are_restored_never_served_empty") {
        return;
    }
    let Some(dir) = env_dir(
        "BINDERY_TMPFS_DIR",
        "lost_cache_mounts_are_restored_never_served_empty",
    ) else {
        return;
    };
    let mut n = cache_node(Path::new(&dir), "auto", 3, 4, &["--watchdog-interval=0"]);
    n.golden();
    let out = n.publish("pod-o", &["cache=nm", "strategy=overlay"]);
    assert!(out.ok(), "{out:?}");
    let ro = n.publish_with("pod-r", &["cache=nm", "strategy=copy"], &["--readonly"]);
    assert!(ro.ok(), "{ro:?}");
    let (overlay, readonly) = (n.target("pod-o"), n.target("pod-r"));
    let full = tree_listing(Path::new(&overlay));
    fs::write(Path::new(&overlay).join("pod-wrote.txt"), "mine").unwrap();
    let stats = |d: &Daemon, pod: &str, t: &str| {
        d.csi(&["node-stats", "--volume-id", pod, "--target-path", t])
    };
    let lose_mounts = || {
        for t in [&overlay, &readonly] {
            unmount_below(Path::new(t));
        }
        assert!(mounts_below(Path::new(&overlay)).is_empty());
    };
    let whole = |d: &Daemon, what: &str| {
        assert_eq!(
            fs::read_to_string(Path::new(&overlay).join("pod-wrote.txt"))
                .ok()
                .as_deref(),
            Some("mine"),
            "{what}: the pod's own write is back"
        );
        let mut now = tree_listing(Path::new(&overlay));
        now.retain(|k, _| !k.to_string_lossy().contains("pod-wrote.txt"));
        assert_eq!(now, full, "{what}: the golden files are back");
        assert!(
            fs::write(Path::new(&readonly).join("x"), "no").is_err(),
            "{what}: read-only again"
        );
        for (pod, t) in [("pod-o", &overlay), ("pod-r", &readonly)] {
            let s = stats(d, pod, t);
            assert!(!s.stdout.contains("abnormal: true"), "{what}: {pod}: {s:?}");
        }
    };
    // Unmounted under a running daemon: the stats say so, the kubelet's
    // repeated publish restores it.
    lose_mounts();
    let s = stats(&n.d, "pod-o", &overlay);
    assert!(
        s.stdout.contains("abnormal: true") && s.stdout.contains("not mounted"),
        "{s:?}"
    );
    let s = stats(&n.d, "pod-r", &readonly);
    assert!(s.stdout.contains("abnormal: true"), "{s:?}");
    assert!(n.publish("pod-o", &["cache=nm", "strategy=overlay"]).ok());
    let again = n.publish_with("pod-r", &["cache=nm", "strategy=copy"], &["--readonly"]);
    assert!(again.ok(), "{again:?}");
    whole(&n.d, "after a repeated publish");
    // A reboot: the daemon stops, every mount goes, the daemon starts again.
    n.d.stop();
    lose_mounts();
    n.d.restart();
    whole(&n.d, "after recovery");
    for pod in ["pod-o", "pod-r"] {
        assert!(n.unpublish(pod).ok());
    }
    n.wait_trash_empty();
}

/// A record that cannot be read is quarantined, not forgotten: the volume's
/// stats say so, the overlay whose lower layer is an old version keeps that
/// version from being collected (the mount table says it is used), and the
/// kubelet's unpublish removes the pod's mounts and tree by path instead of
/// answering OK and leaving them behind.
#[test]
fn quarantined_records_are_reported_and_cleaned_by_path() {
    if !can_mount("quarantined_records_are_reported_and_cleaned_by_path") {
        return;
    }
    let mut n = cache_node(
        &std::env::temp_dir(),
        "overlay",
        2,
        3,
        &["--watchdog-interval=1"],
    );
    let v1 = n.golden();
    assert!(n.publish("pod-o", &["cache=nm", "strategy=overlay"]).ok());
    assert!(n.publish("pod-c", &["cache=nm", "strategy=copy"]).ok());
    let (overlay, copy) = (n.target("pod-o"), n.target("pod-c"));
    let want = tree_listing(Path::new(&overlay));
    n.d.stop();
    n.d.corrupt_record("pod-o");
    n.d.corrupt_record("pod-c");
    fs::write(n.source.join("VERSION"), "2").unwrap();
    n.build_cli();
    n.d.restart();
    assert_ne!(n.golden(), v1, "v1 is no longer current");
    let stats = n.d.csi(&[
        "node-stats",
        "--volume-id",
        "pod-o",
        "--target-path",
        &overlay,
    ]);
    assert!(
        stats.stdout.contains("abnormal: true") && stats.stdout.contains("quarantined"),
        "{stats:?}"
    );
    // Upkeep runs with every pass: v1 stays while the overlay uses it.
    n.d.wait_health_passes(3, 30);
    assert!(n.d.log_text().contains("quarantined at"));
    assert!(v1.exists(), "v1 is the lower layer of pod-o's overlay");
    assert_eq!(tree_listing(Path::new(&overlay)), want);
    for (pod, t) in [("pod-o", &overlay), ("pod-c", &copy)] {
        let out = n.unpublish(pod);
        assert!(out.ok(), "{pod}: {out:?}");
        assert!(mounts_below(Path::new(t)).is_empty(), "{pod}: mounts left");
        assert!(!Path::new(t).exists(), "{pod}: its tree is removed");
    }
    n.wait_trash_empty();
    wait_until("v1 collected once no mount uses it", 30, || !v1.exists());
}

/// Each owner an overlay pod asks for costs a copy of the cache: at most
/// `max_variants` per version. The next owner is refused with
/// RESOURCE_EXHAUSTED naming the key, changing nothing; once no overlay
/// uses a variant it is collected and the next owner gets a variant.
#[test]
fn owner_variants_are_bounded_and_collected() {
    if !can_mount("owner_variants_are_bounded_and_collected") {
        return;
    }
    let n = cache_node_conf(
        &std::env::temp_dir(),
        "strategies = overlay\nmax_variants = 2\n",
        2,
        3,
        &["--watchdog-interval=1"],
    );
    let golden = n.golden();
    let variants = || -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(golden.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with(".v-"))
            .collect();
        v.sort();
        v
    };
    let uid = |u: u32| format!("uid={u}");
    for (pod, u) in [("pod-1", 1001), ("pod-2", 1002), ("pod-2b", 1002)] {
        let out = n.publish(pod, &["cache=nm", &uid(u)]);
        assert!(out.ok(), "{pod}: {out:?}");
    }
    assert_eq!(
        variants().len(),
        2,
        "one variant per owner: {:?}",
        variants()
    );
    // Root's tree needs no variant.
    assert!(n.publish("pod-root", &["cache=nm"]).ok());
    let out = n.publish("pod-3", &["cache=nm", &uid(1003)]);
    assert_eq!(out.code, 8, "RESOURCE_EXHAUSTED: {out:?}");
    assert!(out.stderr.contains("max_variants"), "{out:?}");
    assert_eq!(variants().len(), 2, "a refusal builds nothing");
    assert!(mounts_below(Path::new(&n.target("pod-3"))).is_empty());
    // pod-1 goes: its variant is collected, and 1003 gets one.
    assert!(n.unpublish("pod-1").ok());
    wait_until("pod-1's variant collected", 30, || variants().len() == 1);
    let out = n.publish("pod-3", &["cache=nm", &uid(1003)]);
    assert!(out.ok(), "{out:?}");
    let meta = Path::new(&n.target("pod-3"))
        .join("pkg-0")
        .metadata()
        .unwrap();
    assert_eq!(meta.uid(), 1003);
    // A variant an overlay still uses stays: pod-2b keeps 1002's.
    assert!(n.unpublish("pod-2").ok());
    n.d.wait_health_passes(2, 30);
    assert_eq!(variants().len(), 2, "{:?}", variants());
    for pod in ["pod-2b", "pod-3", "pod-root"] {
        assert!(n.unpublish(pod).ok());
    }
    wait_until("every variant collected", 30, || variants().is_empty());
}

/// A cache fill that takes long (held at a pause point) never delays another
/// volume's stage, even with one worker thread: cache publishes run on a
/// pool of their own.
#[test]
fn cache_fills_never_delay_a_stage() {
    if !can_mount("cache_fills_never_delay_a_stage") {
        return;
    }
    let s3 = S3Server::start(&["fill-bucket"]);
    let mut n = cache_node(&std::env::temp_dir(), "copy", 2, 3, &["--workers=1"]);
    let gate = n.d.scratch.path.join("fill-gate");
    n.d.stop();
    n.d.env = vec![
        ("BINDERY_PAUSE_AT".into(), "cache_publish.filling".into()),
        ("BINDERY_PAUSE_GATE".into(), gate.display().to_string()),
    ];
    fs::write(&gate, "").unwrap();
    n.d.restart();
    let staging =
        n.d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/s3/globalmount");
    thread::scope(|scope| {
        let fill = scope.spawn(|| n.publish("pod-slow", &["cache=nm"]));
        wait_until("the fill held at its pause point", 30, || {
            n.d.log_text()
                .contains("pause point cache_publish.filling: waiting")
        });
        let mut stage = vec![
            "node-stage".to_string(),
            "--volume-id".into(),
            "fill-bucket/v".into(),
            "--staging-path".into(),
            staging.clone(),
            "--access-mode".into(),
            "multi-node-multi-writer".into(),
            "--param=mounter=s3fs".into(),
            "--timeout".into(),
            "20".into(),
        ];
        stage.extend(s3.secret_args());
        let out = n.d.csi(&args(&stage));
        assert!(out.ok(), "the stage waited for the fill: {out:?}");
        assert!(
            !fill.is_finished(),
            "the fill is still held while the stage is served"
        );
        fs::remove_file(&gate).unwrap();
        let out = fill.join().unwrap();
        assert!(out.ok(), "{out:?}");
    });
    assert!(n.unpublish("pod-slow").ok());
    assert!(n.d.unstage("fill-bucket/v", &staging).ok());
    assert!(mounts_below(&n.d.kubelet).is_empty());
}

/// Pods that wait for a build another pod started get the build's own
/// error code, not a generic INTERNAL: an s3: source whose credentials
/// s3fs cannot take is INVALID_ARGUMENT for every pod.
#[test]
fn waiters_of_a_failed_build_get_its_code() {
    if !can_mount("waiters_of_a_failed_build_get_its_code") {
        return;
    }
    let conf_dir = Scratch::new("badcreds");
    let creds = conf_dir.path.join("credentials");
    fs::write(&creds, "accessKeyID=a:b\nsecretAccessKey=s\n").unwrap();
    let conf = conf_dir.path.join("caches.conf");
    fs::write(
        &conf,
        format!(
            "[cache models]\nsource = s3:models/m\nendpoint = http://127.0.0.1:9\n\
             credentials = {}\nstrategy = copy\nnamespaces = *\n",
            creds.display()
        ),
    )
    .unwrap();
    let mut d = Daemon::start(&[
        &format!("--cache-config={}", conf.display()),
        "--no-wait-for-caches",
    ]);
    let gate = d.scratch.path.join("build-gate");
    d.stop();
    d.env = vec![
        ("BINDERY_PAUSE_AT".into(), "cache.build".into()),
        ("BINDERY_PAUSE_GATE".into(), gate.display().to_string()),
    ];
    fs::write(&gate, "").unwrap();
    d.restart();
    let publish = |pod: &str| {
        let target = d.kpath(&format!("pods/{pod}/volumes/kubernetes.io~csi/m/mount"));
        d.csi(&[
            "node-publish",
            "--volume-id",
            pod,
            "--target-path",
            &target,
            "--param",
            "cache=models",
            "--param",
            &format!("csi.storage.k8s.io/pod.uid={pod}"),
        ])
    };
    thread::scope(|scope| {
        let leader = scope.spawn(|| publish("pod-a"));
        wait_until("the build held at its pause point", 30, || {
            d.log_text().contains("pause point cache.build: waiting")
        });
        let waiter = scope.spawn(|| publish("pod-b"));
        wait_until("the second pod waiting for the build", 30, || {
            d.log_text()
                .contains("cache \"models\": waiting for the build in flight")
        });
        fs::remove_file(&gate).unwrap();
        for (who, out) in [
            ("leader", leader.join().unwrap()),
            ("waiter", waiter.join().unwrap()),
        ] {
            assert_eq!(out.code, 3, "{who}: INVALID_ARGUMENT: {out:?}");
            assert!(out.stderr.contains("secrets.accessKeyID"), "{who}: {out:?}");
        }
    });
    assert!(mounts_below(&d.kubelet).is_empty());
}

/// Snapshots on btrfs: what a pod writes stays in the pod, and an fsGroup
/// pod running as 1000 writes anywhere in its tree.
#[test]
fn tamper_and_fsgroup_through_snapshot() {
    if !can_mount("tamper_and_fsgroup_through_snapshot") {
        return;
    }
    if let Some(dir) = env_dir("BINDERY_BTRFS_DIR", "tamper_and_fsgroup_through_snapshot") {
        tamper_per_strategy_on(Path::new(&dir), &["snapshot"]);
        fsgroup_on(Path::new(&dir), &["snapshot"]);
    }
}
