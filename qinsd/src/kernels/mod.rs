//! QINS matrix kernels: `x · Wᵀ` with `W` kept as 8-bit codes plus packed
//! sign bits and decoded inside the kernel, one row at a time, through a
//! 256-entry table.
//!
//! The driver here owns the threading (rayon over output rows), the decode
//! tables and the output layout; a [`RowKernel`] computes the dot products of
//! one weight row with every input row. [`scalar`] is the portable reference
//! row kernel; SIMD versions (AVX-512/AVX2/NEON, chosen at run time) plug in
//! by returning a different [`RowKernel`] from [`row_kernel`].

pub mod scalar;

use rayon::prelude::*;

use crate::codec::LogRange;
use crate::weights::QinsMatrix;

/// Code steps between the largest and the smallest magnitude (see [`crate::codec`]).
const CODE_STEPS: f64 = 254.0;

/// Output rows handed to one rayon task: enough work to amortize scheduling,
/// small enough to balance across cores for the narrowest matrices.
const ROWS_PER_TASK: usize = 8;

/// One weight row against `n` input rows.
pub struct RowJob<'a> {
    /// Decode table of the row's range (entry 0 is the exact zero).
    pub table: &'a [f32; 256],
    /// The row's `cols` codes.
    pub codes: &'a [u8],
    /// The row's packed sign bits, LSB first, `cols.div_ceil(8)` bytes.
    pub signs: &'a [u8],
    /// `n x cols` inputs, row-major.
    pub x: &'a [f32],
}

/// Computes `out[t] = Σ_c decode(codes[c], signs[c]) * x[t * cols + c]` for
/// every input row `t` (`out.len()` is the number of input rows).
pub type RowKernel = fn(job: &RowJob<'_>, out: &mut [f32]);

/// The row kernel to use on this machine.
pub fn row_kernel() -> RowKernel {
    scalar::row_dots
}

/// `out[n x rows] = x[n x cols] · Wᵀ` for a QINS matrix `W` of `rows x cols`.
///
/// Multi-threaded over output rows. Panics if the slice lengths do not match
/// the shapes (a caller bug: models validate shapes when they load).
pub fn qins_matmul(x: &[f32], n: usize, w: &QinsMatrix, out: &mut [f32]) {
    qins_matmul_with(row_kernel(), x, n, w, out);
}

/// [`qins_matmul`] with an explicit row kernel (tests compare kernels with it).
pub fn qins_matmul_with(kernel: RowKernel, x: &[f32], n: usize, w: &QinsMatrix, out: &mut [f32]) {
    assert_eq!(x.len(), n * w.cols, "qins_matmul: x must be n x cols");
    assert_eq!(out.len(), n * w.rows, "qins_matmul: out must be n x rows");
    if n == 0 || w.rows == 0 {
        return;
    }
    let shared_table = (w.ranges().len() == 1).then(|| decode_table(w.ranges()[0]));
    let run_row = |row: usize, dots: &mut [f32]| {
        let own_table;
        let table = match &shared_table {
            Some(table) => table,
            None => {
                own_table = decode_table(w.row_range(row));
                &own_table
            }
        };
        let job = RowJob {
            table,
            codes: w.row_codes(row),
            signs: w.row_signs(row),
            x,
        };
        kernel(&job, dots);
    };
    if n == 1 {
        out.par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, chunk)| {
                for (i, slot) in chunk.iter_mut().enumerate() {
                    run_row(task * ROWS_PER_TASK + i, std::slice::from_mut(slot));
                }
            });
        return;
    }
    // Each weight row yields n contiguous dots; transpose into n x rows after.
    let mut by_row = vec![0.0f32; w.rows * n];
    by_row
        .par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (i, dots) in chunk.chunks_mut(n).enumerate() {
                run_row(task * ROWS_PER_TASK + i, dots);
            }
        });
    transpose(&by_row, w.rows, n, out);
}

/// Writes the `cols x rows` transpose of the row-major `rows x cols` `src`.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    dst.par_chunks_mut(rows)
        .enumerate()
        .for_each(|(col, dst_row)| {
            for (row, d) in dst_row.iter_mut().enumerate() {
                *d = src[row * cols + col];
            }
        });
}

/// The 256-entry decode table of a range, equal to [`LogRange::table`] within
/// one f32 ulp but with two `exp` calls instead of 255: the magnitudes form a
/// geometric series, accumulated in f64 (relative drift ~1e-13, far below an
/// f32 ulp of ~6e-8).
pub fn decode_table(range: LogRange) -> [f32; 256] {
    let mut table = [0.0f32; 256];
    let log_min = f64::from(range.log_min);
    let span = f64::from(range.log_max) - log_min;
    let ratio = (span / CODE_STEPS).exp();
    let mut magnitude = log_min.exp();
    for slot in table[1..].iter_mut().rev() {
        *slot = magnitude as f32;
        magnitude *= ratio;
    }
    table
}

#[cfg(test)]
mod tests;
