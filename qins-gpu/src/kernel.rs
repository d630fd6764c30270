//! A compute pipeline with its bind group layout, and one dispatch of it:
//! the plumbing every op shares (a uniform of parameters at binding 0,
//! storage buffers after it).

use crate::device::{GpuContext, TrackedBuffer};
use crate::shaders::{KvType, Module};

/// Workgroups along x in one dispatch dimension (WebGPU guarantees
/// 65535; a power of two keeps the shaders' index arithmetic simple).
pub const MAX_GROUPS_X: u32 = 32768;

/// What a storage binding (1, 2, ...) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

pub struct Kernel {
    name: &'static str,
    layout: wgpu::BindGroupLayout,
    pipeline: wgpu::ComputePipeline,
}

impl Kernel {
    /// Compiles `module` (with `kv` as its cache type where it has one)
    /// for a uniform at binding 0 and `storage` at bindings 1, 2, ...
    pub fn new(ctx: &GpuContext, module: &Module, kv: KvType, storage: &[Access]) -> Self {
        let device = &ctx.device;
        let buffer_entry = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![buffer_entry(0, wgpu::BufferBindingType::Uniform)];
        for (i, access) in storage.iter().enumerate() {
            let read_only = *access == Access::Read;
            entries.push(buffer_entry(
                i as u32 + 1,
                wgpu::BufferBindingType::Storage { read_only },
            ));
        }
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(module.name),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(module.name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(module.name),
            source: wgpu::ShaderSource::Wgsl(module.source(kv)),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(module.name),
            layout: Some(&pipeline_layout),
            module: &shader,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        Self {
            name: module.name,
            layout,
            pipeline,
        }
    }

    /// Records one dispatch of `groups` workgroups reading `params` as its
    /// uniform and `buffers` at bindings 1, 2, ... Returns the uniform's
    /// buffer: keep it until the work is submitted.
    pub fn dispatch(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        params: &[u8],
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32),
    ) -> TrackedBuffer {
        let uniform = ctx.uniform(self.name, params);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, buffer) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: buffer.as_entire_binding(),
            });
        }
        let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.name),
            layout: &self.layout,
            entries: &entries,
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(self.name),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
        drop(pass);
        uniform
    }
}

/// A 2-D grid of at least `groups` workgroups, at most [`MAX_GROUPS_X`]
/// wide (the shaders index `group.x + group.y * groups_x`).
pub fn grid(groups: usize) -> (u32, u32) {
    let groups = groups.max(1) as u32;
    let x = groups.min(MAX_GROUPS_X);
    (x, groups.div_ceil(x))
}
