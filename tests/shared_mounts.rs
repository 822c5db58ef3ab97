//! Shared FUSE mounts against the real thing: real s3fs and rclone mounts of
//! a real S3 server on 127.0.0.1, as root inside the private namespace of
//! .ci/test.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const BUCKET: &str = "shared-bucket";

fn stage_args(s3: &S3Server, volume: &str, staging: &str, mounter: &str) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "node-stage".into(),
        "--volume-id".into(),
        volume.into(),
        "--staging-path".into(),
        staging.into(),
        "--access-mode".into(),
        "multi-node-multi-writer".into(),
        "--param".into(),
        format!("mounter={mounter}"),
    ];
    v.extend(s3.secret_args());
    v
}

fn publish(d: &Daemon, volume: &str, staging: &str, target: &str, readonly: bool) -> Out {
    d.publish(
        volume,
        staging,
        target,
        if readonly { &["--readonly"] } else { &[] },
    )
}

fn one_volume_many_pods(mounter: &str) {
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&["--unstage-grace=20"]);
    let volume = format!("{BUCKET}/team-{mounter}");
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/h1/globalmount");
    let out = d.csi(&args(&stage_args(&s3, &volume, &staging, mounter)));
    assert!(out.ok(), "stage: {out:?}");
    // Same stage again: OK, no second process.
    let again = d.csi(&args(&stage_args(&s3, &volume, &staging, mounter)));
    assert!(again.ok(), "repeat stage: {again:?}");

    let targets: Vec<String> = (0..10)
        .map(|i| {
            d.kpath(&format!(
                "pods/pod-{i}/volumes/kubernetes.io~csi/data/mount"
            ))
        })
        .collect();
    for (i, t) in targets.iter().enumerate() {
        let out = publish(&d, &volume, &staging, t, i == 9);
        assert!(out.ok(), "publish {i}: {out:?}");
    }
    // Repeat publish with the same flags: OK; with other flags: ALREADY_EXISTS.
    assert!(publish(&d, &volume, &staging, &targets[0], false).ok());
    assert_eq!(publish(&d, &volume, &staging, &targets[0], true).code, 6);
    assert_eq!(
        mounter_pids(&staging).len(),
        1,
        "exactly one mounter for ten pods"
    );

    // Written through pod A, read through pod B, lands in the S3 backend.
    fs::write(Path::new(&targets[0]).join("hello.txt"), "from pod 0").unwrap();
    assert_eq!(
        fs::read_to_string(Path::new(&targets[1]).join("hello.txt")).unwrap(),
        "from pod 0"
    );
    let backend = s3
        .dir
        .join(BUCKET)
        .join(format!("team-{mounter}"))
        .join("hello.txt");
    wait_until("object in the S3 backend", 30, || {
        fs::read_to_string(&backend)
            .map(|s| s == "from pod 0")
            .unwrap_or(false)
    });
    // Read-only target refuses writes with EROFS but reads.
    let err = fs::write(Path::new(&targets[9]).join("x"), "no").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_erofs()), "{err}");
    assert_eq!(
        fs::read_to_string(Path::new(&targets[9]).join("hello.txt")).unwrap(),
        "from pod 0"
    );

    // Secrets: in no command line and no log line.
    let leaks = pids_matching(|c| c.contains(SECRET_KEY) || c.contains(ACCESS_KEY));
    assert!(leaks.is_empty(), "secret in argv of {leaks:?}");
    assert!(
        !d.log_text().contains(SECRET_KEY),
        "secret in the daemon log"
    );

    // Unstage refuses while published.
    let out = d.unstage(&volume, &staging);
    assert_eq!(out.code, 9, "{out:?}");
    // Unpublish removes only that bind and its dir.
    for t in &targets[1..] {
        let out = d.unpublish(&volume, t);
        assert!(out.ok(), "{out:?}");
        assert!(!Path::new(t).exists(), "{t} left behind");
    }
    assert_eq!(
        fs::read_to_string(Path::new(&targets[0]).join("hello.txt")).unwrap(),
        "from pod 0"
    );
    // Write, then unpublish and unstage at once: no acknowledged write is lost
    // (rclone uploads asynchronously; unstage lets it finish).
    fs::write(Path::new(&targets[0]).join("last.txt"), "last words").unwrap();
    assert!(d.unpublish(&volume, &targets[0]).ok());
    let out = d.unstage(&volume, &staging);
    assert!(out.ok(), "{out:?}");
    let last = s3
        .dir
        .join(BUCKET)
        .join(format!("team-{mounter}"))
        .join("last.txt");
    assert_eq!(
        fs::read_to_string(&last).unwrap_or_default(),
        "last words",
        "write lost on unstage"
    );
    assert!(mounter_pids(&staging).is_empty(), "mounter still running");
    assert!(
        mounts_below(&d.kubelet).is_empty(),
        "mounts left: {:?}",
        mounts_below(&d.kubelet)
    );
    // Credentials and per-volume files are gone.
    let leftovers: Vec<_> = fs::read_dir(d.state.join("volumes"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "state left: {leftovers:?}");
    // Idempotent.
    assert!(d.unstage(&volume, &staging).ok());
}

fn libc_erofs() -> i32 {
    nix::errno::Errno::EROFS as i32
}

#[test]
fn s3fs_one_mounter_for_ten_pods() {
    if can_mount("s3fs_one_mounter_for_ten_pods") {
        one_volume_many_pods("s3fs");
    }
}

#[test]
fn rclone_one_mounter_for_ten_pods() {
    if can_mount("rclone_one_mounter_for_ten_pods") {
        one_volume_many_pods("rclone");
    }
}

