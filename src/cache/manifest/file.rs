//! A manifest on disk: the text format (versions 1 to 3) written
//! atomically and read back.

use super::*;

impl Manifest {
    /// Write atomically (temp file, fsync, rename).
    pub fn write_to(&self, path: &Path) -> Result<()> {
        let mut text = String::with_capacity(64 * self.entries.len() + 32);
        let v3 = self.key.is_some()
            && self
                .entries
                .iter()
                .all(|e| e.kind != Kind::File || e.xattrs.is_some());
        match self.key {
            Some((k0, k1)) => {
                let header = if v3 { HEADER_V3 } else { HEADER_V2 };
                let _ = writeln!(text, "{header} {k0:016x}{k1:016x}");
            }
            None => {
                text.push_str(HEADER_V1);
                text.push('\n');
            }
        }
        for e in &self.entries {
            let p = encode(e.path.as_os_str().as_bytes());
            // Writing to a String cannot fail.
            let _ = match e.kind {
                Kind::Dir => writeln!(text, "d {:o} {} {} {p}", e.mode, e.uid, e.gid),
                Kind::File => {
                    let _ = write!(
                        text,
                        "f {:o} {} {} {} {} {}.{:09} {}.{:09} ",
                        e.mode,
                        e.uid,
                        e.gid,
                        e.size,
                        e.ino,
                        e.mtime.0,
                        e.mtime.1,
                        e.ctime.0,
                        e.ctime.1
                    );
                    if let (Some(h), Some(_)) = (e.hash, self.key) {
                        let _ = write!(text, "{h:016x} ");
                    }
                    if let (Some(x), true) = (e.xattrs, v3) {
                        let _ = write!(text, "{x:016x} ");
                    }
                    writeln!(text, "{p}")
                }
                Kind::Symlink => {
                    let t = e.target.as_deref().unwrap_or_default();
                    writeln!(text, "l {p} {}", encode(t.as_bytes()))
                }
            };
        }
        let tmp = tmp_name(path);
        let mut f = fs::create_file(&tmp, true)?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io("write manifest", &tmp, e))?;
        drop(f);
        fs::rename_path(&tmp, path)
    }

    pub fn read_from(path: &Path) -> Result<Manifest> {
        let f = std::fs::File::open(path).map_err(|e| Error::io("open manifest", path, e))?;
        let bad = |n: usize, why: &str| Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("line {n}: {why}"),
        };
        let mut entries = Vec::new();
        let mut key = None;
        let mut v3 = false;
        for (i, line) in BufReader::new(f).lines().enumerate() {
            let n = i + 1;
            let line = line.map_err(|e| Error::io("read manifest", path, e))?;
            if n == 1 {
                if line == HEADER_V1 {
                    continue;
                }
                v3 = line.starts_with(HEADER_V3);
                let k = line
                    .strip_prefix(if v3 { HEADER_V3 } else { HEADER_V2 })
                    .and_then(|r| r.strip_prefix(' '))
                    .filter(|k| k.len() == 32)
                    .and_then(|k| {
                        Some((
                            u64::from_str_radix(&k[..16], 16).ok()?,
                            u64::from_str_radix(&k[16..], 16).ok()?,
                        ))
                    });
                match k {
                    Some(k) => key = Some(k),
                    None => return Err(bad(n, "not a bindery manifest (version 1, 2 or 3)")),
                }
                continue;
            }
            let fields: Vec<&str> = line.split(' ').collect();
            let num = |s: &str| s.parse::<u64>().map_err(|_| bad(n, "bad number"));
            let oct = |s: &str| u32::from_str_radix(s, 8).map_err(|_| bad(n, "bad mode"));
            let id = |s: &str| s.parse::<u32>().map_err(|_| bad(n, "bad id"));
            let time = |s: &str| -> Result<(i64, i64)> {
                let (a, b) = s.split_once('.').ok_or_else(|| bad(n, "bad time"))?;
                Ok((
                    a.parse().map_err(|_| bad(n, "bad time"))?,
                    b.parse().map_err(|_| bad(n, "bad time"))?,
                ))
            };
            let path_of = |s: &str| -> Result<PathBuf> {
                Ok(PathBuf::from(OsString::from_vec(
                    decode(s).ok_or_else(|| bad(n, "bad path encoding"))?,
                )))
            };
            let mut e = Entry {
                path: PathBuf::new(),
                kind: Kind::Dir,
                mode: 0,
                uid: 0,
                gid: 0,
                size: 0,
                ino: 0,
                mtime: (0, 0),
                ctime: (0, 0),
                target: None,
                hash: None,
                xattrs: None,
            };
            let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad(n, "bad hash"));
            match fields.as_slice() {
                ["d", mode, uid, gid, p] => {
                    (e.mode, e.uid, e.gid, e.path) = (oct(mode)?, id(uid)?, id(gid)?, path_of(p)?);
                }
                ["f", mode, uid, gid, size, ino, mtime, ctime, p] if key.is_none() => {
                    e.kind = Kind::File;
                    (e.mode, e.uid, e.gid) = (oct(mode)?, id(uid)?, id(gid)?);
                    (e.size, e.ino) = (num(size)?, num(ino)?);
                    (e.mtime, e.ctime, e.path) = (time(mtime)?, time(ctime)?, path_of(p)?);
                }
                ["f", mode, uid, gid, size, ino, mtime, ctime, h, p] if key.is_some() && !v3 => {
                    e.kind = Kind::File;
                    (e.mode, e.uid, e.gid) = (oct(mode)?, id(uid)?, id(gid)?);
                    (e.size, e.ino, e.hash) = (num(size)?, num(ino)?, Some(hex(h)?));
                    (e.mtime, e.ctime, e.path) = (time(mtime)?, time(ctime)?, path_of(p)?);
                }
                ["f", mode, uid, gid, size, ino, mtime, ctime, h, x, p] if v3 => {
                    e.kind = Kind::File;
                    (e.mode, e.uid, e.gid) = (oct(mode)?, id(uid)?, id(gid)?);
                    (e.size, e.ino, e.hash) = (num(size)?, num(ino)?, Some(hex(h)?));
                    e.xattrs = Some(hex(x)?);
                    (e.mtime, e.ctime, e.path) = (time(mtime)?, time(ctime)?, path_of(p)?);
                }
                ["l", p, t] => {
                    e.kind = Kind::Symlink;
                    e.path = path_of(p)?;
                    e.target = Some(OsString::from_vec(
                        decode(t).ok_or_else(|| bad(n, "bad target encoding"))?,
                    ));
                }
                _ => return Err(bad(n, "unknown entry")),
            }
            if e.path.is_absolute()
                || e.path
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(bad(n, "path escapes the tree"));
            }
            entries.push(e);
        }
        if entries.is_empty() {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                reason: "empty manifest".into(),
            });
        }
        Ok(Manifest { entries, key })
    }
}
