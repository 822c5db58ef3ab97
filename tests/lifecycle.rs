//! The volume lifecycle on a real node: what recovery, healing and repeated
//! calls must never do (undo a teardown, use revoked credentials, touch a
//! mount that is not the volume's). Memory per volume is a benchmark
//! (benches/ephemeral.sh), not a test.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::thread;

use common::*;

const BUCKET: &str = "life-bucket";

fn staging(d: &Daemon, name: &str) -> String {
    d.kpath(&format!(
        "plugins/kubernetes.io/csi/bindery.csi.dev/{name}/globalmount"
    ))
}

fn target(d: &Daemon, pod: &str) -> String {
    d.kpath(&format!("pods/{pod}/volumes/kubernetes.io~csi/pv/mount"))
}

fn stage(d: &Daemon, volume: &str, staging: &str, secrets: &[String]) -> Out {
    let mut a = vec!["--param".to_string(), "mounter=s3fs".to_string()];
    a.extend_from_slice(secrets);
    d.stage(volume, staging, &a)
}

fn is_mount(path: &str) -> bool {
    mounts_below(Path::new(path))
        .iter()
        .any(|m| m.as_path() == Path::new(path))
}

fn mounters(staging: &str) -> Vec<i32> {
    pids_matching(|c| c.starts_with("s3fs ") && c.contains(staging))
}

fn kill9(pids: &[i32]) {
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[track_caller]
fn ok(out: Out, d: &Daemon) {
    assert!(out.ok(), "{out:?}\n{}", d.log_text());
}

/// An unpublish that arrives the moment the restarted daemon answers is
/// final: recovery (which ran before the socket existed) and the health
/// loop never bind the target again, and the volume unstages.
#[test]
fn unpublish_right_after_restart_is_never_undone() {
    if !can_mount("unpublish_right_after_restart_is_never_undone") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let mut d = Daemon::start(&["--watchdog-interval=1"]);
    let (vol, st, t) = ("life-bucket/a", staging(&d, "a"), target(&d, "p1"));
    ok(stage(&d, vol, &st, &s3.secret_args()), &d);
    ok(d.publish(vol, &st, &t, &[]), &d);
    d.kill9();
    // Give recovery and the health loop work: the mounter is dead too.
    kill9(&mounters(&st));
    d.restart();
    ok(d.unpublish(vol, &t), &d);
    assert!(!is_mount(&t));
    // Several health passes later, the target is still not bound.
    d.wait_health_passes(3, 30);
    assert!(!is_mount(&t), "the unpublish was undone\n{}", d.log_text());
    ok(d.unstage(vol, &st), &d);
    wait_until("mounter gone", 20, || mounters(&st).is_empty());
    assert!(!is_mount(&st));
}

/// A re-stage with rotated keys returns OK and the NEXT heal uses the new
/// keys: after the old key is revoked, a killed mounter comes back.
#[test]
fn rotated_secrets_reach_the_heal() {
    if !can_mount("rotated_secrets_reach_the_heal") {
        return;
    }
    let old = ("rotate-old-key", "rotate-old-secret-1");
    let new = ("rotate-new-key", "rotate-new-secret-2");
    let mut s3 = S3Server::start_with_keys(&[BUCKET], &[old, new]);
    let d = Daemon::start(&["--watchdog-interval=1"]);
    let (vol, st, t) = ("life-bucket/rot", staging(&d, "rot"), target(&d, "p1"));
    ok(stage(&d, vol, &st, &s3.secret_args_with(old.0, old.1)), &d);
    ok(stage(&d, vol, &st, &s3.secret_args_with(new.0, new.1)), &d);
    assert_eq!(
        mounters(&st).len(),
        1,
        "a re-stage starts no second mounter"
    );
    ok(d.publish(vol, &st, &t, &[]), &d);
    // Revoke the old key, then kill the mounter: the heal must use the new one.
    s3.pause();
    s3.resume(&[new]);
    let before = mounters(&st);
    kill9(&before);
    wait_until("healed with the new key", 30, || {
        let now = mounters(&st);
        now.len() == 1 && now != before && is_mount(&st) && fs::read_dir(&st).is_ok()
    });
    // Still the same, new mounter a health pass later: it did not die at once.
    d.wait_health_passes(1, 30);
    assert!(
        is_mount(&st) && mounters(&st).len() == 1,
        "{}",
        d.log_text()
    );
    fs::write(format!("{st}/after-rotation"), b"x").unwrap();
    wait_until("write reaches the bucket", 20, || {
        s3.dir.join(BUCKET).join("rot/after-rotation").exists()
    });
    let log = d.log_text();
    assert!(
        !log.contains(new.1) && !log.contains(old.1),
        "a secret reached the log"
    );
    ok(d.unpublish(vol, &t), &d);
    ok(d.unstage(vol, &st), &d);
}

/// Unpublish and unstage only ever remove what the record says bindery
/// made: another volume's mount at the target, or a foreign mount, stays.
#[test]
fn other_mounts_are_never_torn_down() {
    if !can_mount("other_mounts_are_never_torn_down") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&[]);
    let (a, sa, ta) = ("life-bucket/va", staging(&d, "va"), target(&d, "pa"));
    ok(stage(&d, a, &sa, &s3.secret_args()), &d);
    ok(d.publish(a, &sa, &ta, &[]), &d);
    // Unpublish of ANOTHER volume id at volume a's target: OK, nothing touched.
    ok(d.unpublish("life-bucket/vb", &ta), &d);
    assert!(
        is_mount(&ta),
        "volume a's bind was removed by a call for volume b"
    );
    // Unpublish of a target this volume never published: OK, untouched.
    let foreign = d.kpath("pods/px/volumes/kubernetes.io~csi/pv/mount");
    fs::create_dir_all(&foreign).unwrap();
    assert!(std::process::Command::new("mount")
        .args(["-t", "tmpfs", "foreign", &foreign])
        .status()
        .unwrap()
        .success());
    ok(d.unpublish(a, &foreign), &d);
    assert!(is_mount(&foreign), "a foreign mount was removed");
    // A publish onto the foreign mount is refused and leaves it alone.
    let out = d.publish(a, &sa, &foreign, &[]);
    assert!(
        !out.ok() && out.stderr.contains("ALREADY_EXISTS"),
        "{out:?}"
    );
    assert!(is_mount(&foreign));
    // Stage of volume b at volume a's staging path: refused, a untouched.
    let out = stage(&d, "life-bucket/vb", &sa, &s3.secret_args());
    assert!(!out.ok(), "{out:?}");
    assert!(is_mount(&sa) && fs::read_dir(&ta).is_ok());
    ok(d.unpublish(a, &ta), &d);
    ok(d.unstage(a, &sa), &d);
    assert!(is_mount(&foreign), "a foreign mount was removed");
    let _ = std::process::Command::new("umount").arg(&foreign).status();
}

