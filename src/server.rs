//! The daemon: a grpcio server with a fixed pool of completion-queue
//! threads on a unix socket, a worker pool for long operations, state
//! recovery and the watchdog, and an orderly shutdown on SIGTERM/SIGINT.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver};
use grpcio::{EnvBuilder, ServerBuilder, ServerCredentials};
use log::{error, info, warn};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::{umask, Mode};

use crate::cache::usage::UsageBudget;
use crate::config::Config;
use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::metrics;
use crate::node::Node;
use crate::proto::csi_grpc::{create_controller, create_identity, create_node};
use crate::rpc::controller::ControllerService;
use crate::rpc::identity::IdentityService;
use crate::rpc::node::NodeService;
use crate::rpc::wait::wait_future;
use crate::workers::Workers;

/// Make `path` free for a new socket: remove a stale socket, refuse when a
/// live daemon answers there or when the path is not a socket at all.
pub fn claim_socket_path(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(|e| Error::io("mkdir", dir, e))?;
            }
            return Ok(());
        }
        Err(e) => return Err(Error::io("stat", path, e)),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::invalid(
            "--endpoint",
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(Error::invalid(
            "--endpoint",
            format!(
                "another daemon is listening on {}; refusing to start",
                path.display()
            ),
        )),
        Err(_) => {
            warn!("removing stale socket {}", path.display());
            fs::remove_file(path).map_err(|e| Error::io("remove", path, e))
        }
    }
}

/// SIGTERM and SIGINT are blocked in every thread (the mask is inherited by
/// the threads started after this) and received synchronously by one thread,
/// which turns them into a message on the returned channel.
fn signal_channel() -> Result<Receiver<Signal>> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block()
        .map_err(|e| Error::sys("sigprocmask", "/", e))?;
    let (tx, rx) = bounded(1);
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            if let Ok(sig) = set.wait() {
                let _ = tx.try_send(sig);
            }
        })
        .map_err(|e| Error::io("spawn thread", "signals", e))?;
    Ok(rx)
}

/// Run `pass` every `every` until the daemon stops; one thread per job.
fn periodic(
    name: &str,
    every: Duration,
    stop: &Receiver<()>,
    mut pass: impl FnMut() + Send + 'static,
) -> Result<thread::JoinHandle<()>> {
    let stop = stop.clone();
    thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
                pass();
            }
        })
        .map_err(|e| Error::io("spawn thread", name, e))
}

/// The node's background jobs, each on its own thread: the health loop,
/// cache builds and upkeep (tamper checks, collection of unused versions).
fn background_jobs(
    node: Arc<Node>,
    cfg: &Config,
    stop: &Receiver<()>,
) -> Result<Vec<thread::JoinHandle<()>>> {
    let mut jobs = Vec::new();
    let interval = cfg.watchdog_interval;
    if !interval.is_zero() {
        // A pass every interval, and at once when a mounter exits.
        let (wake, woken) = crossbeam_channel::bounded::<()>(1);
        let n = node.clone();
        let halt = stop.clone();
        jobs.push(
            thread::Builder::new()
                .name("health".into())
                .spawn(move || {
                    let mut woken = woken;
                    loop {
                        crossbeam_channel::select! {
                            recv(halt) -> _ => break,
                            recv(woken) -> m => {
                                // The watcher gave up: periodic passes only.
                                if m.is_err() {
                                    woken = crossbeam_channel::never();
                                    continue;
                                }
                                n.health_pass()
                            }
                            default(interval) => n.health_pass(),
                        }
                    }
                })
                .map_err(|e| Error::io("spawn thread", "health", e))?,
        );
        let n = node.clone();
        let halt = stop.clone();
        jobs.push(
            thread::Builder::new()
                .name("mounter-exits".into())
                .spawn(move || n.watch_mounter_exits(&wake, &halt))
                .map_err(|e| Error::io("spawn thread", "mounter-exits", e))?,
        );
    }
    // Endpoint reachability for VolumeCondition, on a thread of its own: a
    // slow resolver or a black-holed address delays nothing else. It only
    // informs NodeGetVolumeStats, so it runs with the watchdog off too.
    let n = node.clone();
    let every = if interval.is_zero() {
        Duration::from_secs(5)
    } else {
        interval
    };
    jobs.push(periodic("endpoints", every, stop, move || {
        n.check_endpoints()
    })?);
    // Volumes kept after their unstage (unstageDelay) end when due, with
    // the watchdog off too.
    let n = node.clone();
    jobs.push(periodic("unstage-delay", every, stop, move || {
        n.expire_lingering()
    })?);
    if cfg.wait_for_caches {
        let n = node.clone();
        let builds = thread::Builder::new()
            .name("cache-build".into())
            .spawn(move || n.caches.build_missing())
            .map_err(|e| Error::io("spawn thread", "cache-build", e))?;
        jobs.push(builds);
    }
    // Cache volume stats: a bounded, fd-relative walk of the pods' trees,
    // off the gRPC threads.
    let n = node.clone();
    jobs.push(periodic(
        "cache-usage",
        Duration::from_secs(30),
        stop,
        move || {
            n.caches.refresh_usage(UsageBudget::default());
        },
    )?);
    // Tamper checks and collection run after a cache volume went away, and
    // about once a minute anyway.
    let every = (60 / interval.as_secs().max(1)).max(1);
    let mut pass = 0u64;
    let tick = if interval.is_zero() {
        Duration::from_secs(5)
    } else {
        interval
    };
    jobs.push(periodic("cache-upkeep", tick, stop, move || {
        pass += 1;
        node.cache_upkeep(pass % every == 0);
    })?);
    Ok(jobs)
}