#[test]
fn bad_credentials_fail_cleanly() {
    if !can_mount("bad_credentials_fail_cleanly") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&["--mount-timeout=5"]);
    let staging = d.kpath("plugins/x/globalmount");
    let wrong = "wrong-secret-Pq9";
    let secrets = d.scratch.path.join("wrong-secrets");
    fs::write(
        &secrets,
        format!(
            "accessKeyID={ACCESS_KEY}\nsecretAccessKey={wrong}\nendpoint={}\n",
            s3.endpoint
        ),
    )
    .unwrap();
    let out = d.csi(&[
        "node-stage",
        "--volume-id",
        BUCKET,
        "--staging-path",
        &staging,
        &format!("--secrets-file={}", secrets.display()),
    ]);
    assert_eq!(out.code, 13, "{out:?}");
    assert!(
        out.stderr.contains("did not become ready"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(wrong), "secret in the error message");
    assert!(!d.log_text().contains(wrong), "secret in the log");
    assert!(mounter_pids(&staging).is_empty());
    assert!(mounts_below(&d.kubelet).is_empty());
    assert!(
        !d.state.join("volumes").read_dir().unwrap().any(|_| true),
        "credentials left"
    );
}

#[test]
fn killed_mounter_is_reported_and_healed() {
    if !can_mount("killed_mounter_is_reported_and_healed") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&["--watchdog-interval=3"]);
    let volume = BUCKET.to_string();
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/h2/globalmount");
    assert!(d
        .csi(&args(&stage_args(&s3, &volume, &staging, "s3fs")))
        .ok());
    let ta = d.kpath("pods/a/volumes/v/mount");
    let tb = d.kpath("pods/b/volumes/v/mount");
    assert!(publish(&d, &volume, &staging, &ta, false).ok());
    assert!(publish(&d, &volume, &staging, &tb, true).ok());
    fs::write(Path::new(&ta).join("f.txt"), "data").unwrap();
    let old = mounter_pids(&staging);
    assert_eq!(old.len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The targets are dead now; the condition says so.
    let e = fs::read_to_string(Path::new(&ta).join("f.txt")).unwrap_err();
    // ENOTCONN or ECONNABORTED, depending on how far the kernel got.
    assert!(matches!(e.raw_os_error(), Some(107) | Some(103)), "{e}");
    let stats = d.csi(&["node-stats", "--volume-id", &volume, "--target-path", &ta]);
    assert!(stats.ok(), "{stats:?}");
    assert!(stats.stdout.contains("abnormal: true"), "{}", stats.stdout);
    // The watchdog remounts and re-binds every target.
    wait_until("healed targets", 30, || {
        fs::read_to_string(Path::new(&ta).join("f.txt"))
            .map(|s| s == "data")
            .unwrap_or(false)
            && fs::read_to_string(Path::new(&tb).join("f.txt"))
                .map(|s| s == "data")
                .unwrap_or(false)
    });
    let new = mounter_pids(&staging);
    assert_eq!(new.len(), 1);
    assert_ne!(new, old);
    // No container holds the dead mount (tests/running_pods.rs has the
    // ones that do): both publications are healthy again.
    wait_until("VolumeCondition healthy", 30, || {
        [&ta, &tb].iter().all(|t| {
            let s = d.csi(&["node-stats", "--volume-id", &volume, "--target-path", t]);
            s.ok() && !s.stdout.contains("abnormal: true")
        })
    });
    // Read-only survives healing.
    assert!(fs::write(Path::new(&tb).join("x"), "no").is_err());
    assert!(d.unpublish(&volume, &tb).ok());
    assert!(publish(&d, &volume, &staging, &tb, true).ok());
    let stats = d.csi(&["node-stats", "--volume-id", &volume, "--target-path", &tb]);
    assert!(!stats.stdout.contains("abnormal: true"), "{}", stats.stdout);
    assert!(fs::write(Path::new(&tb).join("x"), "no").is_err());
    for t in [&ta, &tb] {
        assert!(d.unpublish(&volume, t).ok());
    }
    assert!(d.unstage(&volume, &staging).ok());
    assert!(mounter_pids(&staging).is_empty());
}

/// A publish never binds a mount whose mounter is dead: the pod would start
/// with a volume that answers ENOTCONN. It answers UNAVAILABLE (the kubelet
/// retries) and leaves the target unmounted; once the mounter is back, the
/// same publish succeeds. (The health loop is off here so that the dead
/// state lasts until the test restarts the mounter with a re-stage.)
#[test]
fn dead_mounter_is_never_bound() {
    if !can_mount("dead_mounter_is_never_bound") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&["--watchdog-interval=0"]);
    let volume = format!("{BUCKET}/dead");
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/dead/globalmount");
    assert!(d
        .csi(&args(&stage_args(&s3, &volume, &staging, "s3fs")))
        .ok());
    let pids = mounter_pids(&staging);
    assert_eq!(pids.len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("mounter gone", 10, || mounter_pids(&staging).is_empty());
    let t = d.kpath("pods/a/volumes/v/mount");
    let out = publish(&d, &volume, &staging, &t, false);
    assert_eq!(out.code, 14, "publish onto a dead mounter: {out:?}");
    assert!(out.stderr.contains("is gone"), "{}", out.stderr);
    assert!(
        !mounts_below(&d.kubelet).iter().any(|m| m == Path::new(&t)),
        "the dead mount was bound: {:?}",
        mounts_below(&d.kubelet)
    );
    // A re-stage replaces the dead mounter; then the publish goes through.
    assert!(d
        .csi(&args(&stage_args(&s3, &volume, &staging, "s3fs")))
        .ok());
    assert!(publish(&d, &volume, &staging, &t, false).ok());
    fs::write(Path::new(&t).join("alive.txt"), "yes").unwrap();
    assert!(d.unpublish(&volume, &t).ok());
    assert!(d.unstage(&volume, &staging).ok());
    assert!(mounter_pids(&staging).is_empty());
}

