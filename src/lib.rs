//! bindery: a Kubernetes CSI node driver for shared FUSE (S3) mounts and
//! warm cache volumes. One small static daemon per node.
//!
//! The binary (src/main.rs) only picks the heap and calls [`cli::main`];
//! everything else lives in this library, so that the integration tests
//! use the same parsers and helpers as the daemon.
//!
//! The daemon must not die on an input or a kernel answer: outside tests,
//! no `unwrap`/`expect`/`panic!`/`unreachable!` (an invariant that needs one
//! says why in an `allow`), no `exit` below `main`, and no `as` cast that can
//! truncate, wrap or lose a sign (`try_from` says what happens instead).
//! Tests (here and in tests/) fail by panicking, and may cast freely.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::exit,
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        clippy::cast_sign_loss,
        clippy::cast_lossless
    )
)]

pub mod alloc;
pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub mod controller;
pub mod crash;
pub mod error;
pub mod host;
pub mod lifecycle;
pub mod metrics;
pub mod mounter;
pub mod node;
// Generated code: the lints are ours, not the generators'.
#[allow(clippy::all, clippy::restriction, clippy::pedantic)]
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
