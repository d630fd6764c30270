//! The qinsd gRPC protocol (`qins.v1`, from `proto/qins.proto`) and what every
//! client shares: where the daemon's socket lives, how to connect to it, and
//! the error contract ([`errors`]).

pub mod errors;
pub mod socket;

/// Generated messages, client and server for package `qins.v1`.
pub mod v1 {
    tonic::include_proto!("qins.v1");

    /// Encoded descriptors of `qins.proto`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("qins_descriptor");
}

pub use socket::{ConnectError, connect, default_socket_path};
