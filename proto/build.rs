//! Generates the spool.v1 code, and the client side of the subset of etcd's API the
//! coordinator uses, with a vendored protoc: a fresh machine needs only cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("spool_descriptor.bin"))
        .bytes(".spool.v1")
        .bytes(".spool.replication.v1")
        // The public API, and the internal replication protocol in its own file and
        // package.
        .compile_protos(
            &[
                "proto/spool/v1/spool.proto",
                "proto/spool/v1/replication.proto",
            ],
            &["proto"],
        )?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/etcd/rpc.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
