//! gRPC glue: decode, call a plain function, log, reply. No logic lives here.

pub mod controller;
pub mod identity;
pub mod node;

use std::time::{Duration, Instant};

use grpcio::{RpcContext, RpcStatus, UnarySink, UnarySinkResult};
use log::{debug, error, info};

use crate::error::{Error, Result};
use crate::server::wait_future;
use crate::workers::Workers;

/// What a mutating call is about, for its one log line.
#[derive(Default, Clone)]
pub struct Subject {
    pub volume: String,
    pub path: String,
}

impl Subject {
    pub fn new(volume: &str, path: &str) -> Self {
        Subject {
            volume: volume.to_string(),
            path: path.to_string(),
        }
    }
}

fn status(err: &Error) -> RpcStatus {
    RpcStatus::with_message(err.code(), err.to_string())
}

/// Send the result of `method` and log it: one `info!` per mutating call,
/// `error!` on failure. The returned future completes when the reply has
/// been sent; it must be driven to the end (dropping it cancels the call).
fn reply<T>(
    method: &'static str,
    subject: Option<&Subject>,
    started: Instant,
    sink: UnarySink<T>,
    result: Result<T>,
) -> UnarySinkResult {
    let took = started.elapsed();
    let send = match result {
        Ok(resp) => {
            match subject {
                Some(s) => info!(
                    "{method} volume={:?} path={:?} ok in {:.1?}",
                    s.volume, s.path, took
                ),
                None => debug!("{method} ok in {took:.1?}"),
            }
            sink.success(resp)
        }
        Err(err) => {
            let s = subject.cloned().unwrap_or_default();
            match err.code() {
                grpcio::RpcStatusCode::ABORTED => info!(
                    "{method} volume={:?} path={:?} aborted: {err}",
                    s.volume, s.path
                ),
                _ => error!(
                    "{method} volume={:?} path={:?} failed in {:.1?}: {err} ({:?})",
                    s.volume,
                    s.path,
                    took,
                    err.code()
                ),
            }
            sink.fail(status(&err))
        }
    };
    send
}

/// Let grpcio's own completion queue finish sending the reply.
fn finish_on(ctx: &RpcContext, send: UnarySinkResult) {
    ctx.spawn(async move {
        if let Err(e) = send.await {
            debug!("reply not delivered: {e}");
        }
    });
}

/// Finish sending from a worker thread: grpcio's threads complete the send,
/// this thread only waits for it (bounded).
fn finish_here(send: UnarySinkResult) {
    match wait_future(send, Duration::from_secs(30)) {
        Some(Err(e)) => debug!("reply not delivered: {e}"),
        None => debug!("reply still not delivered after 30 s"),
        Some(Ok(())) => {}
    }
}

/// Answer inline on the completion-queue thread: for calls that never block
/// for more than a short, bounded time.
pub fn inline<T>(
    ctx: &RpcContext,
    method: &'static str,
    subject: Option<Subject>,
    sink: UnarySink<T>,
    f: impl FnOnce() -> Result<T>,
) {
    let started = Instant::now();
    finish_on(ctx, reply(method, subject.as_ref(), started, sink, f()));
}

/// Run on the worker pool: for calls that may take seconds (mount, unmount,
/// cache population), so the completion-queue threads stay free for Probe and
/// friends. `admission` was decided inline (validation, volume guard) and may
/// refuse at once (INVALID_ARGUMENT, ABORTED); what it admits is handed to
/// `work` on a worker.
pub fn offload<T, A>(
    ctx: &RpcContext,
    workers: &Workers,
    method: &'static str,
    subject: Subject,
    sink: UnarySink<T>,
    admission: Result<A>,
    work: impl FnOnce(A) -> Result<T> + Send + 'static,
) where
    T: Send + 'static,
    A: Send + 'static,
{
    let started = Instant::now();
    match admission {
        Err(e) => finish_on(ctx, reply(method, Some(&subject), started, sink, Err(e))),
        Ok(admitted) => {
            workers.submit(Box::new(move || {
                let result = work(admitted);
                finish_here(reply(method, Some(&subject), started, sink, result));
            }));
        }
    }
}
