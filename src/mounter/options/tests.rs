//! Unit tests of `mounter/options.rs`.

use super::*;

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

#[test]
fn shapes() {
    for d in ["5s", "1h30m", "300ms", "2d", "10", "1.5h"] {
        assert!(is_duration(d), "{d}");
    }
    for d in ["", "s", "5x", "5s/", "-1s", "1e9"] {
        assert!(!is_duration(d), "{d}");
    }
    for s in ["off", "10M", "1.5G", "512k", "1024", "2Gi"] {
        assert!(is_size(s), "{s}");
    }
    for s in ["", "10X", "/tmp", "1,2"] {
        assert!(!is_size(s), "{s}");
    }
    assert!(is_word("STANDARD_IA") && !is_word("a/b") && !is_word("-x"));
}

#[test]
fn s3fs_allow_list() {
    let p = Policy::default();
    let ok = validate(
        Kind::S3fs,
        &words("-o max_stat_cache_size=1000 stat_cache_expire=30,enable_noobj_cache ro"),
        p,
    )
    .unwrap();
    assert_eq!(ok.len(), 8);
    for bad in [
        "-o use_cache=/tmp",
        "passwd_file=/etc/x",
        "-o ro,allow_root",
        "url=http://evil",
        "endpoint=us-east-1,use_cache=/x",
        "dev",
        "suid",
        "max_stat_cache_size=1/2",
        "nomultipart=1",
        "logfile=/x",
        "iam_role",
        "profile=default",
        "uid=0",
    ] {
        let e = validate(Kind::S3fs, &words(bad), p).unwrap_err();
        assert!(
            e.to_string().starts_with("volume_context.options"),
            "{bad}: {e}"
        );
    }
    let allowed = Policy {
        credential_sources: true,
    };
    assert!(validate(Kind::S3fs, &words("iam_role=node-role ecs"), allowed).is_ok());
    assert!(validate(Kind::S3fs, &words("iam_role"), allowed).is_ok());
}

#[test]
fn rclone_allow_list() {
    let p = Policy::default();
    let ok = validate(
        Kind::Rclone,
        &words("--vfs-cache-max-age=1h --dir-cache-time 5s --read-only --vfs-cache-mode full"),
        p,
    )
    .unwrap();
    assert_eq!(
        ok,
        vec![
            "--vfs-cache-max-age=1h",
            "--dir-cache-time=5s",
            "--read-only",
            "--vfs-cache-mode=full"
        ]
    );
    for bad in [
        "--config=/x",
        "--cache-dir /x",
        "--rc",
        "--rc-addr=:5572",
        "-v",
        "--daemon",
        "--s3-env-auth",
        "--s3-profile=x",
        "--s3-shared-credentials-file=/root/.aws/credentials",
        "--vfs-cache-mode=everything",
        "--dir-cache-time=/x",
        "--uid=0",
        "--log-file=/etc/passwd",
        "--allow-root",
    ] {
        let e = validate(Kind::Rclone, &words(bad), p).unwrap_err();
        assert!(
            e.to_string().starts_with("volume_context.options"),
            "{bad}: {e}"
        );
    }
    let allowed = Policy {
        credential_sources: true,
    };
    assert!(validate(
        Kind::Rclone,
        &words("--s3-env-auth --s3-profile=x"),
        allowed
    )
    .is_ok());
    assert!(has_rclone_flag(&ok, "vfs-cache-mode"));
    assert!(!has_rclone_flag(&ok, "vfs-cache-max-size"));
}
