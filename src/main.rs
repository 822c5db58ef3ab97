//! bindery: a Kubernetes CSI node driver for shared FUSE (S3) mounts and
//! warm cache volumes. One small static daemon per node.

mod client;
mod config;
mod controller;
mod error;
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("csi") {
        return ExitCode::from(client::main(&args[1..]).clamp(0, 255) as u8);
    }
    let (check_only, flags) = match args.first().map(String::as_str) {
        Some("--check-args") => (true, &args[1..]),
        _ => (false, &args[..]),
    };
    let cfg = match Config::parse(flags.iter().cloned(), &env_var) {
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
    match server::run(*cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
