//! Which device runs the model, and the opened GPU.
//!
//! `auto` takes a real GPU (discrete, integrated or virtual) and never a
//! software one: a CPU adapter (Mesa's lavapipe, WARP) is slower than the
//! QINS CPU kernels. `gpu` insists and accepts a software adapter (the
//! tests run on lavapipe); `cpu` never opens a GPU.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::GpuError;

/// The device a model runs on, as the user asked for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A real GPU when there is one, else the CPU.
    #[default]
    Auto,
    /// The CPU kernels.
    Cpu,
    /// A GPU, software adapters included; an error when there is none.
    Gpu,
}

impl DeviceChoice {
    pub const ALL: [DeviceChoice; 3] = [DeviceChoice::Auto, DeviceChoice::Cpu, DeviceChoice::Gpu];

    pub fn name(self) -> &'static str {
        match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Gpu => "gpu",
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DeviceChoice {
    type Err = GpuError;
    fn from_str(s: &str) -> Result<Self, GpuError> {
        Self::ALL
            .into_iter()
            .find(|choice| choice.name() == s)
            .ok_or_else(|| GpuError::UnknownDevice(s.to_string()))
    }
}

/// What the machine offers: one line per adapter, for logs and errors.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: wgpu::Backend,
    pub device_type: wgpu::DeviceType,
}

impl AdapterSummary {
    fn of(info: &wgpu::AdapterInfo) -> Self {
        Self {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
        }
    }

    /// A software rasterizer/compute driver rather than a GPU.
    pub fn is_software(&self) -> bool {
        self.device_type == wgpu::DeviceType::Cpu
    }
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {})",
            self.name,
            backend_name(self.backend),
            device_type_name(self.device_type)
        )
    }
}

pub fn backend_name(backend: wgpu::Backend) -> &'static str {
    match backend {
        wgpu::Backend::Vulkan => "Vulkan",
        wgpu::Backend::Metal => "Metal",
        wgpu::Backend::Dx12 => "DX12",
        wgpu::Backend::Gl => "GL",
        wgpu::Backend::BrowserWebGpu => "WebGPU",
        wgpu::Backend::Noop => "none",
    }
}

pub fn device_type_name(device_type: wgpu::DeviceType) -> &'static str {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Cpu => "software",
        wgpu::DeviceType::Other => "other",
    }
}

/// The backends qins uses: those with compute shaders and storage buffers
/// large enough for a model (no GL).
const BACKENDS: wgpu::Backends = wgpu::Backends::PRIMARY;

fn instance() -> wgpu::Instance {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = BACKENDS;
    wgpu::Instance::new(descriptor)
}

/// Every adapter the machine offers through Vulkan, Metal and DX12.
pub fn adapters() -> Vec<AdapterSummary> {
    pollster::block_on(instance().enumerate_adapters(BACKENDS))
        .iter()
        .map(|adapter| AdapterSummary::of(&adapter.get_info()))
        .collect()
}

/// Opens the device `choice` asks for: `None` for the CPU (asked for, or
/// `auto` with no real GPU: the caller logs that), an error when `gpu`
/// finds no adapter at all.
pub fn open(choice: DeviceChoice) -> Result<Option<GpuContext>, GpuError> {
    if choice == DeviceChoice::Cpu {
        return Ok(None);
    }
    let instance = instance();
    let mut candidates = pollster::block_on(instance.enumerate_adapters(BACKENDS));
    // Best first: discrete, integrated, virtual, other, software.
    candidates.sort_by_key(|adapter| preference(adapter.get_info().device_type));
    let accepted = candidates.into_iter().find(|adapter| {
        choice == DeviceChoice::Gpu || adapter.get_info().device_type != wgpu::DeviceType::Cpu
    });
    match (accepted, choice) {
        (Some(adapter), _) => GpuContext::new(adapter).map(Some),
        (None, DeviceChoice::Auto) => Ok(None),
        (None, _) => Err(GpuError::NoAdapter(describe(&adapters()))),
    }
}

/// Why `auto` chose the CPU, for its one log line.
pub fn no_gpu_reason() -> String {
    describe(&adapters())
}

fn describe(adapters: &[AdapterSummary]) -> String {
    if adapters.is_empty() {
        return "no Vulkan, Metal or DX12 adapter".into();
    }
    let list: Vec<String> = adapters.iter().map(ToString::to_string).collect();
    format!("adapters: {}", list.join("; "))
}

fn preference(device_type: wgpu::DeviceType) -> u8 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// An opened GPU: the device and queue every GPU object is made with, what
/// it is, and the bytes qins has allocated on it.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    adapter: AdapterSummary,
    limits: wgpu::Limits,
    shader_f16: bool,
    allocated: Arc<AtomicU64>,
    /// The first error the device reported outside an operation that
    /// checks for one (validation, out of memory, device lost).
    device_error: Arc<Mutex<Option<String>>>,
}

