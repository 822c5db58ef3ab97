//! Is a volume's S3 endpoint reachable? Asked off the RPC threads: the
//! health loop's endpoint pass connects to each staged volume's endpoint and
//! keeps the answer here; NodeGetVolumeStats only reads it. A tenant picks
//! the endpoint, so resolving and connecting to it may take as long as the
//! resolver and the network like: that must never hold a gRPC thread.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The last answer per endpoint, and when it was asked.
type Answers = HashMap<String, (std::result::Result<(), String>, Instant)>;

fn answers() -> &'static Mutex<Answers> {
    static A: OnceLock<Mutex<Answers>> = OnceLock::new();
    A.get_or_init(Default::default)
}

/// Ask every endpoint in `endpoints` (blocking: for the health loop's
/// thread) and keep the answers; answers of endpoints no longer asked about
/// are dropped.
pub fn check_all(endpoints: &[String], timeout: Duration) {
    let mut fresh = Answers::new();
    for e in endpoints {
        if !fresh.contains_key(e) {
            fresh.insert(e.clone(), (endpoint_reachable(e, timeout), Instant::now()));
        }
    }
    *answers().lock().unwrap_or_else(|p| p.into_inner()) = fresh;
}

/// The last answer about `endpoint` (None: not asked yet), never blocking.
pub fn last_answer(endpoint: &str) -> Option<std::result::Result<(), String>> {
    if endpoint.is_empty() {
        return Some(Ok(()));
    }
    answers()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(endpoint)
        .map(|(r, _)| r.clone())
}

/// host:port of an `http(s)://host[:port][/path]` endpoint (already
/// validated), with the scheme's default port.
fn endpoint_addr(endpoint: &str) -> Option<String> {
    let (rest, port) = if let Some(r) = endpoint.strip_prefix("https://") {
        (r, 443)
    } else {
        (endpoint.strip_prefix("http://")?, 80)
    };
    let authority = rest.split('/').next()?;
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    Some(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{port}")
    })
}

/// A TCP connection to the volume's S3 endpoint within `timeout`: the
/// mounter's server is reachable. No endpoint (a `fuse` mounter without
/// one): nothing to ask.
pub fn endpoint_reachable(endpoint: &str, timeout: Duration) -> std::result::Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    if endpoint.is_empty() {
        return Ok(());
    }
    let Some(addr) = endpoint_addr(endpoint) else {
        return Ok(());
    };
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| format!("S3 endpoint {addr}: {e}"))?
        .collect();
    let mut last = String::from("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("S3 endpoint {addr} is not reachable: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_addresses() {
        assert_eq!(
            endpoint_addr("http://127.0.0.1:9000").as_deref(),
            Some("127.0.0.1:9000")
        );
        assert_eq!(
            endpoint_addr("https://s3.example.com/x").as_deref(),
            Some("s3.example.com:443")
        );
        assert_eq!(
            endpoint_addr("http://[::1]:9000/p").as_deref(),
            Some("[::1]:9000")
        );
        assert_eq!(endpoint_addr("http://[::1]").as_deref(), Some("[::1]:80"));
        assert_eq!(endpoint_addr("ftp://x"), None);
    }

    #[test]
    fn answers_are_kept_for_readers_that_never_wait() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let up = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
        assert_eq!(last_answer(&up), None);
        assert_eq!(last_answer(""), Some(Ok(())));
        check_all(&[up.clone(), up.clone()], Duration::from_secs(2));
        assert_eq!(last_answer(&up), Some(Ok(())));
        drop(l);
        check_all(std::slice::from_ref(&up), Duration::from_secs(2));
        assert!(last_answer(&up).is_some_and(|r| r.is_err()));
        check_all(&[], Duration::from_secs(2));
        assert_eq!(last_answer(&up), None);
    }

    #[test]
    fn reachability_is_a_connection_to_the_endpoint() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = Duration::from_secs(2);
        assert_eq!(
            endpoint_reachable(&format!("http://127.0.0.1:{port}"), t),
            Ok(())
        );
        drop(l);
        let e = endpoint_reachable(&format!("http://127.0.0.1:{port}"), t).unwrap_err();
        assert!(e.contains("not reachable"), "{e}");
        assert_eq!(endpoint_reachable("", t), Ok(()));
    }
}
