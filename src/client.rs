//! `bindery csi <rpc> [flags]`: a small CSI client for operators (and the
//! tests): it plays the kubelet or the provisioner against a socket, prints
//! responses as text and exits with the gRPC status code.

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;
use std::time::Duration;

use grpcio::{CallOption, ChannelBuilder, EnvBuilder, RpcStatusCode};
use protobuf::Message;

use crate::config::{parse_endpoint, DEFAULT_ENDPOINT};
use crate::proto::csi::*;
use crate::proto::csi_grpc::{ControllerClient, IdentityClient, NodeClient};

pub const HELP: &str = "\
bindery csi: talk CSI to a running daemon

USAGE:
    bindery csi <rpc> [FLAGS]

RPCS:
    plugin-info | plugin-capabilities | probe
    node-info | node-capabilities
    node-stage | node-unstage | node-publish | node-unpublish | node-stats
    controller-capabilities | create-volume | delete-volume | validate-volume

FLAGS:
    --endpoint URL         daemon socket (CSI_ENDPOINT, default unix:///csi/csi.sock)
    --volume-id ID
    --staging-path PATH    staging_target_path
    --target-path PATH     target_path (publish/unpublish) or volume_path (stats)
    --readonly             publish read-only
    --access-mode MODE     single-node-writer (default), single-node-reader-only,
                           multi-node-reader-only, multi-node-single-writer,
                           multi-node-multi-writer
    --block                ask for a block volume (bindery refuses it)
    --no-capability        send no volume capability
    --mount-flag FLAG      repeatable
    --mount-group GID      volume_mount_group (fsGroup)
    --param KEY=VALUE      volume context / parameters, repeatable
    --secret KEY=VALUE     secrets, repeatable
    --secrets-file FILE    secrets as KEY=VALUE lines
    --name NAME            CreateVolume name
    --capacity BYTES       CreateVolume required_bytes (and limit_bytes)
    --timeout SECS         call deadline (default 120)

Exit status: 0 on OK, otherwise the gRPC status code (e.g. 3 INVALID_ARGUMENT,
5 NOT_FOUND, 9 FAILED_PRECONDITION, 10 ABORTED, 13 INTERNAL); 64 for usage errors.
";

#[derive(Default)]
struct Args {
    endpoint: String,
    volume_id: String,
    staging: String,
    target: String,
    readonly: bool,
    mode: String,
    block: bool,
    no_capability: bool,
    mount_flags: Vec<String>,
    mount_group: String,
    params: HashMap<String, String>,
    secrets: HashMap<String, String>,
    name: String,
    capacity: i64,
    timeout: u64,
}

fn key_value(flag: &str, v: &str) -> Result<(String, String), String> {
    v.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{flag} expects KEY=VALUE, got {v:?}"))
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        endpoint: std::env::var("CSI_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.into()),
        mode: "single-node-writer".into(),
        timeout: 120,
        ..Args::default()
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--endpoint" => a.endpoint = value()?,
            "--volume-id" => a.volume_id = value()?,
            "--staging-path" => a.staging = value()?,
            "--target-path" => a.target = value()?,
            "--readonly" => a.readonly = true,
            "--block" => a.block = true,
            "--no-capability" => a.no_capability = true,
            "--access-mode" => a.mode = value()?,
            "--mount-flag" => a.mount_flags.push(value()?),
            "--mount-group" => a.mount_group = value()?,
            "--param" => {
                let (k, v) = key_value(&flag, &value()?)?;
                a.params.insert(k, v);
            }
            "--secret" => {
                let (k, v) = key_value(&flag, &value()?)?;
                a.secrets.insert(k, v);
            }
            "--secrets-file" => {
                let path = value()?;
                let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
                for line in text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                {
                    let (k, v) = key_value("--secrets-file", line)?;
                    a.secrets.insert(k, v);
                }
            }
            "--name" => a.name = value()?,
            "--capacity" => {
                let v = value()?;
                a.capacity = v
                    .parse()
                    .map_err(|_| format!("--capacity: {v:?} is not a number"))?;
            }
            "--timeout" => {
                let v = value()?;
                a.timeout = v
                    .parse()
                    .map_err(|_| format!("--timeout: {v:?} is not a number"))?;
            }
            other => return Err(format!("unknown flag {other:?} (see bindery csi --help)")),
        }
    }
    Ok(a)
}

fn capability(a: &Args) -> Result<VolumeCapability, String> {
    use VolumeCapability_AccessMode_Mode as M;
    let mode = match a.mode.as_str() {
        "single-node-writer" => M::SINGLE_NODE_WRITER,
        "single-node-reader-only" => M::SINGLE_NODE_READER_ONLY,
        "multi-node-reader-only" => M::MULTI_NODE_READER_ONLY,
        "multi-node-single-writer" => M::MULTI_NODE_SINGLE_WRITER,
        "multi-node-multi-writer" => M::MULTI_NODE_MULTI_WRITER,
        other => return Err(format!("--access-mode: unknown mode {other:?}")),
    };
    let mut cap = VolumeCapability::new();
    if a.block {
        cap.set_block(VolumeCapability_BlockVolume::new());
    } else {
        let mut m = VolumeCapability_MountVolume::new();
        m.set_mount_flags(a.mount_flags.clone().into());
        m.set_volume_mount_group(a.mount_group.clone());
        cap.set_mount(m);
    }
    let mut am = VolumeCapability_AccessMode::new();
    am.set_mode(mode);
    cap.set_access_mode(am);
    Ok(cap)
}

fn print(msg: &dyn Message) {
    let text = protobuf::text_format::print_to_string(msg);
    if text.is_empty() {
        println!("OK");
    } else {
        // One field per line reads better than protobuf's single line.
        println!("{}", text.replace("} ", "}\n").trim_end());
    }
}

