//! The crate's one error type: the device's errors, and the model's
//! ([`ModelError`], shared with the CPU) for everything the decoder block
//! checks.

use qins_core::model::ModelError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum GpuError {
    #[error("unknown device '{0}' (expected auto, cpu or gpu)")]
    UnknownDevice(String),
    #[error(
        "no GPU found through Vulkan, Metal or DX12 ({0}); run with --device cpu, or install a GPU driver (on Debian, mesa-vulkan-drivers has a software one)"
    )]
    NoAdapter(String),
    #[error("cannot open the GPU '{adapter}': {source}")]
    RequestDevice {
        adapter: String,
        #[source]
        source: wgpu::RequestDeviceError,
    },
    #[error(
        "tensor '{name}' needs {bytes} bytes in one GPU buffer; this GPU binds at most {limit}"
    )]
    TooLarge {
        name: String,
        bytes: u64,
        limit: u64,
    },
    #[error("reading results back from the GPU: {0}")]
    Readback(String),
    #[error("the GPU reported an error: {0}")]
    Device(String),
    #[error("not supported on the GPU: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}