/// A symlink anywhere in a staging or target path is refused, and nothing
/// is created, mounted or removed outside the kubelet dir.
#[test]
fn symlinked_node_paths_are_refused() {
    if !can_mount("symlinked_node_paths_are_refused") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&[]);
    let outside = Scratch::new("outside");
    fs::create_dir_all(d.kubelet.join("pods")).unwrap();
    symlink(&outside.path, d.kubelet.join("pods/evil")).unwrap();
    fs::create_dir_all(d.kubelet.join("plugins")).unwrap();
    symlink(&outside.path, d.kubelet.join("plugins/evil")).unwrap();
    let bad_staging = d.kpath("plugins/evil/globalmount");
    let out = stage(&d, "life-bucket/s", &bad_staging, &s3.secret_args());
    assert!(
        !out.ok() && out.stderr.contains("staging_target_path"),
        "{out:?}"
    );
    let (vol, st) = ("life-bucket/s", staging(&d, "s"));
    ok(stage(&d, vol, &st, &s3.secret_args()), &d);
    for bad_target in [d.kpath("pods/evil/volumes/x/mount"), d.kpath("pods/evil")] {
        let out = d.publish(vol, &st, &bad_target, &[]);
        assert!(!out.ok() && out.stderr.contains("target_path"), "{out:?}");
        // Even with nothing to undo, a symlinked path is refused by name.
        let out = d.unpublish(vol, &bad_target);
        assert!(
            out.code == 3 && out.stderr.contains("target_path"),
            "{out:?}"
        );
    }
    assert_eq!(
        fs::read_dir(&outside.path).unwrap().count(),
        0,
        "something was created outside"
    );
    assert!(
        mounts_below(&outside.path).is_empty(),
        "something was mounted outside"
    );
    assert_eq!(mounters(&st).len(), 1);
    ok(d.unstage(vol, &st), &d);
    assert!(mounters(&bad_staging).is_empty());
}

