//! AVX-512 (F + BW) f32 kernel, the exact reference on AVX-512 CPUs.
//!
//! 16 weights per register: the codes widen to 32-bit lanes, `vpermps` looks
//! up both nibble tables (each one register, no gather), a zero-masked
//! multiply gives the magnitude with code 0 forced to 0, and the row's sign
//! bits (16 of them are exactly one `__mmask16`) drive a masked XOR of the
//! f32 sign bit. Masks for 64 weights come from one byte test and one u64.
//! The frame (threading, decode steps, prefill) is [`super::float`]'s.

use std::arch::x86_64::*;

use super::NibbleTables;
use super::float::{FloatLanes, float_kernel};

/// The `avx512` kernel.
pub struct Avx512;

pub fn is_available() -> bool {
    super::dispatch::allows(super::dispatch::Isa::Avx512)
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
}

float_kernel!(Avx512, "avx512", is_available(), #[target_feature(enable = "avx512f,avx512bw")]);

impl FloatLanes for Avx512 {
    const LANES: usize = 16;
    type V = __m512;
    type Decoder = Decoder;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn decoder(tables: &NibbleTables) -> Decoder {
        Decoder::new(tables)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn decode(decoder: &Decoder, codes: &[u8], signs: &[u8]) -> [__m512; 4] {
        decoder.decode64(&codes.as_chunks::<64>().0[0], &signs.as_chunks::<8>().0[0])
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: 16 readable f32 (the caller's contract).
        unsafe { _mm512_loadu_ps(p) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: 16 writable f32 (the caller's contract).
        unsafe { _mm512_storeu_ps(p, v) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn fma(acc: __m512, a: __m512, b: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, acc)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn sum(a: __m512, b: __m512) -> f32 {
        _mm512_reduce_add_ps(_mm512_add_ps(a, b))
    }
}

/// A row's nibble tables in registers.
#[derive(Clone, Copy)]
pub struct Decoder {
    hi: __m512,
    lo: __m512,
}

impl Decoder {
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn new(tables: &NibbleTables) -> Self {
        // SAFETY: each table is 16 readable f32.
        unsafe {
            Self {
                hi: _mm512_loadu_ps(tables.hi.as_ptr()),
                lo: _mm512_loadu_ps(tables.lo.as_ptr()),
            }
        }
    }

    /// 16 weights; bit `i` of `negative`/`nonzero` is lane `i`'s sign/code != 0.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn decode16(self, codes: &[u8; 16], negative: u16, nonzero: u16) -> __m512 {
        // SAFETY: 16 readable bytes.
        let bytes = unsafe { _mm_loadu_si128(codes.as_ptr().cast()) };
        let idx = _mm512_cvtepu8_epi32(bytes);
        // vpermps reads only the low 4 index bits, so the low nibble needs no mask.
        let hi = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(idx), self.hi);
        let lo = _mm512_permutexvar_ps(idx, self.lo);
        let magnitude = _mm512_castps_si512(_mm512_maskz_mul_ps(nonzero, hi, lo));
        let sign_bit = _mm512_set1_epi32(i32::MIN);
        _mm512_castsi512_ps(_mm512_mask_xor_epi32(
            magnitude, negative, magnitude, sign_bit,
        ))
    }

    /// 64 weights from 64 codes and their 8 sign bytes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn decode64(self, codes: &[u8; 64], signs: &[u8; 8]) -> [__m512; 4] {
        // SAFETY: 64 readable bytes.
        let all = unsafe { _mm512_loadu_si512(codes.as_ptr().cast()) };
        let nonzero = _mm512_test_epi8_mask(all, all);
        let negative = u64::from_le_bytes(*signs);
        let (parts, _) = codes.as_chunks::<16>();
        let lane = |k: usize| ((negative >> (16 * k)) as u16, (nonzero >> (16 * k)) as u16);
        let (n0, z0) = lane(0);
        let (n1, z1) = lane(1);
        let (n2, z2) = lane(2);
        let (n3, z3) = lane(3);
        [
            self.decode16(&parts[0], n0, z0),
            self.decode16(&parts[1], n1, z1),
            self.decode16(&parts[2], n2, z2),
            self.decode16(&parts[3], n3, z3),
        ]
    }
}
