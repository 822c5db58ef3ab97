//! Node service glue. Stage and unstage may take seconds (a mounter starting
//! or flushing), so they run on the worker pool after an inline admission
//! that validates and takes the volume guard (ABORTED at once when busy).
//! Binds, unbinds and stats are short and answer inline.

use std::sync::Arc;

use grpcio::{RpcContext, UnarySink};

use super::{inline, log_request, offload, Subject};
use crate::cache::request::is_cache_request;
use crate::error::Error;
use crate::node::Node;
use crate::proto::csi::*;
use crate::proto::csi_grpc::Node as NodeApi;
use crate::workers::Workers;

#[derive(Clone)]
pub struct NodeService {
    pub node: Arc<Node>,
    /// Stage and unstage of S3 volumes.
    pub workers: Arc<Workers>,
    /// Cache volume publishes: a fill or a variant build that takes minutes
    /// never holds a thread that another volume's stage waits for.
    pub cache_workers: Arc<Workers>,
}

impl NodeApi for NodeService {
    fn node_stage_volume(
        &mut self,
        ctx: RpcContext,
        req: NodeStageVolumeRequest,
        sink: UnarySink<NodeStageVolumeResponse>,
    ) {
        log_request("NodeStageVolume", &req);
        let subject = Subject::new(req.get_volume_id(), req.get_staging_target_path());
        let node = self.node.clone();
        offload(
            &ctx,
            &self.workers,
            "NodeStageVolume",
            subject,
            sink,
            self.node.admit_stage(&req),
            move |(guard, args)| node.stage(&req, guard, args),
        )
    }

    fn node_unstage_volume(
        &mut self,
        ctx: RpcContext,
        req: NodeUnstageVolumeRequest,
        sink: UnarySink<NodeUnstageVolumeResponse>,
    ) {
        log_request("NodeUnstageVolume", &req);
        let subject = Subject::new(req.get_volume_id(), req.get_staging_target_path());
        let node = self.node.clone();
        offload(
            &ctx,
            &self.workers,
            "NodeUnstageVolume",
            subject,
            sink,
            self.node.admit_unstage(&req),
            move |(guard, staging)| node.unstage(guard, staging),
        )
    }

    /// A bind of a staged volume is short and answers inline; filling a cache
    /// volume takes time and runs on the cache pool.
    fn node_publish_volume(
        &mut self,
        ctx: RpcContext,
        req: NodePublishVolumeRequest,
        sink: UnarySink<NodePublishVolumeResponse>,
    ) {
        log_request("NodePublishVolume", &req);
        let subject = Subject::new(req.get_volume_id(), req.get_target_path());
        if is_cache_request(req.get_volume_context()) {
            let node = self.node.clone();
            let admission = self.node.admit_cache_publish(&req);
            offload(
                &ctx,
                &self.cache_workers,
                "NodePublishVolume",
                subject,
                sink,
                admission,
                move |(guard, target, creq, ro)| node.cache_publish(guard, target, creq, ro),
            )
        } else {
            inline(&ctx, "NodePublishVolume", Some(subject), sink, || {
                self.node.publish(&req)
            })
        }
    }

    fn node_unpublish_volume(
        &mut self,
        ctx: RpcContext,
        req: NodeUnpublishVolumeRequest,
        sink: UnarySink<NodeUnpublishVolumeResponse>,
    ) {
        log_request("NodeUnpublishVolume", &req);
        let subject = Subject::new(req.get_volume_id(), req.get_target_path());
        inline(&ctx, "NodeUnpublishVolume", Some(subject), sink, || {
            self.node.unpublish(&req)
        })
    }

    fn node_get_volume_stats(
        &mut self,
        ctx: RpcContext,
        req: NodeGetVolumeStatsRequest,
        sink: UnarySink<NodeGetVolumeStatsResponse>,
    ) {
        inline(&ctx, "NodeGetVolumeStats", None, sink, || {
            self.node.stats(&req)
        })
    }

    fn node_expand_volume(
        &mut self,
        ctx: RpcContext,
        _req: NodeExpandVolumeRequest,
        sink: UnarySink<NodeExpandVolumeResponse>,
    ) {
        inline(&ctx, "NodeExpandVolume", None, sink, || {
            Err(Error::Unimplemented("NodeExpandVolume"))
        })
    }

    fn node_get_capabilities(
        &mut self,
        ctx: RpcContext,
        _req: NodeGetCapabilitiesRequest,
        sink: UnarySink<NodeGetCapabilitiesResponse>,
    ) {
        inline(&ctx, "NodeGetCapabilities", None, sink, || {
            Ok(self.node.get_capabilities())
        })
    }

    fn node_get_info(
        &mut self,
        ctx: RpcContext,
        _req: NodeGetInfoRequest,
        sink: UnarySink<NodeGetInfoResponse>,
    ) {
        inline(&ctx, "NodeGetInfo", None, sink, || Ok(self.node.get_info()))
    }
}
