//! gRPC glue: decode, call a plain function, log, reply. No logic lives here.

pub mod controller;
pub mod identity;
pub mod node;
pub mod wait;

use std::time::{Duration, Instant};

use grpcio::{RpcContext, RpcStatus, UnarySink, UnarySinkResult};
use log::{debug, error, info};

use crate::error::{code_name, Error, Result};
use crate::metrics;
use crate::workers::Workers;
use wait::wait_future;

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

/// Log a request at debug level with its secrets and mount flags masked
/// (the spec: mount_flags "MAY contain sensitive information").
pub fn log_request(method: &str, req: &dyn protobuf::Message) {
    if log::log_enabled!(log::Level::Debug) {
        let text = protobuf::text_format::print_to_string(req);
        debug!(
            "{method} request: {}",
            mask_fields(&text, &["secrets", "mount_flags"])
        );
    }
}

/// Replace the values of the named fields in protobuf text format: map
/// entries `name {...}` become `name {***}`, strings `name: "..."` become
/// `name: "***"`. Quoted strings (with escapes) are skipped as a whole, so a
/// brace or quote inside a value cannot end the masking early.
pub fn mask_fields(text: &str, names: &[&str]) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // The end of the quoted string starting at b[start] == b'"'.
    let skip_quoted = |start: usize| -> usize {
        let mut j = start + 1;
        while j < b.len() && b[j] != b'"' {
            j += if b[j] == b'\\' { 2 } else { 1 };
        }
        (j + 1).min(b.len())
    };
    while i < b.len() {
        if b[i] == b'"' {
            let end = skip_quoted(i);
            out.push_str(&text[i..end]);
            i = end;
            continue;
        }
        let at_token = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let hit = at_token
            .then(|| names.iter().find(|n| text[i..].starts_with(*n)))
            .flatten();
        if let Some(name) = hit {
            let rest = &text[i + name.len()..];
            if rest.starts_with(" {") {
                // Skip the balanced braces of the map entry.
                let mut j = i + name.len() + 2;
                let mut depth = 1;
                while j < b.len() && depth > 0 {
                    match b[j] {
                        b'"' => {
                            j = skip_quoted(j);
                            continue;
                        }
                        b'{' => depth += 1,
                        b'}' => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                out.push_str(name);
                out.push_str(" {***}");
                i = j;
                continue;
            }
            if rest.starts_with(": \"") {
                let start = i + name.len() + 2;
                out.push_str(name);
                out.push_str(": \"***\"");
                i = skip_quoted(start);
                continue;
            }
        }
        let ch = text[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
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
    let code = result
        .as_ref()
        .err()
        .map_or(grpcio::RpcStatusCode::OK, Error::code);
    metrics::RPC_DURATION.observe(&[method, code_name(code)], took);
    let send = match result {
        Ok(resp) => {
            match subject {
                Some(s) => info!(
                    "{method} volume={:?} path={:?} ok in {:.3}ms",
                    s.volume,
                    s.path,
                    took.as_secs_f64() * 1e3
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
/// `work` on a worker, unless the call's deadline passed while it was
/// queued.
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
            let deadline = ctx.deadline();
            workers.submit(Box::new(move || {
                // The caller gave up while this waited for a worker: do not
                // mount or fill anything for it (the guard goes with
                // `admitted`); the CO retries.
                let result = if deadline.exceeded() {
                    drop(admitted);
                    Err(Error::Aborted {
                        volume: subject.volume.clone(),
                        op: "a call whose deadline passed while it was queued",
                    })
                } else {
                    work(admitted)
                };
                finish_here(reply(method, Some(&subject), started, sink, result));
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_secrets_and_mount_flags() {
        let text = r#"volume_id: "v" secrets {key: "secretAccessKey" value: "s3cr}et\"x"} secrets {key: "a" value: "b"} volume_capability {mount {mount_flags: "password=hunter2" mount_flags: "ro"}} my_secrets: "kept""#;
        let masked = mask_fields(text, &["secrets", "mount_flags"]);
        assert!(
            !masked.contains("s3cr") && !masked.contains("hunter2"),
            "{masked}"
        );
        assert!(masked.contains(r#"volume_id: "v""#));
        assert!(
            masked.contains(r#"my_secrets: "kept""#),
            "only whole field names: {masked}"
        );
        assert_eq!(masked.matches("secrets {***}").count(), 2, "{masked}");
        assert_eq!(
            masked.matches(r#"mount_flags: "***""#).count(),
            2,
            "{masked}"
        );
    }
}
