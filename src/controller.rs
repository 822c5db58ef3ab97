//! The Controller service as plain functions. bindery has no S3 client: a
//! volume is a prefix inside the StorageClass's bucket, which s3fs and rclone
//! mount even before it exists (the first write creates it). Data is only
//! touched through a short-lived mount, when DeleteVolume must reclaim it.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use log::{info, warn};
use protobuf::Message;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::mounter::{self, VolumeFiles};
use crate::proto::bindery::CreatedVolume;
use crate::proto::csi::*;
use crate::state::{fnv1a, private_dir, volume_key, write_atomic};
use crate::validate;
use crate::volumes::{Op, VolumeTable};

/// StorageClass parameters the controller understands: the mount parameters
/// plus `reclaimData`.
pub const RECLAIM_KEY: &str = "reclaimData";

pub struct Controller {
    cfg: Arc<Config>,
    dir: PathBuf,
    table: Arc<VolumeTable<()>>,
}

/// A prefix safe for S3 keys derived from a CO volume name: lower case
/// [a-z0-9-.], at most 100 characters (long names keep a hash suffix so that
/// two names never share a prefix by truncation).
pub fn prefix_for_name(name: &str) -> String {
    let clean: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean.trim_matches(|c| c == '-' || c == '.').to_string();
    if clean.len() <= 100 && clean == name && !clean.is_empty() {
        clean
    } else {
        let head: String = clean.chars().take(83).collect();
        format!("{head}-{:016x}", fnv1a(name.as_bytes()))
            .trim_start_matches('-')
            .to_string()
    }
}

impl Controller {
    pub fn new(cfg: Arc<Config>) -> Result<Self> {
        let dir = cfg.state_dir.join("controller");
        private_dir(&cfg.state_dir)?;
        private_dir(&dir)?;
        Ok(Controller {
            cfg,
            dir,
            table: Arc::new(VolumeTable::new()),
        })
    }

    fn record_path(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{}.pb", volume_key(volume_id)))
    }

    fn load(&self, volume_id: &str) -> Result<Option<CreatedVolume>> {
        let path = self.record_path(volume_id);
        match fs::read(&path) {
            Ok(b) => CreatedVolume::parse_from_bytes(&b)
                .map(Some)
                .map_err(|e| Error::Record {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path, e)),
        }
    }

    pub fn get_capabilities(&self) -> ControllerGetCapabilitiesResponse {
        let mut rpc = ControllerServiceCapability_RPC::new();
        rpc.set_field_type(ControllerServiceCapability_RPC_Type::CREATE_DELETE_VOLUME);
        let mut cap = ControllerServiceCapability::new();
        cap.set_rpc(rpc);
        let mut r = ControllerGetCapabilitiesResponse::new();
        r.mut_capabilities().push(cap);
        r
    }

