//! aarch64 NEON row kernel.
//!
//! Deliberately simple (it can only be compile-checked on the x86 machines
//! this was written on): a block of the weight row is decoded with the
//! scalar table lookup (the same bits as [`super::scalar`]) into a stack
//! buffer, then dotted with each input row by NEON FMAs on four independent
//! accumulators. A `vqtbl`-based decode would be the next step.

use std::arch::aarch64::*;

use super::RowJob;
use super::scalar::{decode_block, expand};

/// Weights decoded per block: 2 KiB, which stays in L1 (a multiple of 16).
const BLOCK: usize = 512;

/// Row kernel (see [`super::RowKernel`]). NEON is part of every aarch64
/// target Rust supports, so no run-time check is needed.
pub fn row_dots(job: &RowJob<'_>, out: &mut [f32]) {
    let cols = job.codes.len();
    assert_eq!(job.x.len(), out.len() * cols, "x must be out.len() x cols");
    out.fill(0.0);
    let table = expand(job.tables);
    let mut decoded = [0.0f32; BLOCK];
    for start in (0..cols).step_by(BLOCK) {
        let len = BLOCK.min(cols - start);
        let w = &mut decoded[..len];
        decode_block(
            &table,
            &job.codes[start..start + len],
            &job.signs[start / 8..],
            w,
        );
        for (t, acc) in out.iter_mut().enumerate() {
            *acc += dot(w, &job.x[t * cols + start..t * cols + start + len]);
        }
    }
}

/// `Σ w[c] * x[c]` of two f32 slices of equal length.
fn dot(w: &[f32], x: &[f32]) -> f32 {
    let (w_blocks, w_tail) = w.as_chunks::<16>();
    let (x_blocks, x_tail) = x.as_chunks::<16>();
    // SAFETY: NEON is always available on aarch64; every load reads 4 f32
    // inside a 16-element array.
    let mut total = unsafe {
        let mut acc = [vdupq_n_f32(0.0); 4];
        for (w, x) in w_blocks.iter().zip(x_blocks) {
            for (k, acc) in acc.iter_mut().enumerate() {
                let wv = vld1q_f32(w.as_ptr().add(4 * k));
                let xv = vld1q_f32(x.as_ptr().add(4 * k));
                *acc = vfmaq_f32(*acc, wv, xv);
            }
        }
        vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ))
    };
    for (a, b) in w_tail.iter().zip(x_tail) {
        total += a * b;
    }
    total
}
