//! Values that reach a mounter's command line, environment or credential
//! file, each checked for its own grammar: s3fs splits `-o` values at
//! commas, reads its password file line by line and splits it at colons,
//! so an unchecked value becomes an option or a credential of its own.

use std::collections::HashMap;

use crate::error::{quoted, Error, Result};

use super::kind::Kind;

/// Longest endpoint URL accepted.
pub const MAX_ENDPOINT: usize = 512;
/// Longest region accepted.
pub const MAX_REGION: usize = 64;
/// Longest access key id or secret accepted.
pub const MAX_SECRET: usize = 512;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub endpoint: String,
    pub region: String,
}

impl Secrets {
    pub fn from_map(m: &HashMap<String, String>) -> Self {
        let get = |k: &str| m.get(k).cloned().unwrap_or_default();
        Secrets {
            access_key_id: get("accessKeyID"),
            secret_access_key: get("secretAccessKey"),
            endpoint: get("endpoint"),
            region: get("region"),
        }
    }

    /// The values that must never appear in a message or log line.
    pub(super) fn sensitive(&self) -> Vec<&str> {
        [self.access_key_id.as_str(), self.secret_access_key.as_str()]
            .into_iter()
            .filter(|s| s.len() >= 3)
            .collect()
    }

    /// Check every value for the mounter `kind` that will use it. Errors name
    /// the field; key and secret values are never quoted.
    pub fn validate(&self, kind: Kind) -> Result<()> {
        if kind != Kind::Fuse && self.endpoint.is_empty() {
            return Err(Error::MissingField("secrets.endpoint"));
        }
        if !self.endpoint.is_empty() {
            endpoint(&self.endpoint)?;
        }
        if !self.region.is_empty() {
            region(&self.region)?;
        }
        secret("secrets.accessKeyID", &self.access_key_id, kind)?;
        secret("secrets.secretAccessKey", &self.secret_access_key, kind)?;
        Ok(())
    }
}

/// An S3 endpoint: `http://` or `https://`, a host (DNS name, IPv4 or
/// `[IPv6]`), an optional port and an optional path of
/// `[A-Za-z0-9._~/-]`; no user info, query, fragment, comma, space, quote
/// or control character.
pub fn endpoint(url: &str) -> Result<()> {
    const FIELD: &str = "secrets.endpoint";
    let bad = |why: &str| Error::invalid(FIELD, format!("{}: {why}", quoted(url)));
    if url.len() > MAX_ENDPOINT {
        return Err(Error::invalid(
            FIELD,
            format!("longer than {MAX_ENDPOINT} bytes"),
        ));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unterminated [IPv6] host"))?;
        if addr.is_empty()
            || !addr
                .bytes()
                .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        {
            return Err(bad("not an IPv6 address"));
        }
        match after {
            "" => (addr, None),
            p => (
                addr,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("junk after the host"))?,
                ),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let host_ok = authority.starts_with('[')
        || (!host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            }));
    if !host_ok {
        return Err(bad("not a host name or address"));
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|c| c.is_ascii_digit()) => {}
            _ => return Err(bad("port must be a number from 1 to 65535")),
        }
    }
    if !path
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"._~/-".contains(&c))
    {
        return Err(bad("path may only contain [A-Za-z0-9._~/-]"));
    }
    Ok(())
}

/// A region: `[a-z0-9-]`, at most 64 (s3fs passes it as `-o endpoint=`).
pub fn region(r: &str) -> Result<()> {
    if r.len() > MAX_REGION
        || !r
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err(Error::invalid(
            "secrets.region",
            format!("{}: must be [a-z0-9-], at most {MAX_REGION}", quoted(r)),
        ));
    }
    Ok(())
}

/// An access key id or secret: bounded, no control character (a newline
/// would start a new line in s3fs's password file, a NUL cannot pass
/// through an environment). s3fs also reads its file as
/// `[bucket:]key:secret` and refuses whitespace, so for s3fs neither value
/// may contain a colon or whitespace. The value itself is never quoted.
pub fn secret(field: &'static str, v: &str, kind: Kind) -> Result<()> {
    if v.len() > MAX_SECRET {
        return Err(Error::invalid(
            field,
            format!("longer than {MAX_SECRET} bytes"),
        ));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            field,
            "contains a control character (newline, NUL, ...)",
        ));
    }
    if kind == Kind::S3fs && v.chars().any(|c| c == ':' || c.is_whitespace()) {
        return Err(Error::invalid(
            field,
            "contains a colon or whitespace, which s3fs's password file cannot hold",
        ));
    }
    Ok(())
}

/// Replace every secret value in `text` with `***`.
pub fn mask_secrets(text: &str, secrets: &Secrets) -> String {
    secrets
        .sensitive()
        .into_iter()
        .fold(text.to_string(), |t, s| t.replace(s, "***"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        for ok in [
            "http://127.0.0.1:9000",
            "https://s3.eu-west-1.amazonaws.com",
            "http://[::1]:9000",
            "https://minio.example.com/s3/",
            "http://localhost",
        ] {
            endpoint(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "127.0.0.1:9000",
            "ftp://x",
            "http://a,use_cache=/tmp",
            "http://a b",
            "http://a\"b",
            "http://a'b",
            "http://a\nb",
            "http://user:pw@host",
            "http://host:0",
            "http://host:99999",
            "http://host:9x",
            "http://host/p?q=1",
            "http://host/p#f",
            "http://",
            "http://-host",
            "http://[zz]:1",
        ] {
            let e = endpoint(bad).unwrap_err();
            assert!(e.to_string().starts_with("secrets.endpoint"), "{bad}: {e}");
        }
        let e = endpoint(&format!("http://{}", "a".repeat(5000))).unwrap_err();
        assert!(e.to_string().len() < 100, "{e}");
    }

    #[test]
    fn regions() {
        assert!(region("us-east-1").is_ok());
        for bad in ["US", "us east", "a,use_cache=/x", &"a".repeat(65)] {
            assert!(region(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_never_echoed() {
        let s = "SECRETVALUE\nuse_cache=/tmp";
        for kind in [Kind::S3fs, Kind::Rclone] {
            let e = secret("secrets.secretAccessKey", s, kind).unwrap_err();
            assert!(!e.to_string().contains("SECRETVALUE"), "{e}");
            assert!(e.to_string().starts_with("secrets.secretAccessKey"));
        }
        assert!(secret("secrets.accessKeyID", "bkt:AKID", Kind::S3fs).is_err());
        assert!(secret("secrets.accessKeyID", "bkt:AKID", Kind::Rclone).is_ok());
        assert!(secret("secrets.secretAccessKey", "a/b+c=", Kind::S3fs).is_ok());
        assert!(secret("secrets.secretAccessKey", &"x".repeat(600), Kind::Rclone).is_err());
    }
}