impl GpuContext {
    fn new(adapter: wgpu::Adapter) -> Result<Self, GpuError> {
        let summary = AdapterSummary::of(&adapter.get_info());
        let shader_f16 = adapter.features().contains(wgpu::Features::SHADER_F16);
        let required_features = if shader_f16 {
            wgpu::Features::SHADER_F16
        } else {
            wgpu::Features::empty()
        };
        // Everything the adapter allows: model tensors want the largest
        // storage buffers it can bind.
        let limits = adapter.limits();
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("qins"),
            required_features,
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&descriptor)).map_err(|source| {
                GpuError::RequestDevice {
                    adapter: summary.to_string(),
                    source,
                }
            })?;
        let device_error = Arc::new(Mutex::new(None));
        let sink = device_error.clone();
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            tracing::error!("GPU error: {error}");
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| error.to_string());
            }
        }));
        Ok(Self {
            device,
            queue,
            adapter: summary,
            limits,
            shader_f16,
            allocated: Arc::new(AtomicU64::new(0)),
            device_error,
        })
    }

    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Whether shaders may use f16 (`shader-f16`).
    pub fn has_shader_f16(&self) -> bool {
        self.shader_f16
    }

    /// Bytes of the buffers qins holds on the device.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    /// A storage buffer of `size` bytes, counted in [`Self::allocated_bytes`]
    /// until it is dropped through [`TrackedBuffer`].
    pub fn buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> TrackedBuffer {
        // wgpu refuses empty bindings; an empty tensor still gets 4 bytes.
        let size = size.max(4).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        });
        self.allocated.fetch_add(size, Ordering::Relaxed);
        TrackedBuffer {
            buffer,
            allocated: self.allocated.clone(),
        }
    }

    /// A buffer holding `bytes` (padded with zeros to a multiple of 4),
    /// written once at creation.
    pub fn buffer_with(
        &self,
        label: &str,
        bytes: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Result<TrackedBuffer, GpuError> {
        let size = (bytes.len() as u64)
            .max(4)
            .next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: true,
        });
        {
            let mut view = buffer
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|e| GpuError::Device(format!("writing {label}: {e}")))?;
            // The padding stays zero: wgpu zero-initializes buffers.
            view.slice(..bytes.len()).copy_from_slice(bytes);
        }
        buffer.unmap();
        self.allocated.fetch_add(size, Ordering::Relaxed);
        Ok(TrackedBuffer {
            buffer,
            allocated: self.allocated.clone(),
        })
    }

    /// A uniform buffer holding `bytes` (a multiple of 4 long), written
    /// through the queue: it holds its value from the next submission on.
    pub fn uniform(&self, label: &str, bytes: &[u8]) -> TrackedBuffer {
        let buffer = self.buffer(
            label,
            bytes.len() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        self.queue.write_buffer(&buffer, 0, bytes);
        buffer
    }

    /// The first error the device reported since it was opened, if any.
    pub fn take_device_error(&self) -> Option<String> {
        self.device_error
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
    }

    /// Waits for all submitted work, then fails with the device's error
    /// if it reported one.
    pub fn wait(&self) -> Result<(), GpuError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Device(e.to_string()))?;
        match self.take_device_error() {
            Some(error) => Err(GpuError::Device(error)),
            None => Ok(()),
        }
    }

    /// Copies `len` f32 values from the start of `source` back to the host.
    pub fn read_f32(&self, source: &wgpu::Buffer, len: usize) -> Result<Vec<f32>, GpuError> {
        let bytes = (len * 4) as u64;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        encoder.copy_buffer_to_buffer(source, 0, &staging, 0, bytes);
        self.queue.submit([encoder.finish()]);
        let (sender, receiver) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |result| {
            // The receiver waits below; a send error means it is gone.
            let _ = sender.send(result);
        });
        self.wait()?;
        receiver
            .recv()
            .map_err(|e| GpuError::Readback(e.to_string()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let values = bytemuck::cast_slice::<u8, f32>(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(values)
    }
}

/// A buffer whose bytes count in its context's [`GpuContext::allocated_bytes`].
pub struct TrackedBuffer {
    buffer: wgpu::Buffer,
    allocated: Arc<AtomicU64>,
}

impl std::ops::Deref for TrackedBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for TrackedBuffer {
    fn drop(&mut self) {
        self.allocated
            .fetch_sub(self.buffer.size(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_gpu::gpu;

    #[test]
    fn device_names_parse_and_print() {
        for choice in DeviceChoice::ALL {
            assert_eq!(choice.name().parse::<DeviceChoice>().ok(), Some(choice));
        }
        let error = "metal".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(error.contains("auto, cpu or gpu"), "{error}");
    }

    /// What `vulkaninfo --summary` shows, through wgpu: under
    /// scripts/vulkan-env.sh, lavapipe on Vulkan, a software adapter that
    /// `gpu` takes and `auto` refuses.
    #[test]
    fn adapters_are_enumerated_and_auto_never_takes_a_software_one() {
        let Some(ctx) = gpu() else { return };
        let found = adapters();
        assert!(
            !found.is_empty(),
            "gpu opened {} but none is listed",
            ctx.adapter()
        );
        for adapter in &found {
            eprintln!("adapter: {adapter}");
        }
        if found.iter().all(AdapterSummary::is_software) {
            assert!(ctx.adapter().is_software());
            let auto = open(DeviceChoice::Auto).expect("auto never fails");
            assert!(auto.is_none(), "auto took a software adapter");
            assert!(no_gpu_reason().contains(&found[0].name));
        }
        assert!(open(DeviceChoice::Cpu).expect("cpu never fails").is_none());
    }
}
