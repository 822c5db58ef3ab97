//! What a population is asked to do (the strategy, who owns what it
//! creates) and what it did.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// How a pod's tree is filled from the golden copy (overlay is a mount, done elsewhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// `linkat` per file: the pod's files ARE the golden inodes (root-owned, read-only).
    Hardlink,
    /// `ioctl(FICLONE)` per file: copy-on-write copies, the pod's own (XFS reflink=1, btrfs).
    Reflink,
    /// `copy_file_range` per file: plain copies, for filesystems with neither.
    Copy,
}

impl Strategy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Hardlink => "hardlink",
            Strategy::Reflink => "reflink",
            Strategy::Copy => "copy",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = Error;

    /// Parses `hardlink`, `reflink` or `copy`; `auto` and `overlay` are resolved by the caller.
    fn from_str(s: &str) -> Result<Strategy> {
        match s {
            "hardlink" => Ok(Strategy::Hardlink),
            "reflink" => Ok(Strategy::Reflink),
            "copy" => Ok(Strategy::Copy),
            _ => Err(Error::invalid(
                "strategy",
                format!("unknown strategy {s:?} (expected hardlink, reflink or copy)"),
            )),
        }
    }
}

/// Who owns what population creates. `None` keeps the creator's (root's) id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits for every directory; `None` copies each golden directory's mode.
    pub mode: Option<u32>,
    /// fsGroup semantics (what the kubelet does for volumes it owns): `gid` is the pod's
    /// fsGroup, directories get group rwx and setgid, copied files group rw.
    pub group_writable: bool,
}

impl Owner {
    /// The mode a directory gets, from the golden directory's mode.
    pub fn dir_mode(&self, golden_mode: u32) -> u32 {
        let m = self.mode.unwrap_or(golden_mode) & 0o7777;
        if self.group_writable {
            m | 0o2070
        } else {
            m
        }
    }

    /// The mode a copied (not linked) file gets, from its masked golden mode.
    pub fn file_mode(&self, masked: u32) -> u32 {
        if self.group_writable {
            masked | 0o660
        } else {
            masked
        }
    }
}

/// What one population did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Regular files linked, cloned or copied.
    pub files: u64,
    /// Directories created below the destination root (the root itself not counted).
    pub dirs: u64,
    pub symlinks: u64,
    /// Fifos, sockets and device nodes left out.
    pub skipped: u64,
    /// Bytes cloned or copied (0 with hardlink, which does not stat files).
    pub bytes: u64,
}

impl Stats {
    pub(super) fn add(&mut self, o: &Stats) {
        self.files += o.files;
        self.dirs += o.dirs;
        self.symlinks += o.symlinks;
        self.skipped += o.skipped;
        self.bytes += o.bytes;
    }
}
