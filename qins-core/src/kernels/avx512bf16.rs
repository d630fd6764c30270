//! AVX-512 BF16 kernels (Zen 4, Sapphire Rapids and later): weights and
//! inputs meet as bf16 in `vdpbf16ps`, 32 products per instruction summed
//! in f32. The fast path on CPUs that have it; [`super::avx512`] stays the
//! f32 one (`QINS_KERNEL=avx512`).
//!
//! **Decoding.** Per row, the 256 magnitudes are formed exactly as the
//! scalar reference forms them (the f32 nibble product
//! `hi[c >> 4] * lo[c & 15]`, code 0 = 0), rounded to bf16 and split into
//! a low-byte and a high-byte plane of four registers each ([`Tables`],
//! about 30 instructions). `vpermi2b` (VBMI) then looks up 64 codes per
//! plane with two permutes and a blend on the code's top bit, the row's 64
//! sign bits flip bit 7 of the high bytes with one byte-masked add, and
//! unpacking the planes gives 64 bf16 weights: ~11 instructions per 64
//! weights where the f32 kernel needs ~28 per 64.
//!
//! **Order.** Unpacking interleaves within 128-bit lanes, so the weights of
//! a 64-column block come out in the order [`interleaved_column`] gives;
//! inputs are converted to bf16 in that order once per call, which costs
//! `n x cols` work against `n x rows x cols` multiply-adds.
//!
//! **Accuracy.** Each weight and input is rounded once to bf16 (8
//! significant bits: relative error <= 2^-8 each, so a dot product moves by
//! at most 2^-7 of Σ|w·x|); products are exact in f32 and summed in f32. The
//! tests compare against the same computation done in f64 on bf16-rounded
//! operands ([`super::round_to_bf16`]), with the f32-summation tolerance of
//! the other kernels.
//!
//! **Threading.** The shared frame ([`super::driver`]): up to 4 input rows
//! (a decode step, batched or not) decode each weight block into registers
//! and dot it with every input row there, no buffer. More (prefill): a
//! task decodes its rows once into a worker's bf16 buffer and runs a
//! register-blocked micro-kernel of up to 4 weight rows x 6 input rows (24
//! accumulators) over it, so each decoded weight serves every input row
//! from registers.

use std::arch::x86_64::*;
use std::ops::Range;

use super::driver::{Inputs, Kernel, Prepared, TileDots, exact_tile, for_each_input_row};
use super::{NibbleTables, for_each_group, padded, prefetch_ahead, round_to_bf16};
use crate::weights::QinsMatrix;

/// Columns per block: one 64-byte register of codes.
const BLOCK: usize = 64;

/// The `avx512-bf16` kernel.
pub struct Avx512Bf16;

pub fn is_available() -> bool {
    super::dispatch::allows(super::dispatch::Isa::Avx512)
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vbmi")
        && is_x86_feature_detected!("avx512bf16")
}

impl Kernel for Avx512Bf16 {
    type Input = u16;
    type Weight = u16;
    const NAME: &'static str = "avx512-bf16";
    /// Blocks of 64 columns; bf16 inputs need no scale.
    const GROUP: usize = BLOCK;
    /// 24 accumulators, 4 weight registers.
    const TILE_ROWS: usize = 4;
    const TILE_INPUTS: usize = 6;

    fn is_available() -> bool {
        is_available()
    }

    unsafe fn prepare(x: &[f32], cols: usize, _direct: bool, inputs: &mut Prepared<'_, u16>) {
        for_each_input_row(x, cols, inputs, |row, values, _| interleave(row, values));
    }

    type Row = Tables;

    unsafe fn row(w: &QinsMatrix, row: usize) -> Tables {
        // SAFETY: the CPU has the kernel's instructions (the caller's
        // contract).
        unsafe { Tables::new(&NibbleTables::from_factors(w.row_factors(row))) }
    }