#[test]
fn daemon_crash_keeps_mounts_and_restart_adopts_them() {
    if !can_mount("daemon_crash_keeps_mounts_and_restart_adopts_them") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let mut d = Daemon::start(&[]);
    let volume = format!("{BUCKET}/crash");
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/h3/globalmount");
    assert!(d
        .csi(&args(&stage_args(&s3, &volume, &staging, "s3fs")))
        .ok());
    let t = d.kpath("pods/a/volumes/v/mount");
    assert!(publish(&d, &volume, &staging, &t, false).ok());
    fs::write(Path::new(&t).join("before.txt"), "1").unwrap();
    let pid = mounter_pids(&staging);
    d.kill9();
    // The pod keeps its data while the daemon is down.
    fs::write(Path::new(&t).join("during.txt"), "2").unwrap();
    assert_eq!(
        fs::read_to_string(Path::new(&t).join("before.txt")).unwrap(),
        "1"
    );
    d.restart();
    let probe = d.csi(&["probe"]);
    assert!(probe.stdout.contains("value: true"), "{probe:?}");
    assert_eq!(
        mounter_pids(&staging),
        pid,
        "the live mounter is re-adopted, not replaced"
    );
    let stats = d.csi(&["node-stats", "--volume-id", &volume, "--target-path", &t]);
    assert!(
        stats.ok() && !stats.stdout.contains("abnormal: true"),
        "{stats:?}"
    );
    // Same stage and publish again are OK (the kubelet retries after restarts).
    assert!(d
        .csi(&args(&stage_args(&s3, &volume, &staging, "s3fs")))
        .ok());
    assert!(publish(&d, &volume, &staging, &t, false).ok());
    assert!(d.unpublish(&volume, &t).ok());
    assert!(d.unstage(&volume, &staging).ok());
    assert!(
        mounter_pids(&staging).is_empty(),
        "unstage after restart stops the adopted mounter"
    );
    assert!(mounts_below(&d.kubelet).is_empty());
}

/// Records that cannot be read after a crash are quarantined, and the
/// kubelet's calls still find what they described, by path: a re-stage
/// adopts the live mounter (the pod never loses its mount), and for a volume
/// that is not re-staged, unpublish detaches the pod's bind and unstage
/// stops the mounter, instead of answering OK and leaving both behind.
#[test]
fn quarantined_volumes_are_adopted_or_cleaned_by_path() {
    if !can_mount("quarantined_volumes_are_adopted_or_cleaned_by_path") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let mut d = Daemon::start(&[]);
    let vols: Vec<(String, String, String)> = ["q1", "q2"]
        .iter()
        .map(|q| {
            (
                format!("{BUCKET}/{q}"),
                d.kpath(&format!(
                    "plugins/kubernetes.io/csi/bindery.csi.dev/{q}/globalmount"
                )),
                d.kpath(&format!("pods/{q}/volumes/v/mount")),
            )
        })
        .collect();
    for (volume, staging, t) in &vols {
        let out = d.csi(&args(&stage_args(&s3, volume, staging, "s3fs")));
        assert!(out.ok(), "{out:?}");
        assert!(publish(&d, volume, staging, t, false).ok());
        fs::write(Path::new(t).join("before.txt"), "1").unwrap();
    }
    let pids: Vec<Vec<i32>> = vols.iter().map(|(_, s, _)| mounter_pids(s)).collect();
    d.kill9();
    for (volume, _, _) in &vols {
        d.corrupt_record(volume);
    }
    d.restart();
    assert!(d.log_text().contains("quarantined at"));
    let (volume, staging, t) = &vols[0];
    let stats = d.csi(&["node-stats", "--volume-id", volume, "--target-path", t]);
    assert!(
        stats.stdout.contains("abnormal: true") && stats.stdout.contains("quarantined"),
        "{stats:?}"
    );
    // q1: the kubelet stages again; the live mounter is adopted.
    let out = d.csi(&args(&stage_args(&s3, volume, staging, "s3fs")));
    assert!(out.ok(), "{out:?}");
    assert_eq!(mounter_pids(staging), pids[0], "adopted, not replaced");
    assert_eq!(
        fs::read_to_string(Path::new(t).join("before.txt")).unwrap(),
        "1"
    );
    assert!(publish(&d, volume, staging, t, false).ok());
    // q2: never staged again; unpublish and unstage clean up by path.
    let (volume2, staging2, t2) = &vols[1];
    assert!(d.unpublish(volume2, t2).ok());
    assert!(!Path::new(t2).exists(), "q2's bind and target are gone");
    assert!(d.unstage(volume2, staging2).ok());
    assert!(mounter_pids(staging2).is_empty(), "q2's mounter is stopped");
    assert!(mounts_below(Path::new(staging2)).is_empty());
    // q1 ends as a normal volume.
    assert!(d.unpublish(volume, t).ok());
    assert!(d.unstage(volume, staging).ok());
    assert!(mounter_pids(staging).is_empty());
    assert!(mounts_below(&d.kubelet).is_empty());
}

