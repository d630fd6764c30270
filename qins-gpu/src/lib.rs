//! QINS models on the GPU through wgpu: Metal on macOS, Vulkan on Linux
//! and Windows, DX12, with one set of WGSL compute shaders.
//!
//! Codes stay codes on the GPU: each matrix is uploaded as its 8-bit codes
//! (four per u32), its packed sign bits and its rows' nibble tables
//! ([`GpuMatrix`]); the shaders form the magnitudes in workgroup memory and
//! decode on the fly, exactly as the CPU reference does.

pub mod bench;
pub mod device;
mod error;
mod kernel;
pub mod matmul;
pub mod matrix;
pub mod model;
pub mod ops;
pub mod shaders;

pub use device::{DeviceChoice, GpuContext};
pub use error::GpuError;
pub use matmul::QinsMatmul;
pub use matrix::GpuMatrix;
pub use model::{GpuCache, GpuModel};

#[cfg(test)]
mod test_gpu;
