//! Unit tests of `config.rs`.

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(args: &[&str]) -> Result<Config, String> {
    match Config::parse(args.iter().copied(), &no_env)? {
        Parsed::Run(c) => Ok(*c),
        _ => Err("not a run".into()),
    }
}

#[test]
fn both_flag_forms_and_defaults() {
    let c = parse(&[
        "--node-id",
        "n1",
        "--endpoint=unix:/tmp/x.sock",
        "--threads=2",
    ])
    .unwrap();
    assert_eq!(c.node_id, "n1");
    assert_eq!(c.endpoint, PathBuf::from("/tmp/x.sock"));
    assert_eq!(c.threads, 2);
    assert_eq!(c.driver_name, DEFAULT_DRIVER_NAME);
    assert_eq!(c.kubelet_dir, PathBuf::from(DEFAULT_KUBELET_DIR));
    assert_eq!(c.mode, Mode::Node);
    assert!(!c.allow_credential_sources);
    let c = parse(&["--node-id=n", "--allow-credential-sources"]).unwrap();
    assert!(c.allow_credential_sources);
    assert_eq!(c.unstage_delay, Duration::ZERO);
    let c = parse(&["--node-id=n", "--unstage-delay=86400"]).unwrap();
    assert_eq!(c.unstage_delay, MAX_UNSTAGE_DELAY);
    let e = parse(&["--node-id=n", "--unstage-delay=86401"]).unwrap_err();
    assert!(e.contains("--unstage-delay"), "{e}");
}

#[test]
fn env_fallbacks() {
    let env = |k: &str| match k {
        "KUBE_NODE_NAME" => Some("from-env".to_string()),
        "CSI_ENDPOINT" => Some("unix:///run/b.sock".to_string()),
        _ => None,
    };
    let Parsed::Run(c) = Config::parse(Vec::<String>::new(), &env).unwrap() else {
        panic!("expected a config")
    };
    assert_eq!(c.node_id, "from-env");
    assert_eq!(c.endpoint, PathBuf::from("/run/b.sock"));
}

