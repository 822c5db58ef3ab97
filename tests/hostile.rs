//! The hostile-input matrix (README, "What reaches a mounter"): crafted requests against every
//! RPC of the real binary, as a tenant or a misconfigured client would send
//! them. Every case asserts the exact gRPC code AND that nothing else
//! happened: no mount appeared or went away, no process appeared or went
//! away, no mounter was started, no file was created, changed or removed
//! outside the request's own paths (kubelet dir, a scratch dir "outside" it
//! that planted symlinks point to, the S3 backend), the other volumes (an
//! s3fs volume staged and published, an rclone volume staged, a cache volume
//! published) are still mounted and readable, no secret shows in the reply or
//! the daemon log, and the reply stays about 1 KiB (a C-core client turns a
//! longer status into RESOURCE_EXHAUSTED and loses the real code).
//!
//! Requests go through `bindery csi` (its exit status is the gRPC code);
//! what argv cannot carry (NUL bytes, values over 64 KiB, capabilities the
//! client cannot express) goes through a raw gRPC call with a hand-encoded
//! protobuf body. Mounts are real: run it inside the private namespace,
//!
//!   .ci/in-namespace cargo-zigbuild test --release --target $BINDERY_TARGET \
//!       --test hostile -- --nocapture
//!
//! One test per RPC (and one for identity and raw gRPC), each with its own
//! table of cases against a World of its own; the tests take turns. Each
//! prints `<test>: N cases, F failed` and one line per failed case.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const OK: i32 = 0;
const INVALID_ARGUMENT: i32 = 3;
const NOT_FOUND: i32 = 5;
const ALREADY_EXISTS: i32 = 6;
const FAILED_PRECONDITION: i32 = 9;
const OUT_OF_RANGE: i32 = 11;
const UNIMPLEMENTED: i32 = 12;
const INTERNAL: i32 = 13;

const MIB: usize = 1 << 20;
/// A refusal says at most 1 KiB (README, "What reaches a mounter"); room for a truncation mark.
const MAX_MESSAGE: usize = 1100;

/// The key pair of the hostile requests: accepted by the S3 server (a request
/// that gets through really mounts) and distinctive (a leak is found).
const HOSTILE_AK: &str = "hostile-akid-Q7w3Xe";
const HOSTILE_SK: &str = "hostile-secret-Zr58KpVm";
const A_DATA: &str = "volume A data\n";
const B_DATA: &str = "volume B data\n";
const DRIVER_DIR: &str = "plugins/kubernetes.io/csi/bindery.csi.dev";
const NS_KEY: &str = "csi.storage.k8s.io/pod.namespace";
const UID_KEY: &str = "csi.storage.k8s.io/pod.uid";

fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        3 => "INVALID_ARGUMENT",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        4 => "DEADLINE_EXCEEDED",
        _ => "?",
    }
}

/// At most `n` characters of `s`, control characters shown escaped.
fn clip(s: &str, n: usize) -> String {
    let esc: String = s.chars().flat_map(char::escape_default).collect();
    if esc.chars().count() <= n {
        esc
    } else {
        let head: String = esc.chars().take(n).collect();
        format!("{head}…(+{} bytes)", s.len().saturating_sub(n))
    }
}

// ---------------------------------------------------------------- raw gRPC

/// A protobuf body encoded by hand: the tests cannot use the daemon's
/// generated types, and this way a body can say what no client would.
#[derive(Default, Clone)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn bytes(mut self, field: u32, b: &[u8]) -> Pb {
        self.varint((u64::from(field) << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn string(self, field: u32, s: &str) -> Pb {
        if s.is_empty() {
            self
        } else {
            self.bytes(field, s.as_bytes())
        }
    }
    fn msg(self, field: u32, m: Pb) -> Pb {
        self.bytes(field, &m.0)
    }
    fn int(mut self, field: u32, v: i64) -> Pb {
        self.varint(u64::from(field) << 3);
        self.varint(v as u64);
        self
    }
    fn map(mut self, field: u32, kv: &[(String, String)]) -> Pb {
        for (k, v) in kv {
            self = self.msg(field, Pb::default().string(1, k).string(2, v));
        }
        self
    }
}

// The signature is grpcio's SerializeFn<Vec<u8>>.
#[allow(clippy::ptr_arg)]
fn ser_bytes(v: &Vec<u8>, buf: &mut grpcio::GrpcSlice) -> grpcio::Result<()> {
    *buf = grpcio::GrpcSlice::from(v.clone());
    Ok(())
}

fn de_bytes(mut r: grpcio::MessageReader) -> grpcio::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.read_to_end(&mut v)
        .map_err(|e| grpcio::Error::Codec(Box::new(e)))?;
    Ok(v)
}

/// A gRPC client that sends bytes as they are.
struct Raw {
    client: grpcio::Client,
}

impl Raw {
    fn new(socket: &Path) -> Raw {
        let env = Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
        let ch = grpcio::ChannelBuilder::new(env)
            .max_send_message_len(64 << 20)
            .connect(&format!("unix:{}", socket.display()));
        Raw {
            client: grpcio::Client::new(ch),
        }
    }

    fn call(&self, name: &'static str, body: &[u8]) -> Out {
        let method = grpcio::Method {
            ty: grpcio::MethodType::Unary,
            name,
            req_mar: grpcio::Marshaller {
                ser: ser_bytes,
                de: de_bytes,
            },
            resp_mar: grpcio::Marshaller {
                ser: ser_bytes,
                de: de_bytes,
            },
        };
        let opt = grpcio::CallOption::default().timeout(Duration::from_secs(60));
        match self.client.unary_call(&method, &body.to_vec(), opt) {
            Ok(_) => Out {
                code: 0,
                stdout: "OK".into(),
                stderr: String::new(),
            },
            Err(grpcio::Error::RpcFailure(s)) => {
                let code: i32 = s.code().into();
                Out {
                    code,
                    stdout: String::new(),
                    stderr: format!("{}: {}", code_name(code), s.message()),
                }
            }
            Err(e) => Out {
                code: 14,
                stdout: String::new(),
                stderr: format!("UNAVAILABLE: {e}"),
            },
        }
    }
}

// ---------------------------------------------------------------- requests

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rpc {
    PluginInfo,
    PluginCaps,
    Probe,
    NodeInfo,
    NodeCaps,
    CtlCaps,
    Stage,
    Unstage,
    Publish,
    Unpublish,
    Stats,
    Create,
    Delete,
    Validate,
}

impl Rpc {
    fn cli(self) -> &'static str {
        match self {
            Rpc::PluginInfo => "plugin-info",
            Rpc::PluginCaps => "plugin-capabilities",
            Rpc::Probe => "probe",
            Rpc::NodeInfo => "node-info",
            Rpc::NodeCaps => "node-capabilities",
            Rpc::CtlCaps => "controller-capabilities",
            Rpc::Stage => "node-stage",
            Rpc::Unstage => "node-unstage",
            Rpc::Publish => "node-publish",
            Rpc::Unpublish => "node-unpublish",
            Rpc::Stats => "node-stats",
            Rpc::Create => "create-volume",
            Rpc::Delete => "delete-volume",
            Rpc::Validate => "validate-volume",
        }
    }

    fn method(self) -> &'static str {
        match self {
            Rpc::PluginInfo => "/csi.v1.Identity/GetPluginInfo",
            Rpc::PluginCaps => "/csi.v1.Identity/GetPluginCapabilities",
            Rpc::Probe => "/csi.v1.Identity/Probe",
            Rpc::NodeInfo => "/csi.v1.Node/NodeGetInfo",
            Rpc::NodeCaps => "/csi.v1.Node/NodeGetCapabilities",
            Rpc::CtlCaps => "/csi.v1.Controller/ControllerGetCapabilities",
            Rpc::Stage => "/csi.v1.Node/NodeStageVolume",
            Rpc::Unstage => "/csi.v1.Node/NodeUnstageVolume",
            Rpc::Publish => "/csi.v1.Node/NodePublishVolume",
            Rpc::Unpublish => "/csi.v1.Node/NodeUnpublishVolume",
            Rpc::Stats => "/csi.v1.Node/NodeGetVolumeStats",
            Rpc::Create => "/csi.v1.Controller/CreateVolume",
            Rpc::Delete => "/csi.v1.Controller/DeleteVolume",
            Rpc::Validate => "/csi.v1.Controller/ValidateVolumeCapabilities",
        }
    }

    fn has_capability(self) -> bool {
        matches!(
            self,
            Rpc::Stage | Rpc::Publish | Rpc::Create | Rpc::Validate
        )
    }
}

/// A volume capability, including shapes `bindery csi` cannot send.
#[derive(Clone)]
enum Cap {
    None,
    Mount {
        mode: i64,
        flags: Vec<String>,
        group: String,
    },
    Block(i64),
    /// An access mode and no access type.
    ModeOnly(i64),
    /// A mount access type and no access mode.
    MountNoMode,
}

impl Cap {
    fn pb(&self) -> Option<Pb> {
        let mode = |m: i64| Pb::default().int(1, m);
        let mount = |flags: &[String], group: &str| {
            let mut p = Pb::default();
            for f in flags {
                p = p.bytes(2, f.as_bytes());
            }
            p.string(3, group)
        };
        match self {
            Cap::None => None,
            Cap::Mount {
                mode: m,
                flags,
                group,
            } => Some(Pb::default().msg(2, mount(flags, group)).msg(3, mode(*m))),
            Cap::Block(m) => Some(Pb::default().msg(1, Pb::default()).msg(3, mode(*m))),
            Cap::ModeOnly(m) => Some(Pb::default().msg(3, mode(*m))),
            Cap::MountNoMode => Some(Pb::default().msg(2, Pb::default())),
        }
    }
}

fn mode_name(mode: i64) -> Option<&'static str> {
    Some(match mode {
        1 => "single-node-writer",
        2 => "single-node-reader-only",
        3 => "multi-node-reader-only",
        4 => "multi-node-single-writer",
        5 => "multi-node-multi-writer",
        _ => return None,
    })
}

#[derive(Clone)]
struct Req {
    rpc: Rpc,
    /// volume_id, or CreateVolume's name.
    id: String,
    staging: String,
    /// target_path, or NodeGetVolumeStats' volume_path.
    target: String,
    readonly: bool,
    cap: Cap,
    params: Vec<(String, String)>,
    secrets: Vec<(String, String)>,
    capacity: Option<i64>,
    raw: bool,
}

fn set(list: &mut Vec<(String, String)>, k: &str, v: &str) {
    list.retain(|(key, _)| key != k);
    list.push((k.to_string(), v.to_string()));
}

fn push(a: &mut Vec<String>, flag: &str, v: &str) -> Option<()> {
    if v.is_empty() {
        return Some(());
    }
    // Linux caps one argument at 128 KiB; NUL cannot be in argv at all.
    if v.contains('\0') || v.len() > 64 * 1024 {
        return None;
    }
    a.push(format!("--{flag}={v}"));
    Some(())
}

