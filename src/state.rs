//! What is staged and published, persisted under `--state-dir` so that a
//! restarted daemon can rebuild its table. One protobuf record per volume,
//! written atomically (temp file, fsync, rename, fsync dir), mode 0600 in a
//! 0700 directory: records may hold node-stage secrets for self-healing.
//!
//! A record that cannot be read (a disk error, a hand edit) is never silently
//! dropped: it is moved to `quarantine/` under its volume's key, where it
//! stays until an operator removes it. While it is there, calls for that
//! volume clean up by path what the lost record described (see
//! src/node/quarantine.rs).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use log::error;
use protobuf::Message;

use crate::error::{Error, Result};
use crate::lifecycle::model::Volume;
use crate::lifecycle::wire;
use crate::proto::bindery::VolumeRecord;

pub struct StateStore {
    root: PathBuf,
    quarantine: PathBuf,
}

/// A record moved aside because it could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// The volume's key (`volume_key` of its id): all that is left of it.
    pub key: String,
    /// Where the unreadable bytes are now.
    pub path: PathBuf,
}

/// A record file that is not a readable record of the volume its name
/// says, and why.
pub type BadRecord = (PathBuf, String);

/// Volumes as read from their records: (volume id, volume), by id.
pub type Records = Vec<(String, Volume)>;

/// What `load_all` found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Records,
    /// Every record in quarantine, including those moved there earlier.
    pub quarantined: Vec<Quarantined>,
}

/// FNV-1a: a stable, dependency-free hash for turning volume ids (any
/// length, any characters) into file names.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A file-name-safe key for a volume id: the hash plus a readable prefix.
pub fn volume_key(id: &str) -> String {
    let readable: String = id
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{:016x}-{readable}", fnv1a(id.as_bytes()))
}

pub fn private_dir(path: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io("mkdir", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("chmod", path, e))
}

