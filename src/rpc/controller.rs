//! Controller service glue. CreateVolume and DeleteVolume may mount the
//! bucket (DeleteVolume with reclaimData), so they run on the worker pool.

use std::sync::Arc;

use grpcio::{RpcContext, UnarySink};

use super::{inline, log_request, offload, Subject};
use crate::controller::Controller;
use crate::error::Error;
use crate::proto::csi::*;
use crate::proto::csi_grpc::Controller as ControllerApi;
use crate::workers::Workers;

#[derive(Clone)]
pub struct ControllerService {
    pub controller: Arc<Controller>,
    pub workers: Arc<Workers>,
}

macro_rules! unimplemented_rpcs {
    ($($fn:ident, $name:literal, $req:ty, $resp:ty;)*) => {
        $(
            fn $fn(&mut self, ctx: RpcContext, _req: $req, sink: UnarySink<$resp>) {
                inline(&ctx, $name, None, sink, || Err(Error::Unimplemented($name)))
            }
        )*
    };
}

impl ControllerApi for ControllerService {
    fn create_volume(
        &mut self,
        ctx: RpcContext,
        req: CreateVolumeRequest,
        sink: UnarySink<CreateVolumeResponse>,
    ) {
        let c = self.controller.clone();
        log_request("CreateVolume", &req);
        let subject = Subject::new(req.get_name(), "");
        offload(
            &ctx,
            &self.workers,
            "CreateVolume",
            subject,
            sink,
            Ok(()),
            move |()| c.create_volume(&req),
        )
    }

    fn delete_volume(
        &mut self,
        ctx: RpcContext,
        req: DeleteVolumeRequest,
        sink: UnarySink<DeleteVolumeResponse>,
    ) {
        let c = self.controller.clone();
        log_request("DeleteVolume", &req);
        let subject = Subject::new(req.get_volume_id(), "");
        offload(
            &ctx,
            &self.workers,
            "DeleteVolume",
            subject,
            sink,
            Ok(()),
            move |()| c.delete_volume(&req),
        )
    }

    fn validate_volume_capabilities(
        &mut self,
        ctx: RpcContext,
        req: ValidateVolumeCapabilitiesRequest,
        sink: UnarySink<ValidateVolumeCapabilitiesResponse>,
    ) {
        inline(&ctx, "ValidateVolumeCapabilities", None, sink, || {
            self.controller.validate_volume_capabilities(&req)
        })
    }

    fn controller_get_capabilities(
        &mut self,
        ctx: RpcContext,
        _req: ControllerGetCapabilitiesRequest,
        sink: UnarySink<ControllerGetCapabilitiesResponse>,
    ) {
        inline(&ctx, "ControllerGetCapabilities", None, sink, || {
            Ok(self.controller.get_capabilities())
        })
    }

    unimplemented_rpcs! {
        controller_publish_volume, "ControllerPublishVolume", ControllerPublishVolumeRequest, ControllerPublishVolumeResponse;
        controller_unpublish_volume, "ControllerUnpublishVolume", ControllerUnpublishVolumeRequest, ControllerUnpublishVolumeResponse;
        list_volumes, "ListVolumes", ListVolumesRequest, ListVolumesResponse;
        get_capacity, "GetCapacity", GetCapacityRequest, GetCapacityResponse;
        create_snapshot, "CreateSnapshot", CreateSnapshotRequest, CreateSnapshotResponse;
        delete_snapshot, "DeleteSnapshot", DeleteSnapshotRequest, DeleteSnapshotResponse;
        list_snapshots, "ListSnapshots", ListSnapshotsRequest, ListSnapshotsResponse;
        controller_expand_volume, "ControllerExpandVolume", ControllerExpandVolumeRequest, ControllerExpandVolumeResponse;
        controller_get_volume, "ControllerGetVolume", ControllerGetVolumeRequest, ControllerGetVolumeResponse;
        controller_modify_volume, "ControllerModifyVolume", ControllerModifyVolumeRequest, ControllerModifyVolumeResponse;
    }
}