#[test]
fn controller_creates_prefix_volumes() {
    if !can_mount("controller_creates_prefix_volumes") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&["--mode=all"]);
    let secrets = s3.secret_args();
    let mut create: Vec<String> = vec![
        "create-volume".into(),
        "--name".into(),
        "pvc-ABC_1".into(),
        "--capacity".into(),
        "1073741824".into(),
    ];
    create.extend([
        "--param".into(),
        format!("bucket={BUCKET}"),
        "--param".into(),
        "reclaimData=true".into(),
    ]);
    create.extend(secrets.clone());
    let out = d.csi(&args(&create));
    assert!(out.ok(), "{out:?}");
    let id_line = out
        .stdout
        .lines()
        .find(|l| l.contains("volume_id"))
        .unwrap()
        .to_string();
    let id = id_line.split('"').nth(1).unwrap().to_string();
    assert!(id.starts_with(&format!("{BUCKET}/")), "{id}");
    assert!(
        out.stdout.contains("capacity_bytes: 1073741824"),
        "{}",
        out.stdout
    );
    // Idempotent by name; other capacity is ALREADY_EXISTS.
    let again = d.csi(&args(&create));
    assert!(again.ok() && again.stdout.contains(&id), "{again:?}");
    let mut bigger = create.clone();
    bigger[4] = "2147483648".into();
    assert_eq!(d.csi(&args(&bigger)).code, 6);
    // Unknown parameters are named.
    let mut bad = create.clone();
    bad.extend(["--param".into(), "flavour=x".into()]);
    bad[2] = "other".into();
    let out = d.csi(&args(&bad));
    assert_eq!(out.code, 3);
    assert!(out.stderr.contains("flavour"), "{}", out.stderr);
    // Missing name or capabilities: INVALID_ARGUMENT.
    let mut noname = create.clone();
    noname[2] = String::new();
    assert_eq!(d.csi(&args(&noname)).code, 3);
    let mut nocap = create.clone();
    nocap.push("--no-capability".into());
    let out = d.csi(&args(&nocap));
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("volume_capabilities"), "{}", out.stderr);
    // Validate: known → confirmed; unknown → NOT_FOUND.
    assert!(d
        .csi(&["validate-volume", "--volume-id", &id])
        .stdout
        .contains("confirmed"));
    assert_eq!(
        d.csi(&["validate-volume", "--volume-id", "fake-vol-id-1"])
            .code,
        5
    );
    // The node stages it from the context CreateVolume returned.
    let prefix = id.split_once('/').unwrap().1.to_string();
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/h4/globalmount");
    let mut stage = stage_args(&s3, &id, &staging, "s3fs");
    stage.extend([
        "--param".into(),
        format!("bucket={BUCKET}"),
        "--param".into(),
        format!("prefix={prefix}"),
    ]);
    // As the CO's idempotency checks do: ten stages and ten publishes with
    // the same arguments stack nothing; one unpublish and one unstage clean up.
    let t = d.kpath("pods/a/volumes/v/mount");
    for _ in 0..10 {
        assert!(d.csi(&args(&stage)).ok());
    }
    for _ in 0..10 {
        assert!(publish(&d, &id, &staging, &t, false).ok());
    }
    assert_eq!(
        mounts_below(&d.kubelet).len(),
        2,
        "{:?}",
        mounts_below(&d.kubelet)
    );
    assert_eq!(mounter_pids(&staging).len(), 1);
    // Stats need the volume's own path: a relative or unknown one is NOT_FOUND.
    let st = d.csi(&[
        "node-stats",
        "--volume-id",
        &id,
        "--target-path",
        "some/path",
    ]);
    assert_eq!(st.code, 5, "{st:?}");
    let st = d.csi(&["node-stats", "--volume-id", &id, "--target-path", &t]);
    assert!(st.ok() && st.stdout.contains("BYTES"), "{st:?}");
    fs::write(Path::new(&t).join("data.bin"), "payload").unwrap();
    assert!(d.unpublish(&id, &t).ok());
    assert!(d.unstage(&id, &staging).ok());
    let stored = s3.dir.join(BUCKET).join(&prefix).join("data.bin");
    assert!(stored.exists(), "{}", stored.display());
    // reclaimData=true: DeleteVolume removes the prefix's data; twice is OK.
    let mut delete: Vec<String> = vec!["delete-volume".into(), "--volume-id".into(), id.clone()];
    delete.extend(secrets);
    let out = d.csi(&args(&delete));
    assert!(out.ok(), "{out:?}");
    assert!(!stored.exists(), "data not reclaimed");
    assert!(d.csi(&args(&delete)).ok());
    assert!(d.csi(&["delete-volume", "--volume-id", "fake-vol-id"]).ok());
    assert!(mounts_below(&d.scratch.path).is_empty());
}

/// With --mounter-cgroup the mounter leaves the daemon's cgroup, so that a
/// container runtime emptying the daemon's container cgroup spares it.
#[test]
fn mounter_moves_to_its_own_cgroup() {
    if !can_mount("mounter_moves_to_its_own_cgroup") {
        return;
    }
    let name = format!("bindery-test-{}", std::process::id());
    let base = if Path::new("/sys/fs/cgroup/cgroup.procs").exists() {
        PathBuf::from("/sys/fs/cgroup")
    } else if Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists() {
        PathBuf::from("/sys/fs/cgroup/pids")
    } else {
        prerequisite(
            "mounter_moves_to_its_own_cgroup",
            false,
            "no writable cgroup hierarchy",
        );
        return;
    };
    let cg = base.join(&name);
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&[&format!("--mounter-cgroup={}", cg.display())]);
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/cg/globalmount");
    let out = d.csi(&args(&stage_args(&s3, BUCKET, &staging, "s3fs")));
    assert!(out.ok(), "{out:?}");
    let pids = mounter_pids(&staging);
    assert_eq!(pids.len(), 1);
    let cgroups = fs::read_to_string(format!("/proc/{}/cgroup", pids[0])).unwrap();
    let procs = fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    assert!(cgroups.contains(&name), "{cgroups}");
    assert!(procs.lines().any(|l| l == pids[0].to_string()), "{procs}");
    assert!(!fs::read_to_string(format!("/proc/{}/cgroup", d.pid()))
        .unwrap()
        .contains(&name));
    assert!(d.unstage(BUCKET, &staging).ok());
    wait_until("cgroup empty", 10, || {
        fs::read_to_string(cg.join("cgroup.procs"))
            .map(|p| p.trim().is_empty())
            .unwrap_or(true)
    });
    fs::remove_dir(&cg).unwrap();
}

