//! Whether hardlink and reflink population work between the golden store and
//! a pod's directory: found by doing it once with a probe file, never
//! inferred from device numbers.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{debug, info};
use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::sys::fs;

static PROBE_SEQ: AtomicU64 = AtomicU64::new(0);

/// The name of the probe file kept in the golden store's root.
pub const PROBE_FILE: &str = ".probe";

/// What a real probe between the golden store and a pod's directory found: whether
/// `linkat` and `ioctl(FICLONE)` of a golden file into that directory work. Never
/// inferred from st_dev: hardlinks fail across two mounts of one filesystem, and
/// FICLONE works across them on Linux >= 5.18.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub link: std::result::Result<(), Errno>,
    pub reflink: std::result::Result<(), Errno>,
}

/// Make sure the store's probe file exists (4 KiB, root, read-only), for `probe_pair`.
pub fn ensure_probe_file(store: &Path) -> Result<()> {
    let dfd = fs::open_dir(store)?;
    let name = cstring(PROBE_FILE.as_bytes(), store)?;
    let tmp = format!("{PROBE_FILE}.tmp-{}", std::process::id());
    let ctmp = cstring(tmp.as_bytes(), store)?;
    if fs::stat_at(dfd.as_fd(), &name).is_ok() {
        return Ok(());
    }
    let _ = fs::unlink_at(dfd.as_fd(), &ctmp, false);
    let fd = fs::create_file_at(dfd.as_fd(), &ctmp, 0o400)
        .map_err(|e| Error::sys("create probe file", store.join(&tmp), e))?;
    let mut f = File::from(fd);
    f.write_all(&[0x5a; 4096])
        .map_err(|e| Error::io("write probe file", store.join(&tmp), e))?;
    drop(f);
    fs::rename_at(
        dfd.as_fd(),
        OsStr::new(&tmp),
        dfd.as_fd(),
        OsStr::new(PROBE_FILE),
    )
    .map_err(|e| Error::sys("rename probe file", store.join(&tmp), e))
}

/// Link and clone the store's probe file into `target` (then remove both copies):
/// what hardlink and reflink population would do there.
pub fn probe_pair(store: &Path, target: &Path) -> Result<Probe> {
    let sfd = fs::open_dir(store)?;
    let tfd = fs::open_dir(target)?;
    let src_name = cstring(PROBE_FILE.as_bytes(), store)?;
    let seq = PROBE_SEQ.fetch_add(1, Ordering::Relaxed);
    let base = format!(".bindery-probe-{}-{seq}", std::process::id());
    let (lname, rname) = (
        cstring(format!("{base}-l").as_bytes(), target)?,
        cstring(format!("{base}-r").as_bytes(), target)?,
    );
    let link = fs::link_at(sfd.as_fd(), &src_name, tfd.as_fd(), &lname);
    if link.is_ok() {
        let _ = fs::unlink_at(tfd.as_fd(), &lname, false);
    }
    let src = fs::open_file_at(sfd.as_fd(), &src_name)
        .map_err(|e| Error::sys("open probe file", store.join(PROBE_FILE), e))?;
    let dst = fs::create_file_at(tfd.as_fd(), &rname, 0o600)
        .map_err(|e| Error::sys("create probe file", target.join(format!("{base}-r")), e))?;
    let reflink = fs::ficlone(dst.as_fd(), src.as_fd());
    drop(dst);
    if let Err(e) = fs::unlink_at(tfd.as_fd(), &rname, false) {
        debug!("cannot remove probe in {}: {e}", target.display());
    }
    let p = Probe { link, reflink };
    info!(
        "probe golden store {} -> {}: linkat {}, FICLONE {}",
        store.display(),
        target.display(),
        p.link.map_or_else(|e| e.to_string(), |()| "works".into()),
        p.reflink
            .map_or_else(|e| e.to_string(), |()| "works".into()),
    );
    Ok(p)
}

fn cstring(bytes: &[u8], ctx: &Path) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::invalid("path", format!("{}: NUL byte", ctx.display())))
}
