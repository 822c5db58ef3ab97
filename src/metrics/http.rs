//! The `/metrics` listener (`--metrics-address`): plain HTTP/1.x on one
//! thread of its own, std only. A client gets one request per connection.
//! A client that is slow, sends too much or sends nonsense holds the
//! listener for at most twice `IO_TIMEOUT` (the deadline is checked between
//! reads, each read waits at most `IO_TIMEOUT`) and never an RPC thread:
//! requests are read with that deadline and a size cap, and answered with
//! 400, 404, 405 or 431.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use log::{debug, info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::{Error, Result};

/// Longest request head read (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long one client may take to send its request or read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the accept loop looks at the stop channel.
const STOP_CHECK_MS: u16 = 200;

/// What a request asks for, as far as this listener cares.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics,
    NotFound,
    NotGet,
    Bad,
    TooLarge,
}

/// Read one request head from `r` within `deadline`.
fn read_request(r: &mut impl Read, deadline: Instant) -> Request {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() > MAX_REQUEST {
            return Request::TooLarge;
        }
        if Instant::now() >= deadline {
            return Request::Bad;
        }
        match r.read(&mut chunk) {
            Ok(0) | Err(_) => return Request::Bad,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let line_end = buf.iter().position(|&c| c == b'\n').unwrap_or(buf.len());
    let Ok(line) = std::str::from_utf8(&buf[..line_end]) else {
        return Request::Bad;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Bad;
    }
    if method != "GET" {
        return Request::NotGet;
    }
    match target.split('?').next() {
        Some("/metrics") => Request::Metrics,
        _ => Request::NotFound,
    }
}

fn respond(w: &mut impl Write, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body.as_bytes())?;
    w.flush()
}

/// Answer one connection: read its request, write the answer, close.
fn serve(mut conn: TcpStream, render: &dyn Fn() -> String) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let deadline = Instant::now() + IO_TIMEOUT;
    let answer = match read_request(&mut conn, deadline) {
        Request::Metrics => respond(&mut conn, "200 OK", &render()),
        Request::NotFound => respond(&mut conn, "404 Not Found", "try /metrics\n"),
        Request::NotGet => respond(&mut conn, "405 Method Not Allowed", "GET /metrics\n"),
        Request::TooLarge => respond(
            &mut conn,
            "431 Request Header Fields Too Large",
            "request too large\n",
        ),
        Request::Bad => respond(&mut conn, "400 Bad Request", "bad request\n"),
    };
    if let Err(e) = answer {
        debug!("metrics: answer not delivered: {e}");
    }
}

/// Bind `addr` (a failure stops the daemon's start: the flag was asked for)
/// and serve `/metrics` on a thread until `stop` closes.
pub fn start(
    addr: SocketAddr,
    stop: &Receiver<()>,
    render: impl Fn() -> String + Send + 'static,
) -> Result<thread::JoinHandle<()>> {
    let what = format!("metrics address {addr}");
    let listener = TcpListener::bind(addr).map_err(|e| Error::io("bind", &what, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("bind", &what, e))?;
    info!("metrics: serving http://{bound}/metrics");
    let stop = stop.clone();
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || loop {
            match stop.try_recv() {
                Err(crossbeam_channel::TryRecvError::Empty) => {}
                _ => return,
            }
            let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(STOP_CHECK_MS)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!("metrics: poll: {e}; the listener stops");
                    return;
                }
            }
            match listener.accept() {
                Ok((conn, _)) => serve(conn, &render),
                Err(e) => debug!("metrics: accept: {e}"),
            }
        })
        .map_err(|e| Error::io("spawn thread", "metrics", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Request {
        read_request(&mut &text[..], Instant::now() + IO_TIMEOUT)
    }

    #[test]
    fn requests_are_read_with_a_cap() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            parse(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(parse(b"POST /metrics HTTP/1.1\r\n\r\n"), Request::NotGet);
        assert_eq!(parse(b"GET /metrics\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"GET /metrics SMTP/1.1\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"), Request::Bad);
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\n"),
            Request::Bad,
            "cut short"
        );
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat(b'a').take(1 << 20));
        assert_eq!(parse(&huge), Request::TooLarge);
    }
}
