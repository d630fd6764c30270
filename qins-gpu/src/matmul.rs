//! `out = x · Wᵀ` for a QINS matrix `W` on the GPU: the matrix-vector
//! shader for a few input rows (decode steps), the tiled matrix-matrix
//! shader for many (prefill).

use crate::GpuError;
use crate::device::{GpuContext, TrackedBuffer};
use crate::kernel::{Access, Kernel, grid};
use crate::matrix::GpuMatrix;
use crate::shaders::{self, KvType};

/// Input rows the matrix-vector shader takes at once (`TOKENS` of its
/// wider variant); more go through the tiled shader.
pub const MATVEC_MAX_ROWS: usize = 4;

/// Weight rows per workgroup of `qins_matvec.wgsl` (`ROWS` there).
const MATVEC_ROWS_PER_GROUP: usize = 8;

/// Weight rows (and input rows) per tile of `qins_matmul.wgsl`.
const TILE: u32 = 32;

/// The uniform both shaders read (`Shape` in the WGSL).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Shape {
    rows: u32,
    cols: u32,
    n: u32,
    row_words: u32,
    table_stride: u32,
    groups_x: u32,
    out_stride: u32,
    out_offset: u32,
    accumulate: u32,
    _pad: [u32; 3],
}

/// Where a product's `n x rows` result goes in its output buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputView {
    /// f32 values per output row (at least the matrix's rows).
    pub stride: usize,
    /// Column of the first result in each row.
    pub offset: usize,
    /// Add to the values there (a residual) instead of overwriting them.
    pub accumulate: bool,
}

impl OutputView {
    /// A plain `n x rows` result.
    pub fn dense(rows: usize) -> Self {
        Self {
            stride: rows,
            offset: 0,
            accumulate: false,
        }
    }
}

/// The two QINS matrix pipelines of one device.
pub struct QinsMatmul {
    matvec_1: Kernel,
    matvec_4: Kernel,
    matmul: Kernel,
}

/// Bindings 1..=5: codes, signs, tables, x, out.
const BINDINGS: [Access; 5] = [
    Access::Read,
    Access::Read,
    Access::Read,
    Access::Read,
    Access::ReadWrite,
];

impl QinsMatmul {
    pub fn new(ctx: &GpuContext) -> Self {
        Self {
            matvec_1: Kernel::new(ctx, &shaders::QINS_MATVEC_1, KvType::F32, &BINDINGS),
            matvec_4: Kernel::new(ctx, &shaders::QINS_MATVEC_4, KvType::F32, &BINDINGS),
            matmul: Kernel::new(ctx, &shaders::QINS_MATMUL, KvType::F32, &BINDINGS),
        }
    }

    /// Records `x[n x cols] · Wᵀ` into `encoder`, written to `out` as
    /// `view` says. `x` and `out` are f32 storage buffers large enough for
    /// them. Returns the uniform buffer the dispatch reads: keep it until
    /// the work is submitted.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        w: &GpuMatrix,
        x: &wgpu::Buffer,
        n: usize,
        out: &wgpu::Buffer,
        view: OutputView,
    ) -> TrackedBuffer {
        let rows = w.rows as u32;
        let matvec_groups = grid(w.rows.div_ceil(MATVEC_ROWS_PER_GROUP));
        let (kernel, groups) = if n == 1 {
            (&self.matvec_1, matvec_groups)
        } else if n <= MATVEC_MAX_ROWS {
            (&self.matvec_4, matvec_groups)
        } else {
            (
                &self.matmul,
                (rows.div_ceil(TILE), (n as u32).div_ceil(TILE)),
            )
        };
        let shape = Shape {
            rows,
            cols: w.cols as u32,
            n: n as u32,
            row_words: w.row_words as u32,
            table_stride: w.table_stride as u32,
            groups_x: groups.0,
            out_stride: view.stride as u32,
            out_offset: view.offset as u32,
            accumulate: u32::from(view.accumulate),
            _pad: [0; 3],
        };
        kernel.dispatch(
            ctx,
            encoder,
            bytemuck::bytes_of(&shape),
            &[&w.codes, &w.signs, &w.tables, x, out],
            groups,
        )
    }

    /// `x · Wᵀ` from host to host (tests and one-off products): uploads
    /// `x`, runs the product and reads the `n x rows` result back.
    pub fn run(
        &self,
        ctx: &GpuContext,
        w: &GpuMatrix,
        x: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, GpuError> {
        assert_eq!(x.len(), n * w.cols, "x must be n x cols");
        let storage = wgpu::BufferUsages::STORAGE;
        let input = ctx.buffer_with("x", bytemuck::cast_slice(x), storage)?;
        let out_len = n * w.rows;
        let output = ctx.buffer(
            "x · Wᵀ",
            (out_len * 4) as u64,
            storage | wgpu::BufferUsages::COPY_SRC,
        );
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("qins matmul"),
            });
        let _uniform = self.encode(
            ctx,
            &mut encoder,
            w,
            &input,
            n,
            &output,
            OutputView::dense(w.rows),
        );
        ctx.queue.submit([encoder.finish()]);
        ctx.read_f32(&output, out_len)
    }
}

#[cfg(test)]
mod tests;
