//! AVX2 + FMA f32 kernel, the exact reference on x86-64 without AVX-512
//! (the integer [`super::avx2int`] kernels are the fast path there).
//!
//! 8 weights per register. A 16-entry nibble table is two registers: two
//! `vpermps` (which read only the low 3 index bits) and a `vblendvps` on
//! index bit 3 (shifted into the sign bit, which is what blendv tests).
//! Code 0 is cleared with a compare; the 8 sign bits of one byte become lane
//! sign bits with one variable shift (bit `i` shifted left by `31 - i`).
//! The frame (threading, decode steps, prefill) is [`super::float`]'s.

use std::arch::x86_64::*;

use super::NibbleTables;
use super::float::{FloatLanes, float_kernel};

/// The `avx2` kernel.
pub struct Avx2;

pub fn is_available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

float_kernel!(Avx2, "avx2", is_available(), #[target_feature(enable = "avx2,fma")]);

impl FloatLanes for Avx2 {
    const LANES: usize = 8;
    type V = __m256;
    type Decoder = Decoder;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn decoder(tables: &NibbleTables) -> Decoder {
        Decoder::new(tables)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn decode(decoder: &Decoder, codes: &[u8], signs: &[u8]) -> [__m256; 4] {
        decoder.decode32(&codes.as_chunks::<32>().0[0], &signs.as_chunks::<4>().0[0])
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: 8 readable f32 (the caller's contract).
        unsafe { _mm256_loadu_ps(p) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: 8 writable f32 (the caller's contract).
        unsafe { _mm256_storeu_ps(p, v) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma(acc: __m256, a: __m256, b: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, acc)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sum(a: __m256, b: __m256) -> f32 {
        let v = _mm256_add_ps(a, b);
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)))
    }
}

/// A row's nibble tables in registers.
#[derive(Clone, Copy)]
pub struct Decoder {
    hi: [__m256; 2],
    lo: [__m256; 2],
    /// `31 - lane`: moves sign bit `lane` of a byte to bit 31.
    shifts: __m256i,
}

impl Decoder {
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn new(tables: &NibbleTables) -> Self {
        let (hi, lo) = (tables.hi.as_ptr(), tables.lo.as_ptr());
        // SAFETY: each table is 16 readable f32, read as two groups of 8.
        unsafe {
            Self {
                hi: [_mm256_loadu_ps(hi), _mm256_loadu_ps(hi.add(8))],
                lo: [_mm256_loadu_ps(lo), _mm256_loadu_ps(lo.add(8))],
                shifts: _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24),
            }
        }
    }

    /// Entry `idx & 15` of a 16-entry table, per lane.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn lookup(table: [__m256; 2], idx: __m256i) -> __m256 {
        let low_half = _mm256_permutevar8x32_ps(table[0], idx);
        let high_half = _mm256_permutevar8x32_ps(table[1], idx);
        let bit3 = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx));
        _mm256_blendv_ps(low_half, high_half, bit3)
    }

    /// 8 weights; bit `i` of `negative` is lane `i`'s sign.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn decode8(self, codes: &[u8; 8], negative: u8) -> __m256 {
        let idx = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(i64::from_le_bytes(*codes)));
        let hi = Self::lookup(self.hi, _mm256_srli_epi32::<4>(idx));
        let lo = Self::lookup(self.lo, idx);
        let zero = _mm256_castsi256_ps(_mm256_cmpeq_epi32(idx, _mm256_setzero_si256()));
        let magnitude = _mm256_andnot_ps(zero, _mm256_mul_ps(hi, lo));
        let bits = _mm256_sllv_epi32(_mm256_set1_epi32(i32::from(negative)), self.shifts);
        let sign = _mm256_and_si256(bits, _mm256_set1_epi32(i32::MIN));
        _mm256_xor_ps(magnitude, _mm256_castsi256_ps(sign))
    }

    /// 32 weights from 32 codes and their 4 sign bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn decode32(self, codes: &[u8; 32], signs: &[u8; 4]) -> [__m256; 4] {
        let (parts, _) = codes.as_chunks::<8>();
        [
            self.decode8(&parts[0], signs[0]),
            self.decode8(&parts[1], signs[1]),
            self.decode8(&parts[2], signs[2]),
            self.decode8(&parts[3], signs[3]),
        ]
    }
}
