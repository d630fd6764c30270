//! Portable row kernel: the reference that SIMD kernels are tested against.
//!
//! A weight row is decoded in blocks into a small stack buffer (lookup in a
//! 256-entry table expanded from the nibble tables, sign applied by flipping
//! the f32 sign bit), then each block is dotted with
//! every input row. Decoding once per block serves all `n` input rows, so a
//! prefill of many tokens decodes each weight once.

use super::{NibbleTables, RowJob};

/// Weights decoded per block; a multiple of 8 so blocks start on sign bytes.
const BLOCK: usize = 256;
/// Independent accumulators in a dot product (lets the compiler vectorize
/// without reassociating, and shortens the rounding chain).
const LANES: usize = 8;

/// Row kernel: `out[t] = Σ_c w[c] * x[t * cols + c]`.
pub fn row_dots(job: &RowJob<'_>, out: &mut [f32]) {
    let cols = job.codes.len();
    out.fill(0.0);
    // 256 products per call, bit-identical to `magnitude`, buy one lookup per
    // weight instead of two lookups, a multiply and a branch.
    let table = expand(job.tables);
    let mut decoded = [0.0f32; BLOCK];
    for start in (0..cols).step_by(BLOCK) {
        let len = BLOCK.min(cols - start);
        let block = &mut decoded[..len];
        decode_block(
            &table,
            &job.codes[start..start + len],
            &job.signs[start / 8..],
            block,
        );
        for (t, acc) in out.iter_mut().enumerate() {
            let x = &job.x[t * cols + start..t * cols + start + len];
            *acc += dot(block, x);
        }
    }
}

/// The magnitude of every code.
pub fn expand(tables: &NibbleTables) -> [f32; 256] {
    std::array::from_fn(|code| tables.magnitude(code as u8))
}

/// Decodes `codes` (with their sign bits, starting at bit 0 of `signs[0]`).
#[inline]
pub fn decode_block(table: &[f32; 256], codes: &[u8], signs: &[u8], out: &mut [f32]) {
    for ((codes8, out8), &sign_byte) in codes.chunks(8).zip(out.chunks_mut(8)).zip(signs) {
        for (bit, (&code, o)) in codes8.iter().zip(out8.iter_mut()).enumerate() {
            let negative = u32::from(sign_byte >> bit & 1);
            *o = f32::from_bits(table[usize::from(code)].to_bits() ^ (negative << 31));
        }
    }
}

/// f32 dot product with [`LANES`] partial sums.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0.0f32; LANES];
    let mut a_chunks = a.chunks_exact(LANES);
    let mut b_chunks = b.chunks_exact(LANES);
    for (a8, b8) in (&mut a_chunks).zip(&mut b_chunks) {
        for i in 0..LANES {
            lanes[i] += a8[i] * b8[i];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
        tail += x * y;
    }
    let pairs = [
        lanes[0] + lanes[4],
        lanes[1] + lanes[5],
        lanes[2] + lanes[6],
        lanes[3] + lanes[7],
    ];
    (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]) + tail
}