impl Req {
    fn new(rpc: Rpc) -> Req {
        Req {
            rpc,
            id: String::new(),
            staging: String::new(),
            target: String::new(),
            readonly: false,
            cap: Cap::Mount {
                mode: 5,
                flags: Vec::new(),
                group: String::new(),
            },
            params: Vec::new(),
            secrets: Vec::new(),
            capacity: None,
            raw: false,
        }
    }
    fn id(mut self, v: impl Into<String>) -> Req {
        self.id = v.into();
        self
    }
    fn staging(mut self, v: impl Into<String>) -> Req {
        self.staging = v.into();
        self
    }
    fn target(mut self, v: impl Into<String>) -> Req {
        self.target = v.into();
        self
    }
    fn ro(mut self) -> Req {
        self.readonly = true;
        self
    }
    fn cap(mut self, c: Cap) -> Req {
        self.cap = c;
        self
    }
    fn flags(mut self, f: &[&str]) -> Req {
        if let Cap::Mount { flags, .. } = &mut self.cap {
            *flags = f.iter().map(|s| s.to_string()).collect();
        }
        self
    }
    fn group(mut self, g: &str) -> Req {
        if let Cap::Mount { group, .. } = &mut self.cap {
            *group = g.to_string();
        }
        self
    }
    fn param(mut self, k: &str, v: &str) -> Req {
        set(&mut self.params, k, v);
        self
    }
    fn unparam(mut self, k: &str) -> Req {
        self.params.retain(|(key, _)| key != k);
        self
    }
    fn secret(mut self, k: &str, v: &str) -> Req {
        set(&mut self.secrets, k, v);
        self
    }
    fn unsecret(mut self, k: &str) -> Req {
        self.secrets.retain(|(key, _)| key != k);
        self
    }
    fn secrets(mut self, kv: &[(String, String)]) -> Req {
        self.secrets = kv.to_vec();
        self
    }
    fn capacity(mut self, c: i64) -> Req {
        self.capacity = Some(c);
        self
    }
    fn raw(mut self) -> Req {
        self.raw = true;
        self
    }

    /// The `bindery csi` arguments, or None when argv cannot say it.
    /// Secrets go to a file (as the kubelet sends them, never on a command
    /// line) unless a value cannot be one line of it.
    fn cli_args(&self, secrets_file: &Path) -> Option<Vec<String>> {
        if self.raw {
            return None;
        }
        let mut a = vec![self.rpc.cli().to_string()];
        let id_flag = if self.rpc == Rpc::Create {
            "name"
        } else {
            "volume-id"
        };
        push(&mut a, id_flag, &self.id)?;
        push(&mut a, "staging-path", &self.staging)?;
        push(&mut a, "target-path", &self.target)?;
        if self.readonly {
            a.push("--readonly".into());
        }
        if self.rpc.has_capability() {
            match &self.cap {
                Cap::None => a.push("--no-capability".into()),
                Cap::Mount { mode, flags, group } => {
                    a.push(format!("--access-mode={}", mode_name(*mode)?));
                    for f in flags {
                        if f.is_empty() {
                            return None;
                        }
                        push(&mut a, "mount-flag", f)?;
                    }
                    push(&mut a, "mount-group", group)?;
                }
                Cap::Block(mode) => {
                    a.push("--block".into());
                    a.push(format!("--access-mode={}", mode_name(*mode)?));
                }
                Cap::ModeOnly(_) | Cap::MountNoMode => return None,
            }
        }
        for (k, v) in &self.params {
            if k.contains('=') || k.is_empty() {
                return None;
            }
            push(&mut a, "param", &format!("{k}={v}"))?;
        }
        if !self.secrets.is_empty() {
            let line = |s: &str| !s.contains(['\n', '\r']) && s.trim() == s && !s.is_empty();
            let in_file = self
                .secrets
                .iter()
                .all(|(k, v)| !k.contains('=') && !k.starts_with('#') && line(k) && line(v));
            if in_file {
                let text: String = self
                    .secrets
                    .iter()
                    .map(|(k, v)| format!("{k}={v}\n"))
                    .collect();
                fs::write(secrets_file, text).unwrap();
                a.push(format!("--secrets-file={}", secrets_file.display()));
            } else {
                for (k, v) in &self.secrets {
                    if k.contains('=') || k.is_empty() {
                        return None;
                    }
                    push(&mut a, "secret", &format!("{k}={v}"))?;
                }
            }
        }
        match self.capacity {
            Some(c) if c > 0 => a.push(format!("--capacity={c}")),
            Some(_) => return None,
            None => {}
        }
        Some(a)
    }

    /// The request as protobuf bytes (field numbers of csi.proto).
    fn body(&self) -> Vec<u8> {
        let cap = |p: Pb, field: u32| match self.cap.pb() {
            Some(c) if self.rpc.has_capability() => p.msg(field, c),
            _ => p,
        };
        let p = Pb::default();
        let p = match self.rpc {
            Rpc::Stage => cap(p.string(1, &self.id).string(3, &self.staging), 4)
                .map(5, &self.secrets)
                .map(6, &self.params),
            Rpc::Unstage => p.string(1, &self.id).string(2, &self.staging),
            Rpc::Publish => {
                let p = cap(
                    p.string(1, &self.id)
                        .string(3, &self.staging)
                        .string(4, &self.target),
                    5,
                );
                let p = if self.readonly { p.int(6, 1) } else { p };
                p.map(7, &self.secrets).map(8, &self.params)
            }
            Rpc::Unpublish | Rpc::Stats => p.string(1, &self.id).string(2, &self.target),
            Rpc::Create => {
                let p = p.string(1, &self.id);
                let p = match self.capacity {
                    Some(c) => p.msg(2, Pb::default().int(1, c).int(2, c)),
                    None => p,
                };
                cap(p, 3).map(4, &self.params).map(5, &self.secrets)
            }
            Rpc::Delete => p.string(1, &self.id).map(2, &self.secrets),
            Rpc::Validate => cap(p.string(1, &self.id).map(2, &self.params), 3),
            _ => p,
        };
        p.0
    }
}

// ---------------------------------------------------------------- cases

enum Call {
    Req(Req),
    Raw(&'static str, Vec<u8>),
}

struct Case {
    name: String,
    call: Call,
    expect: i32,
    /// Paths the request may create things at or below (its own target or
    /// staging dir and their parents).
    owns: Vec<PathBuf>,
    /// Values that must not show in the reply or the daemon log.
    secrets: Vec<String>,
}

/// The parts of a secret value worth searching for: the pieces between
/// control characters, at most 64 characters each, at least 8.
fn secret_pieces(req: &Req) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in &req.secrets {
        if k != "accessKeyID" && k != "secretAccessKey" {
            continue;
        }
        for piece in v.split(|c: char| c.is_control()) {
            let p: String = piece.chars().take(64).collect();
            if p.len() >= 8 {
                out.push(p);
            }
        }
    }
    out
}

static TAG: AtomicUsize = AtomicUsize::new(0);

/// A fresh name for a case's own volume and paths.
fn tag() -> String {
    format!("h{}", TAG.fetch_add(1, Ordering::SeqCst))
}

struct Table<'w> {
    w: &'w World,
    cases: Vec<Case>,
}

impl Table<'_> {
    fn add(&mut self, name: &str, expect: i32, req: Req) {
        self.cases.push(Case {
            name: name.to_string(),
            owns: self.w.owns(&req),
            secrets: secret_pieces(&req),
            call: Call::Req(req),
            expect,
        });
    }

    fn raw(&mut self, name: &str, expect: i32, method: &'static str, body: Vec<u8>) {
        self.cases.push(Case {
            name: name.to_string(),
            call: Call::Raw(method, body),
            expect,
            owns: Vec::new(),
            secrets: Vec::new(),
        });
    }
}

// ---------------------------------------------------------------- the world

/// One of the volumes that every case must leave alone.
struct Vol {
    id: String,
    staging: String,
    target: String,
}

struct World {
    d: Daemon,
    s3: S3Server,
    raw: Raw,
    files: Scratch,
    outside: Scratch,
    spawn_log: PathBuf,
    source: PathBuf,
    k: PathBuf,
    /// s3fs, staged and published.
    a: Vol,
    /// rclone, staged.
    b: Vol,
    /// A cache volume, published (copy).
    c: Vol,
    /// A controller volume created with reclaimData=true.
    r_id: String,
    /// Symlinks and files planted in the kubelet dir.
    planted: Vec<PathBuf>,
    calls: usize,
}

fn which(prog: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("{prog} is not on PATH"))
}

fn assert_ok(what: &str, out: &Out) {
    assert!(out.ok(), "{what}: {out:?}");
}

impl World {
    fn new() -> World {
        let s3 = S3Server::start_with_keys(
            &["hostile-a", "hostile-b"],
            &[(ACCESS_KEY, SECRET_KEY), (HOSTILE_AK, HOSTILE_SK)],
        );
        let files = Scratch::new("hostile-files");
        // Every mounter the daemon starts goes through these wrappers, which
        // log the start: a mounter that ran and died is still seen.
        let bin = files.path.join("bin");
        fs::create_dir_all(&bin).unwrap();
        let spawn_log = files.path.join("spawns.log");
        fs::write(&spawn_log, "").unwrap();
        for prog in ["s3fs", "rclone"] {
            script(
                &bin.join(prog),
                &format!(
                    "echo \"{prog} $*\" >> {}\nexec {} \"$@\"",
                    spawn_log.display(),
                    which(prog).display()
                ),
            );
        }
        // An allowed `fuse` program that never mounts.
        script(
            &bin.join("geesefs"),
            &format!("echo \"geesefs $*\" >> {}\nexit 1", spawn_log.display()),
        );
        let source = files.path.join("src");
        make_tree(&source, 2, 3);
        let conf = files.path.join("caches.conf");
        fs::write(
            &conf,
            format!(
                "[cache nm]\nsource = dir:{src}\nnamespaces = team-a\nstrategies = copy\n\
                 [cache closed]\nsource = dir:{src}\nstrategies = copy\n",
                src = source.display()
            ),
        )
        .unwrap();
        let outside = Scratch::new("hostile-outside");

        let conf_flag = format!("--cache-config={}", conf.display());
        let mut d = Daemon::start(&[
            "--mode=all",
            conf_flag.as_str(),
            "--mount-timeout=10",
            "--unstage-grace=3",
            // The quiet period after the cases waits for two health passes.
            "--watchdog-interval=1",
        ]);
        d.stop();
        d.env.push((
            "PATH".into(),
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ));
        let k = d.kubelet.clone();
        let kp = |rel: &str| k.join(rel).display().to_string();
        let a = Vol {
            id: "hostile-a/vol-a".into(),
            staging: kp(&format!("{DRIVER_DIR}/h-a/globalmount")),
            target: kp("pods/pod-a/volumes/kubernetes.io~csi/vol/mount"),
        };
        let b = Vol {
            id: "hostile-b/vol-b".into(),
            staging: kp(&format!("{DRIVER_DIR}/h-b/globalmount")),
            target: String::new(),
        };
        let c = Vol {
            id: "cache-c".into(),
            staging: String::new(),
            target: kp("pods/pod-c/volumes/kubernetes.io~csi/vol/mount"),
        };
        let raw = Raw::new(&d.socket);
        let mut w = World {
            d,
            s3,
            raw,
            files,
            outside,
            spawn_log,
            source,
            k,
            a,
            b,
            c,
            r_id: "hostile-b/pvc-reclaim".into(),
            planted: Vec::new(),
            calls: 0,
        };
        w.fixtures();
        w.d.restart();
        w.raw = Raw::new(&w.d.socket);
        w.volumes();
        w
    }