    unsafe fn direct_dots(
        tables: &Tables,
        w: &QinsMatrix,
        row: usize,
        x: &Inputs<'_, u16>,
        out: &mut [f32],
    ) {
        // SAFETY: as above.
        unsafe { direct_dots(tables, w, row, x, out) }
    }

    unsafe fn decode_task(
        w: &QinsMatrix,
        rows: Range<usize>,
        padded_cols: usize,
        decoded: &mut [u16],
        scales: &mut [f32],
    ) {
        for ((row, out), scale) in rows.zip(decoded.chunks_mut(padded_cols)).zip(scales) {
            // SAFETY: as above.
            let tables = unsafe { Tables::new(&NibbleTables::from_factors(w.row_factors(row))) };
            // SAFETY: as above.
            unsafe { decode_row(&tables, w.row_codes(row), w.row_signs(row), out) };
            *scale = 1.0;
        }
    }

    unsafe fn tile(
        decoded: &[u16],
        rows: Range<usize>,
        x: &Inputs<'_, u16>,
        inputs: Range<usize>,
        dots: &mut TileDots,
    ) {
        let cols = x.padded_cols;
        let w = &decoded[rows.start * cols..rows.end * cols];
        let x = &x.values[inputs.start * cols..inputs.end * cols];
        // SAFETY: as above.
        unsafe { micro_kernel(w, x, cols, dots) }
    }
}

/// The column whose weight lands at position `i` of a decoded 64-block:
/// `unpacklo` yields columns `16L + 0..8` of each 128-bit lane `L`, then
/// `unpackhi` columns `16L + 8..16`.
pub const fn interleaved_column(i: usize) -> usize {
    let (half, word) = (i / 32, i % 32);
    16 * (word / 8) + 8 * half + word % 8
}

/// [`interleaved_column`] of every position of a block.
const BLOCK_ORDER: [usize; BLOCK] = {
    let mut order = [0; BLOCK];
    let mut i = 0;
    while i < BLOCK {
        order[i] = interleaved_column(i);
        i += 1;
    }
    order
};

/// `x` (one input row) as bf16 in the decoded weights' order, zero-padded
/// to whole blocks (`out` is that long).
fn interleave(x: &[f32], out: &mut [u16]) {
    let (whole, tail) = x.as_chunks::<BLOCK>();
    let mut blocks = out.chunks_exact_mut(BLOCK);
    let convert = |src: &[f32; BLOCK], dst: &mut [u16]| {
        for (slot, &column) in dst.iter_mut().zip(&BLOCK_ORDER) {
            *slot = round_to_bf16(src[column]);
        }
    };
    for (src, dst) in whole.iter().zip(&mut blocks) {
        convert(src, dst);
    }
    if let Some(dst) = blocks.next() {
        convert(&padded::<f32, BLOCK>(tail), dst);
    }
}

/// Direct path: decodes row `row` block by block into registers and dots
/// it with each of `out.len()` input rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
fn direct_dots(tables: &Tables, w: &QinsMatrix, row: usize, x: &Inputs<'_, u16>, out: &mut [f32]) {
    let (codes, signs) = (w.row_codes(row), w.row_signs(row));
    let (x, cols) = (x.values, x.padded_cols);
    match out.len() {
        1 => out.copy_from_slice(&decode_dots::<1>(tables, codes, signs, x, cols)),
        2 => out.copy_from_slice(&decode_dots::<2>(tables, codes, signs, x, cols)),
        3 => out.copy_from_slice(&decode_dots::<3>(tables, codes, signs, x, cols)),
        _ => out.copy_from_slice(&decode_dots::<4>(tables, codes, signs, x, cols)),
    }
}

/// Dots of up to 4 decoded weight rows with up to 6 input rows (both
/// `cols`-strided bf16, sliced to the tile), into `dots[row][input]`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn micro_kernel(w: &[u16], x: &[u16], cols: usize, dots: &mut TileDots) {
    exact_tile!(tile[], w.len() / cols, x.len() / cols, rows: [1 2 3 4], inputs: [1 2 3 4 5 6], (w, x, cols, dots));
}