/// The watchdog's health checks never turn a publish away: short calls on a
/// healthy volume succeed first time while passes run every second.
/// With --mounter-memory-max and --mounter-pids-max, each mounter runs in a
/// cgroup of its own (below each --mounter-cgroup) holding those limits, so
/// one volume's FUSE process is killed alone instead of taking the node;
/// the cgroup goes with the volume's unstage.
#[test]
fn each_mounter_gets_its_own_limited_cgroup() {
    let test = "each_mounter_gets_its_own_limited_cgroup";
    if !can_mount(test) {
        return;
    }
    // cgroup v2: one hierarchy with both controllers enabled at the root;
    // v1: one hierarchy per controller.
    let v2 = fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control")
        .is_ok_and(|c| c.contains("pids") && c.contains("memory"));
    let bases: Vec<PathBuf> = if v2 {
        vec![PathBuf::from("/sys/fs/cgroup")]
    } else {
        ["/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory"]
            .iter()
            .map(PathBuf::from)
            .filter(|b| b.join("cgroup.procs").exists())
            .collect()
    };
    if !prerequisite(
        test,
        v2 || bases.len() == 2,
        "cgroup v2 with pids and memory enabled at the root, or v1 pids and memory hierarchies",
    ) {
        return;
    }
    let name = format!("bindery-lim-{}", std::process::id());
    let dirs: Vec<PathBuf> = bases.iter().map(|b| b.join(&name)).collect();
    // cgroups live outside the test's mount namespace: removed even when
    // the test fails (children first; a cgroup goes with rmdir).
    struct Cleanup(Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for dir in &self.0 {
                for child in fs::read_dir(dir).into_iter().flatten().flatten() {
                    if child.path().join("cgroup.procs").exists() {
                        let _ = fs::remove_dir(child.path());
                    }
                }
                let _ = fs::remove_dir(dir);
            }
        }
    }
    let _cleanup = Cleanup(dirs.clone());
    let mut flags: Vec<String> = dirs
        .iter()
        .map(|d| format!("--mounter-cgroup={}", d.display()))
        .collect();
    flags.extend([
        "--mounter-pids-max=256".into(),
        "--mounter-memory-max=512M".into(),
    ]);
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&args(&flags));
    let mut cgroups = Vec::new();
    for q in ["l1", "l2"] {
        let volume = format!("{BUCKET}/{q}");
        let staging = d.kpath(&format!(
            "plugins/kubernetes.io/csi/bindery.csi.dev/{q}/globalmount"
        ));
        let out = d.csi(&args(&stage_args(&s3, &volume, &staging, "s3fs")));
        assert!(out.ok(), "{out:?}");
        let pids = mounter_pids(&staging);
        assert_eq!(pids.len(), 1);
        let own = fs::read_to_string(format!("/proc/{}/cgroup", pids[0])).unwrap();
        let suffix = format!("-{BUCKET}_{q}");
        // Its line of /proc/PID/cgroup for each hierarchy ("ID:CONTROLLERS:PATH",
        // CONTROLLERS empty on v2) names …/<name>/<volume key>.
        for base in &bases {
            let controller = if v2 {
                String::new()
            } else {
                base.file_name().unwrap().to_string_lossy().into_owned()
            };
            let line = own
                .lines()
                .map(|l| l.splitn(3, ':').collect::<Vec<_>>())
                .find(|f| f.len() == 3 && f[1].split(',').any(|c| c == controller))
                .unwrap_or_else(|| panic!("{q}: no {controller:?} line in {own}"));
            assert!(
                line[2].contains(&format!("/{name}/")) && line[2].ends_with(&suffix),
                "{q}: not in a cgroup of its own: {own}"
            );
            let dir = base.join(line[2].trim_start_matches('/'));
            assert!(dir.join("cgroup.procs").exists(), "{}", dir.display());
            cgroups.push(dir);
        }
    }
    let read = |p: PathBuf| {
        fs::read_to_string(&p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let mut saw = (false, false);
    for dir in &cgroups {
        if dir.join("pids.max").exists() {
            assert_eq!(read(dir.join("pids.max")), "256", "{}", dir.display());
            saw.0 = true;
        }
        for f in ["memory.max", "memory.limit_in_bytes"] {
            if dir.join(f).exists() {
                assert_eq!(
                    read(dir.join(f)),
                    (512u64 << 20).to_string(),
                    "{}",
                    dir.display()
                );
                saw.1 = true;
            }
        }
    }
    assert_eq!(saw, (true, true), "both limits are set: {cgroups:?}");
    for q in ["l1", "l2"] {
        let volume = format!("{BUCKET}/{q}");
        let staging = d.kpath(&format!(
            "plugins/kubernetes.io/csi/bindery.csi.dev/{q}/globalmount"
        ));
        assert!(d.unstage(&volume, &staging).ok());
    }
    for dir in &cgroups {
        assert!(
            !dir.exists(),
            "{} is removed with its volume",
            dir.display()
        );
    }
    for dir in &dirs {
        fs::remove_dir(dir).unwrap();
    }
}

#[test]
fn watchdog_never_aborts_publishes() {
    if !can_mount("watchdog_never_aborts_publishes") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    for i in 0..200 {
        fs::write(s3.dir.join(BUCKET).join(format!("obj-{i}")), "x").unwrap();
    }
    let d = Daemon::start(&["--watchdog-interval=1"]);
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/wd/globalmount");
    assert!(d
        .csi(&args(&stage_args(&s3, BUCKET, &staging, "s3fs")))
        .ok());
    let t = d.kpath("pods/a/volumes/v/mount");
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut calls = 0;
    while Instant::now() < deadline {
        let out = publish(&d, BUCKET, &staging, &t, false);
        assert!(out.ok(), "call {calls}: {out:?}");
        calls += 1;
    }
    assert!(
        d.log_text().matches("watchdog").count() == 0,
        "no watchdog ABORTED in the log"
    );
    assert!(d.unpublish(BUCKET, &t).ok());
    assert!(d.unstage(BUCKET, &staging).ok());
    eprintln!("{calls} publishes during 4 watchdog passes, none aborted");
}

/// A stopped (SIGSTOP) mounter makes every call on its mount hang: the
/// condition says so without touching the mount, and the watchdog aborts
/// the FUSE connection, remounts and re-binds.
#[test]
fn stopped_mounter_is_reported_and_healed() {
    if !can_mount("stopped_mounter_is_reported_and_healed") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&["--watchdog-interval=2"]);
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/stop/globalmount");
    assert!(d
        .csi(&args(&stage_args(&s3, BUCKET, &staging, "s3fs")))
        .ok());
    let t = d.kpath("pods/a/volumes/v/mount");
    assert!(publish(&d, BUCKET, &staging, &t, false).ok());
    fs::write(Path::new(&t).join("f.txt"), "data").unwrap();
    let old = mounter_pids(&staging);
    assert_eq!(old.len(), 1);
    let pid = nix::unistd::Pid::from_raw(old[0]);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // With a call deadline: a stats call that hung on the stopped mounter
    // fails DEADLINE_EXCEEDED instead of answering.
    let stats = d.csi(&[
        "node-stats",
        "--volume-id",
        BUCKET,
        "--target-path",
        &t,
        "--timeout",
        "30",
    ]);
    assert!(stats.ok() && stats.stdout.contains("stopped"), "{stats:?}");
    wait_until("healed after SIGSTOP", 30, || {
        let new = mounter_pids(&staging);
        new.len() == 1 && new != old
    });
    wait_until("target reads again", 30, || {
        fs::read_to_string(Path::new(&t).join("f.txt"))
            .map(|s| s == "data")
            .unwrap_or(false)
    });
    assert!(d.unpublish(BUCKET, &t).ok());
    assert!(d.unstage(BUCKET, &staging).ok());
    assert!(mounter_pids(&staging).is_empty());
}

