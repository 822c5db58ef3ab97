//! What reaches a mounter, and how mounters start, stay up and stop, against
//! the real binary with real s3fs and rclone mounts of a real S3 server on
//! 127.0.0.1, as root inside the private namespace of .ci/in-namespace.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const BUCKET: &str = "inputs-bucket";

fn secrets_file(d: &Daemon, name: &str, endpoint: &str, key: &str, secret: &str) -> String {
    let f = d.scratch.path.join(name);
    fs::write(
        &f,
        format!("accessKeyID={key}\nsecretAccessKey={secret}\nendpoint={endpoint}\n"),
    )
    .unwrap();
    format!("--secrets-file={}", f.display())
}

/// Nothing of a refused request is left: no mount, no mounter, no
/// credentials, no state.
fn assert_no_side_effects(d: &Daemon) {
    assert!(
        mounts_below(&d.kubelet).is_empty(),
        "{:?}",
        mounts_below(&d.kubelet)
    );
    assert!(
        pids_matching(
            |c| (c.starts_with("s3fs ") || c.starts_with("rclone mount"))
                && c.contains(&d.kubelet.display().to_string())
        )
        .is_empty(),
        "mounter left running"
    );
    let vols = d.state.join("volumes");
    let left: Vec<_> = fs::read_dir(&vols)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "state left: {left:?}");
}

/// Hostile values in every field that reaches a mounter are refused with
/// INVALID_ARGUMENT naming the field, before anything is written or run;
/// messages never echo a secret and stay within 1 KiB.
#[test]
fn hostile_inputs_are_refused_by_field() {
    if !can_mount("hostile_inputs_are_refused_by_field") {
        return;
    }
    let d = Daemon::start(&["--fuse-programs=geesefs"]);
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/h/globalmount");
    let ep = "http://127.0.0.1:9";
    let secret = "TopSecret-Value-42";
    let ok_secrets = secrets_file(&d, "ok", ep, "AKIDOK", secret);
    let p = |kv: &str| format!("--param={kv}");
    let huge_option = format!(
        "--param=options=-o {}",
        "max_stat_cache_size=1,".repeat(5000)
    );
    let mut cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![secrets_file(
                &d,
                "s1",
                "http://127.0.0.1:9,use_cache=/tmp",
                "AKID",
                secret,
            )],
            "secrets.endpoint",
        ),
        (
            vec![secrets_file(&d, "s2", "127.0.0.1:9000", "AKID", secret)],
            "secrets.endpoint",
        ),
        (
            vec![
                ok_secrets.clone(),
                "--secret=region=us-east-1,use_cache=/tmp".into(),
            ],
            "secrets.region",
        ),
        (
            vec![
                ok_secrets.clone(),
                format!("--secret=secretAccessKey={secret}\nbucket:AKID:x"),
            ],
            "secrets.secretAccessKey",
        ),
        (
            vec![
                ok_secrets.clone(),
                format!("--secret=accessKeyID=bkt:{secret}"),
            ],
            "secrets.accessKeyID",
        ),
        (
            vec![ok_secrets.clone(), p("options=-o passwd_file=/etc/shadow")],
            "volume_context.options",
        ),
        (
            vec![ok_secrets.clone(), p("options=use_cache=/tmp")],
            "volume_context.options",
        ),
        (
            vec![ok_secrets.clone(), p("options=-o allow_root,suid")],
            "volume_context.options",
        ),
        (
            vec![ok_secrets.clone(), p("options=iam_role=node")],
            "volume_context.options",
        ),
        (
            vec![
                ok_secrets.clone(),
                p("mounter=rclone"),
                p("options=--config=/etc/x"),
            ],
            "volume_context.options",
        ),
        (
            vec![
                ok_secrets.clone(),
                p("mounter=rclone"),
                p("options=--s3-env-auth"),
            ],
            "volume_context.options",
        ),
        (
            vec![
                ok_secrets.clone(),
                p("mounter=rclone"),
                p("options=--cache-dir /"),
            ],
            "volume_context.options",
        ),
        (vec![ok_secrets.clone(), p("uid=-1")], "volume_context.uid"),
        (
            vec![ok_secrets.clone(), p("gid=99999999999")],
            "volume_context.gid",
        ),
        (
            vec![ok_secrets.clone(), p("umask=0999")],
            "volume_context.umask",
        ),
        (
            vec![
                ok_secrets.clone(),
                p("mounter=fuse"),
                p("command=geesefs --cache=/tmp {bucket} {mountpoint}"),
            ],
            "volume_context.command",
        ),
        (
            vec![
                ok_secrets.clone(),
                p("mounter=fuse"),
                p("command=geesefs {bucket} /mnt"),
            ],
            "volume_context.command",
        ),
        (
            vec![ok_secrets.clone(), huge_option],
            "volume_context.options",
        ),
        (
            vec![secrets_file(
                &d,
                "s3",
                &format!("http://{}", "a".repeat(1 << 20)),
                "AKID",
                secret,
            )],
            "secrets.endpoint",
        ),
    ];
    for (i, (extra, field)) in cases.drain(..).enumerate() {
        let mut a = extra.clone();
        a.push(format!("--param=bucket={BUCKET}"));
        let out = d.stage(&format!("vol-{i}"), &staging, &a);
        assert_eq!(out.code, 3, "case {i} ({field}): {out:?}");
        assert!(
            out.stderr.contains(field),
            "case {i}: wants {field}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains(secret), "case {i}: secret echoed");
        assert!(
            out.stderr.len() < 1400,
            "case {i}: {} bytes",
            out.stderr.len()
        );
        assert_no_side_effects(&d);
    }
    // Over-long ids and paths are refused before any syscall.
    let long_id = "v".repeat(2000);
    let out = d.stage(&long_id, &staging, std::slice::from_ref(&ok_secrets));
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.len() < 1400);
    let long_component = d.kpath(&format!("plugins/{}/globalmount", "c".repeat(300)));
    let out = d.stage("v", &long_component, std::slice::from_ref(&ok_secrets));
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("staging_target_path"), "{}", out.stderr);
    assert!(!Path::new(&long_component).parent().unwrap().exists());
    assert!(!d.log_text().contains(secret), "secret in the daemon log");
    assert_no_side_effects(&d);
}

