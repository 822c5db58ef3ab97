//! Command-line flags of the daemon, with the environment fallbacks CSI
//! drivers usually offer. Hand-written: one parser, shared by the daemon, by
//! `--check-args` (which deploy checks use so manifests cannot drift from the
//! code) and by the unit tests.

use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_DRIVER_NAME: &str = "bindery.csi.dev";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/bindery";
pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet";
pub const DEFAULT_ENDPOINT: &str = "unix:///csi/csi.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Node,
    Controller,
    All,
}

impl Mode {
    pub fn serves_node(self) -> bool {
        matches!(self, Mode::Node | Mode::All)
    }
    pub fn serves_controller(self) -> bool {
        matches!(self, Mode::Controller | Mode::All)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub endpoint: PathBuf,
    pub node_id: String,
    pub driver_name: String,
    pub state_dir: PathBuf,
    pub kubelet_dir: PathBuf,
    pub threads: usize,
    pub workers: usize,
    pub mode: Mode,
    pub max_volumes_per_node: i64,
    pub mount_timeout: Duration,
    pub unstage_grace: Duration,
    /// How long a volume keeps its mounter after NodeUnstageVolume, unless
    /// its unstageDelay parameter says otherwise (src/node/linger.rs).
    pub unstage_delay: Duration,
    pub shutdown_grace: Duration,
    pub watchdog_interval: Duration,
    pub fuse_programs: Vec<String>,
    /// Volumes may name credential sources of the node (s3fs iam_role, ecs,
    /// profile, ibm_iam_auth; rclone --s3-env-auth, --s3-profile) instead of
    /// bringing their own keys. Off by default: those credentials are the
    /// node's, not the volume owner's.
    #[allow(dead_code)] // read through mounter::parse_spec_for
    pub allow_credential_sources: bool,
    pub cache_config: Option<PathBuf>,
    pub caches: Vec<String>,
    pub wait_for_caches: bool,
    pub mounter_cgroups: Vec<PathBuf>,
    /// Limits of each mounter's own cgroup (below each `--mounter-cgroup`).
    pub mounter_limits: crate::sys::cgroup::CgroupLimits,
    /// Where `/metrics` is served (off when None).
    pub metrics_address: Option<std::net::SocketAddr>,
}

pub const HELP: &str = "\
bindery: Kubernetes CSI driver for shared FUSE (S3) mounts and warm cache volumes

USAGE:
    bindery [FLAGS]                 run the CSI daemon
    bindery csi <rpc> [FLAGS]       talk to a running daemon (see `bindery csi --help`)
    bindery --check-args [FLAGS]    parse FLAGS exactly as the daemon would, then exit
    bindery cache build NAME [FLAGS]  build a new version of a declared cache (the
                                    daemon may run; give it the daemon's flags)

FLAGS (environment fallback in brackets):
    --endpoint URL          CSI socket, unix:///abs/path or unix:/abs/path
                            [CSI_ENDPOINT] (default unix:///csi/csi.sock)
    --node-id ID            this node's name as Kubernetes knows it [KUBE_NODE_NAME]
                            (required in node and all modes)
    --driver-name NAME      CSI driver name (default bindery.csi.dev)
    --state-dir DIR         volume records and each volume's private files
                            (credentials, mounter log, rclone's cache), 0700;
                            golden caches live under the kubelet dir instead,
                            in <kubelet-dir>/plugins/<driver-name>/golden
                            [BINDERY_STATE_DIR] (default /var/lib/bindery)
    --kubelet-dir DIR       kubelet root dir; node paths must lie under it
                            [KUBELET_DIR] (default /var/lib/kubelet; k3s and
                            microk8s use other paths)
    --mode MODE             node | controller | all (default node)
    --threads N             gRPC completion-queue threads (default 4)
    --workers N             worker threads for long operations, in each of two
                            pools: one for stage and unstage, one for cache
                            volume publishes (default 4)
    --max-volumes-per-node N  reported by NodeGetInfo; 0 = no limit (default 0)
    --mount-timeout SECS    how long a mounter may take to become ready (default 30)
    --unstage-grace SECS    how long NodeUnstageVolume waits for rclone to upload
                            the writes it acknowledged (dirty VFS cache entries);
                            then the unstage fails and the volume stays staged,
                            so that no acknowledged write is lost (default 30).
                            It also caps the stop of the mounts DeleteVolume
                            (reclaimData) and s3: cache builds make
    --unstage-delay SECS    keep a volume's mounter this long after NodeUnstageVolume
                            (at most 86400; 0 = none), for a pod that comes back; a
                            volume's unstageDelay parameter overrides it (default 0)
    --shutdown-grace SECS   how long in-flight calls may run after SIGTERM (default 10)
    --watchdog-interval SECS  how often staged mounts are checked (default 5; 0 = off)
    --fuse-programs LIST    comma-separated programs that volumes with mounter
                            `fuse` may run (default geesefs,goofys,mount-s3)
    --allow-credential-sources  let volume options use the node's own credentials
                            (s3fs iam_role/ecs/profile/ibm_iam_auth, rclone
                            --s3-env-auth/--s3-profile); off by default, as any
                            StorageClass user would then act with them
    --mounter-cgroup DIR    move every mounter into this cgroup dir (repeatable:
                            one per cgroup v1 hierarchy), so that stopping the
                            daemon's container does not kill the FUSE mounts
    --mounter-memory-max SIZE  memory limit of each mounter (bytes, or with a K,
                            M or G suffix; at least 16M): every mounter then
                            gets a cgroup of its own below each --mounter-cgroup,
                            so one volume's FUSE process cannot take the node's
                            memory (default: no limit)
    --mounter-pids-max N    process/thread limit of each mounter, as above
                            (at least 8; default: no limit)
    --cache-config FILE     declared caches, one [cache NAME] section each
                            (a missing file declares none; a bad section
                            disables only its cache)
    --cache 'NAME=SOURCE[;KEY=VALUE]...'
                            declare a cache (repeatable): SOURCE is dir:/path or
                            s3:bucket/prefix, each KEY=VALUE a key of a [cache
                            NAME] section other than source (namespaces,
                            strategies, uid, gid, mode, endpoint, ...), ';'
                            between them. Without namespaces no pod may use it:
                            say namespaces=* or namespaces=a,b
    --no-wait-for-caches    build declared caches on first use, not in the
                            background from start (Probe is ready as soon as
                            state is recovered either way)
    --metrics-address HOST:PORT  serve Prometheus metrics at
                            http://HOST:PORT/metrics, e.g. 0.0.0.0:9810 or
                            127.0.0.1:9810 (default: off)
    -h, --help              print this help
    -V, --version           print the version

Logging is controlled by RUST_LOG (error, warn, info, debug; default info).
";

/// The longest unstage delay (flag or parameter): a day.
pub const MAX_UNSTAGE_DELAY: Duration = Duration::from_secs(86_400);

fn parse_secs(flag: &str, v: &str) -> Result<Duration, String> {
    v.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{flag}: expected whole seconds, got {v:?}"))
}

/// A size in bytes: digits with an optional K, M or G suffix (powers of 1024).
fn parse_size(flag: &str, v: &str, min: u64) -> Result<u64, String> {
    let (digits, unit) = match v.char_indices().last() {
        Some((i, 'K')) => (&v[..i], 1u64 << 10),
        Some((i, 'M')) => (&v[..i], 1 << 20),
        Some((i, 'G')) => (&v[..i], 1 << 30),
        _ => (v, 1),
    };
    match digits.parse::<u64>().ok().and_then(|n| n.checked_mul(unit)) {
        Some(n) if n >= min => Ok(n),
        _ => Err(format!(
            "{flag}: expected a size of at least {}M (bytes, or with K, M or G), got {v:?}",
            min >> 20
        )),
    }
}

fn parse_count(flag: &str, v: &str, min: usize) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n >= min && n <= 1024 => Ok(n),
        _ => Err(format!(
            "{flag}: expected a number from {min} to 1024, got {v:?}"
        )),
    }
}

/// `unix:///abs/path` or `unix:/abs/path` → `/abs/path`.
pub fn parse_endpoint(v: &str) -> Result<PathBuf, String> {
    let path = v
        .strip_prefix("unix://")
        .or_else(|| v.strip_prefix("unix:"))
        .ok_or_else(|| format!("--endpoint: only unix sockets are supported, got {v:?}"))?;
    if !path.starts_with('/') {
        return Err(format!(
            "--endpoint: socket path must be absolute, got {v:?}"
        ));
    }
    Ok(PathBuf::from(path))
}

/// CSI names: at most 63 characters, alphanumerics at both ends, `-` and `.`
/// and alphanumerics between.
pub fn valid_driver_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
}

fn abs_dir(flag: &str, v: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(v);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!(
            "{flag}: expected an absolute path without '..', got {v:?}"
        ));
    }
    Ok(p)
}