    /// The S3 objects, the outside dir and what a "tenant" planted in the
    /// kubelet dir: symlinks pointing outside (as a parent and as the last
    /// component), files where directories are expected, a symlink to volume
    /// A's pod directory.
    fn fixtures(&mut self) {
        // The daemon mounts fusectl the first time it aborts a FUSE
        // connection: part of the node, not a side effect of a case.
        if !mounts().values().any(|m| m.fs_type == "fusectl") {
            let _ = nix::mount::mount(
                Some("fusectl"),
                "/sys/fs/fuse/connections",
                Some("fusectl"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            );
        }
        let backend_a = self.s3.dir.join("hostile-a/vol-a");
        fs::create_dir_all(backend_a.join("sub")).unwrap();
        fs::write(backend_a.join("a.txt"), A_DATA).unwrap();
        fs::write(backend_a.join("sub/keep.txt"), "keep").unwrap();
        fs::create_dir_all(self.s3.dir.join("hostile-b/vol-b")).unwrap();
        fs::write(self.s3.dir.join("hostile-b/vol-b/b.txt"), B_DATA).unwrap();

        let o = self.outside.path.clone();
        fs::create_dir_all(o.join("victim-dir")).unwrap();
        fs::write(o.join("victim-dir/keep.txt"), "outside").unwrap();
        fs::create_dir_all(o.join("victim-last")).unwrap();

        let k = self.k.clone();
        fs::create_dir_all(&k).unwrap();
        self.planted.clear();
        for (to, at) in [
            (o.join("victim-dir"), "pods/evil-parent".to_string()),
            (o.join("victim-dir"), format!("{DRIVER_DIR}/evil-parent")),
            (
                o.join("victim-last"),
                "pods/pod-sl/volumes/kubernetes.io~csi/vol/mount".into(),
            ),
            (
                o.join("victim-last"),
                format!("{DRIVER_DIR}/h-sl/globalmount"),
            ),
            (k.join("pods/pod-a"), "pods/link-to-a".into()),
        ] {
            let at = k.join(at);
            fs::create_dir_all(at.parent().unwrap()).unwrap();
            symlink(to, &at).unwrap();
            self.planted.push(at);
        }
        for f in [
            "pods/pod-file/volumes/kubernetes.io~csi/vol/mount".to_string(),
            format!("{DRIVER_DIR}/h-file/globalmount"),
        ] {
            let at = k.join(f);
            fs::create_dir_all(at.parent().unwrap()).unwrap();
            fs::write(&at, "a file").unwrap();
            self.planted.push(at);
        }
    }

    /// The volumes every case must leave alone.
    fn volumes(&mut self) {
        self.setup_a();
        self.setup_b();
        self.setup_c();
        self.setup_r();
        let h = self.health();
        assert!(h.is_empty(), "the world is not healthy: {h:?}");
    }

    /// Start over on the same paths after a case broke something (the case
    /// has failed already; the rest of the matrix must still mean
    /// something): stop the daemon, remove every mount and mounter, wipe its
    /// state, the kubelet dir and the outside dir, lay the fixtures down
    /// again, restart, and set the volumes up again.
    fn reset(&mut self, case: &str) {
        eprintln!("hostile: resetting the node after {case:?}");
        self.d.stop();
        let roots = [self.d.scratch.path.clone(), self.outside.path.clone()];
        for r in &roots {
            force_clean(&[&r.display().to_string()]);
        }
        let left: Vec<Mount> = mounts()
            .into_values()
            .filter(|m| roots.iter().any(|r| m.mount_point.starts_with(r)))
            .collect();
        // Removing a tree with a mount still in it would delete what is behind it.
        assert!(
            left.is_empty(),
            "cannot reset after {case:?}: {left:?} still mounted"
        );
        for dir in [&self.d.state, &self.k, &self.outside.path] {
            let _ = fs::remove_dir_all(dir);
        }
        fs::create_dir_all(&self.outside.path).unwrap();
        self.fixtures();
        self.d.restart();
        self.raw = Raw::new(&self.d.socket);
        self.volumes();
    }

    fn a_secrets(&self) -> Vec<(String, String)> {
        vec![
            ("accessKeyID".into(), ACCESS_KEY.into()),
            ("secretAccessKey".into(), SECRET_KEY.into()),
            ("endpoint".into(), self.s3.endpoint.clone()),
        ]
    }

    fn hostile_secrets(&self) -> Vec<(String, String)> {
        vec![
            ("accessKeyID".into(), HOSTILE_AK.into()),
            ("secretAccessKey".into(), HOSTILE_SK.into()),
            ("endpoint".into(), self.s3.endpoint.clone()),
        ]
    }

    fn stage_a_req(&self) -> Req {
        Req::new(Rpc::Stage)
            .id(&self.a.id)
            .staging(&self.a.staging)
            .param("mounter", "s3fs")
            .secrets(&self.a_secrets())
    }

    fn publish_a_req(&self, target: &str) -> Req {
        Req::new(Rpc::Publish)
            .id(&self.a.id)
            .staging(&self.a.staging)
            .target(target)
    }

    fn stage_b_req(&self) -> Req {
        Req::new(Rpc::Stage)
            .id(&self.b.id)
            .staging(&self.b.staging)
            .param("mounter", "rclone")
            .secrets(&self.a_secrets())
    }

    fn cache_req(&self, id: &str, target: &str) -> Req {
        // What the kubelet adds with podInfoOnMount: the UID of the pod
        // whose directory the target is in.
        let uid = target
            .split("/pods/")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("");
        Req::new(Rpc::Publish)
            .id(id)
            .target(target)
            .param("cache", "nm")
            .param(NS_KEY, "team-a")
            .param(UID_KEY, uid)
            .param("csi.storage.k8s.io/ephemeral", "true")
    }

    fn create_r_req(&self) -> Req {
        Req::new(Rpc::Create)
            .id("pvc-reclaim")
            .param("bucket", "hostile-b")
            .param("reclaimData", "true")
    }

    fn setup_a(&mut self) {
        let out = self.call(&self.stage_a_req());
        assert_ok("stage A", &out);
        let out = self.call(&self.publish_a_req(&self.a.target.clone()));
        assert_ok("publish A", &out);
    }

    fn setup_b(&mut self) {
        let out = self.call(&self.stage_b_req());
        assert_ok("stage B", &out);
    }

    fn setup_c(&mut self) {
        let out = self.call(&self.cache_req(&self.c.id.clone(), &self.c.target.clone()));
        assert_ok("publish C", &out);
    }

    fn setup_r(&mut self) {
        let out = self.call(&self.create_r_req());
        assert_ok("create R", &out);
        assert!(out.stdout.contains(&self.r_id), "{out:?}");
    }

    fn stg(&self, tag: &str) -> String {
        self.k
            .join(format!("{DRIVER_DIR}/{tag}/globalmount"))
            .display()
            .to_string()
    }

    fn tgt(&self, tag: &str) -> String {
        self.k
            .join(format!("pods/{tag}/volumes/kubernetes.io~csi/vol/mount"))
            .display()
            .to_string()
    }

    /// A hostile stage request that is valid but for what the case changes.
    fn stage(&self) -> Req {
        let t = tag();
        Req::new(Rpc::Stage)
            .id(format!("hostile-b/{t}"))
            .staging(self.stg(&t))
            .param("mounter", "s3fs")
            .secrets(&self.hostile_secrets())
    }

    /// A publish of volume A at a fresh target.
    fn publish_a(&self) -> Req {
        self.publish_a_req(&self.tgt(&tag()))
    }

    /// A cache publish at a fresh target.
    fn cache(&self) -> Req {
        let t = tag();
        self.cache_req(&format!("cache-{t}"), &self.tgt(&t))
    }

    /// Paths that belong to the world, never to a case.
    fn protected(&self) -> Vec<PathBuf> {
        let mut p: Vec<PathBuf> = [
            &self.a.staging,
            &self.a.target,
            &self.b.staging,
            &self.c.target,
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        p.extend(self.planted.iter().cloned());
        p.push(self.k.join("plugins/bindery.csi.dev"));
        p
    }

    /// `p` as a path the request may legitimately create things at: a
    /// clean path strictly below the kubelet dir that is no part of another
    /// volume's paths or of a planted entry.
    fn ownable(&self, p: &str) -> Option<PathBuf> {
        if p.len() > 4096 || p.contains('\0') || !p.starts_with('/') {
            return None;
        }
        if p.split('/').any(|s| s == "." || s == ".." || s.len() > 255) {
            return None;
        }
        let path: PathBuf = Path::new(p).components().collect();
        if path == self.k || !path.starts_with(&self.k) {
            return None;
        }
        if self
            .protected()
            .iter()
            .any(|q| path.starts_with(q) || q.starts_with(&path))
        {
            return None;
        }
        Some(path)
    }

    fn owns(&self, req: &Req) -> Vec<PathBuf> {
        [&req.staging, &req.target]
            .into_iter()
            .filter(|p| !p.is_empty())
            .filter_map(|p| self.ownable(p))
            .collect()
    }

    fn call(&mut self, req: &Req) -> Out {
        self.calls += 1;
        let file = self.files.path.join(format!("secrets-{}", self.calls));
        match req.cli_args(&file) {
            Some(a) => self.d.csi(&args(&a)),
            None => self.raw.call(req.rpc.method(), &req.body()),
        }
    }

    fn read(path: &str, file: &str) -> Result<String, String> {
        fs::read_to_string(Path::new(path).join(file)).map_err(|e| format!("{path}/{file}: {e}"))
    }

    fn daemon_alive(&self) -> bool {
        fs::read_to_string(format!("/proc/{}/stat", self.d.pid()))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next().map(|c| c != "Z"))
            })
            .unwrap_or(false)
    }

    fn a_problem(&self) -> Option<String> {
        for p in [&self.a.target, &self.a.staging] {
            match Self::read(p, "a.txt") {
                Ok(s) if s == A_DATA => {}
                Ok(s) => return Some(format!("volume A reads {s:?} at {p}")),
                Err(e) => return Some(format!("volume A unreadable: {e}")),
            }
        }
        None
    }

    fn b_problem(&self) -> Option<String> {
        match Self::read(&self.b.staging, "b.txt") {
            Ok(s) if s == B_DATA => None,
            Ok(s) => Some(format!("volume B reads {s:?}")),
            Err(e) => Some(format!("volume B unreadable: {e}")),
        }
    }

    fn c_problem(&self) -> Option<String> {
        let want = fs::read(self.source.join("pkg-1/lib/f2.js")).unwrap();
        match fs::read(Path::new(&self.c.target).join("pkg-1/lib/f2.js")) {
            Ok(got) if got == want => None,
            Ok(_) => Some("cache volume C's copy changed".into()),
            Err(e) => Some(format!("cache volume C unreadable: {e}")),
        }
    }

    fn r_problem(&mut self) -> Option<String> {
        let out = self.call(&Req::new(Rpc::Validate).id(&self.r_id));
        (!out.ok()).then(|| format!("controller volume R is gone: {}", out.stderr.trim()))
    }

    /// What is wrong with the daemon and the other volumes.
    fn health(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.daemon_alive() {
            p.push("the daemon died".to_string());
            return p;
        }
        p.extend(self.a_problem());
        p.extend(self.b_problem());
        p.extend(self.c_problem());
        p
    }

    fn snap(&self) -> Snap {
        let mounts = mounts();
        let points: BTreeSet<PathBuf> = mounts.values().map(|m| m.mount_point.clone()).collect();
        let trash = self.k.join("plugins/bindery.csi.dev/trash");
        Snap {
            procs: procs(&[
                self.d.scratch.path.as_path(),
                self.files.path.as_path(),
                self.outside.path.as_path(),
            ]),
            spawns: fs::read_to_string(&self.spawn_log).unwrap_or_default(),
            // The trash is the daemon's own: what it removes there in the
            // background is no side effect of a case.
            kubelet: listing(&self.k, &points, &[trash]),
            outside: listing(&self.outside.path, &points, &[]),
            backend: listing(&self.s3.dir, &points, &[]),
            log_len: fs::metadata(&self.d.log).map(|m| m.len()).unwrap_or(0),
            mounts,
        }
    }

    fn log_since(&self, offset: u64) -> String {
        let mut s = Vec::new();
        if let Ok(mut f) = fs::File::open(&self.d.log) {
            let _ = f.seek(SeekFrom::Start(offset));
            let _ = f.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    }

    /// The request that undoes `req` when it got through, unless it names
    /// one of the world's own volumes at its own path.
    fn undo(&self, req: &Req, out: &Out) -> Option<Req> {
        let own = |id: &str, p: &str| {
            [&self.a, &self.b, &self.c]
                .iter()
                .any(|v| v.id == id && (v.staging == p || v.target == p))
        };
        match req.rpc {
            Rpc::Stage if !own(&req.id, &req.staging) => Some(
                Req::new(Rpc::Unstage)
                    .id(&req.id)
                    .staging(&req.staging)
                    .raw(),
            ),
            Rpc::Publish if !own(&req.id, &req.target) => Some(
                Req::new(Rpc::Unpublish)
                    .id(&req.id)
                    .target(&req.target)
                    .raw(),
            ),
            Rpc::Create => {
                let id = out
                    .stdout
                    .split("volume_id: \"")
                    .nth(1)?
                    .split('"')
                    .next()?
                    .to_string();
                (id != self.r_id).then(|| Req::new(Rpc::Delete).id(id))
            }
            _ => None,
        }
    }

    fn run(&mut self, case: &Case) -> Vec<String> {
        let before = self.snap();
        let out = match &case.call {
            Call::Req(r) => self.call(r),
            Call::Raw(m, b) => self.raw.call(m, b),
        };
        let after = self.snap();
        let mut p = Vec::new();
        let message = out
            .stderr
            .trim_end()
            .split_once(": ")
            .map(|(_, m)| m)
            .unwrap_or(out.stderr.trim_end());
        if out.code != case.expect {
            p.push(format!(
                "got {} ({}), want {} ({}): {}",
                code_name(out.code),
                out.code,
                code_name(case.expect),
                case.expect,
                clip(message, 240)
            ));
        }
        if message.len() > MAX_MESSAGE {
            p.push(format!("message of {} bytes", message.len()));
        }
        let log = self.log_since(before.log_len);
        let globals = [HOSTILE_AK, HOSTILE_SK, ACCESS_KEY, SECRET_KEY].map(String::from);
        for s in globals.iter().chain(&case.secrets) {
            if out.stderr.contains(s.as_str()) || out.stdout.contains(s.as_str()) {
                p.push(format!("secret {}… in the reply", clip(s, 12)));
            }
            if log.contains(s.as_str()) {
                p.push(format!("secret {}… in the daemon log", clip(s, 12)));
            }
        }
        p.extend(side_effects(&before, &after, &case.owns, self));
        let mut broken = self.health();
        if matches!(&case.call, Call::Req(r) if r.rpc == Rpc::Delete) {
            broken.extend(self.r_problem());
        }
        p.extend(broken.iter().cloned());
        // Put things back for the next case.
        if let Call::Req(r) = &case.call {
            let got_through = out.ok() && (case.expect != OK || r.rpc == Rpc::Create);
            if got_through {
                if let Some(u) = self.undo(r, &out) {
                    self.call(&u);
                }
            }
        }
        restore(&before, self.d.pid());
        if !broken.is_empty() || !self.health().is_empty() {
            self.reset(&case.name);
        }
        p
    }
}

