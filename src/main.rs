//! bindery: a Kubernetes CSI node driver for shared FUSE (S3) mounts and
//! warm cache volumes. One small static daemon per node.

mod alloc;
mod cache;
mod client;
mod config;
mod controller;
mod crash;
mod error;
mod lifecycle;
mod mounter;
mod node;
mod proto;
mod rpc;
mod server;
mod state;
mod sys;
mod validate;
mod volumes;
mod workers;

use std::process::ExitCode;

use config::{Config, Parsed, HELP};

fn env_var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// `bindery cache build NAME`: build a new golden version while the daemon
/// runs (the store's flock keeps two builds of one cache apart); the daemon
/// hands it to new pods and collects the old one when no pod uses it.
fn build_cache(cfg: Config, name: &str) -> ExitCode {
    let result =
        cache::volume::Caches::open_for_build(std::sync::Arc::new(cfg)).and_then(|c| c.build(name));
    match result {
        Ok(v) => {
            println!("cache {name}: version {v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bindery cache build: {e}");
            ExitCode::FAILURE
        }
    }
}

#[global_allocator]
static HEAP: alloc::Mimalloc = alloc::Mimalloc;

fn main() -> ExitCode {
    alloc::configure();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("csi") {
        return ExitCode::from(client::main(&args[1..]).clamp(0, 255) as u8);
    }
    let (check_only, build, flags) = match (args.first().map(String::as_str), args.get(1)) {
        (Some("--check-args"), _) => (true, None, &args[1..]),
        (Some("cache"), Some(name)) if args.len() >= 3 && name == "build" => {
            (false, Some(args[2].clone()), &args[3..])
        }
        (Some("cache"), _) => {
            eprintln!("usage: bindery cache build NAME [--state-dir DIR --kubelet-dir DIR --cache-config FILE | --cache NAME=SOURCE]");
            return ExitCode::from(64);
        }
        _ => (false, None, &args[..]),
    };
    // A cache build serves no node: it needs no --node-id of its own.
    let placeholder = build
        .as_ref()
        .map(|_| "--node-id=bindery-cache-build".to_string());
    let cfg = match Config::parse(
        placeholder.into_iter().chain(flags.iter().cloned()),
        &env_var,
    ) {
        Ok(Parsed::Run(cfg)) => cfg,
        Ok(Parsed::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("bindery {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bindery: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        println!("ok: {} flag(s) accepted", flags.len());
        return ExitCode::SUCCESS;
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    if let Some(name) = build {
        return build_cache(*cfg, &name);
    }
    match server::run(*cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
