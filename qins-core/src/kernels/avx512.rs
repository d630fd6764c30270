//! AVX-512 (F + BW) row kernel.
//!
//! 16 weights per register: the codes widen to 32-bit lanes, `vpermps` looks
//! up both nibble tables (each one register, no gather), a zero-masked
//! multiply gives the magnitude with code 0 forced to 0, and the row's sign
//! bits (16 of them are exactly one `__mmask16`) drive a masked XOR of the
//! f32 sign bit. Masks for 64 weights come from one byte test and one u64.
//!
//! A single input row (decode) is dotted while decoding; a batch decodes a
//! block of the row once into a stack buffer and reuses it for every input
//! row, like [`super::scalar`].

use std::arch::x86_64::*;

use super::{NibbleTables, RowJob, padded};

/// Weights decoded per block for a batch: 2 KiB, which stays in L1 while
/// every input row is dotted with it. A multiple of 64.
const BLOCK: usize = 512;

pub fn is_available() -> bool {
    super::dispatch::allows(super::dispatch::Isa::Avx512)
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
}

/// Row kernel (see [`super::RowKernel`]).
pub fn row_dots(job: &RowJob<'_>, out: &mut [f32]) {
    // A fn pointer to this can be called anywhere: refuse rather than fault.
    assert!(is_available(), "avx512 kernel needs AVX-512 F and BW");
    // SAFETY: the CPU has the features `row_dots_avx512` enables.
    unsafe { row_dots_avx512(job, out) }
}

#[target_feature(enable = "avx512f,avx512bw")]
fn row_dots_avx512(job: &RowJob<'_>, out: &mut [f32]) {
    let cols = job.codes.len();
    let signs = &job.signs[..cols.div_ceil(8)];
    assert_eq!(job.x.len(), out.len() * cols, "x must be out.len() x cols");
    let decoder = Decoder::new(job.tables);
    if let [only] = out {
        *only = decode_dot(decoder, job.codes, signs, job.x);
        return;
    }
    out.fill(0.0);
    let mut decoded = Aligned([0.0f32; BLOCK]);
    for (block, (codes, signs)) in job
        .codes
        .chunks(BLOCK)
        .zip(signs.chunks(BLOCK / 8))
        .enumerate()
    {
        let len = codes.len();
        decode_block(decoder, codes, signs, &mut decoded.0);
        let w = &decoded.0[..len];
        for (t, acc) in out.iter_mut().enumerate() {
            let start = t * cols + block * BLOCK;
            *acc += dot(w, &job.x[start..start + len]);
        }
    }
}

#[repr(align(64))]
struct Aligned([f32; BLOCK]);

#[derive(Clone, Copy)]
struct Decoder {
    hi: __m512,
    lo: __m512,
}

impl Decoder {
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

/// `Σ w[c] * x[c]` over one weight row, decoding as it goes (no buffer).
#[target_feature(enable = "avx512f,avx512bw")]
fn decode_dot(decoder: Decoder, codes: &[u8], signs: &[u8], x: &[f32]) -> f32 {
    let (code_blocks, code_tail) = codes.as_chunks::<64>();
    let (sign_blocks, _) = signs.as_chunks::<8>();
    // Not the remainder of `as_chunks`: a tail of 57..63 codes has 8 whole sign bytes.
    let sign_tail = &signs[code_blocks.len() * 8..];
    let (x_blocks, x_tail) = x.as_chunks::<64>();
    // Four accumulators: four independent FMA chains per 64 weights.
    let mut acc = [_mm512_setzero_ps(); 4];
    for ((codes, signs), x) in code_blocks.iter().zip(sign_blocks).zip(x_blocks) {
        fma64(&mut acc, decoder.decode64(codes, signs), x);
    }
    if !code_tail.is_empty() {
        let w = decoder.decode64(&padded(code_tail), &padded(sign_tail));
        fma64(&mut acc, w, &padded(x_tail));
    }
    sum(acc)
}

/// Decodes up to [`BLOCK`] weights into `out` (rounded up to 64 with zeros).
#[target_feature(enable = "avx512f,avx512bw")]
fn decode_block(decoder: Decoder, codes: &[u8], signs: &[u8], out: &mut [f32; BLOCK]) {
    let (code_blocks, code_tail) = codes.as_chunks::<64>();
    let (sign_blocks, _) = signs.as_chunks::<8>();
    // Not the remainder of `as_chunks`: a tail of 57..63 codes has 8 whole sign bytes.
    let sign_tail = &signs[code_blocks.len() * 8..];
    let (out_blocks, _) = out.as_chunks_mut::<64>();
    let mut out_blocks = out_blocks.iter_mut();
    for ((codes, signs), out) in code_blocks.iter().zip(sign_blocks).zip(&mut out_blocks) {
        store64(out, decoder.decode64(codes, signs));
    }
    if !code_tail.is_empty() {
        let out = out_blocks.next().expect("BLOCK is a multiple of 64");
        store64(
            out,
            decoder.decode64(&padded(code_tail), &padded(sign_tail)),
        );
    }
}

/// `Σ w[c] * x[c]` of two f32 slices of equal length.
#[target_feature(enable = "avx512f")]
fn dot(w: &[f32], x: &[f32]) -> f32 {
    let (w_blocks, w_tail) = w.as_chunks::<64>();
    let (x_blocks, x_tail) = x.as_chunks::<64>();
    let mut acc = [_mm512_setzero_ps(); 4];
    for (w, x) in w_blocks.iter().zip(x_blocks) {
        fma64(&mut acc, load64(w), x);
    }
    if !w_tail.is_empty() {
        fma64(&mut acc, load64(&padded(w_tail)), &padded(x_tail));
    }
    sum(acc)
}

#[target_feature(enable = "avx512f")]
fn fma64(acc: &mut [__m512; 4], w: [__m512; 4], x: &[f32; 64]) {
    let x = load64(x);
    for k in 0..4 {
        acc[k] = _mm512_fmadd_ps(w[k], x[k], acc[k]);
    }
}

#[target_feature(enable = "avx512f")]
fn load64(v: &[f32; 64]) -> [__m512; 4] {
    let p = v.as_ptr();
    // SAFETY: 64 readable f32, read as four groups of 16.
    unsafe {
        [
            _mm512_loadu_ps(p),
            _mm512_loadu_ps(p.add(16)),
            _mm512_loadu_ps(p.add(32)),
            _mm512_loadu_ps(p.add(48)),
        ]
    }
}

#[target_feature(enable = "avx512f")]
fn store64(out: &mut [f32; 64], v: [__m512; 4]) {
    let p = out.as_mut_ptr();
    // SAFETY: 64 writable f32, written as four groups of 16.
    unsafe {
        _mm512_storeu_ps(p, v[0]);
        _mm512_storeu_ps(p.add(16), v[1]);
        _mm512_storeu_ps(p.add(32), v[2]);
        _mm512_storeu_ps(p.add(48), v[3]);
    }
}

#[target_feature(enable = "avx512f")]
fn sum(acc: [__m512; 4]) -> f32 {
    let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(v)
}
