//! The crate's one error type.

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
    #[error("cancelled")]
    Cancelled,
    #[error("the context is full: {needed} tokens needed, the cache holds {capacity}")]
    ContextFull { needed: usize, capacity: usize },
    #[error("token id {0} is outside the vocabulary")]
    TokenOutOfRange(u32),
    #[error("no tokens to run")]
    NoTokens,
    #[error("batched decode step: {0}")]
    Batch(String),
}
