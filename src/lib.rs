//! bindery: a Kubernetes CSI node driver for shared FUSE (S3) mounts and
//! warm cache volumes. One small static daemon per node.
//!
//! The binary (src/main.rs) only picks the heap and calls [`cli::main`];
//! everything else lives in this library, so that the integration tests
//! use the same parsers and helpers as the daemon.

pub mod alloc;
pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub mod controller;
pub mod crash;
pub mod error;
pub mod lifecycle;
pub mod mounter;
pub mod node;
pub mod proto;
pub mod rpc;
pub mod server;
pub mod state;
pub mod status;
pub mod sys;
#[doc(hidden)]
pub mod testkit;
pub mod validate;
pub mod volumes;
pub mod workers;
