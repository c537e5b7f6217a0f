//! The gRPC service and the prediction-log record come from the project's own protobuf
//! contracts (`proto/`), compiled with a vendored protoc: no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../proto");
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    // The descriptors of what the public port serves, for server reflection.
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("driftline_descriptor.bin");
    tonic_build::configure()
        .build_client(false)
        .file_descriptor_set_path(descriptors)
        .compile_protos(
            &[
                proto_root.join("driftline/features/v1/features.proto"),
                proto_root.join("driftline/inference/v1/inference.proto"),
                proto_root.join("driftline/dataplane/v1/control.proto"),
                proto_root.join("driftline/kserve/v2/grpc_predict_v2.proto"),
            ],
            &[proto_root.clone(), protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed={}", proto_root.display());
    Ok(())
}