/// A wrong secret makes s3fs exit at once: the error says how it exited and
/// what it said last, not that a timeout passed.
#[test]
fn failed_start_says_how_the_mounter_exited() {
    if !can_mount("failed_start_says_how_the_mounter_exited") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&["--mount-timeout=20"]);
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/x/globalmount");
    let wrong = "Wrong-Secret-Pq9";
    let sf = secrets_file(&d, "wrong", &s3.endpoint, ACCESS_KEY, wrong);
    let t0 = Instant::now();
    let out = d.stage(BUCKET, &staging, &[sf]);
    let took = t0.elapsed();
    assert_eq!(out.code, 13, "{out:?}");
    assert!(
        out.stderr.contains("s3fs exited with code"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("within"),
        "claims a timeout: {}",
        out.stderr
    );
    assert!(!out.stderr.contains(wrong), "secret in the message");
    // It did not wait for --mount-timeout to pass.
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_no_side_effects(&d);
}

fn prompt_unstage(mounter: &str) {
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&["--unstage-grace=30"]);
    let staging = d.kpath(&format!(
        "plugins/kubernetes.io/csi/bindery.csi.dev/copy-{mounter}/globalmount"
    ));
    let volume = format!("{BUCKET}/copy-{mounter}");
    let mut a = s3.secret_args();
    a.push(format!("--param=mounter={mounter}"));
    let out = d.stage(&volume, &staging, &a);
    assert!(out.ok(), "{out:?}");
    fs::write(Path::new(&staging).join("kept.txt"), "uploaded").unwrap();
    // A process in another mount namespace, made while the volume is staged,
    // holds a copy of the mount: the mounter's connection outlives the
    // unmount in ours.
    let mut holder = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sleep", "300"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let holder_pid = holder.id();
    wait_until("holder in its namespace", 10, || {
        let ours = fs::read_link("/proc/self/ns/mnt").ok();
        let theirs = fs::read_link(format!("/proc/{holder_pid}/ns/mnt")).ok();
        theirs.is_some()
            && theirs != ours
            && fs::read_to_string(format!("/proc/{holder_pid}/cmdline"))
                .is_ok_and(|c| c.starts_with("sleep"))
    });
    assert_eq!(mounter_pids(&staging).len(), 1);
    let t0 = Instant::now();
    let out = d.unstage(&volume, &staging);
    let took = t0.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(out.ok(), "{out:?}");
    eprintln!("{mounter}: unstage with a copy held took {took:?}");
    // Two 30 s waits before; now the connection is aborted at once.
    assert!(took < Duration::from_secs(20), "unstage took {took:?}");
    assert!(mounter_pids(&staging).is_empty(), "mounter left running");
    assert!(mounts_below(&d.kubelet).is_empty());
    // Nothing acknowledged was lost.
    let obj = s3.dir.join(BUCKET).join(format!("copy-{mounter}/kept.txt"));
    assert_eq!(fs::read_to_string(&obj).unwrap(), "uploaded");
}

