//! Generates the CSI messages and grpcio service code from proto/*.proto
//! without a `protoc` binary.
//!
//! protobuf-codegen-pure 2.x drops `service` blocks, so the route is:
//! parse with protobuf-parse 3 (pure Rust), serialise the descriptors, read
//! them back as rust-protobuf 2.28 descriptors, then run protobuf-codegen 2.28
//! (messages) and grpcio-compiler 0.13 (services) into OUT_DIR.
//!
//! A build script reports failure by panicking: `expect` is how it says why.
#![allow(clippy::expect_used)]

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use protobuf3::Message as _;

const PROTOS: &[&str] = &["csi.proto", "bindery.proto"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for p in PROTOS {
        println!("cargo:rerun-if-changed=proto/{p}");
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    let parsed = protobuf_parse::Parser::new()
        .pure()
        .include("proto")
        .inputs(PROTOS.iter().map(|p| Path::new("proto").join(p)))
        .parse_and_typecheck()
        .expect("proto/ must parse");

    // v3 descriptors → bytes → v2 descriptors (the wire format is the same).
    let mut set3 = protobuf3::descriptor::FileDescriptorSet::new();
    set3.file = parsed.file_descriptors;
    let bytes = set3.write_to_bytes().expect("serialise descriptors");
    let set2 = protobuf::descriptor::FileDescriptorSet::parse_from_bytes(&bytes)
        .expect("v2 reads v3 descriptors");
    let files: Vec<String> = PROTOS.iter().map(|p| p.to_string()).collect();

    let customize = protobuf_codegen::Customize::default();
    let mut mods = String::new();
    let generated = protobuf_codegen::gen(set2.get_file(), &files, &customize)
        .into_iter()
        .chain(grpcio_compiler::codegen::gen(set2.get_file(), &files));
    for result in generated {
        let stem = result.name.trim_end_matches(".rs").to_string();
        fs::write(out.join(&result.name), &result.content).expect("write generated code");
        mods.push_str(&format!(
            "#[allow(warnings, clippy::all, clippy::pedantic)]\n\
             #[path = {:?}]\npub mod {stem};\n",
            out.join(&result.name)
        ));
    }
    fs::write(out.join("mod.rs"), mods).expect("write mod.rs");
    commit();
}

/// BINDERY_COMMIT for `bindery_build_info`: the commit being built, when the
/// source is a git checkout ("unknown" otherwise, e.g. from a tarball).
/// Rebuilt when HEAD moves: the git dir's HEAD and refs are watched where
/// git says they are (a worktree's .git is a file, not that dir).
fn commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BINDERY_COMMIT={commit}");
    for what in ["HEAD", "packed-refs", "refs/heads"] {
        if let Some(path) = git(&["rev-parse", "--git-path", what]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}
