//! Generated protobuf and grpcio code (see build.rs): `csi` / `csi_grpc` for
//! the CSI API, `bindery` for our own state records.
include!(concat!(env!("OUT_DIR"), "/mod.rs"));