/// The register-blocked core: `R x T` accumulators, one weight register per
/// row and one input register at a time, 32 columns per step.
// Indexing (not iterators) keeps the register tile explicit for the compiler.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn tile<const R: usize, const T: usize>(w: &[u16], x: &[u16], cols: usize, dots: &mut TileDots) {
    assert!(w.len() >= R * cols && x.len() >= T * cols && cols.is_multiple_of(32));
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let (w, x) = (w.as_ptr(), x.as_ptr());
    for k in (0..cols).step_by(32) {
        // SAFETY: rows `r < R` of `w` and `t < T` of `x` have `cols`
        // elements (asserted), and `k + 32 <= cols`.
        unsafe {
            let weights: [__m512bh; R] =
                std::array::from_fn(|r| as_bf16(_mm512_loadu_si512(w.add(r * cols + k).cast())));
            for t in 0..T {
                let input = as_bf16(_mm512_loadu_si512(x.add(t * cols + k).cast()));
                for r in 0..R {
                    acc[r][t] = _mm512_dpbf16_ps(acc[r][t], weights[r], input);
                }
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            dots[r][t] = _mm512_reduce_add_ps(acc[r][t]);
        }
    }
}

/// The decode tables of one range: the low and the high bytes of the 256
/// bf16 magnitudes, 64 codes per register.
#[derive(Clone, Copy)]
pub struct Tables {
    low: [__m512i; 4],
    high: [__m512i; 4],
}

impl Tables {
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
    fn new(tables: &NibbleTables) -> Self {
        // SAFETY: 16 readable f32.
        let lo = unsafe { _mm512_loadu_ps(tables.lo.as_ptr()) };
        // Magnitudes of codes 32j..32j+32 as bf16: hi[2j] * lo, hi[2j+1] * lo.
        let words: [__m512i; 8] = std::array::from_fn(|j| {
            // Code 0 (lane 0 of the first product) is 0.
            let keep = if j == 0 { 0xFFFE } else { 0xFFFF };
            let even = _mm512_maskz_mul_ps(keep, _mm512_set1_ps(tables.hi[2 * j]), lo);
            let odd = _mm512_mul_ps(_mm512_set1_ps(tables.hi[2 * j + 1]), lo);
            // The low half of the result comes from the second operand.
            as_int(_mm512_cvtne2ps_pbh(odd, even))
        });
        // Byte i of a plane register q is byte 2i (low) or 2i + 1 (high)
        // of words[2q] ++ words[2q + 1].
        let even_bytes = byte_indices(0);
        let odd_bytes = byte_indices(1);
        Self {
            low: std::array::from_fn(|q| {
                _mm512_permutex2var_epi8(words[2 * q], even_bytes, words[2 * q + 1])
            }),
            high: std::array::from_fn(|q| {
                _mm512_permutex2var_epi8(words[2 * q], odd_bytes, words[2 * q + 1])
            }),
        }
    }

    /// The 64 bf16 weights of 64 codes, in [`interleaved_column`] order as
    /// two registers of 32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn decode64(&self, codes: &[u8; BLOCK], negative: u64) -> [__m512i; 2] {
        // SAFETY: 64 readable bytes.
        let codes = unsafe { _mm512_loadu_si512(codes.as_ptr().cast()) };
        let upper_half = _mm512_movepi8_mask(codes);
        let plane = |t: &[__m512i; 4]| {
            _mm512_mask_blend_epi8(
                upper_half,
                _mm512_permutex2var_epi8(t[0], codes, t[1]),
                _mm512_permutex2var_epi8(t[2], codes, t[3]),
            )
        };
        let low = plane(&self.low);
        let high = plane(&self.high);
        // Adding 0x80 to a byte flips its top bit: the bf16 sign.
        let high = _mm512_mask_add_epi8(high, negative, high, _mm512_set1_epi8(i8::MIN));
        [
            _mm512_unpacklo_epi8(low, high),
            _mm512_unpackhi_epi8(low, high),
        ]
    }
}

