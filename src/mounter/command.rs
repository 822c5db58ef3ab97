//! The command line and environment of a mounter. Secrets go to a 0600 file
//! (s3fs) or the child's environment (rclone, fuse), never to argv. The
//! environment is built from scratch: a mounter must not pick up the
//! daemon's own credentials (AWS_*, a HOME with ~/.aws) by accident.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::error::Result;
use crate::state::{private_dir, write_atomic};

use super::files::VolumeFiles;
use super::kind::Kind;
use super::options::has_rclone_flag;
use super::spec::foreground_flag;
use super::spec::MountSpec;

/// rclone's VFS cache is bounded unless the volume's options say otherwise
/// (`--vfs-cache-max-size`). rclone never evicts files waiting for upload,
/// so this bounds what it keeps for reading.
pub const RCLONE_CACHE_MAX_SIZE: &str = "1G";

/// Variables of the daemon's environment a mounter may see: the search
/// path, the time zone, CA bundles and proxies a node may need.
const PASS_ENV: &[&str] = &[
    "PATH",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

fn substitute(word: &str, vars: &BTreeMap<&str, String>) -> String {
    vars.iter().fold(word.to_string(), |w, (k, v)| {
        w.replace(&format!("{{{k}}}"), v)
    })
}

fn base_command(program: &str, files: &VolumeFiles) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    for k in PASS_ENV {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    // Relative paths and ~ of the mounter resolve inside the volume's own
    // private directory.
    cmd.env("HOME", &files.dir).current_dir(&files.dir);
    cmd
}

/// The command line (and environment) of the mounter for `spec` at `mnt`.
/// Writes the s3fs credential file. Never puts a secret in argv.
pub fn command(spec: &MountSpec, mnt: &Path, files: &VolumeFiles) -> Result<Command> {
    private_dir(&files.dir)?;
    let s = &spec.secrets;
    let mut cmd;
    match spec.kind {
        Kind::S3fs => {
            write_atomic(
                &files.passwd,
                format!("{}:{}\n", s.access_key_id, s.secret_access_key).as_bytes(),
            )?;
            cmd = base_command("s3fs", files);
            let source = if spec.prefix.is_empty() {
                spec.bucket.clone()
            } else {
                format!("{}:/{}", spec.bucket, spec.prefix)
            };
            cmd.arg(source).arg(mnt).arg("-f");
            cmd.args(["-o", "allow_other", "-o", "use_path_request_style"]);
            cmd.arg("-o").arg(format!("url={}", s.endpoint));
            cmd.arg("-o")
                .arg(format!("passwd_file={}", files.passwd.display()));
            if !s.region.is_empty() {
                cmd.arg("-o").arg(format!("endpoint={}", s.region));
            }
            if let Some(uid) = spec.uid {
                cmd.arg("-o").arg(format!("uid={uid}"));
            }
            if let Some(gid) = spec.gid {
                cmd.arg("-o").arg(format!("gid={gid}"));
            }
            if let Some(m) = spec.umask {
                cmd.arg("-o").arg(format!("umask={m:04o}"));
                // The mount point itself follows the files.
                cmd.arg("-o").arg(format!("mp_umask={m:04o}"));
            }
            cmd.args(&spec.options);
        }
        Kind::Rclone => {
            cmd = base_command("rclone", files);
            let remote = if spec.prefix.is_empty() {
                format!(":s3:{}", spec.bucket)
            } else {
                format!(":s3:{}/{}", spec.bucket, spec.prefix)
            };
            cmd.arg("mount").arg(remote).arg(mnt);
            // Write-back after 1 s instead of 5 s: unstage waits for it.
            cmd.args([
                "--allow-other",
                "--vfs-cache-mode",
                "writes",
                "--vfs-write-back",
                "1s",
            ]);
            cmd.arg("--cache-dir").arg(&files.cache);
            if !has_rclone_flag(&spec.options, "vfs-cache-max-size") {
                cmd.arg(format!("--vfs-cache-max-size={RCLONE_CACHE_MAX_SIZE}"));
            }
            if let Some(uid) = spec.uid {
                cmd.arg(format!("--uid={uid}"));
            }
            if let Some(gid) = spec.gid {
                cmd.arg(format!("--gid={gid}"));
            }
            if let Some(m) = spec.umask {
                cmd.arg(format!("--umask={m:04o}"));
            }
            // rclone checks no permissions itself: let the kernel check them,
            // with the caller's supplementary groups (fsGroup).
            if spec.mount_group.is_some() && !has_rclone_flag(&spec.options, "default-permissions")
            {
                cmd.arg("--default-permissions");
            }
            cmd.args(&spec.options);
            cmd.env("RCLONE_CONFIG", "/dev/null")
                .env("RCLONE_S3_PROVIDER", "Other")
                .env("RCLONE_S3_ENDPOINT", &s.endpoint)
                .env("RCLONE_S3_ACCESS_KEY_ID", &s.access_key_id)
                .env("RCLONE_S3_SECRET_ACCESS_KEY", &s.secret_access_key);
            if !s.region.is_empty() {
                cmd.env("RCLONE_S3_REGION", &s.region);
            }
        }
        Kind::Fuse => {
            let vars: BTreeMap<&str, String> = [
                ("mountpoint", mnt.display().to_string()),
                ("bucket", spec.bucket.clone()),
                ("prefix", spec.prefix.clone()),
                ("endpoint", s.endpoint.clone()),
                ("region", s.region.clone()),
                ("uid", spec.uid.map(|u| u.to_string()).unwrap_or_default()),
                ("gid", spec.gid.map(|g| g.to_string()).unwrap_or_default()),
            ]
            .into_iter()
            .collect();
            let program = spec.command.first().map(String::as_str).unwrap_or("false");
            cmd = base_command(program, files);
            // Known programs are told to stay in the foreground; any program
            // that daemonizes anyway is refused by `start`.
            if let Some(flag) = foreground_flag(program) {
                if !spec.command.iter().any(|w| w == flag) {
                    cmd.arg(flag);
                }
            }
            cmd.args(spec.command.iter().skip(1).map(|w| substitute(w, &vars)));
            cmd.env("AWS_ACCESS_KEY_ID", &s.access_key_id)
                .env("AWS_SECRET_ACCESS_KEY", &s.secret_access_key);
            if !s.region.is_empty() {
                cmd.env("AWS_REGION", &s.region);
            }
        }
    }
    Ok(cmd)
}
