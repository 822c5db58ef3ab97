//! Mounters: one FUSE process per staged volume (s3fs, rclone, or an allowed
//! FUSE command), started in its own session so it outlives the daemon.
//!
//! Parameters and secrets follow k8s-csi-s3 so users can switch:
//! parameters `mounter`, `bucket`, `prefix`, `options` (+ `uid`, `gid`,
//! `umask`, `command` for `fuse`); secrets `accessKeyID`, `secretAccessKey`,
//! `endpoint`, `region`. Credentials go to a per-volume 0600 file (s3fs) or
//! to the child's environment (rclone, fuse): never to argv or a log line.
//!
//! - `spec`: parameters and secrets → a validated MountSpec (`values` checks
//!   endpoint, region and secrets, `options` the per-kind allow-list).
//! - `command`: the mounter's command line and environment.
//! - `run`: start (ready or a precise error) and prompt stop.
//! - `health`: alive / degraded / dead; `probe` runs the calls that may
//!   hang on a FUSE server, on one small pool.
//! - `files`: the volume's private directory and what may be removed when.
//! - `kind`: the mounter kinds and the CO's own parameter keys.
//!
//! The children import each other, never this file: it only re-exports.

mod command;
pub mod endpoint;
mod files;
mod health;
mod kind;
pub mod options;
mod probe;
mod run;
mod spec;
mod values;

