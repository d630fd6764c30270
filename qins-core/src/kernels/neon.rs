//! aarch64 NEON row kernel in f32: the plain path every aarch64 core runs
//! (Apple M1, Cortex-A72/A76, Graviton 2), and the decoder that
//! [`super::neon_bf16`] shares.
//!
//! **Decoding, 16 weights per step, in registers.** A nibble table is 16
//! f32 = 64 bytes; `vld4q_u8` splits it into four byte planes (plane `k`
//! holds byte `k` of every entry), each one register. `vqtbl1q_u8` looks up
//! 16 nibbles in a plane at once, so the 4 + 4 planes of `hi` and `lo`
//! give the bytes of both factors of 16 weights in 8 lookups; two rounds of
//! byte/halfword zips put them back together as f32 lanes in column order,
//! and one multiply per 4 lanes forms `hi * lo`: the scalar reference's
//! product, bit for bit. `vqtbl1q_u8` returns 0 for an index of 16 or more,
//! so code 0 gets index 0xFF for `hi` and decodes to an exact 0 with no
//! extra mask; the sign bits become bytes with one `vtstq_u8` and flip bit
//! 7 of the top byte of `hi` (`lo` is positive, so the product takes the
//! sign, exactly as the reference's XOR of the sign bit). About 38
//! instructions per 16 weights.
//!
//! **Structure** as in [`super::avx2`]: one input row (a decode step) is
//! dotted while decoding, no buffer; a batch decodes a block of the row
//! once into a stack buffer and dots it with every input row.

use std::arch::aarch64::*;

use super::{NibbleTables, RowJob, for_each_group, padded};

/// Weights decoded per block for a batch: 2 KiB, which stays in L1 (a
/// multiple of 16).
const BLOCK: usize = 512;

/// Row kernel (see [`super::RowKernel`]). NEON is part of every aarch64
/// target Rust supports, so no run-time check is needed; the functions
/// below still carry `#[target_feature(enable = "neon")]`, which is what
/// lets them call the register-only intrinsics without `unsafe`.
pub fn row_dots(job: &RowJob<'_>, out: &mut [f32]) {
    // SAFETY: NEON is part of every aarch64 target (see above).
    unsafe { row_dots_neon(job, out) }
}

#[target_feature(enable = "neon")]
fn row_dots_neon(job: &RowJob<'_>, out: &mut [f32]) {
    let cols = job.codes.len();
    let signs = &job.signs[..cols.div_ceil(8)];
    assert_eq!(job.x.len(), out.len() * cols, "x must be out.len() x cols");
    let decoder = Decoder::new(job.tables);
    if let [only] = out {
        *only = decode_dot(&decoder, job.codes, signs, job.x);
        return;
    }
    out.fill(0.0);
    let mut decoded = [0.0f32; BLOCK];
    for (block, (codes, signs)) in job
        .codes
        .chunks(BLOCK)
        .zip(signs.chunks(BLOCK / 8))
        .enumerate()
    {
        let len = codes.len();
        decode_block(&decoder, codes, signs, &mut decoded);
        let w = &decoded[..len];
        for (t, acc) in out.iter_mut().enumerate() {
            let start = t * cols + block * BLOCK;
            *acc += dot(w, &job.x[start..start + len]);
        }
    }
}

/// The byte planes of one row's nibble tables.
#[derive(Clone, Copy)]
pub struct Decoder {
    hi: uint8x16x4_t,
    lo: uint8x16x4_t,
}

impl Decoder {
    #[target_feature(enable = "neon")]
    pub fn new(tables: &NibbleTables) -> Self {
        // SAFETY: each table is 16 f32 = 64 readable bytes; `vld4q_u8`
        // reads exactly 64 and de-interleaves them into byte planes.
        unsafe {
            Self {
                hi: vld4q_u8(tables.hi.as_ptr().cast()),
                lo: vld4q_u8(tables.lo.as_ptr().cast()),
            }
        }
    }

    /// The 16 weights of 16 codes as four registers of f32 in column
    /// order; bit `i` of `negative` is the sign of column `i`.
    #[inline]
    #[target_feature(enable = "neon")]
    pub fn decode16(&self, codes: &[u8; 16], negative: [u8; 2]) -> [float32x4_t; 4] {
        // SAFETY: 16 readable bytes each.
        let (codes, lane_bits) =
            unsafe { (vld1q_u8(codes.as_ptr()), vld1q_u8(LANE_BITS.as_ptr())) };
        let is_zero = vceqq_u8(codes, vdupq_n_u8(0));
        // 0xFF (out of table: looks up 0) for code 0, the high nibble otherwise.
        let hi_index = vorrq_u8(vshrq_n_u8::<4>(codes), is_zero);
        let lo_index = vandq_u8(codes, vdupq_n_u8(15));
        let sign_bytes = vcombine_u8(vdup_n_u8(negative[0]), vdup_n_u8(negative[1]));
        let flip = vandq_u8(vtstq_u8(sign_bytes, lane_bits), vdupq_n_u8(0x80));
        let hi = assemble([
            vqtbl1q_u8(self.hi.0, hi_index),
            vqtbl1q_u8(self.hi.1, hi_index),
            vqtbl1q_u8(self.hi.2, hi_index),
            veorq_u8(vqtbl1q_u8(self.hi.3, hi_index), flip),
        ]);
        let lo = assemble([
            vqtbl1q_u8(self.lo.0, lo_index),
            vqtbl1q_u8(self.lo.1, lo_index),
            vqtbl1q_u8(self.lo.2, lo_index),
            vqtbl1q_u8(self.lo.3, lo_index),
        ]);
        [
            vmulq_f32(hi[0], lo[0]),
            vmulq_f32(hi[1], lo[1]),
            vmulq_f32(hi[2], lo[2]),
            vmulq_f32(hi[3], lo[3]),
        ]
    }
}