/// Metadata files of rclone VFS caches below `dir` that say "Dirty": true.
fn dirty_entries(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if p.components().any(|c| c.as_os_str() == "vfsMeta")
                && fs::read_to_string(&p)
                    .map(|t| t.replace([' ', '\n', '\t'], "").contains("\"Dirty\":true"))
                    .unwrap_or(false)
            {
                n += 1;
            }
        }
    }
    n
}

/// Heal never loses data: a file written through an rclone volume while S3
/// is down stays in rclone's VFS cache through a killed mounter and failed
/// heals for 40 s, and reaches the bucket once S3 is back.
#[test]
fn rclone_writes_survive_an_s3_outage_with_heal() {
    if !can_mount("rclone_writes_survive_an_s3_outage_with_heal") {
        return;
    }
    let mut s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&[
        "--watchdog-interval=1",
        "--mount-timeout=20",
        "--unstage-grace=60",
    ]);
    let (vol, st, t) = (
        "life-bucket/outage",
        staging(&d, "outage"),
        target(&d, "p1"),
    );
    let mut a = vec!["--param".to_string(), "mounter=rclone".to_string()];
    a.extend(s3.secret_args());
    ok(d.stage(vol, &st, &a), &d);
    ok(d.publish(vol, &st, &t, &[]), &d);
    // S3 goes away; the pod writes 1 MiB, which rclone acknowledges.
    s3.pause();
    let data: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    fs::write(format!("{t}/precious.bin"), &data).unwrap();
    // The health loop leaves a live rclone alone while S3 is down (it used
    // to remount it, and lose its cache); it has accepted the write, as its
    // VFS cache metadata shows.
    let rclone = || pids_matching(|c| c.starts_with("rclone mount") && c.contains(&st));
    let first = rclone();
    wait_until(
        "the write is recorded as pending in rclone's cache",
        20,
        || dirty_entries(&d.state) > 0,
    );
    d.wait_health_passes(3, 60);
    assert_eq!(
        rclone(),
        first,
        "a live mounter was replaced during the outage"
    );
    // Then the mounter dies with the upload pending; heals fail while S3 is
    // down, and none of them may drop the cache.
    kill9(&first);
    let failed_heals = || d.log_text().matches("self-heal failed").count();
    let before = failed_heals();
    wait_until("two heals failed while S3 is down", 120, || {
        failed_heals() >= before + 2
    });
    let object = s3.dir.join(BUCKET).join("outage/precious.bin");
    assert!(!object.exists(), "uploaded while S3 was down?");
    s3.resume(&[(ACCESS_KEY, SECRET_KEY)]);
    // A heal succeeds and the new rclone uploads what the old one accepted.
    wait_until("the pending write reaches the bucket", 90, || {
        fs::read(&object).map(|b| b == data).unwrap_or(false)
    });
    ok(d.unpublish(vol, &t), &d);
    ok(d.unstage(vol, &st), &d);
    assert_eq!(fs::read(&object).unwrap(), data);
    wait_until("mounter gone", 20, || rclone().is_empty());
}

/// A state write that fails (full disk) fails the call and changes nothing;
/// once there is room, the unpublish goes through and is never undone.
#[test]
fn full_disk_unpublish_fails_cleanly_and_is_not_undone() {
    if !can_mount("full_disk_unpublish_fails_cleanly_and_is_not_undone") {
        return;
    }
    let small = Scratch::new("small");
    assert!(std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "bindery-small"])
        .arg(&small.path)
        .status()
        .unwrap()
        .success());
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start_in(&small.path, &["--watchdog-interval=1"]);
    let (vol, st, t) = ("life-bucket/full", staging(&d, "full"), target(&d, "p1"));
    ok(stage(&d, vol, &st, &s3.secret_args()), &d);
    ok(d.publish(vol, &st, &t, &[]), &d);
    // Fill the filesystem that holds the state records.
    let filler = small.path.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let out = d.unpublish(vol, &t);
    assert_eq!(
        out.code, 13,
        "INTERNAL when the record cannot be written: {out:?}"
    );
    assert!(is_mount(&t), "a failed unpublish changed nothing");
    fs::remove_file(&filler).unwrap();
    ok(d.unpublish(vol, &t), &d);
    d.wait_health_passes(3, 30);
    assert!(
        !is_mount(&t),
        "the health loop undid the unpublish\n{}",
        d.log_text()
    );
    ok(d.unstage(vol, &st), &d);
    drop(d);
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&small.path)
        .status();
}

