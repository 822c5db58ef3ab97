//! The real `bindery` binary as a test's node: started on a temp socket
//! with temp kubelet and state dirs, driven with `bindery csi`, killed with
//! every process it started when the test ends.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

use super::*;

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub kubelet: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    /// Flags of the next (re)start (an upgrade may change them).
    pub args: Vec<String>,
    /// Extra environment of the next (re)start, e.g. BINDERY_CRASH_AT.
    pub env: Vec<(String, String)>,
    pub scratch: Scratch,
}

impl Daemon {
    /// Start a node-mode daemon with `extra` flags.
    pub fn start(extra: &[&str]) -> Daemon {
        Self::start_in(&std::env::temp_dir(), extra)
    }

    /// Start a daemon whose kubelet and state dirs live below `parent`
    /// (e.g. on an XFS or tmpfs mount).
    pub fn start_in(parent: &Path, extra: &[&str]) -> Daemon {
        let scratch = Scratch::new_in(parent, "d");
        let root = scratch.path.clone();
        let mut d = Daemon {
            child: None,
            socket: root.join("csi/csi.sock"),
            kubelet: root.join("kubelet"),
            state: root.join("state"),
            log: root.join("daemon.log"),
            args: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            scratch,
        };
        fs::create_dir_all(&d.kubelet).unwrap();
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg(format!("--endpoint=unix://{}", self.socket.display()))
            .arg("--node-id=test-node")
            .arg(format!("--kubelet-dir={}", self.kubelet.display()))
            .arg(format!("--state-dir={}", self.state.display()))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("start bindery"));
        let socket = self.socket.clone();
        let log = self.log.clone();
        wait_until(
            &format!("socket {} (log: {})", socket.display(), log.display()),
            120,
            || socket.exists() && self.csi(&["probe"]).stdout.contains("value: true"),
        );
    }

    /// Start again on the same dirs (after stop or kill).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "daemon still running");
        self.spawn();
    }

    pub fn csi(&self, args: &[&str]) -> Out {
        let out = Command::new(BIN)
            .arg("csi")
            .args(args)
            .arg(format!("--endpoint=unix://{}", self.socket.display()))
            .arg("--timeout=60")
            .output()
            .expect("run bindery csi");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// NodeStageVolume of `volume` at `staging` (multi-node-multi-writer),
    /// with `extra` arguments (parameters, secrets, flags).
    pub fn stage(&self, volume: &str, staging: &str, extra: &[String]) -> Out {
        let mut a: Vec<String> = [
            "node-stage",
            "--volume-id",
            volume,
            "--staging-path",
            staging,
            "--access-mode",
            "multi-node-multi-writer",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend_from_slice(extra);
        self.csi(&args(&a))
    }

    /// NodePublishVolume of `volume` from `staging` at `target`
    /// (multi-node-multi-writer), with `extra` arguments.
    pub fn publish(&self, volume: &str, staging: &str, target: &str, extra: &[&str]) -> Out {
        let mut a = vec![
            "node-publish",
            "--volume-id",
            volume,
            "--staging-path",
            staging,
            "--target-path",
            target,
            "--access-mode",
            "multi-node-multi-writer",
        ];
        a.extend_from_slice(extra);
        self.csi(&a)
    }

    /// NodeUnpublishVolume of `volume` at `target`.
    pub fn unpublish(&self, volume: &str, target: &str) -> Out {
        self.csi(&[
            "node-unpublish",
            "--volume-id",
            volume,
            "--target-path",
            target,
        ])
    }

    /// NodeUnstageVolume of `volume` at `staging`.
    pub fn unstage(&self, volume: &str, staging: &str) -> Out {
        self.csi(&[
            "node-unstage",
            "--volume-id",
            volume,
            "--staging-path",
            staging,
        ])
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon did not stop within 30 s after SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the daemon to die by itself (a crash point); true when it
    /// was killed by SIGKILL.
    pub fn wait_crashed(&mut self, timeout: Duration) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.signal() == Some(9);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9, as a crash would.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Wait until the health loop has finished `n` more passes (the daemon
    /// logs "health pass done" at debug level after each) than it had when
    /// this was called.
    pub fn wait_health_passes(&self, n: usize, secs: u64) {
        let count = || self.log_text().matches("health pass done").count();
        let start = count();
        wait_until(&format!("{n} health passes"), secs, || count() >= start + n);
    }

    /// Overwrite volume `id`'s state record with bytes that do not parse
    /// (a torn sector, a hand edit).
    pub fn corrupt_record(&self, id: &str) {
        let path = bindery::state::StateStore::at(&self.state).record_path(id);
        assert!(path.is_file(), "no record of {id} at {}", path.display());
        fs::write(&path, b"\xff\xff\xff\xff\x0f not a record").unwrap();
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// A path below the kubelet dir (not created).
    pub fn kpath(&self, rel: &str) -> String {
        self.kubelet.join(rel).display().to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Stop mounters this daemon started (they run in their own sessions).
        kill_processes_mentioning(&self.scratch.path);
        if thread::panicking() {
            eprintln!(
                "---- daemon log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}
