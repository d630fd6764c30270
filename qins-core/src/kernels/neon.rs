//! aarch64 NEON f32 kernel: the exact reference every aarch64 core runs
//! (the integer [`super::neon_int`] kernel is the fast path there), and the
//! decoder that [`super::neon_bf16`] shares.
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
//! **Structure**: the f32 frame of [`super::float`] (threading, decode
//! steps, prefill).

use std::arch::aarch64::*;

use super::NibbleTables;
use super::float::{FloatLanes, float_kernel};

/// The `neon` kernel. NEON is part of every aarch64 target Rust supports,
/// so it needs no run-time check; its functions still carry
/// `#[target_feature(enable = "neon")]`, which is what lets them call the
/// register-only intrinsics without `unsafe`.
pub struct Neon;

float_kernel!(Neon, "neon", true, #[target_feature(enable = "neon")]);

impl FloatLanes for Neon {
    const LANES: usize = 4;
    type V = float32x4_t;
    type Decoder = Decoder;

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn decoder(tables: &NibbleTables) -> Decoder {
        Decoder::new(tables)
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn decode(decoder: &Decoder, codes: &[u8], signs: &[u8]) -> [float32x4_t; 4] {
        decoder.decode16(&codes.as_chunks::<16>().0[0], [signs[0], signs[1]])
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load(p: *const f32) -> float32x4_t {
        // SAFETY: 4 readable f32 (the caller's contract).
        unsafe { vld1q_f32(p) }
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn store(p: *mut f32, v: float32x4_t) {
        // SAFETY: 4 writable f32 (the caller's contract).
        unsafe { vst1q_f32(p, v) }
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn zero() -> float32x4_t {
        vdupq_n_f32(0.0)
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn fma(acc: float32x4_t, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vfmaq_f32(acc, a, b)
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn sum(a: float32x4_t, b: float32x4_t) -> f32 {
        vaddvq_f32(vaddq_f32(a, b))
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
