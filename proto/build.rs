//! Compiles `qins.proto` with the protoc bundled by `protoc-bin-vendored`, so
//! building needs no system protoc. The descriptor set is kept for server
//! reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=qins.proto");
    tonic_prost_build::configure()
        // Clients print Stats as JSON with the proto's field names.
        .type_attribute("qins.v1.StatsReply", "#[derive(serde::Serialize)]")
        .type_attribute("qins.v1.GenerationDefaults", "#[derive(serde::Serialize)]")
        .file_descriptor_set_path(out_dir.join("qins_descriptor.bin"))
        .compile_protos(&["qins.proto"], &["."])?;
    Ok(())
}
