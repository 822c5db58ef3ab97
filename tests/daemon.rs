//! Black-box tests of the daemon: Identity, Node basics, validation codes,
//! socket handling, shutdown and the volume table's ABORTED rule, all over
//! gRPC against the real binary.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const INVALID_ARGUMENT: i32 = 3;
const NOT_FOUND: i32 = 5;
const FAILED_PRECONDITION: i32 = 9;
const ABORTED: i32 = 10;
const UNIMPLEMENTED: i32 = 12;

#[test]
fn identity_and_node_basics() {
    let d = Daemon::start(&[]);
    let info = d.csi(&["plugin-info"]);
    assert!(info.ok(), "{info:?}");
    assert!(
        info.stdout.contains("name: \"bindery.csi.dev\""),
        "{}",
        info.stdout
    );
    assert!(
        info.stdout.contains(&format!(
            "vendor_version: \"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        info.stdout
    );
    let probe = d.csi(&["probe"]);
    assert!(
        probe.stdout.contains("value: true"),
        "ready after recovery: {probe:?}"
    );
    // Node mode: no controller service advertised.
    let caps = d.csi(&["plugin-capabilities"]);
    assert!(
        caps.ok() && !caps.stdout.contains("CONTROLLER_SERVICE"),
        "{caps:?}"
    );
    let ni = d.csi(&["node-info"]);
    assert!(ni.stdout.contains("node_id: \"test-node\""), "{ni:?}");
    let nc = d.csi(&["node-capabilities"]);
    for cap in [
        "STAGE_UNSTAGE_VOLUME",
        "GET_VOLUME_STATS",
        "VOLUME_CONDITION",
        "VOLUME_MOUNT_GROUP",
    ] {
        assert!(nc.stdout.contains(cap), "{cap} missing: {}", nc.stdout);
    }
    assert!(
        !nc.stdout.contains("EXPAND_VOLUME"),
        "never advertise what is not implemented"
    );
    // The controller is not served in node mode.
    let cc = d.csi(&["controller-capabilities"]);
    assert_eq!(cc.code, UNIMPLEMENTED, "{cc:?}");
    let mode = fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode");
}

#[test]
fn controller_mode_advertises_controller() {
    let d = Daemon::start(&["--mode=all"]);
    let caps = d.csi(&["plugin-capabilities"]);
    assert!(caps.stdout.contains("CONTROLLER_SERVICE"), "{caps:?}");
    let cc = d.csi(&["controller-capabilities"]);
    assert!(cc.stdout.contains("CREATE_DELETE_VOLUME"), "{cc:?}");
}

/// Every missing required field of every Node RPC is INVALID_ARGUMENT, and
/// the message names the field. Fake ids must not turn into NOT_FOUND.
#[test]
fn missing_fields_are_invalid_argument() {
    let d = Daemon::start(&[]);
    let staging = d.kpath("plugins/kubernetes.io/csi/x/globalmount");
    let target = d.kpath("pods/p/volumes/v/mount");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["node-stage", "--staging-path", &staging], "volume_id"),
        (
            vec!["node-stage", "--volume-id", "fake-vol-id-1"],
            "staging_target_path",
        ),
        (
            vec![
                "node-stage",
                "--volume-id",
                "fake-vol-id-1",
                "--staging-path",
                &staging,
                "--no-capability",
            ],
            "volume_capability",
        ),
        (
            vec!["node-unstage", "--staging-path", &staging],
            "volume_id",
        ),
        (
            vec!["node-unstage", "--volume-id", "fake-vol-id-1"],
            "staging_target_path",
        ),
        (
            vec![
                "node-publish",
                "--target-path",
                &target,
                "--staging-path",
                &staging,
            ],
            "volume_id",
        ),
        (
            vec![
                "node-publish",
                "--volume-id",
                "fake-vol-id-1",
                "--staging-path",
                &staging,
            ],
            "target_path",
        ),
        (
            vec![
                "node-publish",
                "--volume-id",
                "fake-vol-id-1",
                "--target-path",
                &target,
                "--no-capability",
            ],
            "volume_capability",
        ),
        (
            vec!["node-unpublish", "--target-path", &target],
            "volume_id",
        ),
        (
            vec!["node-unpublish", "--volume-id", "fake-vol-id-1"],
            "target_path",
        ),
        (
            vec!["node-stats", "--target-path", "some/path"],
            "volume_id",
        ),
        (
            vec!["node-stats", "--volume-id", "fake-vol-id-1"],
            "volume_path",
        ),
    ];
    for (args, field) in cases {
        let out = d.csi(&args);
        assert_eq!(out.code, INVALID_ARGUMENT, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(field),
            "{args:?}: message must name {field}: {}",
            out.stderr
        );
    }
    // Nothing was created for the refused requests.
    assert!(!d.kubelet.join("pods").exists());
    assert!(!d.kubelet.join("plugins/kubernetes.io").exists());
    assert!(!d.kubelet.join("plugins/x").exists());
}

