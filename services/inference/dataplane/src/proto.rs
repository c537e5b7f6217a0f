//! The protobuf contracts, generated from `proto/` by `build.rs`, in their packages' module
//! tree (generated code names other packages by relative paths).

#![allow(clippy::all, clippy::pedantic, dead_code)]

pub mod driftline {
    pub mod features {
        pub mod v1 {
            tonic::include_proto!("driftline.features.v1");
        }
    }
    pub mod dataplane {
        pub mod v1 {
            tonic::include_proto!("driftline.dataplane.v1");
        }
    }
    pub mod inference {
        pub mod v1 {
            tonic::include_proto!("driftline.inference.v1");
        }
    }
}

/// The KServe Open Inference Protocol v2 (its package is `inference`).
pub mod kserve {
    tonic::include_proto!("inference");
}

/// Every compiled file's descriptor, for server reflection (`build.rs` writes it).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("driftline_descriptor");

pub use driftline::dataplane::v1 as control;
pub use driftline::features::v1 as features;
pub use driftline::inference::v1 as inference;