/// Run `bindery csi ARGS`; returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    if args.is_empty() || args[0] == "--help" || args[0] == "-h" {
        print!("{HELP}");
        return if args.is_empty() { 64 } else { 0 };
    }
    let rpc = args[0].as_str();
    let a = match parse_args(&args[1..]) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bindery csi: {e}");
            return 64;
        }
    };
    let path = match parse_endpoint(&a.endpoint) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bindery csi: {e}");
            return 64;
        }
    };
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    let ch = ChannelBuilder::new(env).connect(&format!("unix:{}", path.display()));
    let opt = || CallOption::default().timeout(Duration::from_secs(a.timeout));
    let id = IdentityClient::new(ch.clone());
    let node = NodeClient::new(ch.clone());
    let ctl = ControllerClient::new(ch);
    let cap = || capability(&a);

    macro_rules! call {
        ($result:expr) => {
            match $result {
                Ok(resp) => {
                    print(&resp);
                    0
                }
                Err(grpcio::Error::RpcFailure(s)) => {
                    eprintln!("{:?}: {}", s.code(), s.message());
                    let code: i32 = s.code().into();
                    code
                }
                Err(e) => {
                    eprintln!("bindery csi: {e}");
                    let code: i32 = RpcStatusCode::UNAVAILABLE.into();
                    code
                }
            }
        };
    }
    let with_cap = |f: &mut dyn FnMut(Option<VolumeCapability>) -> i32| -> i32 {
        if a.no_capability {
            return f(None);
        }
        match cap() {
            Ok(c) => f(Some(c)),
            Err(e) => {
                eprintln!("bindery csi: {e}");
                64
            }
        }
    };

    match rpc {
        "plugin-info" => call!(id.get_plugin_info_opt(&GetPluginInfoRequest::new(), opt())),
        "plugin-capabilities" => {
            call!(id.get_plugin_capabilities_opt(&GetPluginCapabilitiesRequest::new(), opt()))
        }
        "probe" => call!(id.probe_opt(&ProbeRequest::new(), opt())),
        "node-info" => call!(node.node_get_info_opt(&NodeGetInfoRequest::new(), opt())),
        "node-capabilities" => {
            call!(node.node_get_capabilities_opt(&NodeGetCapabilitiesRequest::new(), opt()))
        }
        "controller-capabilities" => {
            call!(ctl
                .controller_get_capabilities_opt(&ControllerGetCapabilitiesRequest::new(), opt()))
        }
        "node-stage" => with_cap(&mut |c| {
            let mut r = NodeStageVolumeRequest::new();
            r.set_volume_id(a.volume_id.clone());
            r.set_staging_target_path(a.staging.clone());
            if let Some(c) = c {
                r.set_volume_capability(c);
            }
            r.set_volume_context(a.params.clone());
            r.set_secrets(a.secrets.clone());
            call!(node.node_stage_volume_opt(&r, opt()))
        }),
        "node-unstage" => {
            let mut r = NodeUnstageVolumeRequest::new();
            r.set_volume_id(a.volume_id.clone());
            r.set_staging_target_path(a.staging.clone());
            call!(node.node_unstage_volume_opt(&r, opt()))
        }
        "node-publish" => with_cap(&mut |c| {
            let mut r = NodePublishVolumeRequest::new();
            r.set_volume_id(a.volume_id.clone());
            r.set_staging_target_path(a.staging.clone());
            r.set_target_path(a.target.clone());
            r.set_readonly(a.readonly);
            if let Some(c) = c {
                r.set_volume_capability(c);
            }
            r.set_volume_context(a.params.clone());
            r.set_secrets(a.secrets.clone());
            call!(node.node_publish_volume_opt(&r, opt()))
        }),
        "node-unpublish" => {
            let mut r = NodeUnpublishVolumeRequest::new();
            r.set_volume_id(a.volume_id.clone());
            r.set_target_path(a.target.clone());
            call!(node.node_unpublish_volume_opt(&r, opt()))
        }
        "node-stats" => {
            let mut r = NodeGetVolumeStatsRequest::new();
            r.set_volume_id(a.volume_id.clone());
            r.set_volume_path(a.target.clone());
            call!(node.node_get_volume_stats_opt(&r, opt()))
        }
        "create-volume" => with_cap(&mut |c| {
            let mut r = CreateVolumeRequest::new();
            r.set_name(a.name.clone());
            if let Some(c) = c {
                r.mut_volume_capabilities().push(c);
            }
            if a.capacity > 0 {
                let mut range = CapacityRange::new();
                range.set_required_bytes(a.capacity);
                range.set_limit_bytes(a.capacity);
                r.set_capacity_range(range);
            }
            r.set_parameters(a.params.clone());
            r.set_secrets(a.secrets.clone());
            call!(ctl.create_volume_opt(&r, opt()))
        }),
        "delete-volume" => {
            let mut r = DeleteVolumeRequest::new();
            r.set_volume_id(a.volume_id.clone());
            r.set_secrets(a.secrets.clone());
            call!(ctl.delete_volume_opt(&r, opt()))
        }
        "validate-volume" => with_cap(&mut |c| {
            let mut r = ValidateVolumeCapabilitiesRequest::new();
            r.set_volume_id(a.volume_id.clone());
            if let Some(c) = c {
                r.mut_volume_capabilities().push(c);
            }
            r.set_volume_context(a.params.clone());
            call!(ctl.validate_volume_capabilities_opt(&r, opt()))
        }),
        other => {
            eprintln!("bindery csi: unknown rpc {other:?} (see bindery csi --help)");
            64
        }
    }
}
