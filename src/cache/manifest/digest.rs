//! The manifest's keyed content hash: SipHash-2-4 under a random 128-bit
//! key that only the manifest holds, of a file's bytes and of its extended
//! attributes.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use crate::error::{Error, Result};
use crate::sys::fs;

/// SipHash-2-4 (Aumasson & Bernstein), streaming: a keyed hash whose output an
/// attacker without the key cannot steer.
pub(super) struct SipHasher {
    v: [u64; 4],
    tail: u64,
    ntail: usize,
    len: u64,
}

impl SipHasher {
    pub(super) fn new((k0, k1): (u64, u64)) -> SipHasher {
        SipHasher {
            v: [
                k0 ^ 0x736f6d6570736575,
                k1 ^ 0x646f72616e646f6d,
                k0 ^ 0x6c7967656e657261,
                k1 ^ 0x7465646279746573,
            ],
            tail: 0,
            ntail: 0,
            len: 0,
        }
    }

    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    fn block(&mut self, m: u64) {
        self.v[3] ^= m;
        Self::round(&mut self.v);
        Self::round(&mut self.v);
        self.v[0] ^= m;
    }

    fn write(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        while !data.is_empty() && self.ntail > 0 {
            self.tail |= u64::from(data[0]) << (8 * self.ntail);
            self.ntail = (self.ntail + 1) % 8;
            data = &data[1..];
            if self.ntail == 0 {
                let t = std::mem::take(&mut self.tail);
                self.block(t);
            }
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.block(u64::from_le_bytes(b));
        }
        for (i, &byte) in chunks.remainder().iter().enumerate() {
            self.tail |= u64::from(byte) << (8 * i);
            self.ntail = i + 1;
        }
    }

    fn finish(mut self) -> u64 {
        let b = ((self.len & 0xff) << 56) | self.tail;
        self.block(b);
        self.v[2] ^= 0xff;
        for _ in 0..4 {
            Self::round(&mut self.v);
        }
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }
}

/// The keyed hash of the extended attributes of the open file `fd` (0: none).
pub(super) fn xattr_digest(fd: BorrowedFd<'_>, key: (u64, u64), path: &Path) -> Result<u64> {
    let all = fs::xattrs(fd).map_err(|e| Error::sys("list xattrs", path, e))?;
    if all.is_empty() {
        return Ok(0);
    }
    let mut h = SipHasher::new(key);
    for (name, value) in &all {
        h.write(&(name.len() as u64).to_le_bytes());
        h.write(name);
        h.write(&(value.len() as u64).to_le_bytes());
        h.write(value);
    }
    Ok(h.finish())
}

/// The keyed hash of a regular file's content, read through `fd`.
pub(super) fn hash_fd(fd: OwnedFd, key: (u64, u64), path: &Path) -> Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::from(fd);
    let mut h = SipHasher::new(key);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => h.write(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
}

pub(super) fn new_key() -> Result<(u64, u64)> {
    let mut b = [0u8; 16];
    fs::random_bytes(&mut b).map_err(|e| Error::sys("getrandom", "/dev/urandom", e))?;
    let mut k0 = [0u8; 8];
    let mut k1 = [0u8; 8];
    k0.copy_from_slice(&b[..8]);
    k1.copy_from_slice(&b[8..]);
    Ok((u64::from_le_bytes(k0), u64::from_le_bytes(k1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash_matches_the_reference_vector() {
        // SipHash-2-4 paper, appendix A: key 00..0f, message 00..0e.
        let key = (0x0706050403020100, 0x0f0e0d0c0b0a0908);
        let msg: Vec<u8> = (0u8..15).collect();
        let mut h = SipHasher::new(key);
        h.write(&msg);
        assert_eq!(h.finish(), 0xa129ca6149be45e5);
        // Streaming in odd pieces gives the same result.
        let mut h = SipHasher::new(key);
        for part in msg.chunks(3) {
            h.write(part);
        }
        assert_eq!(h.finish(), 0xa129ca6149be45e5);
    }
}