#[test]
fn bad_paths_and_capabilities_are_refused_without_side_effects() {
    let d = Daemon::start(&[]);
    let outside = d.scratch.path.join("outside");
    let outside_s = outside.display().to_string();
    let escape = format!("{}/../outside", d.kubelet.display());
    let staging = d.kpath("plugins/x/globalmount");
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "node-stage",
            "--volume-id",
            "v",
            "--staging-path",
            &outside_s,
        ],
        vec!["node-stage", "--volume-id", "v", "--staging-path", &escape],
        vec![
            "node-stage",
            "--volume-id",
            "v",
            "--staging-path",
            "relative/dir",
        ],
        vec![
            "node-stage",
            "--volume-id",
            "v",
            "--staging-path",
            &staging,
            "--block",
        ],
        vec![
            "node-publish",
            "--volume-id",
            "v",
            "--staging-path",
            &staging,
            "--target-path",
            &outside_s,
        ],
        vec![
            "node-publish",
            "--volume-id",
            "v",
            "--staging-path",
            &staging,
            "--target-path",
            &escape,
        ],
        vec![
            "node-unpublish",
            "--volume-id",
            "v",
            "--target-path",
            "/etc",
        ],
        vec!["node-unstage", "--volume-id", "v", "--staging-path", "/"],
    ];
    for args in cases {
        let out = d.csi(&args);
        assert_eq!(out.code, INVALID_ARGUMENT, "{args:?}: {out:?}");
    }
    assert!(!outside.exists(), "nothing written outside the kubelet dir");
    assert!(!d.kubelet.join("plugins/kubernetes.io").exists());
    assert!(!d.kubelet.join("plugins/x").exists());
    // Bad volume parameters name themselves and change nothing.
    let out = d.csi(&[
        "node-stage",
        "--volume-id",
        "bkt",
        "--staging-path",
        &staging,
        "--param",
        "colour=blue",
        "--secret",
        "endpoint=http://127.0.0.1:1",
    ]);
    assert_eq!(out.code, INVALID_ARGUMENT, "{out:?}");
    assert!(out.stderr.contains("colour"), "{}", out.stderr);
    assert!(!d.kubelet.join("plugins/kubernetes.io").exists());
    assert!(!d.kubelet.join("plugins/x").exists());
}

#[test]
fn lifecycle_errors_and_idempotent_cleanup() {
    let d = Daemon::start(&[]);
    let staging = d.kpath("plugins/x/globalmount");
    let target = d.kpath("pods/p/volumes/v/mount");
    // Publish before stage.
    let out = d.csi(&[
        "node-publish",
        "--volume-id",
        "v",
        "--staging-path",
        &staging,
        "--target-path",
        &target,
    ]);
    assert_eq!(out.code, FAILED_PRECONDITION, "{out:?}");
    // Unknown volumes: unpublish/unstage are OK (idempotent), stats NOT_FOUND.
    assert!(d
        .csi(&[
            "node-unpublish",
            "--volume-id",
            "v",
            "--target-path",
            &target
        ])
        .ok());
    assert!(d
        .csi(&[
            "node-unstage",
            "--volume-id",
            "v",
            "--staging-path",
            &staging
        ])
        .ok());
    let out = d.csi(&[
        "node-stats",
        "--volume-id",
        "fake-vol-id-1",
        "--target-path",
        "some/path",
    ]);
    assert_eq!(out.code, NOT_FOUND, "{out:?}");
}

