//! AVX2 + FMA row kernel, the x86-64 fallback without AVX-512.
//!
//! 8 weights per register. A 16-entry nibble table is two registers: two
//! `vpermps` (which read only the low 3 index bits) and a `vblendvps` on
//! index bit 3 (shifted into the sign bit, which is what blendv tests).
//! Code 0 is cleared with a compare; the 8 sign bits of one byte become lane
//! sign bits with one variable shift (bit `i` shifted left by `31 - i`).
//!
//! Structure as in [`super::avx512`]: decode while dotting for one input
//! row, decode a block once into a stack buffer for a batch.

use std::arch::x86_64::*;

use super::{NibbleTables, RowJob, padded};

/// Weights decoded per block for a batch (a multiple of 32).
const BLOCK: usize = 512;

pub fn is_available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Row kernel (see [`super::RowKernel`]).
pub fn row_dots(job: &RowJob<'_>, out: &mut [f32]) {
    // A fn pointer to this can be called anywhere: refuse rather than fault.
    assert!(is_available(), "avx2 kernel needs AVX2 and FMA");
    // SAFETY: the CPU has the features `row_dots_avx2` enables.
    unsafe { row_dots_avx2(job, out) }
}

#[target_feature(enable = "avx2,fma")]
fn row_dots_avx2(job: &RowJob<'_>, out: &mut [f32]) {
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

#[repr(align(32))]
struct Aligned([f32; BLOCK]);

#[derive(Clone, Copy)]
struct Decoder {
    hi: [__m256; 2],
    lo: [__m256; 2],
    /// `31 - lane`: moves sign bit `lane` of a byte to bit 31.
    shifts: __m256i,
}

impl Decoder {
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
    #[target_feature(enable = "avx2,fma")]
    fn lookup(table: [__m256; 2], idx: __m256i) -> __m256 {
        let low_half = _mm256_permutevar8x32_ps(table[0], idx);
        let high_half = _mm256_permutevar8x32_ps(table[1], idx);
        let bit3 = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx));
        _mm256_blendv_ps(low_half, high_half, bit3)
    }

    /// 8 weights; bit `i` of `negative` is lane `i`'s sign.
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

/// `Σ w[c] * x[c]` over one weight row, decoding as it goes (no buffer).
#[target_feature(enable = "avx2,fma")]
fn decode_dot(decoder: Decoder, codes: &[u8], signs: &[u8], x: &[f32]) -> f32 {
    let (code_blocks, code_tail) = codes.as_chunks::<32>();
    let (sign_blocks, _) = signs.as_chunks::<4>();
    // Not the remainder of `as_chunks`: a tail of 25..31 codes has 4 whole sign bytes.
    let sign_tail = &signs[code_blocks.len() * 4..];
    let (x_blocks, x_tail) = x.as_chunks::<32>();
    let mut acc = [_mm256_setzero_ps(); 4];
    for ((codes, signs), x) in code_blocks.iter().zip(sign_blocks).zip(x_blocks) {
        fma32(&mut acc, decoder.decode32(codes, signs), x);
    }
    if !code_tail.is_empty() {
        let w = decoder.decode32(&padded(code_tail), &padded(sign_tail));
        fma32(&mut acc, w, &padded(x_tail));
    }
    sum(acc)
}

/// Decodes up to [`BLOCK`] weights into `out` (rounded up to 32 with zeros).
#[target_feature(enable = "avx2,fma")]
fn decode_block(decoder: Decoder, codes: &[u8], signs: &[u8], out: &mut [f32; BLOCK]) {
    let (code_blocks, code_tail) = codes.as_chunks::<32>();
    let (sign_blocks, _) = signs.as_chunks::<4>();
    // Not the remainder of `as_chunks`: a tail of 25..31 codes has 4 whole sign bytes.
    let sign_tail = &signs[code_blocks.len() * 4..];
    let (out_blocks, _) = out.as_chunks_mut::<32>();
    let mut out_blocks = out_blocks.iter_mut();
    for ((codes, signs), out) in code_blocks.iter().zip(sign_blocks).zip(&mut out_blocks) {
        store32(out, decoder.decode32(codes, signs));
    }
    if !code_tail.is_empty() {
        let out = out_blocks.next().expect("BLOCK is a multiple of 32");
        store32(
            out,
            decoder.decode32(&padded(code_tail), &padded(sign_tail)),
        );
    }
}

/// `Σ w[c] * x[c]` of two f32 slices of equal length.
#[target_feature(enable = "avx2,fma")]
fn dot(w: &[f32], x: &[f32]) -> f32 {
    let (w_blocks, w_tail) = w.as_chunks::<32>();
    let (x_blocks, x_tail) = x.as_chunks::<32>();
    let mut acc = [_mm256_setzero_ps(); 4];
    for (w, x) in w_blocks.iter().zip(x_blocks) {
        fma32(&mut acc, load32(w), x);
    }
    if !w_tail.is_empty() {
        fma32(&mut acc, load32(&padded(w_tail)), &padded(x_tail));
    }
    sum(acc)
}

#[target_feature(enable = "avx2,fma")]
fn fma32(acc: &mut [__m256; 4], w: [__m256; 4], x: &[f32; 32]) {
    let x = load32(x);
    for k in 0..4 {
        acc[k] = _mm256_fmadd_ps(w[k], x[k], acc[k]);
    }
}

#[target_feature(enable = "avx2,fma")]
fn load32(v: &[f32; 32]) -> [__m256; 4] {
    let p = v.as_ptr();
    // SAFETY: 32 readable f32, read as four groups of 8.
    unsafe {
        [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ]
    }
}

#[target_feature(enable = "avx2,fma")]
fn store32(out: &mut [f32; 32], v: [__m256; 4]) {
    let p = out.as_mut_ptr();
    // SAFETY: 32 writable f32, written as four groups of 8.
    unsafe {
        _mm256_storeu_ps(p, v[0]);
        _mm256_storeu_ps(p.add(8), v[1]);
        _mm256_storeu_ps(p.add(16), v[2]);
        _mm256_storeu_ps(p.add(24), v[3]);
    }
}

#[target_feature(enable = "avx2,fma")]
fn sum(acc: [__m256; 4]) -> f32 {
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
    let total = _mm_add_ss(pairs, _mm_movehdup_ps(pairs));
    _mm_cvtss_f32(total)
}