/// Write `data` to `path` atomically with mode 0600.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Make a rename or unlink in `dir` durable (best effort: the file itself
/// was synced before).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl StateStore {
    pub fn open(state_dir: &Path) -> Result<Self> {
        private_dir(state_dir)?;
        let root = state_dir.join("volumes");
        private_dir(&root)?;
        let quarantine = state_dir.join("quarantine");
        private_dir(&quarantine)?;
        Ok(StateStore { root, quarantine })
    }

    /// The store in `state_dir` as it is, creating nothing: for readers
    /// such as `bindery status`, which must not change the node.
    pub fn at(state_dir: &Path) -> Self {
        StateStore {
            root: state_dir.join("volumes"),
            quarantine: state_dir.join("quarantine"),
        }
    }

    /// Where volume `id`'s record is (whether or not it exists).
    pub fn record_path(&self, id: &str) -> PathBuf {
        self.root.join(format!("{}.pb", volume_key(id)))
    }

    /// A private per-volume directory (credentials, mounter log, caches).
    pub fn volume_dir(&self, id: &str) -> PathBuf {
        self.root.join(volume_key(id))
    }

    /// Persist volume `id` as `v`; an empty volume (nothing staged or
    /// published) deletes the file.
    pub fn save(&self, id: &str, v: &Volume) -> Result<()> {
        let path = self.record_path(id);
        if v.stage.is_none() && v.publications.is_empty() {
            return match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("remove", &path, e)),
            };
        }
        let bytes = wire::to_record(id, v)
            .write_to_bytes()
            .map_err(|e| Error::Record {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        write_atomic(&path, &bytes)
    }

    /// Every record on disk. One that cannot be read, or that names another
    /// volume than its file name says, is moved to the quarantine directory
    /// and reported with the ones already there.
    pub fn load_all(&self) -> Result<Loaded> {
        let (records, bad) = self.read_records()?;
        let mut out = Loaded {
            records,
            ..Loaded::default()
        };
        for (path, reason) in bad {
            match self.quarantine_file(&path) {
                Ok(moved) => error!(
                    "state {}: {reason}; moved to {} (its volume's mounts are cleaned up by \
                     path when the kubelet unpublishes and unstages it)",
                    path.display(),
                    moved.display()
                ),
                Err(e) => error!(
                    "state {}: {reason}; and it cannot be moved aside: {e}",
                    path.display()
                ),
            }
        }
        out.quarantined = self.quarantined();
        Ok(out)
    }

    /// Every record on disk, and each file that is not a readable record
    /// of the volume its name says, with why. Reads only.
    pub fn read_records(&self) -> Result<(Records, Vec<BadRecord>)> {
        let (mut records, mut bad) = (Vec::new(), Vec::new());
        let entries = fs::read_dir(&self.root).map_err(|e| Error::io("readdir", &self.root, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pb") {
                continue;
            }
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| VolumeRecord::parse_from_bytes(&b).map_err(|e| e.to_string()))
            {
                Ok(rec) if self.record_path(rec.get_volume_id()) == path => {
                    records.push(wire::from_record(&rec))
                }
                Ok(_) => bad.push((
                    path,
                    "the record names another volume than its file name".to_string(),
                )),
                Err(e) => bad.push((path, format!("unreadable: {e}"))),
            }
        }
        records.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((records, bad))
    }

    /// Move a record file into the quarantine directory under its key.
    fn quarantine_file(&self, path: &Path) -> Result<PathBuf> {
        let dest = self.quarantine.join(path.file_name().unwrap_or_default());
        fs::rename(path, &dest).map_err(|e| Error::io("rename", &dest, e))?;
        sync_dir(&self.quarantine);
        sync_dir(&self.root);
        Ok(dest)
    }

    /// The records in quarantine now, by key.
    pub fn quarantined(&self) -> Vec<Quarantined> {
        let Ok(entries) = fs::read_dir(&self.quarantine) else {
            return Vec::new();
        };
        let mut out: Vec<Quarantined> = entries
            .flatten()
            .filter_map(|e| {
                let path = e.path();
                let key = path.file_name()?.to_str()?.strip_suffix(".pb")?.to_string();
                Some(Quarantined { key, path })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// The quarantined record of volume `id`, if it has one now (an operator
    /// ends the quarantine by removing the file).
    pub fn quarantined_record(&self, id: &str) -> Option<PathBuf> {
        let path = self.quarantine.join(format!("{}.pb", volume_key(id)));
        path.exists().then_some(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{Bind, BindPhase, Publication, Stage, StagePhase};
    use std::os::unix::fs::MetadataExt;

    fn bind(target: &str) -> Publication {
        Publication::Bind(Bind {
            target: target.into(),
            readonly: false,
            fingerprint: String::new(),
            phase: BindPhase::Bound,
            generation: 1,
            mount_dev: String::new(),
            mount_flags: 0,
            stale_devs: vec![],
        })
    }

    #[test]
    fn keys_are_stable_and_safe() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let k = volume_key("bucket/../../etc\n");
        assert!(
            !k.contains('/') && !k.contains('\n') && !k.contains(".."),
            "{k}"
        );
        assert_ne!(volume_key("a/b"), volume_key("a_b"));
    }

    #[test]
    fn save_load_delete() {
        let dir = std::env::temp_dir().join(format!("bindery-state-{}", std::process::id()));
        let store = StateStore::open(&dir).unwrap();
        let mut v = Volume {
            stage: Some(Stage {
                staging_path: "/var/lib/kubelet/x".into(),
                parameters: Default::default(),
                secrets: [("secretAccessKey".to_string(), "s".to_string())].into(),
                fingerprint: String::new(),
                volume_mount_group: String::new(),
                phase: StagePhase::Ready,
                mounter: None,
                generation: 1,
            }),
            publications: vec![bind("/var/lib/kubelet/pods/1")],
        };
        let id = "bucket/prefix".to_string();
        store.save(&id, &v).unwrap();
        let meta = fs::metadata(store.record_path("bucket/prefix")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            store.load_all().unwrap().records,
            vec![(id.clone(), v.clone())]
        );
        v = Volume::default();
        store.save(&id, &v).unwrap();
        assert!(store.load_all().unwrap().records.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreadable_records_are_quarantined_not_forgotten() {
        let dir = std::env::temp_dir().join(format!("bindery-quarantine-{}", std::process::id()));
        let store = StateStore::open(&dir).unwrap();
        let good = Volume {
            stage: None,
            publications: vec![bind("/var/lib/kubelet/pods/2")],
        };
        store.save("good", &good).unwrap();
        // Garbage, and a valid record under another volume's file name.
        fs::write(store.record_path("torn"), b"\xff\xff\xff\x0f garbage").unwrap();
        fs::write(
            store.record_path("swapped"),
            wire::to_record("other", &good).write_to_bytes().unwrap(),
        )
        .unwrap();

        let loaded = store.load_all().unwrap();
        assert_eq!(loaded.records, vec![("good".to_string(), good)]);
        let keys: Vec<&str> = loaded.quarantined.iter().map(|q| q.key.as_str()).collect();
        let mut want = vec![volume_key("torn"), volume_key("swapped")];
        want.sort();
        assert_eq!(keys, want);
        assert!(!store.record_path("torn").exists());
        assert!(store.quarantined_record("torn").is_some());
        assert!(store.quarantined_record("good").is_none());
        assert_eq!(
            fs::metadata(dir.join("quarantine")).unwrap().mode() & 0o777,
            0o700
        );
        // Still reported after a restart; gone once an operator removes it.
        let again = store.load_all().unwrap();
        assert_eq!(again.quarantined.len(), 2);
        fs::remove_file(store.quarantined_record("torn").unwrap()).unwrap();
        assert!(store.quarantined_record("torn").is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
