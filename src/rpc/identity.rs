//! Identity service glue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use grpcio::{RpcContext, UnarySink};
use protobuf::well_known_types::BoolValue;

use super::inline;
use crate::proto::csi::*;
use crate::proto::csi_grpc::Identity;

#[derive(Clone)]
pub struct IdentityService {
    pub name: String,
    pub controller: bool,
    pub ready: Arc<AtomicBool>,
}

impl Identity for IdentityService {
    /// Spec: name "MUST follow domain name notation format", "MUST be 63
    /// characters or less"; vendor_version "This field is REQUIRED".
    fn get_plugin_info(
        &mut self,
        ctx: RpcContext,
        _req: GetPluginInfoRequest,
        sink: UnarySink<GetPluginInfoResponse>,
    ) {
        inline(&ctx, "GetPluginInfo", None, sink, || {
            let mut r = GetPluginInfoResponse::new();
            r.set_name(self.name.clone());
            r.set_vendor_version(env!("CARGO_PKG_VERSION").to_string());
            Ok(r)
        })
    }

    /// CONTROLLER_SERVICE only when this process serves the Controller.
    fn get_plugin_capabilities(
        &mut self,
        ctx: RpcContext,
        _req: GetPluginCapabilitiesRequest,
        sink: UnarySink<GetPluginCapabilitiesResponse>,
    ) {
        inline(&ctx, "GetPluginCapabilities", None, sink, || {
            let mut r = GetPluginCapabilitiesResponse::new();
            if self.controller {
                let mut svc = PluginCapability_Service::new();
                svc.set_field_type(PluginCapability_Service_Type::CONTROLLER_SERVICE);
                let mut cap = PluginCapability::new();
                cap.set_service(svc);
                r.mut_capabilities().push(cap);
            }
            Ok(r)
        })
    }

    /// Spec: "The plugin is still initializing ... a successful response
    /// SHALL be returned with a readiness value of false".
    fn probe(&mut self, ctx: RpcContext, _req: ProbeRequest, sink: UnarySink<ProbeResponse>) {
        inline(&ctx, "Probe", None, sink, || {
            let mut ready = BoolValue::new();
            ready.set_value(self.ready.load(Ordering::SeqCst));
            let mut r = ProbeResponse::new();
            r.set_ready(ready);
            Ok(r)
        })
    }
}
