//! The command line: which of the binary's commands an invocation runs
//! (the daemon, `csi`, `cache build|status`, `status`, `--check-args`),
//! and its exit code.

use std::process::ExitCode;

use crate::config::{Config, Parsed, HELP};
use crate::{cache, client, server, status};

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

/// What this invocation of the binary does.
enum Cmd {
    /// The CSI daemon.
    Run,
    /// `--check-args`: parse the daemon's flags, then exit.
    CheckArgs,
    /// `cache build NAME`.
    Build(String),
    /// `cache status`.
    Status,
    /// `status [--output table|json]`: the node's volumes and caches.
    NodeStatus { json: bool },
}

/// Split `--output FORMAT` (or `--output=FORMAT`) off `bindery status`'s
/// arguments: whether JSON was asked for, and the daemon flags left.
fn output_format(args: &[String]) -> Result<(bool, Vec<String>), String> {
    let mut json = false;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = match a.strip_prefix("--output") {
            Some("") => it.next().map(String::as_str),
            Some(v) if v.starts_with('=') => Some(&v[1..]),
            _ => {
                rest.push(a.clone());
                continue;
            }
        };
        json = match value {
            Some("json") => true,
            Some("table") => false,
            _ => return Err("--output: one of table, json".into()),
        };
    }
    Ok((json, rest))
}

/// Run the command line `args` (without the program name): the daemon, or
/// one of the node-side commands. Returns the process's exit code.
pub fn main(args: Vec<String>) -> ExitCode {
    let owned: Vec<String>;
    if args.first().map(String::as_str) == Some("csi") {
        return ExitCode::from(u8::try_from(client::main(&args[1..])).unwrap_or(u8::MAX));
    }
    let (cmd, flags) = match (
        args.first().map(String::as_str),
        args.get(1).map(String::as_str),
    ) {
        (Some("--check-args"), _) => (Cmd::CheckArgs, &args[1..]),
        (Some("cache"), Some("build")) if args.len() >= 3 => {
            (Cmd::Build(args[2].clone()), &args[3..])
        }
        (Some("cache"), Some("status")) => (Cmd::Status, &args[2..]),
        (Some("status"), _) => match output_format(&args[1..]) {
            Ok((json, rest)) => {
                owned = rest;
                (Cmd::NodeStatus { json }, &owned[..])
            }
            Err(e) => {
                eprintln!("bindery status: {e}");
                return ExitCode::from(64);
            }
        },
        (Some("cache"), _) => {
            eprintln!("usage: bindery cache build NAME [FLAGS]\n       bindery cache status [FLAGS]\n(FLAGS: the daemon's --kubelet-dir, --driver-name, --cache-config, --cache)");
            return ExitCode::from(64);
        }
        _ => (Cmd::Run, &args[..]),
    };
    // Cache and status commands serve no node: they need no --node-id of their own.
    let placeholder = matches!(cmd, Cmd::Build(_) | Cmd::Status | Cmd::NodeStatus { .. })
        .then(|| "--node-id=bindery-cache-command".to_string());
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
    match cmd {
        Cmd::CheckArgs => {
            println!("ok: {} flag(s) accepted", flags.len());
            return ExitCode::SUCCESS;
        }
        Cmd::Status => {
            let states = cache::status::states(&cfg);
            print!("{}", cache::status::render(&states));
            // 3: declared caches that are not ready yet (scripts poll on it).
            return if cache::status::all_ready(&states) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            };
        }
        Cmd::NodeStatus { json } => {
            let report = status::gather(&cfg);
            if json {
                print!("{}", status::render_json(&report));
            } else {
                print!("{}", status::render_table(&report));
            }
            // 1: the state dir could not be read.
            return if report.error.is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Cmd::Build(_) | Cmd::Run => {}
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    if let Cmd::Build(name) = cmd {
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