#[test]
fn s3fs_unstage_is_prompt_with_a_copy_in_another_namespace() {
    if can_mount("s3fs_unstage_is_prompt_with_a_copy_in_another_namespace") {
        prompt_unstage("s3fs");
    }
}

#[test]
fn rclone_unstage_is_prompt_with_a_copy_in_another_namespace() {
    if can_mount("rclone_unstage_is_prompt_with_a_copy_in_another_namespace") {
        prompt_unstage("rclone");
    }
}

/// A prefix of 20,000 keys takes s3fs many seconds to list. That is a slow
/// bucket, not a dead mount: the watchdog must not remount it, and pods
/// reading the volume must never see ENOTCONN.
#[test]
fn slow_listing_causes_no_remount() {
    if !can_mount("slow_listing_causes_no_remount") {
        return;
    }
    let s3 = S3Server::start(&[BUCKET]);
    let d = Daemon::start(&["--watchdog-interval=1"]);
    let staging = d.kpath("plugins/kubernetes.io/csi/bindery.csi.dev/slow/globalmount");
    let volume = format!("{BUCKET}/big");
    let prefix = s3.dir.join(BUCKET).join("big");
    fs::create_dir_all(&prefix).unwrap();
    fs::write(prefix.join("known.txt"), "known").unwrap();
    let out = d.stage(&volume, &staging, &s3.secret_args());
    assert!(out.ok(), "{out:?}");
    let target = d.kpath("pods/slow/volumes/kubernetes.io~csi/data/mount");
    let out = d.publish(&volume, &staging, &target, &[]);
    assert!(out.ok(), "{out:?}");
    // Keys appear behind the mounter's back (the server reads its directory).
    for i in 0..20_000 {
        fs::File::create(prefix.join(format!("k{i:05}"))).unwrap();
    }
    let pid = mounter_pids(&staging);
    assert_eq!(pid.len(), 1);
    // A pod lists the prefix (slowly) while the watchdog runs many passes.
    let t = target.clone();
    let lister = thread::spawn(move || {
        let t0 = Instant::now();
        let n = fs::read_dir(&t).map(|d| d.count());
        (n.map_err(|e| e.to_string()), t0.elapsed())
    });
    let mut reads = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        let r = fs::read_to_string(Path::new(&target).join("known.txt"));
        assert_eq!(r.as_deref().ok(), Some("known"), "read {reads}: {r:?}");
        reads += 1;
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(mounter_pids(&staging), pid, "the mounter was replaced");
    let log = d.log_text();
    assert!(
        !log.contains("remounting") && !log.contains("starting a new mounter"),
        "watchdog remounted"
    );
    assert!(
        !log.contains("aborted the FUSE connection"),
        "connection aborted"
    );
    let stats = d.csi(&[
        "node-stats",
        "--volume-id",
        &volume,
        "--target-path",
        &target,
    ]);
    assert!(
        stats.ok() && !stats.stdout.contains("abnormal: true"),
        "{stats:?}"
    );
    let out = d.csi(&[
        "node-unpublish",
        "--volume-id",
        &volume,
        "--target-path",
        &target,
    ]);
    assert!(out.ok(), "{out:?}");
    assert!(d.unstage(&volume, &staging).ok());
    assert!(mounter_pids(&staging).is_empty());
    // The pod's listing ends with the mount at the latest.
    let (listed, took) = lister.join().unwrap();
    eprintln!("pod listing of 20k keys: {listed:?} after {took:?}; {reads} reads ok meanwhile");
}