/// Non-root pods: uid/gid/umask parameters and fsGroup (volume_mount_group)
/// decide who owns the files of the mount.
#[test]
fn ownership_parameters_and_fs_group() {
    if !can_mount("ownership_parameters_and_fs_group") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let s3 = S3Server::start(&[BUCKET]);
    fs::write(s3.dir.join(BUCKET).join("f.txt"), "x").unwrap();
    let d = Daemon::start(&[]);
    for (mounter, extra, want) in [
        (
            "s3fs",
            vec!["--param=uid=1000", "--param=gid=2000", "--param=umask=027"],
            (1000, 2000, 0o750),
        ),
        ("rclone", vec!["--mount-group=3000"], (0, 3000, 0o664)),
    ] {
        let volume = format!("{BUCKET}-{mounter}");
        let staging = d.kpath(&format!(
            "plugins/kubernetes.io/csi/bindery.csi.dev/own-{mounter}/globalmount"
        ));
        let mut a = stage_args(&s3, &volume, &staging, mounter);
        a.push(format!("--param=bucket={BUCKET}"));
        a.extend(extra.iter().map(|s| s.to_string()));
        let out = d.csi(&args(&a));
        assert!(out.ok(), "{mounter}: {out:?}");
        let m = fs::metadata(Path::new(&staging).join("f.txt")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), want, "{mounter}");
        assert!(d.unstage(&volume, &staging).ok());
    }
}

/// A FUSE server that mounts but never answers a listing (a deadlock, not a
/// stop): the stage gives up within --mount-timeout instead of hanging, and
/// leaves no mount and no process behind.
#[test]
fn hung_fuse_server_fails_the_stage_cleanly() {
    if !can_mount_with_fusepy("hung_fuse_server_fails_the_stage_cleanly") {
        return;
    }
    let scratch = Scratch::new("hung");
    let prog = scratch.path.join("hungfs");
    fusepy_server(
        &prog,
        "",
        r#"    def statfs(self, path):
        return {"f_bsize": 4096, "f_blocks": 1, "f_bavail": 1}
    def readdir(self, path, fh):
        time.sleep(3600)
        return [".", ".."]"#,
        ", nothreads=True",
    );
    let d = Daemon::start(&[
        &format!("--fuse-programs={}", prog.display()),
        "--mount-timeout=3",
    ]);
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/hung/globalmount");
    let server = || pids_matching(|c| c.starts_with("python3") && c.contains("hung/globalmount"));
    let out = d.csi(&[
        "node-stage",
        "--volume-id",
        "hung",
        "--staging-path",
        &staging,
        "--param=mounter=fuse",
        "--param=bucket=bkt",
        &format!("--param=command={} {{mountpoint}}", prog.display()),
    ]);
    assert_eq!(out.code, 13, "{out:?}");
    // The stage gave up on its own (--mount-timeout), it did not hang.
    assert!(out.stderr.contains("did not answer"), "{}", out.stderr);
    wait_until("hung server gone", 10, || server().is_empty());
    assert!(
        mounts_below(&d.kubelet).is_empty(),
        "{:?}",
        mounts_below(&d.kubelet)
    );
    assert!(d.csi(&["probe"]).ok());
}