#[test]
fn bad_flags_name_themselves() {
    let cases: &[(&[&str], &str)] = &[
        (&["--node-id=n", "--endpoint=tcp://x"], "--endpoint"),
        (&["--node-id=n", "--endpoint=unix:rel.sock"], "--endpoint"),
        (&["--node-id=n", "--mode=fast"], "--mode"),
        (&["--node-id=n", "--threads=0"], "--threads"),
        (&["--node-id=n", "--driver-name=-bad"], "--driver-name"),
        (&["--node-id=n", "--kubelet-dir=rel"], "--kubelet-dir"),
        (&["--node-id=n", "--state-dir=/a/../b"], "--state-dir"),
        (&["--node-id=n", "--bogus=1"], "--bogus"),
        (
            &[
                "--node-id=n",
                "--mounter-memory-max=1M",
                "--mounter-cgroup=/c",
            ],
            "--mounter-memory-max",
        ),
        (
            &[
                "--node-id=n",
                "--mounter-memory-max=lots",
                "--mounter-cgroup=/c",
            ],
            "--mounter-memory-max",
        ),
        (
            &[
                "--node-id=n",
                "--mounter-memory-max=99999999999G",
                "--mounter-cgroup=/c",
            ],
            "--mounter-memory-max",
        ),
        (
            &["--node-id=n", "--mounter-pids-max=2", "--mounter-cgroup=/c"],
            "--mounter-pids-max",
        ),
        (
            &["--node-id=n", "--mounter-pids-max=64"],
            "need --mounter-cgroup",
        ),
        (&["--node-id"], "--node-id"),
        (&[], "--node-id"),
    ];
    for (args, needle) in cases {
        let err = parse(args).unwrap_err();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn metrics_address() {
    assert_eq!(parse(&["--node-id=n"]).unwrap().metrics_address, None);
    let c = parse(&["--node-id=n", "--metrics-address=127.0.0.1:9810"]).unwrap();
    assert_eq!(c.metrics_address, Some("127.0.0.1:9810".parse().unwrap()));
    let c = parse(&["--node-id=n", "--metrics-address", "[::1]:9"]).unwrap();
    assert_eq!(c.metrics_address, Some("[::1]:9".parse().unwrap()));
    for bad in ["localhost:9810", "9810", "1.2.3.4", "1.2.3.4:99999", ""] {
        let e = parse(&["--node-id=n", &format!("--metrics-address={bad}")]).unwrap_err();
        assert!(
            e.starts_with("--metrics-address: expected HOST:PORT"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn mounter_limits() {
    let c = parse(&["--node-id=n", "--mounter-cgroup=/sys/fs/cgroup/b"]).unwrap();
    assert!(c.mounter_limits.is_empty());
    let c = parse(&[
        "--node-id=n",
        "--mounter-cgroup=/sys/fs/cgroup/b",
        "--mounter-memory-max=512M",
        "--mounter-pids-max=256",
    ])
    .unwrap();
    assert_eq!(c.mounter_limits.memory_max, Some(512 << 20));
    assert_eq!(c.mounter_limits.pids_max, Some(256));
    for (v, n) in [
        ("16777216", 16u64 << 20),
        ("20480K", 20 << 20),
        ("1G", 1 << 30),
    ] {
        let flag = format!("--mounter-memory-max={v}");
        let c = parse(&["--node-id=n", "--mounter-cgroup=/c", &flag]).unwrap();
        assert_eq!(c.mounter_limits.memory_max, Some(n), "{v}");
    }
}

#[test]
fn cache_flags_are_checked_in_full() {
    let c = parse(&[
        "--node-id=n",
        "--cache=nm=dir:/srv/nm;namespaces=web,ci;strategies=copy",
        "--cache",
        "m=dir:/srv/m;namespaces=*",
    ])
    .unwrap();
    assert_eq!(c.caches.len(), 2);
    for bad in [
        "nm",
        "nm=dir:/srv/nm;colour=red",
        "nm=dir:/srv/a;b",
        "nm=dir:relative",
    ] {
        let err = parse(&["--node-id=n", "--cache", bad]).unwrap_err();
        assert!(err.starts_with("--cache"), "{bad:?}: {err}");
    }
}

/// Every "(default X)" of --help is what the parser uses: passing X
/// changes nothing.
#[test]
fn help_defaults_are_the_defaults() {
    let mut entries: Vec<String> = Vec::new();
    for line in HELP.lines() {
        let t = line.trim_start();
        if line.starts_with("    -") {
            entries.push(t.to_string());
        } else if line.starts_with("     ") && !entries.is_empty() {
            let last = entries.last_mut().unwrap();
            last.push(' ');
            last.push_str(t);
        } else if !line.starts_with(' ') {
            entries.push(String::new()); // a new section ends the entry
        }
    }
    let base = format!("{:?}", parse(&["--node-id=n"]).unwrap());
    let mut checked = 0;
    for e in entries.iter().filter(|e| e.starts_with("--")) {
        let Some((_, rest)) = e.split_once("(default ") else {
            continue;
        };
        let flag = e.split_whitespace().next().unwrap();
        let value = rest.split([';', ')']).next().unwrap();
        let with = parse(&["--node-id=n", &format!("{flag}={value}")])
            .unwrap_or_else(|err| panic!("{flag}={value}: {err}"));
        assert_eq!(
            format!("{with:?}"),
            base,
            "{flag}: --help says default {value}"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} defaults found in --help");
}

#[test]
fn controller_mode_needs_no_node_id() {
    let c = parse(&["--mode", "controller"]).unwrap();
    assert!(c.mode.serves_controller() && !c.mode.serves_node());
}

#[test]
fn driver_names() {
    assert!(valid_driver_name("bindery.csi.dev"));
    assert!(valid_driver_name("a"));
    assert!(!valid_driver_name(""));
    assert!(!valid_driver_name("a."));
    assert!(!valid_driver_name("a_b"));
    assert!(!valid_driver_name(&"a".repeat(64)));
}