pub enum Parsed {
    Run(Box<Config>),
    Help,
    Version,
}

impl Config {
    /// Parse flags (`--flag value` or `--flag=value`), falling back to `env`
    /// for the flags that have an environment variable.
    pub fn parse<I, S>(args: I, env: &dyn Fn(&str) -> Option<String>) -> Result<Parsed, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut endpoint = env("CSI_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let mut node_id = env("KUBE_NODE_NAME").unwrap_or_default();
        let mut driver_name = DEFAULT_DRIVER_NAME.to_string();
        let mut state_dir = env("BINDERY_STATE_DIR").unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let mut kubelet_dir = env("KUBELET_DIR").unwrap_or_else(|| DEFAULT_KUBELET_DIR.into());
        let mut mode = Mode::Node;
        let mut threads = 4;
        let mut workers = 4;
        let mut max_volumes_per_node = 0i64;
        let mut mount_timeout = Duration::from_secs(30);
        let mut unstage_grace = Duration::from_secs(30);
        let mut unstage_delay = Duration::ZERO;
        let mut shutdown_grace = Duration::from_secs(10);
        let mut watchdog_interval = Duration::from_secs(5);
        let mut fuse_programs: Vec<String> =
            ["geesefs", "goofys", "mount-s3"].map(String::from).to_vec();

        let mut cache_config = None;
        let mut caches = Vec::new();
        let mut wait_for_caches = true;
        let mut mounter_cgroups = Vec::new();
        let mut mounter_limits = crate::sys::cgroup::CgroupLimits::default();
        let mut allow_credential_sources = false;
        let mut metrics_address = None;
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(Parsed::Help);
            }
            if arg == "-V" || arg == "--version" {
                return Ok(Parsed::Version);
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            if !flag.starts_with("--") {
                return Err(format!("unexpected argument {arg:?} (see --help)"));
            }
            let mut value = || -> Result<String, String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it.next().ok_or_else(|| format!("{flag} needs a value")),
                }
            };
            match flag.as_str() {
                "--endpoint" => endpoint = value()?,
                "--node-id" => node_id = value()?,
                "--driver-name" => driver_name = value()?,
                "--state-dir" => state_dir = value()?,
                "--kubelet-dir" => kubelet_dir = value()?,
                "--mode" => {
                    mode = match value()?.as_str() {
                        "node" => Mode::Node,
                        "controller" => Mode::Controller,
                        "all" => Mode::All,
                        other => {
                            return Err(format!(
                                "--mode: expected node, controller or all, got {other:?}"
                            ))
                        }
                    }
                }
                "--threads" => threads = parse_count(&flag, &value()?, 1)?,
                "--workers" => workers = parse_count(&flag, &value()?, 1)?,
                "--max-volumes-per-node" => {
                    let v = value()?;
                    max_volumes_per_node = v
                        .parse::<i64>()
                        .ok()
                        .filter(|n| *n >= 0)
                        .ok_or_else(|| format!("{flag}: expected a number >= 0, got {v:?}"))?;
                }
                "--mount-timeout" => mount_timeout = parse_secs(&flag, &value()?)?,
                "--unstage-grace" => unstage_grace = parse_secs(&flag, &value()?)?,
                "--unstage-delay" => {
                    unstage_delay = parse_secs(&flag, &value()?)?;
                    if unstage_delay > MAX_UNSTAGE_DELAY {
                        return Err(format!(
                            "{flag}: at most {} seconds",
                            MAX_UNSTAGE_DELAY.as_secs()
                        ));
                    }
                }
                "--shutdown-grace" => shutdown_grace = parse_secs(&flag, &value()?)?,
                "--watchdog-interval" => watchdog_interval = parse_secs(&flag, &value()?)?,
                "--cache-config" => cache_config = Some(abs_dir("--cache-config", &value()?)?),
                "--cache" => {
                    // Checked in full here, so that --check-args (and a
                    // daemon's start) refuses a bad one; caches are loaded
                    // from the same strings later by cache::decl::load.
                    let v = value()?;
                    crate::cache::decl::parse_flag(&v).map_err(|e| e.to_string())?;
                    caches.push(v);
                }
                "--no-wait-for-caches" => wait_for_caches = false,
                "--metrics-address" => {
                    let v = value()?;
                    metrics_address = Some(v.parse::<std::net::SocketAddr>().map_err(|_| {
                        format!(
                            "{flag}: expected HOST:PORT with an IP address \
                             (0.0.0.0:9810, [::1]:9810), got {}",
                            crate::error::quoted(&v)
                        )
                    })?);
                }
                "--allow-credential-sources" => allow_credential_sources = true,
                "--mounter-cgroup" => mounter_cgroups.push(abs_dir("--mounter-cgroup", &value()?)?),
                "--mounter-memory-max" => {
                    mounter_limits.memory_max = Some(parse_size(&flag, &value()?, 16 << 20)?)
                }
                "--mounter-pids-max" => {
                    let v = value()?;
                    match v.parse::<u64>() {
                        Ok(n) if (8..=1 << 22).contains(&n) => mounter_limits.pids_max = Some(n),
                        _ => {
                            return Err(format!(
                                "{flag}: expected a number from 8 to 4194304, got {v:?}"
                            ))
                        }
                    }
                }
                "--fuse-programs" => {
                    let v = value()?;
                    fuse_programs = v
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(String::from)
                        .collect();
                    if let Some(bad) = fuse_programs.iter().find(|p| {
                        !p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
                    }) {
                        return Err(format!("{flag}: {bad:?} is not a program name or path"));
                    }
                }
                _ => return Err(format!("unknown flag {flag:?} (see --help)")),
            }
        }

        if !valid_driver_name(&driver_name) {
            return Err(format!(
                "--driver-name: {driver_name:?} is not a valid CSI name (≤63 characters, \
                 alphanumerics, '-' and '.', alphanumeric at both ends)"
            ));
        }
        if mode.serves_node() && node_id.is_empty() {
            return Err("--node-id (or KUBE_NODE_NAME) is required in node mode".into());
        }
        if mount_timeout.is_zero() {
            return Err("--mount-timeout must be at least 1 second".into());
        }
        if !mounter_limits.is_empty() && mounter_cgroups.is_empty() {
            return Err(
                "--mounter-memory-max and --mounter-pids-max need --mounter-cgroup: each \
                 mounter's cgroup is made below it"
                    .into(),
            );
        }
        Ok(Parsed::Run(Box::new(Config {
            endpoint: parse_endpoint(&endpoint)?,
            node_id,
            driver_name,
            state_dir: abs_dir("--state-dir", &state_dir)?,
            kubelet_dir: abs_dir("--kubelet-dir", &kubelet_dir)?,
            threads,
            workers,
            mode,
            max_volumes_per_node,
            mount_timeout,
            unstage_grace,
            unstage_delay,
            shutdown_grace,
            watchdog_interval,
            fuse_programs,
            allow_credential_sources,
            cache_config,
            caches,
            wait_for_caches,
            mounter_cgroups,
            mounter_limits,
            metrics_address,
        })))
    }
}

#[cfg(test)]
mod tests;