/// NodeGetVolumeStats never waits on a FUSE server or on the network: the
/// mount's figures and the endpoint's reachability come from probes on other
/// threads. A server whose statfs hangs is reported dead once its probe has
/// run past the probe timeout, an endpoint that refuses connections as
/// degraded; every call answers within a 1 s deadline meanwhile (the old
/// inline statfs waited 2 s for the hung server).
#[test]
fn stats_never_wait_on_a_hung_mount_or_the_network() {
    if !can_mount_with_fusepy("stats_never_wait_on_a_hung_mount_or_the_network") {
        return;
    }
    let scratch = Scratch::new("hangstat");
    let prog = scratch.path.join("hangstatfs");
    let flag = scratch.path.join("hang-now");
    fusepy_server(
        &prog,
        "",
        &format!(
            r#"    def readdir(self, path, fh):
        return [".", ".."]
    def statfs(self, path):
        while os.path.exists("{flag}"):
            time.sleep(0.1)
        return {{"f_bsize": 4096, "f_blocks": 100, "f_bavail": 50, "f_bfree": 50}}"#,
            flag = flag.display()
        ),
        "",
    );
    let d = Daemon::start(&[
        &format!("--fuse-programs={}", prog.display()),
        "--watchdog-interval=0",
    ]);
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/hs/globalmount");
    // An endpoint nothing listens on: connections are refused.
    let closed = free_port();
    let out = d.csi(&[
        "node-stage",
        "--volume-id",
        "hs",
        "--staging-path",
        &staging,
        "--param=mounter=fuse",
        "--param=bucket=bkt",
        &format!("--param=command={} {{mountpoint}}", prog.display()),
        &format!("--secret=endpoint=http://127.0.0.1:{closed}"),
    ]);
    assert!(out.ok(), "{out:?}");
    let stats = || {
        let out = d.csi(&[
            "node-stats",
            "--volume-id",
            "hs",
            "--target-path",
            &staging,
            "--timeout",
            "1",
        ]);
        assert!(out.ok(), "stats must answer at once: {out:?}");
        out.stdout
    };
    wait_until("the endpoint reported unreachable", 30, || {
        stats().contains("degraded")
    });
    fs::write(&flag, "").unwrap();
    // Ask the mount through the kernel, as a pod would: it hangs now.
    let hung = {
        let staging = staging.clone();
        std::thread::spawn(move || nix::sys::statfs::statfs(staging.as_str()).is_ok())
    };
    wait_until("the hung statfs reported", 30, || {
        stats().contains("did not answer statfs")
    });
    fs::remove_file(&flag).unwrap();
    assert!(hung.join().unwrap());
    assert!(d.csi(&["probe"]).ok());
    assert!(d.unstage("hs", &staging).ok());
    assert!(mounts_below(&d.kubelet).is_empty());
}

/// Heals run per volume: while the new mounters of some volumes hang at
/// start (they wait for a gate before mounting), another volume whose
/// mounter died is healed all the same, instead of waiting behind them for
/// the whole --mount-timeout.
#[test]
fn one_slow_heal_delays_no_other_volume() {
    if !can_mount_with_fusepy("one_slow_heal_delays_no_other_volume") {
        return;
    }
    let scratch = Scratch::new("gate");
    let prog = scratch.path.join("gatefs");
    let gate = scratch.path.join("gate-closed");
    fusepy_server(
        &prog,
        &format!(r#"while [ -e "{}" ]; do sleep 0.1; done"#, gate.display()),
        r#"    def readdir(self, path, fh):
        return [".", ".."]
    def statfs(self, path):
        return {"f_bsize": 4096, "f_blocks": 100, "f_bavail": 50, "f_bfree": 50}"#,
        "",
    );
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&[
        &format!("--fuse-programs={}", prog.display()),
        "--watchdog-interval=1",
        "--mount-timeout=120",
    ]);
    let staging = |v: &str| {
        d.kpath(&format!(
            "plugins/kubernetes.io/csi/bindery.csi.dev/{v}/globalmount"
        ))
    };
    let gated = ["g1", "g2", "g3"];
    for g in gated {
        let out = d.csi(&[
            "node-stage",
            "--volume-id",
            g,
            "--staging-path",
            &staging(g),
            "--param=mounter=fuse",
            "--param=bucket=bkt",
            &format!("--param=command={} {{mountpoint}}", prog.display()),
        ]);
        assert!(out.ok(), "{g}: {out:?}");
    }
    let b = format!("{BUCKET}/heal-me");
    assert!(d
        .csi(&args(&stage_args(&s3, &b, &staging("b"), "s3fs")))
        .ok());
    fs::write(Path::new(&staging("b")).join("f.txt"), "data").unwrap();
    // From now on the gated volumes' new mounters wait at the gate.
    fs::write(&gate, "").unwrap();
    // Every process serving a staging path names it in its argv.
    let serving = |s: &str| pids_matching(|c| c.contains(s));
    let killed: Vec<(String, Vec<i32>)> = gated
        .iter()
        .map(|g| staging(g))
        .chain([staging("b")])
        .map(|s| (s.clone(), serving(&s)))
        .collect();
    assert!(killed.iter().all(|(_, p)| p.len() == 1), "{killed:?}");
    for (_, pids) in &killed {
        for p in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    // Every heal starts (one after the other, each would wait for its gate
    // for the whole --mount-timeout) and b's ends.
    wait_until("all heals started and b healed", 60, || {
        let log = d.log_text();
        let now = mounter_pids(&staging("b"));
        gated
            .iter()
            .all(|g| log.contains(&format!("starting a new mounter at {}", staging(g))))
            && now.len() == 1
            && now != killed[3].1
            && fs::read_to_string(Path::new(&staging("b")).join("f.txt")).is_ok_and(|s| s == "data")
    });
    let log = d.log_text();
    for g in gated {
        assert!(
            !log.contains(&format!("serves {} again", staging(g))),
            "{g} cannot be healed while its gate is closed"
        );
    }
    fs::remove_file(&gate).unwrap();
    for (i, g) in gated.iter().enumerate() {
        wait_until(&format!("{g} healed once the gate opens"), 60, || {
            let now = serving(&staging(g));
            now.len() == 1
                && now != killed[i].1
                && is_mount_point(&staging(g))
                && d.log_text()
                    .contains(&format!("serves {} again", staging(g)))
        });
    }
    for v in gated.iter().copied().chain(["b"]) {
        let id = if v == "b" { b.clone() } else { v.to_string() };
        // As the kubelet does: a call that meets the heal's last step is
        // ABORTED, and retried.
        wait_until(&format!("{v} unstaged"), 30, || {
            d.unstage(&id, &staging(v)).ok()
        });
    }
    assert!(mounts_below(&d.kubelet).is_empty());
}

/// Threads in the daemon: from /proc, as `top -H` would count them.
fn threads_of(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).unwrap().count()
}

