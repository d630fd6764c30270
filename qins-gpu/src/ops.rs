//! The transformer ops besides the matrix products: embedding lookup,
//! RMSNorm, rotary embeddings, the K/V store, attention and SwiGLU. Each
//! records one dispatch into a command encoder; activations are f32
//! buffers, and ops that read part of a row (q, k, v in the QKV product,
//! gate and up in the gate/up product) take column offsets and a row
//! stride so no op has to split a buffer first.

use crate::device::{GpuContext, TrackedBuffer};
use crate::kernel::{Access, Kernel, grid};
use crate::matrix::GpuMatrix;
use crate::shaders::{self, KvType};

use Access::{Read, ReadWrite};

/// Threads per workgroup of the element-wise shaders (rope, swiglu,
/// kv_store: `WG` there).
const ELEMENTWISE_WG: usize = 64;

/// The largest head the attention shader takes (4 values per lane of 64).
pub const MAX_HEAD_DIM: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct EmbedParams {
    cols: u32,
    row_words: u32,
    table_stride: u32,
    n: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RmsNormParams {
    dim: u32,
    n: u32,
    first_row: u32,
    eps: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RopeParams {
    n: u32,
    heads: u32,
    head_dim: u32,
    stride: u32,
    offset: u32,
    groups_x: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SwigluParams {
    n: u32,
    ff: u32,
    stride: u32,
    gate_offset: u32,
    up_offset: u32,
    groups_x: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct KvStoreParams {
    n: u32,
    kv_heads: u32,
    head_dim: u32,
    capacity: u32,
    start: u32,
    stride: u32,
    k_offset: u32,
    v_offset: u32,
    first_row: u32,
    groups_x: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AttentionParams {
    n: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    capacity: u32,
    start: u32,
    q_stride: u32,
    q_offset: u32,
    first_row: u32,
    scale: f32,
    _pad: [u32; 2],
}

/// Rows of an activation buffer holding several vectors side by side:
/// row `t` of the part at `offset` starts at `t * stride + offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Columns {
    pub stride: usize,
    pub offset: usize,
}

/// Attention geometry of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// One layer's cached keys and values on the GPU, each laid out
/// `kv_heads x capacity x head_dim` as on the CPU.
pub struct LayerCache {
    pub keys: TrackedBuffer,
    pub values: TrackedBuffer,
}

/// Where a segment's new tokens go in its cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSlot {
    /// Tokens already cached (the position of the first new one).
    pub start: usize,
    /// Positions the cache holds.
    pub capacity: usize,
}

/// The compiled ops of one device.
pub struct Ops {
    kv: KvType,
    embed: Kernel,
    rms_norm: Kernel,
    rope: Kernel,
    swiglu: Kernel,
    kv_store: Kernel,
    attention: Kernel,
}

impl Ops {
    /// Compiles every op, with the K/V cache in `kv`.
    pub fn new(ctx: &GpuContext, kv: KvType) -> Self {
        let f32 = KvType::F32;
        Self {
            kv,
            embed: Kernel::new(
                ctx,
                &shaders::EMBED,
                f32,
                &[Read, Read, Read, Read, ReadWrite],
            ),
            rms_norm: Kernel::new(ctx, &shaders::RMS_NORM, f32, &[Read, Read, ReadWrite]),
            rope: Kernel::new(ctx, &shaders::ROPE, f32, &[Read, ReadWrite]),
            swiglu: Kernel::new(ctx, &shaders::SWIGLU, f32, &[Read, ReadWrite]),
            kv_store: Kernel::new(ctx, &shaders::KV_STORE, kv, &[Read, ReadWrite, ReadWrite]),
            attention: Kernel::new(ctx, &shaders::ATTENTION, kv, &[Read, Read, Read, ReadWrite]),
        }
    }

    /// The cache's element type.
    pub fn kv(&self) -> KvType {
        self.kv
    }

    /// A cache layer for `capacity` positions.
    pub fn layer_cache(&self, ctx: &GpuContext, heads: Heads, capacity: usize) -> LayerCache {
        let bytes = (heads.kv_heads * capacity * heads.head_dim * self.kv.size()) as u64;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        LayerCache {
            keys: ctx.buffer("keys", bytes, usage),
            values: ctx.buffer("values", bytes, usage),
        }
    }

    /// Rows `tokens[t]` of `table`, decoded into the `n x cols` rows of `out`.
    pub fn embed(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        table: &GpuMatrix,
        tokens: &wgpu::Buffer,
        n: usize,
        out: &wgpu::Buffer,
    ) -> TrackedBuffer {
        let params = EmbedParams {
            cols: table.cols as u32,
            row_words: table.row_words as u32,
            table_stride: table.table_stride as u32,
            n: n as u32,
        };
        self.embed.dispatch(
            ctx,
            encoder,
            bytemuck::bytes_of(&params),
            &[&table.codes, &table.signs, &table.tables, tokens, out],
            (n as u32, 1),
        )
    }

    /// RMSNorm of rows `first_row..first_row + n` of `x` into rows `0..n` of `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        first_row: usize,
        n: usize,
        weight: &wgpu::Buffer,
        dim: usize,
        eps: f64,
        out: &wgpu::Buffer,
    ) -> TrackedBuffer {
        let params = RmsNormParams {
            dim: dim as u32,
            n: n as u32,
            first_row: first_row as u32,
            eps: eps as f32,
        };
        self.rms_norm.dispatch(
            ctx,
            encoder,
            bytemuck::bytes_of(&params),
            &[x, weight, out],
            (n as u32, 1),
        )
    }

    /// Rotates `heads` heads at `columns` of the `n` rows of `x` in place;
    /// `table` holds `n x head_dim/2` cos values, then as many sin values.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        n: usize,
        heads: usize,
        head_dim: usize,
        columns: Columns,
        table: &wgpu::Buffer,
    ) -> TrackedBuffer {
        let groups = grid((n * heads * head_dim / 2).div_ceil(ELEMENTWISE_WG));
        let params = RopeParams {
            n: n as u32,
            heads: heads as u32,
            head_dim: head_dim as u32,
            stride: columns.stride as u32,
            offset: columns.offset as u32,
            groups_x: groups.0,
            _pad: [0; 2],
        };
        self.rope.dispatch(
            ctx,
            encoder,
            bytemuck::bytes_of(&params),
            &[table, x],
            groups,
        )
    }

    /// `silu(gate) * up` for `n` rows of `ff`, gate and up read at
    /// `gate_offset` and `up_offset` of rows `stride` wide.
    #[allow(clippy::too_many_arguments)]
    pub fn swiglu(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        gate_up: &wgpu::Buffer,
        n: usize,
        ff: usize,
        stride: usize,
        gate_offset: usize,
        up_offset: usize,
        out: &wgpu::Buffer,
    ) -> TrackedBuffer {
        let groups = grid((n * ff).div_ceil(ELEMENTWISE_WG));
        let params = SwigluParams {
            n: n as u32,
            ff: ff as u32,
            stride: stride as u32,
            gate_offset: gate_offset as u32,
            up_offset: up_offset as u32,
            groups_x: groups.0,
            _pad: [0; 2],
        };
        self.swiglu.dispatch(
            ctx,
            encoder,
            bytemuck::bytes_of(&params),
            &[gate_up, out],
            groups,
        )
    }

    /// Stores the keys and values of `n` tokens (rows `first_row..` of
    /// `qkv`, at `k_offset` and `v_offset` of rows `stride` wide) at
    /// `slot` of `cache`.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_store(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        qkv: &wgpu::Buffer,
        first_row: usize,
        n: usize,
        stride: usize,
        k_offset: usize,
        v_offset: usize,
        heads: Heads,
        cache: &LayerCache,
        slot: CacheSlot,
    ) -> TrackedBuffer {
        let groups = grid((n * heads.kv_heads * heads.head_dim).div_ceil(ELEMENTWISE_WG));
        let params = KvStoreParams {
            n: n as u32,
            kv_heads: heads.kv_heads as u32,
            head_dim: heads.head_dim as u32,
            capacity: slot.capacity as u32,
            start: slot.start as u32,
            stride: stride as u32,
            k_offset: k_offset as u32,
            v_offset: v_offset as u32,
            first_row: first_row as u32,
            groups_x: groups.0,
            _pad: [0; 2],
        };
        self.kv_store.dispatch(
            ctx,
            encoder,
            bytemuck::bytes_of(&params),
            &[qkv, &cache.keys, &cache.values],
            groups,
        )
    }

    /// Causal attention of `n` queries (rows `first_row..` of `qkv`, at
    /// `q` columns) at positions `slot.start..` over `cache` (their keys
    /// and values already stored), into rows `first_row..` of `out`
    /// (`heads x head_dim` each).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        qkv: &wgpu::Buffer,
        first_row: usize,
        n: usize,
        q: Columns,
        heads: Heads,
        cache: &LayerCache,
        slot: CacheSlot,
        out: &wgpu::Buffer,
    ) -> TrackedBuffer {
        assert!(
            heads.head_dim <= MAX_HEAD_DIM,
            "head_dim {} > {MAX_HEAD_DIM}",
            heads.head_dim
        );
        let params = AttentionParams {
            n: n as u32,
            heads: heads.heads as u32,
            kv_heads: heads.kv_heads as u32,
            head_dim: heads.head_dim as u32,
            capacity: slot.capacity as u32,
            start: slot.start as u32,
            q_stride: q.stride as u32,
            q_offset: q.offset as u32,
            first_row: first_row as u32,
            // As the CPU computes it.
            scale: 1.0 / (heads.head_dim as f32).sqrt(),
            _pad: [0; 2],
        };
        self.attention.dispatch(
            ctx,
            encoder,
            bytemuck::bytes_of(&params),
            &[qkv, &cache.keys, &cache.values, out],
            (n as u32, heads.heads as u32),
        )
    }
}

#[cfg(test)]
mod tests;