/// Byte indices `2i + offset` for `i` in 0..64 (for `vpermt2b`).
#[target_feature(enable = "avx512f")]
fn byte_indices(offset: u8) -> __m512i {
    let indices: [u8; 64] = std::array::from_fn(|i| 2 * i as u8 + offset);
    // SAFETY: 64 readable bytes.
    unsafe { _mm512_loadu_si512(indices.as_ptr().cast()) }
}

/// `Σ w[c] * x_t[c]` over one row for `T` input rows (`padded_cols`
/// apart in `x`), decoding each block once into registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
fn decode_dots<const T: usize>(
    tables: &Tables,
    codes: &[u8],
    signs: &[u8],
    x: &[u16],
    padded_cols: usize,
) -> [f32; T] {
    assert!(x.len() >= T * padded_cols && codes.len() <= padded_cols);
    let mut acc = [[_mm512_setzero_ps(); 2]; T];
    let mut step = |block: usize, codes: &[u8; BLOCK], negative: u64| {
        let w = tables.decode64(codes, negative);
        for (t, acc) in acc.iter_mut().enumerate() {
            // SAFETY: block `block` of input row `t` is 64 readable u16
            // (asserted: the blocks of a row end within `padded_cols`).
            let (x0, x1) = unsafe {
                let p = x.as_ptr().add(t * padded_cols + block * BLOCK);
                (
                    _mm512_loadu_si512(p.cast()),
                    _mm512_loadu_si512(p.add(32).cast()),
                )
            };
            acc[0] = _mm512_dpbf16_ps(acc[0], as_bf16(w[0]), as_bf16(x0));
            acc[1] = _mm512_dpbf16_ps(acc[1], as_bf16(w[1]), as_bf16(x1));
        }
    };
    // The whole blocks in a plain loop (the hot path), then the padded tail.
    let (whole, tail) = codes.as_chunks::<BLOCK>();
    let (sign_words, _) = signs.as_chunks::<8>();
    for (block, (codes, signs)) in whole.iter().zip(sign_words).enumerate() {
        prefetch_ahead::<{ super::PREFETCH_DISTANCE }>(codes, signs);
        step(block, codes, u64::from_le_bytes(*signs));
    }
    if !tail.is_empty() {
        // Not the remainder of `as_chunks`: a tail of 57..63 codes has 8
        // whole sign bytes.
        let sign_tail = &signs[whole.len() * 8..];
        let negative = u64::from_le_bytes(padded::<u8, 8>(sign_tail));
        step(whole.len(), &padded::<u8, BLOCK>(tail), negative);
    }
    std::array::from_fn(|t| _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1])))
}

/// Decodes one row into `out` (its padded length, in interleaved order).
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn decode_row(tables: &Tables, codes: &[u8], signs: &[u8], out: &mut [u16]) {
    assert!(out.len() >= codes.len().div_ceil(BLOCK) * BLOCK);
    for_each_group::<BLOCK, 8, BLOCK>(codes, signs, |block, codes, signs| {
        // Whole blocks: a partial one comes padded (the chunk is the block).
        let (codes, signs) = (
            &codes.as_chunks::<BLOCK>().0[0],
            &signs.as_chunks::<8>().0[0],
        );
        let w = tables.decode64(codes, u64::from_le_bytes(*signs));
        // SAFETY: block `block` of out is 64 writable u16 (asserted),
        // written as two halves.
        unsafe {
            let p = out.as_mut_ptr().add(block * BLOCK);
            _mm512_storeu_si512(p.cast(), w[0]);
            _mm512_storeu_si512(p.add(32).cast(), w[1]);
        }
    });
}

#[inline]
fn as_bf16(v: __m512i) -> __m512bh {
    // SAFETY: both are 512 plain bits.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

#[inline]
fn as_int(v: __m512bh) -> __m512i {
    // SAFETY: both are 512 plain bits.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(v) }
}