/// A long operation in flight on a volume: every other call on that volume
/// gets ABORTED at once, other volumes and cheap RPCs are unaffected.
#[test]
fn long_operation_in_flight_gives_aborted() {
    let scratch = Scratch::new("slow");
    let slow = scratch.path.join("slowfuse");
    // A mounter that never mounts: the stage stays in flight until the test
    // kills it (well before --mount-timeout).
    script(&slow, "sleep 600");
    let progs = format!("--fuse-programs={}", slow.display());
    let d = Daemon::start(&[&progs, "--mount-timeout=300", "--threads=2", "--workers=2"]);
    let staging = d.kpath("plugins/slow/globalmount");
    let command = format!("command={} {{mountpoint}}", slow.display());
    let stage_args = vec![
        "node-stage".to_string(),
        "--volume-id".into(),
        "slow-vol".into(),
        "--staging-path".into(),
        staging.clone(),
        "--param".into(),
        "mounter=fuse".into(),
        "--param".into(),
        "bucket=bkt".into(),
        "--param".into(),
        command,
    ];
    let socket = d.socket.clone();
    let first = thread::spawn(move || {
        let out = Command::new(BIN)
            .arg("csi")
            .args(&stage_args)
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    });
    // Wait until the mounter runs, i.e. the stage is in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids_matching(|c| c.contains("slowfuse") && c.contains("globalmount")).is_empty() {
        assert!(Instant::now() < deadline, "stage never started");
        thread::sleep(Duration::from_millis(10));
    }
    let command = format!("command={} {{mountpoint}}", slow.display());
    let again = d.csi(&[
        "node-stage",
        "--volume-id",
        "slow-vol",
        "--staging-path",
        &staging,
        "--param",
        "mounter=fuse",
        "--param",
        "bucket=bkt",
        "--param",
        &command,
    ]);
    assert_eq!(again.code, ABORTED, "{again:?}");
    let target = d.kpath("pods/a/volumes/v/mount");
    let publish = d.csi(&[
        "node-publish",
        "--volume-id",
        "slow-vol",
        "--staging-path",
        &staging,
        "--target-path",
        &target,
    ]);
    assert_eq!(publish.code, ABORTED, "{publish:?}");
    let unstage = d.csi(&[
        "node-unstage",
        "--volume-id",
        "slow-vol",
        "--staging-path",
        &staging,
    ]);
    assert_eq!(unstage.code, ABORTED, "{unstage:?}");
    // Cheap RPCs and other volumes still answer while the stage runs.
    assert!(d.csi(&["probe"]).ok());
    assert!(d.csi(&["node-capabilities"]).ok());
    let other = d.csi(&[
        "node-unstage",
        "--volume-id",
        "other",
        "--staging-path",
        &staging,
    ]);
    assert!(other.ok(), "{other:?}");
    assert!(
        !first.is_finished(),
        "the calls above waited for the stage to end"
    );
    // The mounter dies without mounting: the stage fails cleanly, with its reason.
    for pid in pids_matching(|c| c.contains("slowfuse") && c.contains("globalmount")) {
        // Its session: the shell and its sleep.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let (code, stderr) = first.join().unwrap();
    assert_eq!(code, 13, "{stderr}");
    assert!(stderr.contains("did not become ready"), "{stderr}");
    assert!(
        pids_matching(|c| c.contains("slowfuse") && c.contains("globalmount")).is_empty(),
        "mounter left running"
    );
    // Once the failed stage is over, the volume takes calls again.
    let out = d.csi(&[
        "node-unstage",
        "--volume-id",
        "slow-vol",
        "--staging-path",
        &staging,
    ]);
    assert!(out.ok(), "{out:?}");
}

#[test]
fn sigterm_removes_the_socket_and_exits_zero() {
    let mut d = Daemon::start(&[]);
    assert!(d.socket.exists());
    let status = d.stop();
    assert!(status.success(), "{status:?}");
    assert!(!d.socket.exists(), "socket left behind");
    assert!(d.log_text().contains("SIGTERM received"));
}