/// A pod that swaps a directory of its target path for a symlink to the
/// outside while publishes run never gets a mount or a directory outside
/// the kubelet dir.
#[test]
fn symlink_swap_races_never_escape() {
    if !can_mount("symlink_swap_races_never_escape") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&[]);
    let outside = Scratch::new("race-outside");
    let (vol, st) = ("life-bucket/race", staging(&d, "race"));
    ok(stage(&d, vol, &st, &s3.secret_args()), &d);
    let pods = d.kubelet.join("pods");
    let (pod, link) = (pods.join("race"), pods.join(".link"));
    fs::create_dir_all(pod.join("volumes")).unwrap();
    symlink(&outside.path, &link).unwrap();
    let (pod_c, link_c) = (
        std::ffi::CString::new(pod.as_os_str().as_encoded_bytes()).unwrap(),
        std::ffi::CString::new(link.as_os_str().as_encoded_bytes()).unwrap(),
    );
    let exchange = || {
        use nix::libc;
        // SAFETY: renameat2 with two valid NUL-terminated paths that outlive
        // the call; RENAME_EXCHANGE swaps them atomically (musl has no wrapper).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                pod_c.as_ptr(),
                libc::AT_FDCWD,
                link_c.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        assert_eq!(rc, 0, "renameat2: {}", std::io::Error::last_os_error());
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut published = Vec::new();
    thread::scope(|s| {
        s.spawn(|| {
            // Swap pods/race between the real directory and a symlink to
            // the outside, atomically (never absent), as fast as possible.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                exchange();
            }
        });
        for i in 0..150 {
            let t = d.kpath(&format!("pods/race/volumes/v{i}/mount"));
            if d.publish(vol, &st, &t, &[]).ok() {
                published.push(t);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    // Put the real directory back and take every publication down.
    if pod.is_symlink() {
        exchange();
    }
    eprintln!("{} of 150 publishes won the race", published.len());
    for t in &published {
        ok(d.unpublish(vol, t), &d);
    }
    assert!(
        mounts_below(&outside.path).is_empty(),
        "a bind escaped the kubelet dir"
    );
    assert_eq!(
        fs::read_dir(&outside.path).unwrap().count(),
        0,
        "something was created outside the kubelet dir"
    );
    let stray: Vec<_> = mounts_below(&pods).into_iter().collect();
    assert!(stray.is_empty(), "binds left behind: {stray:?}");
    ok(d.unstage(vol, &st), &d);
}

/// fsGroup belongs to the staged volume: a publish with another group is
/// refused (FAILED_PRECONDITION) rather than silently given the first
/// pod's; mount flags are applied (nosuid,nodev always) or refused.
#[test]
fn publish_flags_and_groups_are_honoured_or_refused() {
    if !can_mount("publish_flags_and_groups_are_honoured_or_refused") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&[]);
    let (vol, st) = ("life-bucket/grp", staging(&d, "grp"));
    let mut a: Vec<String> = ["--mount-group", "2000", "--param", "mounter=s3fs"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(s3.secret_args());
    ok(d.stage(vol, &st, &a), &d);
    let pub_with = |t: &str, extra: &[&str]| d.publish(vol, &st, t, extra);
    let t1 = target(&d, "g1");
    let out = pub_with(&t1, &["--mount-group", "3000"]);
    assert_eq!(out.code, 9, "{out:?}");
    assert!(out.stderr.contains("volume_mount_group"), "{out:?}");
    assert!(!is_mount(&t1));
    let out = pub_with(&t1, &["--mount-group", "2000", "--mount-flag", "suid"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("mount_flags"), "{out:?}");
    assert!(!is_mount(&t1));
    ok(
        pub_with(
            &t1,
            &[
                "--mount-group",
                "2000",
                "--mount-flag",
                "noexec",
                "--readonly",
            ],
        ),
        &d,
    );
    let opts = mount_options(Path::new(&t1)).unwrap();
    for want in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(
            opts.split(',').any(|o| o == want),
            "{want} missing from {opts}"
        );
    }
    ok(d.unpublish(vol, &t1), &d);
    ok(d.unstage(vol, &st), &d);
}