/// Staged volumes share the daemon's probe threads: staging ten more
/// volumes (each probed at start, by every health pass and by stats) adds
/// at most the probe pool's few threads, never one or two per volume.
#[test]
fn threads_do_not_grow_with_staged_volumes() {
    if !can_mount("threads_do_not_grow_with_staged_volumes") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&["--watchdog-interval=1"]);
    let staging = |i: usize| {
        d.kpath(&format!(
            "plugins/kubernetes.io/csi/bindery.csi.dev/t{i}/globalmount"
        ))
    };
    let volume = |i: usize| format!("{BUCKET}/threads-{i}");
    let stats = |i: usize| {
        let out = d.csi(&[
            "node-stats",
            "--volume-id",
            &volume(i),
            "--target-path",
            &staging(i),
        ]);
        assert!(out.ok(), "{out:?}");
    };
    assert!(d
        .csi(&args(&stage_args(&s3, &volume(0), &staging(0), "s3fs")))
        .ok());
    stats(0);
    d.wait_health_passes(2, 30);
    let one = threads_of(d.pid());
    for i in 1..=10 {
        let out = d.csi(&args(&stage_args(&s3, &volume(i), &staging(i), "s3fs")));
        assert!(out.ok(), "{i}: {out:?}");
        stats(i);
    }
    d.wait_health_passes(2, 30);
    let eleven = threads_of(d.pid());
    // The probe pool holds 4 threads that answer promptly.
    assert!(
        eleven <= one + 4,
        "{one} threads with one staged volume, {eleven} with eleven"
    );
    for i in 0..=10 {
        assert!(d.unstage(&volume(i), &staging(i)).ok());
    }
    assert!(mounts_below(&d.kubelet).is_empty());
}

/// A volume staged and published while a health pass is under way is not
/// taken for dead: the pass reads the records before the mount table, so
/// every mount a record it sees promises is in the table it reads.
#[test]
fn a_stage_during_a_health_pass_is_not_taken_for_dead() {
    if !can_mount("a_stage_during_a_health_pass_is_not_taken_for_dead") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let mut d = Daemon::start(&["--watchdog-interval=1"]);
    let gate = d.scratch.path.join("pause-gate");
    d.stop();
    d.env = vec![
        ("BINDERY_PAUSE_AT".into(), "health.between_reads".into()),
        ("BINDERY_PAUSE_GATE".into(), gate.display().to_string()),
    ];
    fs::write(&gate, "").unwrap();
    d.restart();
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/race/globalmount");
    let target = d.kpath("pods/p1/volumes/kubernetes.io~csi/data/mount");
    let volume = format!("{BUCKET}/race");
    wait_until("a health pass paused between its reads", 30, || {
        d.log_text()
            .contains("pause point health.between_reads: waiting")
    });
    assert!(d
        .csi(&args(&stage_args(&s3, &volume, &staging, "s3fs")))
        .ok());
    assert!(publish(&d, &volume, &staging, &target, false).ok());
    let before = mounter_pids(&staging);
    fs::remove_file(&gate).unwrap();
    d.wait_health_passes(2, 30);
    let log = d.log_text();
    assert!(!log.contains("needs healing"), "{log}");
    assert_eq!(mounter_pids(&staging), before);
    assert!(d.unpublish(&volume, &target).ok());
    assert!(d.unstage(&volume, &staging).ok());
    assert!(mounts_below(&d.kubelet).is_empty());
}

/// `bindery status` reads the node from the state dir and /proc: the
/// volume, its mounter and pods while the daemon runs and after it stopped,
/// a dead mounter, and a quarantined record; `--output json` is JSON.
#[test]
fn status_reads_the_node_without_the_daemon() {
    if !can_mount("status_reads_the_node_without_the_daemon") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let mut d = Daemon::start(&[]);
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/st/globalmount");
    let volume = format!("{BUCKET}/status");
    assert!(d
        .csi(&args(&stage_args(&s3, &volume, &staging, "s3fs")))
        .ok());
    for pod in ["p1", "p2"] {
        let target = d.kpath(&format!("pods/{pod}/volumes/kubernetes.io~csi/data/mount"));
        assert!(publish(&d, &volume, &staging, &target, false).ok());
    }
    let pid = mounter_pids(&staging)[0];
    let status = |d: &Daemon, extra: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("status")
            .arg(format!("--kubelet-dir={}", d.kubelet.display()))
            .arg(format!("--state-dir={}", d.state.display()))
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let row = |text: &str| {
        text.lines()
            .find(|l| l.starts_with(&volume))
            .unwrap_or_else(|| panic!("no row for {volume}: {text}"))
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let running = row(&status(&d, &[]));
    assert_eq!(
        running[1..7],
        ["s3", "READY", "s3fs", &pid.to_string(), "yes", "2"]
    );
    d.stop();
    assert_eq!(
        row(&status(&d, &[]))[1..7],
        running[1..7],
        "the same with the daemon down"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_until("the mounter reported dead", 10, || {
        row(&status(&d, &[]))[5] == "NO"
    });
    let json = status(&d, &["--output", "json"]);
    let checked = std::process::Command::new("python3")
        .args(["-c", "import json,sys; v=json.load(sys.stdin)['volumes']; print(v[0]['alive'], v[0]['pods'])"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(json.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&checked.stdout).trim(),
        "False 2",
        "{json}"
    );
    d.corrupt_record(&volume);
    let text = status(&d, &[]);
    assert!(
        text.contains("unreadable: ") && !text.contains(&volume),
        "{text}"
    );
    d.restart();
    let text = status(&d, &[]);
    assert!(text.contains("quarantined: "), "{text}");
    d.stop();
    unmount_below(&d.kubelet);
}

fn is_mount_point(p: &str) -> bool {
    mounts_below(Path::new(p)).iter().any(|m| m == Path::new(p))
}