pub fn run(cfg: Config) -> Result<()> {
    let cfg = Arc::new(cfg);
    let signals = signal_channel()?;
    claim_socket_path(&cfg.endpoint)?;

    let ready = Arc::new(AtomicBool::new(false));
    let workers = Arc::new(Workers::new("worker", cfg.workers));
    let env = Arc::new(
        EnvBuilder::new()
            .cq_count(cfg.threads)
            .name_prefix("grpc")
            .build(),
    );
    let identity = IdentityService {
        name: cfg.driver_name.clone(),
        controller: cfg.mode.serves_controller(),
        ready: ready.clone(),
    };
    let mut builder = ServerBuilder::new(env).register_service(create_identity(identity));
    let node = if cfg.mode.serves_node() {
        // Recovery settles every interrupted step BEFORE the socket exists:
        // no node call can race with it.
        let node = Arc::new(Node::new(cfg.clone())?);
        node.recover();
        builder = builder.register_service(create_node(NodeService {
            node: node.clone(),
            workers: workers.clone(),
            cache_workers: Arc::new(Workers::new("cache", cfg.workers)),
        }));
        Some(node)
    } else {
        None
    };
    if cfg.mode.serves_controller() {
        let controller = Arc::new(Controller::new(cfg.clone())?);
        builder = builder.register_service(create_controller(ControllerService {
            controller,
            workers: workers.clone(),
        }));
    }
    let mut server = builder
        .build()
        .map_err(|e| Error::invalid("--endpoint", format!("cannot build server: {e}")))?;
    // The socket is created with mode 0600: only root may talk to the driver.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = server.add_listening_port(
        format!("unix:{}", cfg.endpoint.display()),
        ServerCredentials::insecure(),
    );
    umask(old);
    bound.map_err(|e| {
        Error::invalid(
            "--endpoint",
            format!("cannot listen on {}: {e}", cfg.endpoint.display()),
        )
    })?;
    fs::set_permissions(&cfg.endpoint, fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("chmod", &cfg.endpoint, e))?;
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let mut background = Vec::new();
    if let Some(addr) = cfg.metrics_address {
        // Bound before the socket serves: a port in use stops the start.
        let gauges = node.clone();
        background.push(metrics::http::start(addr, &stop_rx, move || {
            let gauges = gauges.as_ref().map(|n| n.gauges()).unwrap_or_default();
            metrics::render(&gauges)
        })?);
    }
    server.start();
    info!(
        "bindery {} ({:?} mode) listening on {} with {} gRPC threads and {} workers",
        env!("CARGO_PKG_VERSION"),
        cfg.mode,
        cfg.endpoint.display(),
        cfg.threads,
        cfg.workers
    );

    // The daemon can serve: state is recovered. Cache builds and health
    // checks run in the background and never make the node look dead.
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    info!("ready");
    if let Some(node) = node {
        background.extend(background_jobs(node, &cfg, &stop_rx)?);
    }

    let sig = signals.recv().unwrap_or(Signal::SIGTERM);
    info!(
        "{sig:?} received: no new calls, waiting up to {:?} for calls in flight",
        cfg.shutdown_grace
    );
    if wait_future(server.shutdown(), cfg.shutdown_grace).is_none() {
        warn!(
            "calls still running after {:?}; cancelling them",
            cfg.shutdown_grace
        );
        server.cancel_all_calls();
    }
    drop(stop_tx);
    for t in background {
        let name = t.thread().name().unwrap_or("background").to_string();
        if t.join().is_err() {
            error!("{name} thread panicked");
        }
    }
    match fs::remove_file(&cfg.endpoint) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!("remove {}: {e}", cfg.endpoint.display()),
    }
    info!("stopped; mounter processes keep serving their volumes");
    Ok(())
}