/// Byte planes (byte `k` of 16 little-endian words) -> the 16 words as
/// f32, four per register, in order.
#[inline]
#[target_feature(enable = "neon")]
fn assemble(planes: [uint8x16_t; 4]) -> [float32x4_t; 4] {
    // Halfwords (byte 0 | byte 1 << 8) and (byte 2 | byte 3 << 8) of
    // words 0..8 and 8..16.
    let low_halves = [
        vreinterpretq_u16_u8(vzip1q_u8(planes[0], planes[1])),
        vreinterpretq_u16_u8(vzip2q_u8(planes[0], planes[1])),
    ];
    let high_halves = [
        vreinterpretq_u16_u8(vzip1q_u8(planes[2], planes[3])),
        vreinterpretq_u16_u8(vzip2q_u8(planes[2], planes[3])),
    ];
    [
        vreinterpretq_f32_u16(vzip1q_u16(low_halves[0], high_halves[0])),
        vreinterpretq_f32_u16(vzip2q_u16(low_halves[0], high_halves[0])),
        vreinterpretq_f32_u16(vzip1q_u16(low_halves[1], high_halves[1])),
        vreinterpretq_f32_u16(vzip2q_u16(low_halves[1], high_halves[1])),
    ]
}

/// Bit `i % 8` for lane `i`: tests the sign bit of column `i` in its byte.
const LANE_BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];

/// `Σ w[c] * x[c]` over one weight row, decoding as it goes (no buffer).
#[target_feature(enable = "neon")]
fn decode_dot(decoder: &Decoder, codes: &[u8], signs: &[u8], x: &[f32]) -> f32 {
    let mut acc = [zeros(); 4];
    let (x_blocks, x_tail) = x.as_chunks::<16>();
    let padded_tail: [f32; 16] = padded(x_tail);
    for_each_group::<16, 2>(codes, signs, |block, codes, &negative| {
        let x = x_blocks.get(block).unwrap_or(&padded_tail);
        fma16(&mut acc, decoder.decode16(codes, negative), x);
    });
    sum(acc)
}

/// Decodes up to [`BLOCK`] weights into `out` (rounded up to 16 with zeros).
#[target_feature(enable = "neon")]
fn decode_block(decoder: &Decoder, codes: &[u8], signs: &[u8], out: &mut [f32; BLOCK]) {
    let (out_blocks, _) = out.as_chunks_mut::<16>();
    for_each_group::<16, 2>(codes, signs, |block, codes, &negative| {
        store16(&mut out_blocks[block], decoder.decode16(codes, negative));
    });
}

/// `Σ w[c] * x[c]` of two f32 slices of equal length.
#[target_feature(enable = "neon")]
fn dot(w: &[f32], x: &[f32]) -> f32 {
    let (w_blocks, w_tail) = w.as_chunks::<16>();
    let (x_blocks, x_tail) = x.as_chunks::<16>();
    let mut acc = [zeros(); 4];
    for (w, x) in w_blocks.iter().zip(x_blocks) {
        fma16(&mut acc, load16(w), x);
    }
    if !w_tail.is_empty() {
        fma16(&mut acc, load16(&padded(w_tail)), &padded(x_tail));
    }
    sum(acc)
}

#[inline]
#[target_feature(enable = "neon")]
fn zeros() -> float32x4_t {
    vdupq_n_f32(0.0)
}

#[inline]
#[target_feature(enable = "neon")]
fn fma16(acc: &mut [float32x4_t; 4], w: [float32x4_t; 4], x: &[f32; 16]) {
    for ((acc, w), x) in acc.iter_mut().zip(w).zip(load16(x)) {
        *acc = vfmaq_f32(*acc, w, x);
    }
}

#[inline]
#[target_feature(enable = "neon")]
fn load16(v: &[f32; 16]) -> [float32x4_t; 4] {
    let p = v.as_ptr();
    // SAFETY: 16 readable f32, read as four groups of 4.
    unsafe {
        [
            vld1q_f32(p),
            vld1q_f32(p.add(4)),
            vld1q_f32(p.add(8)),
            vld1q_f32(p.add(12)),
        ]
    }
}

#[inline]
#[target_feature(enable = "neon")]
fn store16(out: &mut [f32; 16], v: [float32x4_t; 4]) {
    let p = out.as_mut_ptr();
    // SAFETY: 16 writable f32, written as four groups of 4.
    unsafe {
        vst1q_f32(p, v[0]);
        vst1q_f32(p.add(4), v[1]);
        vst1q_f32(p.add(8), v[2]);
        vst1q_f32(p.add(12), v[3]);
    }
}

#[inline]
#[target_feature(enable = "neon")]
fn sum(acc: [float32x4_t; 4]) -> f32 {
    vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ))
}