// The API the node and controller use. Parts of it (marked in their docs as
// "for the node") are new and wait for their callers; the allow keeps the
// build warning-free until they switch.
#[allow(unused_imports)]
pub use crate::sys::process::Running;
#[allow(unused_imports)]
pub use command::{command, RCLONE_CACHE_MAX_SIZE};
#[allow(unused_imports)]
pub use files::{last_line, pending_uploads, wait_for_uploads, VolumeFiles, LOG_KEEP, LOG_MAX};
#[allow(unused_imports)]
pub use health::{check, forget, observe, observe_in, serving, Condition, Health, PROBE_TIMEOUT};
#[allow(unused_imports)]
pub use kind::{is_co_key, kind_of, Kind};
pub use options::Policy;
#[cfg(test)]
use run::stop_with;
pub use run::{abort, remove_cgroups, start, stop, terminate, SELF_EXIT, TERM_GRACE};
#[allow(unused_imports)]
pub use spec::{
    apply_mount_group, foreground_flag, fuse_command, parse_spec, parse_spec_for, parse_spec_with,
    shell_words, MountSpec, PARAM_KEYS, PLACEHOLDERS,
};
#[allow(unused_imports)]
pub use values::{mask_secrets, Secrets};

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::fs;
    use std::path::Path;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn secrets() -> HashMap<String, String> {
        map(&[
            ("accessKeyID", "AKIDEXAMPLE"),
            ("secretAccessKey", "SECRETKEY123"),
            ("endpoint", "http://127.0.0.1:9000"),
        ])
    }

    #[test]
    fn words() {
        assert_eq!(
            shell_words(r#"-o a=1  "b c" 'd e' f\ g"#).unwrap(),
            vec!["-o", "a=1", "b c", "d e", "f g"]
        );
        assert!(shell_words("'open").is_err());
        assert!(shell_words("").unwrap().is_empty());
    }

    #[test]
    fn static_volume_ids() {
        let s = parse_spec("my-bucket/a/b", &map(&[]), &secrets(), &[]).unwrap();
        assert_eq!(
            (s.kind, s.bucket.as_str(), s.prefix.as_str()),
            (Kind::S3fs, "my-bucket", "a/b")
        );
        let s = parse_spec(
            "vol",
            &map(&[("bucket", "bkt"), ("mounter", "rclone")]),
            &secrets(),
            &[],
        )
        .unwrap();
        assert_eq!(
            (s.kind, s.bucket.as_str(), s.prefix.as_str()),
            (Kind::Rclone, "bkt", "")
        );
        let s = parse_spec("bkt/pvc-1", &map(&[("bucket", "bkt")]), &secrets(), &[]).unwrap();
        assert_eq!(s.prefix, "pvc-1");
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("bucket", "b"), ("colour", "x")], "colour"),
            (&[("bucket", "Bad_Bucket")], "bucket"),
            (&[("bucket", "bkt"), ("prefix", "a/../b")], "prefix"),
            (&[("bucket", "bkt"), ("mounter", "goofys")], "mounter"),
            (
                &[("bucket", "bkt"), ("options", "-o passwd_file=/etc/x")],
                "options",
            ),
            (
                &[("bucket", "bkt"), ("options", "-o use_cache=/tmp")],
                "options",
            ),
            (
                &[
                    ("bucket", "bkt"),
                    ("mounter", "rclone"),
                    ("options", "--config=/x"),
                ],
                "options",
            ),
            (
                &[("bucket", "bkt"), ("mounter", "rclone"), ("options", "-v")],
                "options",
            ),
            (&[("bucket", "bkt"), ("uid", "root")], "uid"),
            (&[("bucket", "bkt"), ("umask", "999")], "umask"),
            (
                &[
                    ("bucket", "bkt"),
                    ("mounter", "fuse"),
                    ("command", "sh -c {mountpoint}"),
                ],
                "command",
            ),
            (&[("bucket", "bkt"), ("command", "x")], "command"),
        ];
        for (params, needle) in cases {
            let e = parse_spec("v", &map(params), &secrets(), &["geesefs".into()]).unwrap_err();
            assert!(e.to_string().contains(needle), "{params:?}: {e}");
            assert_eq!(e.code(), grpcio::RpcStatusCode::INVALID_ARGUMENT);
            assert!(!e.to_string().contains("SECRETKEY123"));
        }
        let e = parse_spec("bkt", &map(&[]), &map(&[]), &[]).unwrap_err();
        assert!(e.to_string().contains("secrets.endpoint"), "{e}");
    }

    #[test]
    fn allowed_options_pass() {
        let s = parse_spec(
            "bkt",
            &map(&[(
                "options",
                "-o max_stat_cache_size=1000 stat_cache_expire=30,enable_noobj_cache",
            )]),
            &secrets(),
            &[],
        )
        .unwrap();
        assert_eq!(
            s.options,
            vec![
                "-o",
                "max_stat_cache_size=1000",
                "-o",
                "stat_cache_expire=30",
                "-o",
                "enable_noobj_cache"
            ]
        );
        let s = parse_spec(
            "bkt",
            &map(&[
                ("mounter", "rclone"),
                ("options", "--vfs-cache-max-age=1h --dir-cache-time=5s"),
            ]),
            &secrets(),
            &[],
        )
        .unwrap();
        assert_eq!(s.options.len(), 2);
    }

    #[test]
    fn secrets_stay_out_of_argv() {
        let dir = std::env::temp_dir().join(format!("bindery-cmd-{}", std::process::id()));
        let files = VolumeFiles::new(dir.clone());
        for mounter in ["s3fs", "rclone"] {
            let spec = parse_spec("bkt/p", &map(&[("mounter", mounter)]), &secrets(), &[]).unwrap();
            let cmd = command(&spec, Path::new("/mnt/x"), &files).unwrap();
            let argv: Vec<String> = cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let joined = argv.join(" ");
            assert!(
                !joined.contains("SECRETKEY123") && !joined.contains("AKIDEXAMPLE"),
                "{joined}"
            );
        }
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&files.passwd).unwrap().mode() & 0o777, 0o600);
        files.remove().unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn masking() {
        let s = Secrets::from_map(&secrets());
        assert_eq!(
            mask_secrets("auth AKIDEXAMPLE:SECRETKEY123 failed", &s),
            "auth ***:*** failed"
        );
    }

    #[test]
    fn hostile_values_are_refused_by_field() {
        let with = |k: &str, v: &str| {
            let mut m = secrets();
            m.insert(k.into(), v.into());
            m
        };
        let cases: &[(HashMap<String, String>, &str)] = &[
            (
                with("endpoint", "http://h,use_cache=/tmp"),
                "secrets.endpoint",
            ),
            (with("endpoint", "h:9000"), "secrets.endpoint"),
            (with("region", "us,use_cache=/tmp"), "secrets.region"),
            (
                with("secretAccessKey", "SECRETKEY123\nx:y"),
                "secrets.secretAccessKey",
            ),
            (with("accessKeyID", "a\0b"), "secrets.accessKeyID"),
            (with("accessKeyID", "bkt:AKID"), "secrets.accessKeyID"),
        ];
        for (s, field) in cases {
            let e = parse_spec("bkt", &map(&[]), s, &[]).unwrap_err();
            assert!(e.to_string().starts_with(field), "{field}: {e}");
            assert_eq!(e.code(), grpcio::RpcStatusCode::INVALID_ARGUMENT);
            assert!(!e.to_string().contains("SECRETKEY123"), "{e}");
        }
        let huge = "x".repeat(1 << 20);
        let e = parse_spec("bkt", &map(&[("options", &huge)]), &secrets(), &[]).unwrap_err();
        assert!(e.to_string().len() < 200, "{}", e.to_string().len());
        let e = parse_spec("bkt", &map(&[("uid", "4294967295")]), &secrets(), &[]).unwrap_err();
        assert!(e.to_string().starts_with("volume_context.uid"), "{e}");
    }

    #[test]
    fn fuse_arguments_cannot_name_paths() {
        let progs = ["geesefs".to_string()];
        let ok = parse_spec(
            "v",
            &map(&[
                ("mounter", "fuse"),
                ("bucket", "bkt"),
                (
                    "command",
                    "geesefs --endpoint={endpoint} {bucket}:{prefix} {mountpoint}",
                ),
            ]),
            &secrets(),
            &progs,
        )
        .unwrap();
        assert_eq!(ok.command.len(), 4);
        for bad in [
            "geesefs --cache=/tmp {bucket} {mountpoint}",
            "geesefs {bucket} {mountpoint} ../x",
            "geesefs {home} {mountpoint}",
            "geesefs {bucket} /mnt",
            "geesefs ~root {mountpoint}",
            "geesefs $HOME {mountpoint}",
        ] {
            let e = parse_spec(
                "v",
                &map(&[("mounter", "fuse"), ("bucket", "bkt"), ("command", bad)]),
                &secrets(),
                &progs,
            )
            .unwrap_err();
            assert!(
                e.to_string().starts_with("volume_context.command"),
                "{bad}: {e}"
            );
        }
        // Known programs are kept in the foreground.
        let dir = std::env::temp_dir().join(format!("bindery-fg-{}", std::process::id()));
        let files = VolumeFiles::new(dir.clone());
        let cmd = command(&ok, Path::new("/mnt/x"), &files).unwrap();
        let argv: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(argv[0], "-f", "{argv:?}");
        assert!(argv.contains(&"/mnt/x".to_string()), "{argv:?}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn credential_sources_need_the_flag() {
        let params = map(&[("options", "iam_role=node")]);
        let e = parse_spec("bkt", &params, &secrets(), &[]).unwrap_err();
        assert!(e.to_string().contains("--allow-credential-sources"), "{e}");
        let mut cfg = match crate::config::Config::parse(["--node-id=n"], &|_| None) {
            Ok(crate::config::Parsed::Run(c)) => *c,
            _ => panic!("config"),
        };
        assert!(parse_spec_for("bkt", &params, &secrets(), &cfg).is_err());
        cfg.allow_credential_sources = true;
        let s = parse_spec_for("bkt", &params, &secrets(), &cfg).unwrap();
        assert_eq!(s.options, vec!["-o", "iam_role=node"]);
        let rclone = map(&[("mounter", "rclone"), ("options", "--s3-env-auth")]);
        assert!(parse_spec_for("bkt", &rclone, &secrets(), &cfg).is_ok());
        cfg.allow_credential_sources = false;
        assert!(parse_spec_for("bkt", &rclone, &secrets(), &cfg).is_err());
    }

    #[test]
    fn mount_group_defaults() {
        let mut s3 = parse_spec("bkt", &map(&[]), &secrets(), &[]).unwrap();
        apply_mount_group(&mut s3, "2000").unwrap();
        assert_eq!(
            (s3.gid, s3.umask, s3.mount_group),
            (Some(2000), Some(0), Some(2000))
        );
        let mut rc = parse_spec(
            "bkt",
            &map(&[("mounter", "rclone"), ("umask", "027")]),
            &secrets(),
            &[],
        )
        .unwrap();
        apply_mount_group(&mut rc, "2000").unwrap();
        assert_eq!((rc.gid, rc.umask), (Some(2000), Some(0o027)));
        let dir = std::env::temp_dir().join(format!("bindery-grp-{}", std::process::id()));
        let files = VolumeFiles::new(dir.clone());
        let argv: Vec<String> = command(&rc, Path::new("/mnt/x"), &files)
            .unwrap()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for want in [
            "--gid=2000",
            "--umask=0027",
            "--default-permissions",
            "--vfs-cache-max-size=1G",
        ] {
            assert!(argv.contains(&want.to_string()), "{want}: {argv:?}");
        }
        let e = apply_mount_group(&mut rc, "staff").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("volume_capability.mount.volume_mount_group"));
        let _ = fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod real_tests;
