//! Generates Rust types for every `.proto` file under the workspace's `proto/` folder, tonic
//! clients and servers for the services among them, and a file descriptor set for reflection.
//!
//! The code goes to `OUT_DIR` and `src/lib.rs` `include!`s it: with a vendored `protoc` the
//! generation needs nothing installed and takes well under a second, so committing the output
//! would only add a copy that can drift from the `.proto` files.

use std::path::{Path, PathBuf};
use std::{env, fs, io};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut protos = Vec::new();
    collect_protos(&proto_root, &mut protos)?;
    protos.sort();
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // `bytes::Bytes` fields let a consumer hand a payload on without copying it.
    config.bytes(["."]);
    // `prost::Name` impls give each message its full name, which the bus uses as its schema header.
    config.enable_type_names();
    // One protoc run for every package: tonic's generator adds service code only to packages
    // that declare services (`pushfan.v1`), so the bus messages come out as plain prost types.
    // Transport helpers (`connect`) are left out so this crate needs only tonic's codegen
    // support; clients wrap a channel they build themselves.
    let descriptor_set = PathBuf::from(env::var("OUT_DIR")?).join("pushfan_descriptor.bin");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        // The descriptor set (imports included) feeds gRPC server reflection.
        .file_descriptor_set_path(descriptor_set)
        .compile_with_config(config, &protos, &[proto_root, protoc_bin_vendored::include_path()?])?;
    Ok(())
}

/// Every `.proto` file below `dir`, recursively.
fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