#[test]
fn stale_socket_is_replaced_and_live_one_refused() {
    let scratch = Scratch::new("sock");
    let sock = scratch.path.join("csi.sock");
    // A stale socket: bound, then its listener dropped.
    drop(UnixListener::bind(&sock).unwrap());
    assert!(fs::metadata(&sock).unwrap().file_type().is_socket());
    let kubelet = scratch.path.join("kubelet");
    let run = |extra: &str| {
        Command::new(BIN)
            .arg(format!("--endpoint=unix:{}", sock.display()))
            .arg("--node-id=n")
            .arg(format!("--kubelet-dir={}", kubelet.display()))
            .arg(format!(
                "--state-dir={}/state{extra}",
                scratch.path.display()
            ))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = run("1");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = Command::new(BIN)
            .args([
                "csi",
                "probe",
                &format!("--endpoint=unix:{}", sock.display()),
            ])
            .output()
            .unwrap()
            .status
            .success();
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not take over the stale socket"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // A second daemon on the live socket is refused with a clear message.
    let second = run("2").wait_with_output().unwrap();
    assert!(!second.status.success());
    let msg = String::from_utf8_lossy(&second.stderr);
    assert!(msg.contains("another daemon is listening"), "{msg}");
    // ...and the first one still serves.
    assert!(sock.exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(first.wait().unwrap().success());
    // A path that is not a socket is never deleted.
    fs::write(&sock, "precious").unwrap();
    let third = run("3").wait_with_output().unwrap();
    assert!(!third.status.success());
    assert_eq!(fs::read_to_string(&sock).unwrap(), "precious");
}

#[test]
fn flags_help_version_and_check_args() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--endpoint",
        "--node-id",
        "--driver-name",
        "--state-dir",
        "--kubelet-dir",
        "--threads",
        "--mode",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
    let ok = Command::new(BIN)
        .args([
            "--check-args",
            "--mode=controller",
            "--endpoint=unix:///csi/csi.sock",
        ])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let bad = Command::new(BIN)
        .args(["--check-args", "--mode=node"])
        .env_remove("KUBE_NODE_NAME")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--node-id"));
    let env = Command::new(BIN)
        .args(["--check-args"])
        .env("KUBE_NODE_NAME", "from-env")
        .output()
        .unwrap();
    assert!(env.status.success(), "KUBE_NODE_NAME fallback");
}

/// A long call that waited in the worker queue past its deadline is
/// dropped: the caller is gone, so nothing is mounted for it.
#[test]
fn queued_calls_past_their_deadline_are_dropped() {
    let scratch = Scratch::new("queued");
    let slow = scratch.path.join("slowfuse");
    script(&slow, "sleep 3");
    let progs = format!("--fuse-programs={}", slow.display());
    let d = Daemon::start(&[&progs, "--mount-timeout=2", "--workers=1"]);
    let command = format!("command={} {{mountpoint}}", slow.display());
    let stage = |volume: &str, timeout: &str| {
        let staging = d.kpath(&format!("plugins/{volume}/globalmount"));
        Command::new(BIN)
            .args([
                "csi",
                "node-stage",
                "--volume-id",
                volume,
                "--staging-path",
                &staging,
            ])
            .args([
                "--param",
                "mounter=fuse",
                "--param",
                "bucket=bkt",
                "--param",
                &command,
            ])
            .arg(format!("--endpoint=unix://{}", d.socket.display()))
            .arg(format!("--timeout={timeout}"))
            .output()
            .unwrap()
    };
    thread::scope(|s| {
        // Occupies the only worker for about 2 s.
        let first = s.spawn(|| stage("first-vol", "60"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids_matching(|c| c.contains("slowfuse") && c.contains("first-vol")).is_empty() {
            assert!(Instant::now() < deadline, "first stage never started");
            thread::sleep(Duration::from_millis(10));
        }
        // Queued behind it with a 1 s deadline: the client gives up first.
        let second = stage("second-vol", "1");
        assert_eq!(
            second.status.code(),
            Some(4),
            "DEADLINE_EXCEEDED: {second:?}"
        );
        let first = first.join().unwrap();
        assert_eq!(first.status.code(), Some(13), "{first:?}");
    });
    // The worker reached the second call after its deadline and dropped it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains("deadline passed while it was queued") {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        pids_matching(|c| c.contains("slowfuse") && c.contains("second-vol")).is_empty(),
        "a mounter was started for a call nobody waits for"
    );
    assert!(!d.kubelet.join("plugins/second-vol/globalmount").exists());
}

/// One HTTP exchange with the metrics listener: the status line and the body.
fn http(port: u16, request: &[u8]) -> (String, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // A request the listener refuses early may close the connection before
    // all of it is written: what it answered is what the test checks.
    let _ = c.write_all(request);
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// `--metrics-address` serves the Prometheus text format: every call's
/// latency by method and code, the node's gauges, the build; no volume id
/// is ever a label. A client that sends nothing, too much or nonsense gets
/// its answer or times out, and never holds up a CSI call.
#[test]
fn metrics_are_served_and_bad_clients_hurt_nothing() {
    let port = free_port();
    let d = Daemon::start(&[&format!("--metrics-address=127.0.0.1:{port}")]);
    assert!(d.csi(&["node-info"]).ok());
    let secret_id = "vol-never-a-label-7f3a";
    let refused = d.csi(&[
        "node-publish",
        "--volume-id",
        secret_id,
        "--target-path",
        "relative/path",
    ]);
    assert_eq!(refused.code, INVALID_ARGUMENT, "{refused:?}");

    // A client that connects and sends nothing: CSI calls go on meanwhile.
    let idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    for _ in 0..3 {
        let p = d.csi(&["probe"]);
        assert!(p.ok(), "a silent metrics client held up a CSI call: {p:?}");
    }
    let (status, body) = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    drop(idle);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let count = |method: &str, code: &str| -> u64 {
        let key =
            format!("bindery_rpc_duration_seconds_count{{method=\"{method}\",code=\"{code}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(count("NodeGetInfo", "OK") >= 1, "{body}");
    assert!(count("Probe", "OK") >= 3, "{body}");
    assert_eq!(count("NodePublishVolume", "INVALID_ARGUMENT"), 1, "{body}");
    for family in [
        "# TYPE bindery_rpc_duration_seconds histogram",
        "# TYPE bindery_volumes gauge",
        "# TYPE bindery_mounters gauge",
        "# TYPE bindery_mounter_restarts_total counter",
        "# TYPE bindery_heal_duration_seconds histogram",
        "# TYPE bindery_cache_build_duration_seconds histogram",
        "# TYPE bindery_cache_publish_duration_seconds histogram",
        "# TYPE bindery_cache_versions gauge",
        "# TYPE bindery_trash_bytes gauge",
        "# TYPE bindery_quarantined_records gauge",
    ] {
        assert!(body.contains(family), "{family} missing:\n{body}");
    }
    let info = format!(
        "bindery_build_info{{version=\"{}\",commit=\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(body.contains(&info), "{body}");
    assert!(
        !body.contains(secret_id),
        "a volume id in the metrics:\n{body}"
    );

    let (status, _) = http(port, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let (status, _) = http(port, b"GET /other HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = http(
        port,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat(b'a').take(1 << 20));
    let (status, _) = http(port, &huge);
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    // Still serving, and still answering CSI calls.
    let (status, _) = http(port, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(d.csi(&["probe"]).ok());
}

/// A metrics address that cannot be bound stops the start with a message
/// that names it, rather than a daemon running without the metrics asked for.
#[test]
fn a_metrics_port_in_use_stops_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let scratch = Scratch::new("metrics-taken");
    let out = Command::new(BIN)
        .args(["--node-id=n", "--mode=controller"])
        .arg(format!(
            "--endpoint=unix://{}",
            scratch.path.join("csi.sock").display()
        ))
        .arg(format!(
            "--state-dir={}",
            scratch.path.join("state").display()
        ))
        .arg(format!("--metrics-address=127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("metrics address 127.0.0.1:{port}")),
        "{err}"
    );
}