// ---------------------------------------------------------------- side effects

type Mount = bindery::sys::mountinfo::MountInfo;

type Listing = BTreeMap<PathBuf, String>;

struct Snap {
    mounts: BTreeMap<u32, Mount>,
    procs: BTreeMap<i32, String>,
    spawns: String,
    kubelet: Listing,
    outside: Listing,
    backend: Listing,
    log_len: u64,
}

fn mounts() -> BTreeMap<u32, Mount> {
    bindery::sys::mountinfo::read_self()
        .unwrap()
        .into_iter()
        .map(|m| (m.id, m))
        .collect()
}

/// Live processes (not zombies) other than this one. Inside the private PID
/// namespace of .ci/in-namespace every process is one of the test's; outside
/// it only those whose command line names one of `dirs` or a mounter.
fn procs(dirs: &[&Path]) -> BTreeMap<i32, String> {
    let me = std::process::id() as i32;
    let all = std::env::var("BINDERY_IN_NAMESPACE").as_deref() == Ok("1");
    let mut out = BTreeMap::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        if matches!(state, Some("Z" | "X") | None) {
            continue;
        }
        let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .trim_end()
            .to_string();
        let ours = all
            || dirs.iter().any(|d| cmd.contains(&*d.to_string_lossy()))
            || ["s3fs", "rclone", "geesefs", "fusermount"]
                .iter()
                .any(|m| cmd.contains(m));
        if ours {
            out.insert(pid, cmd);
        }
    }
    out
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Every entry below `root` (not crossing mount points, not following
/// symlinks, skipping `skip`): kind, mode, owner, and content of files.
fn listing(root: &Path, points: &BTreeSet<PathBuf>, skip: &[PathBuf]) -> Listing {
    fn walk(dir: &Path, points: &BTreeSet<PathBuf>, skip: &[PathBuf], out: &mut Listing) {
        let Ok(rd) = fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if skip.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            if points.contains(&p) {
                out.insert(p, "a mount point".into());
                continue;
            }
            let Ok(m) = p.symlink_metadata() else {
                out.insert(p, "unreadable".into());
                continue;
            };
            let own = format!("{:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid());
            if m.file_type().is_symlink() {
                let to = fs::read_link(&p).map(|t| t.display().to_string());
                out.insert(p, format!("symlink -> {}", to.unwrap_or_default()));
            } else if m.is_dir() {
                out.insert(p.clone(), format!("dir {own}"));
                walk(&p, points, skip, out);
            } else {
                let sum = if m.len() <= MIB as u64 {
                    fs::read(&p).map(|b| fnv(&b)).unwrap_or(0)
                } else {
                    0
                };
                out.insert(p, format!("file {own} {} bytes {sum:x}", m.len()));
            }
        }
    }
    let mut out = Listing::new();
    walk(root, points, skip, &mut out);
    out
}

fn short_path(p: &Path, root: &Path) -> String {
    clip(&p.strip_prefix(root).unwrap_or(p).display().to_string(), 90)
}

fn diff_listing(
    label: &str,
    root: &Path,
    before: &Listing,
    after: &Listing,
    owns: &[PathBuf],
    out: &mut Vec<String>,
) {
    let excluded = |e: &Path| owns.iter().any(|o| e.starts_with(o) || o.starts_with(e));
    let mut changes = Vec::new();
    for (p, d) in after {
        if excluded(p) {
            continue;
        }
        match before.get(p) {
            None => changes.push(format!("+{} ({d})", short_path(p, root))),
            Some(b) if b != d => changes.push(format!("~{} ({b} -> {d})", short_path(p, root))),
            Some(_) => {}
        }
    }
    for p in before.keys() {
        if !after.contains_key(p) && !excluded(p) {
            changes.push(format!("-{}", short_path(p, root)));
        }
    }
    if !changes.is_empty() {
        let n = changes.len();
        changes.truncate(4);
        out.push(format!("{label} changed ({n}): {}", changes.join(", ")));
    }
}

fn side_effects(before: &Snap, after: &Snap, owns: &[PathBuf], w: &World) -> Vec<String> {
    let mut p = Vec::new();
    for (id, m) in &after.mounts {
        match before.mounts.get(id) {
            None => p.push(format!(
                "new mount {} ({})",
                clip(&m.mount_point.display().to_string(), 120),
                m.fs_type
            )),
            Some(b) if b != m => p.push(format!("mount changed: {}", clip(&format!("{m:?}"), 200))),
            Some(_) => {}
        }
    }
    for (id, m) in &before.mounts {
        if !after.mounts.contains_key(id) {
            p.push(format!(
                "mount gone: {} ({})",
                clip(&m.mount_point.display().to_string(), 120),
                m.fs_type
            ));
        }
    }
    for (pid, cmd) in &after.procs {
        if !before.procs.contains_key(pid) {
            p.push(format!("new process {pid}: {}", clip(cmd, 120)));
        }
    }
    for (pid, cmd) in &before.procs {
        if !after.procs.contains_key(pid) {
            p.push(format!("process gone {pid}: {}", clip(cmd, 120)));
        }
    }
    if after.spawns.len() > before.spawns.len() {
        let new = &after.spawns[before.spawns.len()..];
        p.push(format!("mounter started: {}", clip(new.trim(), 200)));
    }
    diff_listing(
        "kubelet dir",
        &w.k,
        &before.kubelet,
        &after.kubelet,
        owns,
        &mut p,
    );
    diff_listing(
        "outside dir",
        &w.outside.path,
        &before.outside,
        &after.outside,
        &[],
        &mut p,
    );
    diff_listing(
        "S3 backend",
        &w.s3.dir,
        &before.backend,
        &after.backend,
        &[],
        &mut p,
    );
    p
}

/// Detach the mount at `path`, reached component by component without
/// following symlinks (paths longer than PATH_MAX included).
fn detach(path: &Path) {
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let Ok(mut fd) = open("/", flags | OFlag::O_DIRECTORY, Mode::empty()) else {
        return;
    };
    for comp in path.components().skip(1) {
        let next = openat(Some(fd), comp.as_os_str(), flags, Mode::empty());
        let _ = nix::unistd::close(fd);
        match next {
            Ok(n) => fd = n,
            Err(_) => return,
        }
    }
    let _ = nix::mount::umount2(
        format!("/proc/self/fd/{fd}").as_str(),
        nix::mount::MntFlags::MNT_DETACH,
    );
    let _ = nix::unistd::close(fd);
}

/// Remove what a case left behind that the daemon did not: new mounts
/// (deepest first), then new processes.
fn restore(before: &Snap, daemon: i32) {
    let mut new: Vec<Mount> = mounts()
        .into_iter()
        .filter(|(id, _)| !before.mounts.contains_key(id))
        .map(|(_, m)| m)
        .collect();
    new.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    for m in &new {
        detach(&m.mount_point);
    }
    let strays: Vec<i32> = procs(&[])
        .into_keys()
        .filter(|pid| !before.procs.contains_key(pid) && *pid != daemon)
        .collect();
    for pid in &strays {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && strays.iter().any(|p| procs(&[]).contains_key(p)) {
        thread::sleep(Duration::from_millis(20));
    }
}

/// Detach every mount at or below these paths and kill their mounters.
fn force_clean(paths: &[&str]) {
    for p in paths {
        let mut below: Vec<Mount> = mounts()
            .into_values()
            .filter(|m| m.mount_point.starts_with(p))
            .collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
        for m in &below {
            detach(&m.mount_point);
        }
        kill_processes_mentioning(Path::new(p));
    }
    thread::sleep(Duration::from_millis(200));
}

// ---------------------------------------------------------------- the matrix

fn identity_and_raw_cases(t: &mut Table) {
    for rpc in [
        Rpc::PluginInfo,
        Rpc::PluginCaps,
        Rpc::Probe,
        Rpc::NodeInfo,
        Rpc::NodeCaps,
        Rpc::CtlCaps,
    ] {
        t.add(&format!("{}: plain call", rpc.cli()), OK, Req::new(rpc));
    }
    // Unknown fields are skipped by every protobuf reader, whatever their size.
    let junk = Pb::default().bytes(99, "j".repeat(MIB).as_bytes()).0;
    for rpc in [Rpc::PluginInfo, Rpc::Probe, Rpc::NodeInfo, Rpc::NodeCaps] {
        t.raw(
            &format!("{}: 1 MiB unknown field", rpc.cli()),
            OK,
            rpc.method(),
            junk.clone(),
        );
    }
    // Bytes that are no protobuf at all: grpcio refuses to decode them.
    t.raw(
        "node-stage: body that is not protobuf",
        INTERNAL,
        Rpc::Stage.method(),
        vec![0xff; 64],
    );
    t.raw(
        "node-stage: volume id that is not UTF-8",
        INTERNAL,
        Rpc::Stage.method(),
        Pb::default().bytes(1, b"\xff\xfe-vol").0,
    );
    // Field 1 is a volume id in these requests; ListVolumes' starting_token
    // is field 2.
    let id = Pb::default().string(1, "../../etc").0;
    let token = Pb::default().string(2, "../../etc").0;
    for (name, method, body) in [
        ("NodeExpandVolume", "/csi.v1.Node/NodeExpandVolume", &id),
        (
            "ControllerPublishVolume",
            "/csi.v1.Controller/ControllerPublishVolume",
            &id,
        ),
        ("CreateSnapshot", "/csi.v1.Controller/CreateSnapshot", &id),
        ("ListVolumes", "/csi.v1.Controller/ListVolumes", &token),
        ("an unknown method", "/csi.v1.Node/NodeFrobnicate", &id),
        (
            "the GroupController service",
            "/csi.v1.GroupController/GroupControllerGetCapabilities",
            &token,
        ),
    ] {
        t.raw(
            &format!("{name}: not implemented"),
            UNIMPLEMENTED,
            method,
            body.clone(),
        );
    }
}

fn stage_cases(t: &mut Table, w: &World) {
    let ep = w.s3.endpoint.as_str();
    let out = w.outside.path.display().to_string();
    let k = w.k.display().to_string();
    let big = |c: char| c.to_string().repeat(MIB);

    // Option injection and grammar of the endpoint secret.
    for (what, endpoint) in [
        (
            "',use_cache=' injection",
            format!("{ep},use_cache={out}/s3fs-cache"),
        ),
        (
            "',passwd_file=' injection",
            format!("{ep},passwd_file=/etc/shadow"),
        ),
        (
            "',allow_root,suid,dev' injection",
            format!("{ep},allow_root,suid,dev"),
        ),
        ("a space and -o", format!("{ep} -o allow_root")),
        ("a double quote", format!("{ep}\"x")),
        ("a single quote", format!("{ep}'x")),
        ("a newline", format!("{ep}\nuse_cache=/tmp")),
        ("a tab", format!("{ep}\tx")),
        ("\\x01", format!("{ep}\x01")),
        ("an escape sequence", format!("{ep}/\x1b[2J")),
        ("DEL", format!("{ep}\x7f")),
        ("scheme file://", "file:///etc/passwd".into()),
        ("scheme ftp://", ep.replace("http://", "ftp://")),
        (
            "scheme unix://",
            "unix:///run/containerd/containerd.sock".into(),
        ),
        ("no scheme", ep.replace("http://", "")),
        ("no host", "http://".into()),
        ("a comma in the path", format!("{ep}/a,b")),
        ("1 MiB", format!("http://127.0.0.1/{}", big('e'))),
    ] {
        t.add(
            &format!("node-stage: endpoint with {what}"),
            INVALID_ARGUMENT,
            w.stage().secret("endpoint", &endpoint),
        );
    }
    t.add(
        "node-stage: no endpoint secret",
        INVALID_ARGUMENT,
        w.stage().unsecret("endpoint"),
    );
    for (what, region) in [
        (
            "',allow_other' injection",
            "us-east-1,allow_other".to_string(),
        ),
        (
            "',use_cache=' injection",
            format!("us-east-1,use_cache={out}/r"),
        ),
        ("a slash", "../../etc".into()),
        ("a space", "us-east-1 -o allow_root".into()),
        ("upper case", "US-EAST-1".into()),
        ("a newline", "us-east-1\nx".into()),
        ("1 MiB", big('r')),
    ] {
        t.add(
            &format!("node-stage: region with {what}"),
            INVALID_ARGUMENT,
            w.stage().secret("region", &region),
        );
    }
    for (what, key, value) in [
        (
            "newline",
            "accessKeyID",
            format!("{HOSTILE_AK}\nnl-akid-2nd-line"),
        ),
        (
            "newline",
            "secretAccessKey",
            format!("{HOSTILE_SK}\nnl-secret-2nd-line"),
        ),
        ("NUL", "accessKeyID", format!("{HOSTILE_AK}\0nul-akid-tail")),
        (
            "NUL",
            "secretAccessKey",
            format!("{HOSTILE_SK}\0nul-secret-tail"),
        ),
        ("1 MiB", "accessKeyID", format!("big-akid-{}", big('a'))),
        (
            "1 MiB",
            "secretAccessKey",
            format!("big-secret-{}", big('s')),
        ),
    ] {
        t.add(
            &format!("node-stage: {key} with {what}"),
            INVALID_ARGUMENT,
            w.stage().secret(key, &value),
        );
    }

    // 1 MiB values everywhere else: refused, and not echoed.
    for (what, key, value) in [
        ("bucket", "bucket", big('b')),
        ("prefix", "prefix", big('p')),
        ("options", "options", format!("-o {}", big('o'))),
        ("uid", "uid", big('9')),
    ] {
        t.add(
            &format!("node-stage: 1 MiB {what}"),
            INVALID_ARGUMENT,
            w.stage().param(key, &value),
        );
    }
    t.add(
        "node-stage: 1 MiB unknown parameter name",
        INVALID_ARGUMENT,
        w.stage().param(&big('k'), "v"),
    );
    t.add(
        "node-stage: 1 MiB volume_mount_group",
        INVALID_ARGUMENT,
        w.stage().group(&big('g')),
    );
    t.add(
        "node-stage: 1 MiB mount flag",
        INVALID_ARGUMENT,
        w.stage().flags(&[&big('f')]),
    );
    t.add(
        "node-stage: 1 MiB volume id",
        INVALID_ARGUMENT,
        w.stage().id(format!("hostile-b/{}", big('i'))),
    );
    t.add(
        "node-stage: 1 MiB staging path",
        INVALID_ARGUMENT,
        w.stage().staging(format!("{k}/{DRIVER_DIR}/{}", big('s'))),
    );

    // Volume ids.
    for (what, id) in [
        ("'/../'", "hostile-b/../../etc".to_string()),
        ("a leading '../'", "../../etc/passwd".into()),
        ("'/./'", "hostile-b/./x".into()),
        ("a newline", "hostile-b/x\ny".into()),
        ("\\x01", "hostile-b/x\x01y".into()),
        ("NUL", "hostile-b/x\0y".into()),
        ("1025 bytes", format!("hostile-b/{}", "i".repeat(1015))),
    ] {
        t.add(
            &format!("node-stage: volume id with {what}"),
            INVALID_ARGUMENT,
            w.stage().id(id),
        );
    }

    // Staging paths.
    let long = "x".repeat(300);
    let deep = vec!["d".repeat(200); 21].join("/");
    for (what, path) in [
        ("relative", format!("{DRIVER_DIR}/rel/globalmount")),
        ("'..'", format!("{k}/plugins/../../outside")),
        ("'.'", format!("{k}/plugins/./x/globalmount")),
        ("outside the kubelet dir", format!("{out}/stage")),
        ("equal to the kubelet dir", k.clone()),
        ("equal to the kubelet dir plus '/'", format!("{k}/")),
        (
            "a symlinked parent",
            format!("{k}/{DRIVER_DIR}/evil-parent/globalmount"),
        ),
        ("a symlink as last component", w.stg("h-sl")),
        ("a regular file", w.stg("h-file")),
        (
            "a component over 255 bytes",
            format!("{k}/{DRIVER_DIR}/{long}/globalmount"),
        ),
        (
            "over 4096 bytes",
            format!("{k}/{DRIVER_DIR}/{deep}/globalmount"),
        ),
        // A node path must not lead into another
        // volume's FUSE mount (it would create objects in its bucket).
        (
            "inside another volume's mount",
            format!("{}/sub", w.a.staging),
        ),
    ] {
        t.add(
            &format!("node-stage: staging path {what}"),
            INVALID_ARGUMENT,
            w.stage().staging(path),
        );
    }

    // Mounter options outside the allow-list.
    for (what, opts) in [
        ("use_cache=", "-o use_cache=/tmp/x"),
        ("passwd_file=", "-o passwd_file=/etc/shadow"),
        ("allow_root", "-o allow_root"),
        ("suid", "-o suid"),
        ("dev", "-o dev"),
        ("iam_role", "-o iam_role=auto"),
        ("ecs", "-o ecs"),
        ("profile", "-o profile=default"),
        ("ibm_iam_auth", "-o ibm_iam_auth"),
        ("url=", "-o url=http://127.0.0.1:1"),
        (
            "a comma-joined use_cache",
            "-o stat_cache_expire=1,use_cache=/tmp/x",
        ),
        ("a value with a space", "-o \"stat_cache_expire=1 x\""),
        ("a dash flag", "-f"),
    ] {
        t.add(
            &format!("node-stage: s3fs option {what}"),
            INVALID_ARGUMENT,
            w.stage().param("options", opts),
        );
    }
    for (what, opts) in [
        ("--config", "--config=/tmp/x"),
        ("--cache-dir", "--cache-dir=/tmp/x"),
        ("-v", "-v"),
        ("--s3-env-auth", "--s3-env-auth"),
        ("--s3-profile", "--s3-profile=default"),
        ("--allow-root", "--allow-root"),
        ("--rc", "--rc"),
        ("--log-file", "--log-file=x.log"),
        ("--daemon", "--daemon"),
        ("--password-command", "--password-command=id"),
        ("--exclude-from (a file)", "--exclude-from=secrets.txt"),
    ] {
        t.add(
            &format!("node-stage: rclone option {what}"),
            INVALID_ARGUMENT,
            w.stage().param("mounter", "rclone").param("options", opts),
        );
    }
    for (what, command) in [
        (
            "a program not allowed",
            "sh -c 'touch /tmp/pwned' {mountpoint}",
        ),
        (
            "an allowed name as absolute path",
            "/usr/bin/geesefs hostile-b {mountpoint}",
        ),
        (
            "a relative program path",
            "../geesefs hostile-b {mountpoint}",
        ),
        (
            "a path option",
            "geesefs --cache=/tmp/x hostile-b {mountpoint}",
        ),
        (
            "a path argument",
            "geesefs hostile-b {mountpoint} /etc/passwd",
        ),
        ("no {mountpoint}", "geesefs hostile-b"),
    ] {
        t.add(
            &format!("node-stage: fuse command with {what}"),
            INVALID_ARGUMENT,
            w.stage().param("mounter", "fuse").param("command", command),
        );
    }
    t.add(
        "node-stage: command with mounter s3fs",
        INVALID_ARGUMENT,
        w.stage().param("command", "geesefs hostile-b {mountpoint}"),
    );
    for (key, values) in [
        ("uid", &["root", "-1", "4294967296", "0x10"][..]),
        ("gid", &["abc", "-5", "99999999999999999999"][..]),
        ("umask", &["999", "-1", "7777", "abc"][..]),
    ] {
        for v in values {
            t.add(
                &format!("node-stage: {key}={v}"),
                INVALID_ARGUMENT,
                w.stage().param(key, v),
            );
        }
    }
    for flag in ["frobnicate", "suid", "dev", "bind", "remount", "rw,suid"] {
        t.add(
            &format!("node-stage: mount flag {flag}"),
            INVALID_ARGUMENT,
            w.stage().flags(&[flag]),
        );
    }
    t.add(
        "node-stage: block access",
        INVALID_ARGUMENT,
        w.stage().cap(Cap::Block(5)),
    );
    t.add(
        "node-stage: no capability",
        INVALID_ARGUMENT,
        w.stage().cap(Cap::None),
    );
    for (what, cap) in [
        (
            "access mode UNKNOWN",
            Cap::Mount {
                mode: 0,
                flags: vec![],
                group: String::new(),
            },
        ),
        (
            "access mode 99",
            Cap::Mount {
                mode: 99,
                flags: vec![],
                group: String::new(),
            },
        ),
        ("no access type", Cap::ModeOnly(5)),
        ("no access mode", Cap::MountNoMode),
    ] {
        t.add(
            &format!("node-stage: {what}"),
            INVALID_ARGUMENT,
            w.stage().cap(cap),
        );
    }
    for g in ["abc", "-5", "99999999999"] {
        t.add(
            &format!("node-stage: volume_mount_group {g}"),
            INVALID_ARGUMENT,
            w.stage().group(g),
        );
    }
    for (what, k, v) in [
        ("unknown parameter", "colour", "blue"),
        ("mounter with a shell", "mounter", "s3fs;id"),
        ("bad bucket", "bucket", "Bad_Bucket"),
        ("prefix with '..'", "prefix", "../x"),
    ] {
        t.add(
            &format!("node-stage: {what}"),
            INVALID_ARGUMENT,
            w.stage().param(k, v),
        );
    }

    // Lifecycle: other volumes' paths.
    t.add(
        "node-stage: a new volume at A's staging path",
        FAILED_PRECONDITION,
        w.stage().staging(&w.a.staging),
    );
    t.add(
        "node-stage: a new volume at A's target",
        FAILED_PRECONDITION,
        w.stage().staging(&w.a.target),
    );
    t.add(
        "node-stage: staged B at A's staging path",
        FAILED_PRECONDITION,
        w.stage_b_req().staging(&w.a.staging),
    );
    t.add(
        "node-stage: A at another staging path",
        FAILED_PRECONDITION,
        w.stage_a_req().staging(w.stg(&tag())),
    );
    t.add(
        "node-stage: A again with other options",
        ALREADY_EXISTS,
        w.stage_a_req().param("options", "-o stat_cache_expire=1"),
    );
    t.add("node-stage: A again, same request", OK, w.stage_a_req());
}

fn unstage_cases(t: &mut Table, w: &World) {
    let k = w.k.display().to_string();
    let out = w.outside.path.display().to_string();
    let unstage = |id: &str, path: &str| Req::new(Rpc::Unstage).id(id).staging(path);
    let fresh = w.stg("h-never-staged");
    t.add(
        "node-unstage: unknown volume",
        OK,
        unstage("hostile-b/nobody", &fresh),
    );
    t.add(
        "node-unstage: unknown volume again",
        OK,
        unstage("hostile-b/nobody", &fresh),
    );
    t.add(
        "node-unstage: unknown volume at A's staging path",
        OK,
        unstage("hostile-b/nobody", &w.a.staging),
    );
    // Spec: "If the volume ... is not staged to the staging_target_path, the
    // Plugin MUST reply 0 OK".
    t.add(
        "node-unstage: B at A's staging path",
        OK,
        unstage(&w.b.id, &w.a.staging),
    );
    t.add(
        "node-unstage: A at another staging path",
        OK,
        unstage(&w.a.id, &w.stg("h-elsewhere")),
    );
    t.add(
        "node-unstage: A while published",
        FAILED_PRECONDITION,
        unstage(&w.a.id, &w.a.staging),
    );
    let long = "x".repeat(300);
    let deep = vec!["d".repeat(200); 21].join("/");
    for (what, path) in [
        ("relative", format!("{DRIVER_DIR}/h-a/globalmount")),
        ("'..'", format!("{k}/plugins/../../outside")),
        ("outside the kubelet dir", format!("{out}/victim-dir")),
        ("equal to the kubelet dir", k.clone()),
        (
            "a symlinked parent",
            format!("{k}/{DRIVER_DIR}/evil-parent/globalmount"),
        ),
        ("a symlink as last component", w.stg("h-sl")),
        (
            "a component over 255 bytes",
            format!("{k}/{DRIVER_DIR}/{long}/globalmount"),
        ),
        (
            "over 4096 bytes",
            format!("{k}/{DRIVER_DIR}/{deep}/globalmount"),
        ),
        ("of 1 MiB", format!("{k}/{DRIVER_DIR}/{}", "s".repeat(MIB))),
    ] {
        t.add(
            &format!("node-unstage: staging path {what}"),
            INVALID_ARGUMENT,
            unstage("hostile-b/nobody", &path),
        );
    }
    for (what, id) in [
        ("a newline", "hostile-b/x\ny".to_string()),
        ("NUL", "hostile-b/x\0y".into()),
        ("1 MiB", "v".repeat(MIB)),
    ] {
        t.add(
            &format!("node-unstage: volume id with {what}"),
            INVALID_ARGUMENT,
            unstage(&id, &fresh),
        );
    }
}

fn publish_cases(t: &mut Table, w: &World) {
    let k = w.k.display().to_string();
    let out = w.outside.path.display().to_string();
    t.add(
        "node-publish: unstaged volume",
        FAILED_PRECONDITION,
        w.publish_a().id("hostile-b/nobody"),
    );
    t.add(
        "node-publish: unstaged volume at A's target",
        FAILED_PRECONDITION,
        w.publish_a_req(&w.a.target).id("hostile-b/nobody"),
    );
    t.add(
        "node-publish: volume id with '/../'",
        FAILED_PRECONDITION,
        w.publish_a().id("hostile-b/../../etc"),
    );
    t.add(
        "node-publish: B at A's target",
        ALREADY_EXISTS,
        w.publish_a_req(&w.a.target)
            .id(&w.b.id)
            .staging(&w.b.staging),
    );
    t.add(
        "node-publish: A at B's staging path",
        ALREADY_EXISTS,
        w.publish_a_req(&w.b.staging),
    );
    t.add(
        "node-publish: A from B's staging path",
        FAILED_PRECONDITION,
        w.publish_a().staging(&w.b.staging),
    );
    t.add(
        "node-publish: A again read-only",
        ALREADY_EXISTS,
        w.publish_a_req(&w.a.target).ro(),
    );
    t.add(
        "node-publish: A again with noexec",
        ALREADY_EXISTS,
        w.publish_a_req(&w.a.target).flags(&["noexec"]),
    );
    t.add(
        "node-publish: A at its own staging path",
        INVALID_ARGUMENT,
        w.publish_a_req(&w.a.staging),
    );
    t.add(
        "node-publish: A again, same request",
        OK,
        w.publish_a_req(&w.a.target),
    );
    let long = "x".repeat(300);
    let deep = vec!["d".repeat(200); 21].join("/");
    for (what, path) in [
        (
            "relative",
            "pods/p/volumes/kubernetes.io~csi/vol/mount".to_string(),
        ),
        ("'..'", format!("{k}/pods/../../outside/x")),
        ("'.'", format!("{k}/pods/./p/mount")),
        ("outside the kubelet dir", format!("{out}/target")),
        ("equal to the kubelet dir", k.clone()),
        (
            "a symlinked parent",
            format!("{k}/pods/evil-parent/volumes/kubernetes.io~csi/vol/mount"),
        ),
        ("a symlink as last component", w.tgt("pod-sl")),
        ("a regular file", w.tgt("pod-file")),
        (
            "a component over 255 bytes",
            format!("{k}/pods/{long}/mount"),
        ),
        ("over 4096 bytes", format!("{k}/pods/{deep}/mount")),
        ("of 1 MiB", format!("{k}/pods/{}", "t".repeat(MIB))),
    ] {
        t.add(
            &format!("node-publish: target {what}"),
            INVALID_ARGUMENT,
            w.publish_a_req(&path),
        );
    }
    t.add(
        "node-publish: staging path relative",
        INVALID_ARGUMENT,
        w.publish_a()
            .staging(format!("{DRIVER_DIR}/h-a/globalmount")),
    );
    t.add(
        "node-publish: staging path with '..'",
        INVALID_ARGUMENT,
        w.publish_a()
            .staging(format!("{k}/{DRIVER_DIR}/x/../h-a/globalmount")),
    );
    t.add(
        "node-publish: block access",
        INVALID_ARGUMENT,
        w.publish_a().cap(Cap::Block(5)),
    );
    t.add(
        "node-publish: no capability",
        INVALID_ARGUMENT,
        w.publish_a().cap(Cap::None),
    );
    t.add(
        "node-publish: access mode UNKNOWN",
        INVALID_ARGUMENT,
        w.publish_a().cap(Cap::Mount {
            mode: 0,
            flags: vec![],
            group: String::new(),
        }),
    );
    for flag in ["frobnicate", "suid", "dev", "bind", "remount"] {
        t.add(
            &format!("node-publish: mount flag {flag}"),
            INVALID_ARGUMENT,
            w.publish_a().flags(&[flag]),
        );
    }
    t.add(
        "node-publish: volume_mount_group abc",
        INVALID_ARGUMENT,
        w.publish_a().group("abc"),
    );
    for (what, id) in [
        ("a newline", "hostile-a/vol-a\n".to_string()),
        ("NUL", "hostile-a/vol-a\0".into()),
        ("1 MiB", "v".repeat(MIB)),
    ] {
        t.add(
            &format!("node-publish: volume id with {what}"),
            INVALID_ARGUMENT,
            w.publish_a().id(id),
        );
    }
}

fn unpublish_cases(t: &mut Table, w: &World) {
    let k = w.k.display().to_string();
    let out = w.outside.path.display().to_string();
    let unpublish = |id: &str, path: &str| Req::new(Rpc::Unpublish).id(id).target(path);
    // Spec: "If the volume ... is not published at target_path, the Plugin
    // MUST reply 0 OK": and nothing of the volume that is must change.
    t.add(
        "node-unpublish: B at A's target",
        OK,
        unpublish(&w.b.id, &w.a.target),
    );
    t.add(
        "node-unpublish: unknown volume at A's target",
        OK,
        unpublish("hostile-b/nobody", &w.a.target),
    );
    t.add(
        "node-unpublish: C at A's target",
        OK,
        unpublish(&w.c.id, &w.a.target),
    );
    t.add(
        "node-unpublish: A at C's target",
        OK,
        unpublish(&w.a.id, &w.c.target),
    );
    t.add(
        "node-unpublish: A at its staging path",
        OK,
        unpublish(&w.a.id, &w.a.staging),
    );
    t.add(
        "node-unpublish: A at B's staging path",
        OK,
        unpublish(&w.a.id, &w.b.staging),
    );
    let fresh = w.tgt("pod-never");
    t.add(
        "node-unpublish: unknown volume",
        OK,
        unpublish("hostile-b/nobody", &fresh),
    );
    t.add(
        "node-unpublish: unknown volume again",
        OK,
        unpublish("hostile-b/nobody", &fresh),
    );
    let long = "x".repeat(300);
    let deep = vec!["d".repeat(200); 21].join("/");
    for (what, path) in [
        (
            "relative",
            "pods/pod-a/volumes/kubernetes.io~csi/vol/mount".to_string(),
        ),
        ("'..'", format!("{k}/pods/../../outside")),
        ("outside the kubelet dir", format!("{out}/victim-dir")),
        ("equal to the kubelet dir", k.clone()),
        (
            "a symlinked parent",
            format!("{k}/pods/evil-parent/volumes/kubernetes.io~csi/vol/mount"),
        ),
        ("a symlink as last component", w.tgt("pod-sl")),
        (
            "a component over 255 bytes",
            format!("{k}/pods/{long}/mount"),
        ),
        ("over 4096 bytes", format!("{k}/pods/{deep}/mount")),
        ("of 1 MiB", format!("{k}/pods/{}", "t".repeat(MIB))),
    ] {
        t.add(
            &format!("node-unpublish: target {what}"),
            INVALID_ARGUMENT,
            unpublish(&w.a.id, &path),
        );
    }
    for (what, id) in [
        ("a newline", "hostile-a/vol-a\n".to_string()),
        ("NUL", "hostile-a/vol-a\0".into()),
        ("1 MiB", "v".repeat(MIB)),
    ] {
        t.add(
            &format!("node-unpublish: volume id with {what}"),
            INVALID_ARGUMENT,
            unpublish(&id, &w.a.target),
        );
    }
}

fn stats_cases(t: &mut Table, w: &World) {
    let k = w.k.display().to_string();
    let stats = |id: &str, path: &str| Req::new(Rpc::Stats).id(id).target(path);
    t.add(
        "node-stats: A at its target",
        OK,
        stats(&w.a.id, &w.a.target),
    );
    t.add(
        "node-stats: A at its staging path",
        OK,
        stats(&w.a.id, &w.a.staging),
    );
    t.add(
        "node-stats: C at its target",
        OK,
        stats(&w.c.id, &w.c.target),
    );
    t.add(
        "node-stats: unknown volume",
        NOT_FOUND,
        stats("hostile-b/nobody", &w.a.target),
    );
    t.add(
        "node-stats: B at A's target",
        NOT_FOUND,
        stats(&w.b.id, &w.a.target),
    );
    for (what, path) in [
        ("an unknown path", w.tgt("pod-never")),
        ("a path that does not exist", "/path/does/not/exist".into()),
        ("a relative path", "some/path".into()),
        (
            "'..' into its target",
            format!("{k}/pods/pod-x/../pod-a/volumes/kubernetes.io~csi/vol/mount"),
        ),
        (
            "'..' out of its target",
            format!("{}/../../../../../../etc", w.a.target),
        ),
        (
            "its target through a symlink",
            format!("{k}/pods/link-to-a/volumes/kubernetes.io~csi/vol/mount"),
        ),
        ("a 1 MiB path", format!("{k}/pods/{}", "t".repeat(MIB))),
    ] {
        t.add(
            &format!("node-stats: A at {what}"),
            NOT_FOUND,
            stats(&w.a.id, &path),
        );
    }
    for (what, id) in [
        ("a newline", "hostile-a/vol-a\n".to_string()),
        ("NUL", "hostile-a/vol-a\0".into()),
        ("1 MiB", "v".repeat(MIB)),
    ] {
        t.add(
            &format!("node-stats: volume id with {what}"),
            INVALID_ARGUMENT,
            stats(&id, &w.a.target),
        );
    }
    t.add(
        "node-stats: no volume path",
        INVALID_ARGUMENT,
        stats(&w.a.id, ""),
    );
}

fn controller_cases(t: &mut Table, w: &World) {
    let ep = w.s3.endpoint.as_str();
    let create = || {
        Req::new(Rpc::Create)
            .id(format!("pvc-{}", tag()))
            .param("bucket", "hostile-b")
    };
    t.add(
        "create-volume: name with '../' (becomes a safe prefix)",
        OK,
        create().id("../../etc/passwd"),
    );
    t.add(
        "create-volume: name with \\x01",
        INVALID_ARGUMENT,
        create().id("pvc\x01x"),
    );
    t.add(
        "create-volume: name with NUL",
        INVALID_ARGUMENT,
        create().id("pvc\0x"),
    );
    t.add(
        "create-volume: 1 MiB name",
        INVALID_ARGUMENT,
        create().id("n".repeat(MIB)),
    );
    t.add(
        "create-volume: 1 MiB bucket",
        INVALID_ARGUMENT,
        create().param("bucket", &"b".repeat(MIB)),
    );
    for (what, k, v) in [
        ("s3fs option use_cache=", "options", "-o use_cache=/tmp/x"),
        ("s3fs option suid", "options", "-o suid"),
        ("uid -1", "uid", "-1"),
        ("unknown parameter", "colour", "blue"),
        ("reclaimData maybe", "reclaimData", "maybe"),
    ] {
        t.add(
            &format!("create-volume: {what}"),
            INVALID_ARGUMENT,
            create().param(k, v),
        );
    }
    t.add(
        "create-volume: rclone option --config",
        INVALID_ARGUMENT,
        create()
            .param("mounter", "rclone")
            .param("options", "--config=/tmp/x"),
    );
    t.add(
        "create-volume: fuse program not allowed",
        INVALID_ARGUMENT,
        create()
            .param("mounter", "fuse")
            .param("command", "sh -c id {mountpoint}"),
    );
    t.add(
        "create-volume: no bucket",
        INVALID_ARGUMENT,
        create().unparam("bucket"),
    );
    t.add(
        "create-volume: endpoint ',use_cache=' injection",
        INVALID_ARGUMENT,
        create()
            .secrets(&w.hostile_secrets())
            .secret("endpoint", &format!("{ep},use_cache=/tmp/x")),
    );
    t.add(
        "create-volume: region ',allow_other' injection",
        INVALID_ARGUMENT,
        create()
            .secrets(&w.hostile_secrets())
            .secret("region", "us-east-1,allow_other"),
    );
    t.add(
        "create-volume: block access",
        INVALID_ARGUMENT,
        create().cap(Cap::Block(5)),
    );
    t.add(
        "create-volume: no capability",
        INVALID_ARGUMENT,
        create().cap(Cap::None),
    );
    t.add(
        "create-volume: negative capacity",
        OUT_OF_RANGE,
        create().capacity(-1),
    );

    let delete = |id: &str| Req::new(Rpc::Delete).id(id);
    t.add(
        "delete-volume: unknown volume",
        OK,
        delete("hostile-b/pvc-nobody"),
    );
    t.add(
        "delete-volume: unknown volume again",
        OK,
        delete("hostile-b/pvc-nobody"),
    );
    t.add(
        "delete-volume: id naming a file outside",
        OK,
        delete(&format!(
            "../../../..{}/victim-dir/keep.txt",
            w.outside.path.display()
        )),
    );
    for (what, id) in [
        ("a newline", "hostile-b/x\ny".to_string()),
        ("NUL", "hostile-b/x\0y".into()),
        ("1 MiB", "v".repeat(MIB)),
    ] {
        t.add(
            &format!("delete-volume: id with {what}"),
            INVALID_ARGUMENT,
            delete(&id),
        );
    }
    // R has reclaimData=true: its delete mounts the bucket with these secrets.
    for (what, key, value) in [
        (
            "endpoint ',use_cache=' injection",
            "endpoint",
            format!("{ep},use_cache=/tmp/x"),
        ),
        (
            "region ',allow_other' injection",
            "region",
            "us-east-1,allow_other".into(),
        ),
        (
            "secretAccessKey with a newline",
            "secretAccessKey",
            format!("{HOSTILE_SK}\nx-2nd-line"),
        ),
    ] {
        t.add(
            &format!("delete-volume: reclaiming R with {what}"),
            INVALID_ARGUMENT,
            delete(&w.r_id)
                .secrets(&w.hostile_secrets())
                .secret(key, &value),
        );
    }

    let validate = |id: &str| Req::new(Rpc::Validate).id(id);
    t.add("validate-volume: R", OK, validate(&w.r_id));
    t.add(
        "validate-volume: R as block (not confirmed)",
        OK,
        validate(&w.r_id).cap(Cap::Block(5)),
    );
    t.add(
        "validate-volume: unknown volume",
        NOT_FOUND,
        validate("hostile-b/pvc-nobody"),
    );
    t.add(
        "validate-volume: id with '..'",
        NOT_FOUND,
        validate("hostile-b/../pvc-reclaim"),
    );
    t.add(
        "validate-volume: no capability",
        INVALID_ARGUMENT,
        validate(&w.r_id).cap(Cap::None),
    );
    for (what, id) in [
        ("a newline", "hostile-b/pvc-reclaim\n".to_string()),
        ("NUL", "hostile-b/pvc-reclaim\0".into()),
        ("1 MiB", "v".repeat(MIB)),
    ] {
        t.add(
            &format!("validate-volume: id with {what}"),
            INVALID_ARGUMENT,
            validate(&id),
        );
    }
}

fn cache_cases(t: &mut Table, w: &World) {
    let k = w.k.display().to_string();
    let out = w.outside.path.display().to_string();
    let big = |c: char| c.to_string().repeat(MIB);
    for (what, key, value) in [
        ("an undeclared cache", "cache", "nope".to_string()),
        ("cache '../nm'", "cache", "../nm".into()),
        ("a 1 MiB cache name", "cache", big('c')),
        (
            "a cache that declares no namespaces",
            "cache",
            "closed".into(),
        ),
        (
            "placeCacheAtPath absolute",
            "placeCacheAtPath",
            "/etc".into(),
        ),
        (
            "placeCacheAtPath '../..'",
            "placeCacheAtPath",
            "../../x".into(),
        ),
        (
            "placeCacheAtPath 'a/../../b'",
            "placeCacheAtPath",
            "a/../../b".into(),
        ),
        ("placeCacheAtPath './a'", "placeCacheAtPath", "./a".into()),
        (
            "placeCacheAtPath with NUL",
            "placeCacheAtPath",
            "a\0b".into(),
        ),
        ("placeCacheAtPath of 1 MiB", "placeCacheAtPath", big('p')),
        (
            "placeCacheAtPath with a 300-byte component",
            "placeCacheAtPath",
            "x".repeat(300),
        ),
        (
            "strategy hardlink (not allowed)",
            "strategy",
            "hardlink".into(),
        ),
        (
            "strategy overlay (not allowed)",
            "strategy",
            "overlay".into(),
        ),
        ("strategy symlink (unknown)", "strategy", "symlink".into()),
        ("a 1 MiB strategy", "strategy", big('s')),
        ("namespace not allowed", NS_KEY, "team-b".into()),
        ("namespace with a newline", NS_KEY, "team-a\n".into()),
        ("a 1 MiB namespace", NS_KEY, big('n')),
        (
            "a pod UID that is not the target's pod",
            UID_KEY,
            "another-pod".into(),
        ),
        ("a 1 MiB pod UID", UID_KEY, big('u')),
        ("uid root", "uid", "root".into()),
        ("uid -1", "uid", "-1".into()),
        ("uid 99999999999", "uid", "99999999999".into()),
        ("gid abc", "gid", "abc".into()),
        ("gid -5", "gid", "-5".into()),
        ("mode rwx", "mode", "rwx".into()),
        ("mode 99999", "mode", "99999".into()),
        ("mode 17777", "mode", "17777".into()),
        ("mode -1", "mode", "-1".into()),
        ("an unknown attribute", "colour", "blue".into()),
    ] {
        t.add(
            &format!("cache publish: {what}"),
            INVALID_ARGUMENT,
            w.cache().param(key, &value),
        );
    }
    t.add(
        "cache publish: a 1 MiB unknown attribute name",
        INVALID_ARGUMENT,
        w.cache().param(&big('a'), "v"),
    );
    t.add(
        "cache publish: no namespace",
        INVALID_ARGUMENT,
        w.cache().unparam(NS_KEY),
    );
    t.add(
        "cache publish: no pod UID (a CSIDriver without podInfoOnMount)",
        INVALID_ARGUMENT,
        w.cache().unparam(UID_KEY),
    );
    t.add(
        "cache publish: volume_mount_group abc",
        INVALID_ARGUMENT,
        w.cache().group("abc"),
    );
    t.add(
        "cache publish: block access",
        INVALID_ARGUMENT,
        w.cache().cap(Cap::Block(1)),
    );
    for flag in ["suid", "bind"] {
        t.add(
            &format!("cache publish: mount flag {flag}"),
            INVALID_ARGUMENT,
            w.cache().flags(&[flag]),
        );
    }
    let long = "x".repeat(300);
    let deep = vec!["d".repeat(200); 21].join("/");
    for (what, path) in [
        (
            "relative",
            "pods/p/volumes/kubernetes.io~csi/vol/mount".to_string(),
        ),
        ("'..'", format!("{k}/pods/../../outside/x")),
        ("outside the kubelet dir", format!("{out}/cache-target")),
        ("equal to the kubelet dir", k.clone()),
        (
            "a symlinked parent",
            format!("{k}/pods/evil-parent/volumes/kubernetes.io~csi/vol/mount"),
        ),
        ("a symlink as last component", w.tgt("pod-sl")),
        ("a regular file", w.tgt("pod-file")),
        (
            "a component over 255 bytes",
            format!("{k}/pods/{long}/mount"),
        ),
        ("over 4096 bytes", format!("{k}/pods/{deep}/mount")),
        ("of 1 MiB", format!("{k}/pods/{}", "t".repeat(MIB))),
    ] {
        t.add(
            &format!("cache publish: target {what}"),
            INVALID_ARGUMENT,
            w.cache().target(path),
        );
    }
    let new_id = || format!("cache-{}", tag());
    t.add(
        "cache publish: onto A's bind target",
        ALREADY_EXISTS,
        w.cache_req(&new_id(), &w.a.target),
    );
    // A cache limited to some namespaces is published only into a pod's
    // directory (the pod UID must match it): a staging path is none.
    t.add(
        "cache publish: onto A's staging path",
        INVALID_ARGUMENT,
        w.cache_req(&new_id(), &w.a.staging),
    );
    t.add(
        "cache publish: onto B's staging path",
        INVALID_ARGUMENT,
        w.cache_req(&new_id(), &w.b.staging),
    );
    t.add(
        "cache publish: onto C's target with another volume id",
        ALREADY_EXISTS,
        w.cache_req(&new_id(), &w.c.target),
    );
    t.add(
        "cache publish: C again with another uid",
        ALREADY_EXISTS,
        w.cache_req(&w.c.id, &w.c.target).param("uid", "1234"),
    );
    t.add(
        "cache publish: C again, same request",
        OK,
        w.cache_req(&w.c.id, &w.c.target),
    );
    for (what, id) in [
        ("a newline", "cache-x\n".to_string()),
        ("NUL", "cache-x\0".into()),
    ] {
        t.add(
            &format!("cache publish: volume id with {what}"),
            INVALID_ARGUMENT,
            w.cache().id(id),
        );
    }
}

/// Nothing may keep changing once the matrix is over (a watchdog re-binding
/// a symlinked target, a mounter restarted for a refused stage...).
fn quiet_period(w: &mut World) -> Vec<String> {
    let before = w.snap();
    // Two whole health passes: the watchdog has looked at every volume at
    // least once since the snapshot (and found nothing to re-bind or heal).
    w.d.wait_health_passes(2, 30);
    let after = w.snap();
    let mut p = side_effects(&before, &after, &[], w);
    p.extend(w.health());
    p.extend(w.r_problem());
    p
}

/// The world's volumes can still be torn down the normal way, and then
/// nothing of them is left.
fn teardown(w: &mut World) -> Vec<String> {
    let mut p = Vec::new();
    let steps = [
        Req::new(Rpc::Unpublish).id(&w.c.id).target(&w.c.target),
        Req::new(Rpc::Unpublish).id(&w.a.id).target(&w.a.target),
        Req::new(Rpc::Unstage).id(&w.a.id).staging(&w.a.staging),
        Req::new(Rpc::Unstage).id(&w.b.id).staging(&w.b.staging),
    ];
    for s in &steps {
        let out = w.call(s);
        if !out.ok() {
            p.push(format!(
                "{} of {} failed: {}",
                s.rpc.cli(),
                s.id,
                clip(out.stderr.trim(), 200)
            ));
        }
    }
    let left: Vec<String> = mounts()
        .into_values()
        .filter(|m| {
            m.mount_point.starts_with(&w.d.scratch.path)
                || m.mount_point.starts_with(&w.outside.path)
        })
        .map(|m| m.mount_point.display().to_string())
        .collect();
    if !left.is_empty() {
        p.push(format!(
            "mounts left after teardown: {}",
            clip(&left.join(", "), 300)
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mounters = || {
        pids_matching(|c| {
            (c.contains("s3fs") || c.contains("rclone mount"))
                && c.contains(&*w.d.scratch.path.to_string_lossy())
        })
    };
    while !mounters().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    if !mounters().is_empty() {
        p.push(format!("mounters left after teardown: {:?}", mounters()));
    }
    p
}

/// One World per test: a daemon with volumes A and B staged and bound, an
/// S3 server and a cache. The tests run one at a time (SERIAL): a case's
/// side effects are judged against the whole namespace's mounts and
/// processes, which a World of another test would change meanwhile.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Run the cases `build` adds against a fresh World, then check the node
/// stays quiet and tears down clean; fail with every case that failed.
fn run_matrix(test: &str, build: impl FnOnce(&mut Table, &World)) {
    if !can_mount(test) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let mut w = World::new();
    let cases = {
        let mut t = Table {
            w: &w,
            cases: Vec::new(),
        };
        build(&mut t, &w);
        t.cases
    };
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
    assert!(cases.len() >= 10, "only {} cases", cases.len());

    let mut failures = Vec::new();
    for c in &cases {
        let p = w.run(c);
        if !p.is_empty() {
            failures.push(format!("{}: {}", c.name, p.join("; ")));
        }
    }
    let quiet = quiet_period(&mut w);
    if !quiet.is_empty() {
        failures.push(format!("after the cases: {}", quiet.join("; ")));
    }
    let down = teardown(&mut w);
    if !down.is_empty() {
        failures.push(format!("teardown: {}", down.join("; ")));
    }
    println!(
        "{test}: {} cases, {} failed, {:.1} s",
        cases.len(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    for f in &failures {
        println!("  FAIL {f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn hostile_identity_and_raw_grpc() {
    run_matrix("hostile_identity_and_raw_grpc", |t, _| {
        identity_and_raw_cases(t)
    });
}

#[test]
fn hostile_node_stage() {
    run_matrix("hostile_node_stage", stage_cases);
}

#[test]
fn hostile_node_unstage() {
    run_matrix("hostile_node_unstage", unstage_cases);
}

#[test]
fn hostile_node_publish() {
    run_matrix("hostile_node_publish", publish_cases);
}

#[test]
fn hostile_node_unpublish() {
    run_matrix("hostile_node_unpublish", unpublish_cases);
}

#[test]
fn hostile_node_stats() {
    run_matrix("hostile_node_stats", stats_cases);
}

#[test]
fn hostile_controller() {
    run_matrix("hostile_controller", controller_cases);
}

#[test]
fn hostile_cache_volumes() {
    run_matrix("hostile_cache_volumes", cache_cases);
}