    /// Spec: "name ... This field is REQUIRED", "volume_capabilities ... This
    /// field is REQUIRED"; "If a volume corresponding to the specified volume
    /// name already exists, is accessible from accessibility_requirements and
    /// is compatible with the specified capacity_range, volume_capabilities
    /// and parameters ... the Plugin MUST reply 0 OK"; otherwise ALREADY_EXISTS.
    pub fn create_volume(&self, req: &CreateVolumeRequest) -> Result<CreateVolumeResponse> {
        let name = validate::required("name", req.get_name())?;
        if req.get_volume_capabilities().is_empty() {
            return Err(Error::MissingField("volume_capabilities"));
        }
        if name.chars().any(|c| c.is_control() && !c.is_whitespace()) || name.len() > 1024 {
            return Err(Error::invalid(
                "name",
                "contains control characters or is too long",
            ));
        }
        for cap in req.get_volume_capabilities() {
            validate::capability("volume_capabilities", cap)?;
        }
        if req.has_volume_content_source() {
            return Err(Error::Unsupported {
                field: "volume_content_source",
                reason: "bindery cannot clone volumes or restore snapshots".into(),
            });
        }
        let range = req.get_capacity_range();
        let (required, limit) = (range.get_required_bytes(), range.get_limit_bytes());
        if required < 0 || limit < 0 || (limit > 0 && required > limit) {
            return Err(Error::OutOfRange(format!(
                "required_bytes {required} / limit_bytes {limit}"
            )));
        }
        let params = req.get_parameters();
        let mut mount_params: HashMap<String, String> = params
            .iter()
            .filter(|(k, _)| k.as_str() != RECLAIM_KEY && !mounter::is_co_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(v) = params.get(RECLAIM_KEY) {
            if v != "true" && v != "false" {
                return Err(Error::invalid(
                    "parameters.reclaimData",
                    "must be \"true\" or \"false\"",
                ));
            }
        }
        let bucket = mount_params
            .get("bucket")
            .cloned()
            .ok_or(Error::MissingField("parameters.bucket"))?;
        let base = mount_params
            .get("prefix")
            .map(|p| p.trim_matches('/').to_string())
            .unwrap_or_default();
        let own = prefix_for_name(name);
        let prefix = if base.is_empty() {
            own
        } else {
            format!("{base}/{own}")
        };
        mount_params.insert("prefix".into(), prefix.clone());
        let volume_id = format!("{bucket}/{prefix}");
        // Same checks a node will make: refuse now what could never mount.
        // Secrets are the provisioner's, which need not carry an endpoint.
        let mut probe_secrets = req.get_secrets().clone();
        probe_secrets
            .entry("endpoint".into())
            .or_insert_with(|| "http://unused".into());
        mounter::parse_spec_for(&volume_id, &mount_params, &probe_secrets, &self.cfg).map_err(
            |e| match e {
                Error::InvalidField { field, reason } => Error::InvalidField {
                    field: field.replace("volume_context", "parameters"),
                    reason,
                },
                other => other,
            },
        )?;

        let _guard = self.table.acquire(&volume_id, Op::Long("CreateVolume"))?;
        let mut wanted = CreatedVolume::new();
        wanted.set_name(name.to_string());
        wanted.set_volume_id(volume_id.clone());
        wanted.set_capacity_bytes(required);
        wanted.set_parameters(params.clone());
        wanted.set_volume_context(mount_params);
        let rec = match self.load(&volume_id)? {
            Some(old) => {
                let cap_ok = old.get_capacity_bytes() >= required
                    && (limit == 0 || old.get_capacity_bytes() <= limit);
                if old.get_name() != name || old.get_parameters() != params || !cap_ok {
                    return Err(Error::exists(
                        &volume_id,
                        format!("volume {name:?} exists with another capacity or parameters"),
                    ));
                }
                old
            }
            None => {
                let bytes = wanted.write_to_bytes().map_err(|e| Error::Record {
                    path: self.record_path(&volume_id),
                    reason: e.to_string(),
                })?;
                write_atomic(&self.record_path(&volume_id), &bytes)?;
                info!("created volume {volume_id:?} for {name:?}");
                wanted
            }
        };
        let mut v = Volume::new();
        v.set_volume_id(rec.get_volume_id().to_string());
        v.set_capacity_bytes(rec.get_capacity_bytes());
        v.set_volume_context(rec.get_volume_context().clone());
        let mut resp = CreateVolumeResponse::new();
        resp.set_volume(v);
        Ok(resp)
    }

    /// Spec: "volume_id ... REQUIRED"; "If a volume corresponding to the
    /// specified volume_id does not exist or the artifacts associated with
    /// the volume do not exist anymore, the Plugin MUST reply 0 OK."
    pub fn delete_volume(&self, req: &DeleteVolumeRequest) -> Result<DeleteVolumeResponse> {
        let id = validate::volume_id(req.get_volume_id())?;
        let _guard = self.table.acquire(id, Op::Long("DeleteVolume"))?;
        let Some(rec) = self.load(id)? else {
            // Idempotent by the spec; but a volume this controller never recorded (created
            // by a controller with another state dir, e.g. on another node) keeps its data
            // even if its StorageClass said reclaimData: say so.
            warn!(
                "delete volume {id:?}: no record in {}; its data, if any, is kept",
                self.dir.display()
            );
            return Ok(DeleteVolumeResponse::new());
        };
        if rec.get_parameters().get(RECLAIM_KEY).map(String::as_str) == Some("true") {
            self.reclaim(id, rec.get_volume_context(), req.get_secrets())?;
        }
        let path = self.record_path(id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &path, e)),
        }
        info!("deleted volume {id:?}");
        Ok(DeleteVolumeResponse::new())
    }

    /// Remove the prefix's data through a short-lived mount of it.
    fn reclaim(
        &self,
        id: &str,
        context: &HashMap<String, String>,
        secrets: &HashMap<String, String>,
    ) -> Result<()> {
        let spec = mounter::parse_spec_for(id, context, secrets, &self.cfg)?;
        let key = volume_key(id);
        let mnt = self.dir.join(format!("mnt-{key}"));
        fs::create_dir_all(&mnt).map_err(|e| Error::io("mkdir", &mnt, e))?;
        let files = VolumeFiles::new(self.dir.join(format!("files-{key}")));
        let run = mounter::start(id, &spec, &mnt, &files, &self.cfg)?;
        let mut result = Ok(());
        match fs::read_dir(&mnt) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let p = entry.path();
                    let r = match entry.file_type() {
                        Ok(t) if t.is_dir() => fs::remove_dir_all(&p),
                        _ => fs::remove_file(&p),
                    };
                    if let Err(e) = r {
                        result = Err(Error::io("remove", &p, e));
                        break;
                    }
                }
            }
            Err(e) => result = Err(Error::io("readdir", &mnt, e)),
        }
        mounter::stop(&mnt, run, self.cfg.unstage_grace);
        let _ = files.remove();
        let _ = fs::remove_dir(&mnt);
        result
    }

    /// Spec: "volume_id ... REQUIRED", "volume_capabilities ... REQUIRED";
    /// "Volume does not exist: 5 NOT_FOUND".
    pub fn validate_volume_capabilities(
        &self,
        req: &ValidateVolumeCapabilitiesRequest,
    ) -> Result<ValidateVolumeCapabilitiesResponse> {
        let id = validate::volume_id(req.get_volume_id())?;
        if req.get_volume_capabilities().is_empty() {
            return Err(Error::MissingField("volume_capabilities"));
        }
        let rec = self
            .load(id)?
            .ok_or_else(|| Error::VolumeNotFound(id.to_string()))?;
        let mut resp = ValidateVolumeCapabilitiesResponse::new();
        let unsupported = req
            .get_volume_capabilities()
            .iter()
            .find_map(|c| validate::capability("volume_capabilities", c).err());
        match unsupported {
            Some(e) => resp.set_message(e.to_string()),
            None => {
                let mut c = ValidateVolumeCapabilitiesResponse_Confirmed::new();
                c.set_volume_capabilities(req.get_volume_capabilities().into());
                c.set_volume_context(rec.get_volume_context().clone());
                c.set_parameters(req.get_parameters().clone());
                resp.set_confirmed(c);
            }
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_safe_and_distinct() {
        assert_eq!(prefix_for_name("pvc-1234"), "pvc-1234");
        let a = prefix_for_name("sanity-node-full-1-8EFF2AC8-B92C3188");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{a}"
        );
        assert_ne!(a, prefix_for_name("sanity-node-full-1-8eff2ac8-b92c3188"));
        let long = prefix_for_name(&"x".repeat(128));
        assert!(
            long.len() <= 100 && crate::validate::valid_prefix(&long),
            "{long}"
        );
        assert_ne!(long, prefix_for_name(&"x".repeat(127)));
        for odd in ["../etc", "a/b", "ÄÖ", "-", "."] {
            let p = prefix_for_name(odd);
            assert!(
                crate::validate::valid_prefix(&p) && !p.is_empty(),
                "{odd:?} -> {p:?}"
            );
        }
    }
}
