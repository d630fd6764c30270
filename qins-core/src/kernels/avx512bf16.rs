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
//! **Threading.** Up to 4 input rows (a decode step, batched or not):
//! each weight block is decoded into registers and dotted with every input
//! row there, no buffer. More (prefill): a task decodes its rows once into
//! a thread-local bf16 buffer and runs a register-blocked micro-kernel of
//! up to 4 weight rows x 6 input rows (24 accumulators) over it, so each
//! decoded weight serves every input row from registers.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::{NibbleTables, for_each_row_task, padded, prefetch_ahead, round_to_bf16, row_tables};
use crate::weights::QinsMatrix;

/// Columns per block: one 64-byte register of codes.
const BLOCK: usize = 64;
/// Rows decoded together by one task of a multi-row call (the buffer holds
/// `TASK_ROWS x cols` bf16 weights: 256 KiB at 8192 columns, inside L2).
const TASK_ROWS: usize = 16;
/// Input rows up to which each weight row is decoded into registers and
/// dotted there (decode steps, batched or not); more go through the
/// buffered micro-kernel.
const MAX_DIRECT_INPUTS: usize = 4;
/// Rows of one task of such a call: enough work to amortize rayon's
/// scheduling, few enough to balance the narrowest matrices.
const DECODE_TASK_ROWS: usize = 8;
/// Micro-kernel tile: weight rows x input rows.
const TILE_ROWS: usize = 4;
const TILE_INPUTS: usize = 6;

pub fn is_available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vbmi")
        && is_x86_feature_detected!("avx512bf16")
}

/// `out[n x rows] = x[n x cols] · Wᵀ` (see [`super::qins_matmul`]).
pub fn matmul(x: &[f32], n: usize, w: &QinsMatrix, out: &mut [f32]) {
    // A fn pointer to this can be called anywhere: refuse rather than fault.
    assert!(
        is_available(),
        "avx512-bf16 kernel needs AVX-512 F, BW, VBMI and BF16"
    );
    let padded_cols = w.cols.div_ceil(BLOCK) * BLOCK;
    // Taken, not borrowed: a rayon worker waiting inside this call may run
    // another matmul (e.g. the other side of a `rayon::join`), which then
    // finds an empty buffer instead of a borrowed one.
    let mut inputs = INPUTS.take();
    // Every element is written below: grow, never clear.
    if inputs.len() < n * padded_cols {
        inputs.resize(n * padded_cols, 0);
    }
    let inputs_len = n * padded_cols;
    for (row, dst) in x
        .chunks(w.cols)
        .zip(inputs[..inputs_len].chunks_mut(padded_cols))
    {
        interleave(row, dst);
    }
    let tables_of = row_tables(w);
    if n <= MAX_DIRECT_INPUTS {
        // SAFETY: the CPU has the features (asserted above).
        unsafe { decode_rows(w, &inputs[..inputs_len], n, padded_cols, &tables_of, out) }
    } else {
        // SAFETY: the CPU has the features (asserted above).
        unsafe { multiply_rows(w, &inputs[..inputs_len], n, padded_cols, &tables_of, out) }
    }
    INPUTS.set(inputs);
}

thread_local! {
    /// The calling thread's bf16 copy of the inputs, reused across calls.
    static INPUTS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    /// A rayon worker's decoded rows, reused across tasks and calls.
    static DECODED: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
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

/// Up to [`MAX_DIRECT_INPUTS`] input rows: every weight row is decoded into
/// registers and dotted with each input row there, no buffer.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
fn decode_rows(
    w: &QinsMatrix,
    x: &[u16],
    n: usize,
    padded_cols: usize,
    tables_of: &(impl Fn(usize) -> NibbleTables + Sync),
    out: &mut [f32],
) {
    for_each_row_task(out, n, w.rows, DECODE_TASK_ROWS, |task_rows, out| {
        for row in task_rows {
            // (Closures inherit this function's target features.)
            let tables = Tables::new(&tables_of(row));
            let (codes, signs) = (w.row_codes(row), w.row_signs(row));
            let store = |dots: &[f32]| {
                for (t, &d) in dots.iter().enumerate() {
                    out.write(t, row, d);
                }
            };
            match n {
                1 => store(&decode_dots::<1>(&tables, codes, signs, x, padded_cols)),
                2 => store(&decode_dots::<2>(&tables, codes, signs, x, padded_cols)),
                3 => store(&decode_dots::<3>(&tables, codes, signs, x, padded_cols)),
                _ => store(&decode_dots::<4>(&tables, codes, signs, x, padded_cols)),
            }
        }
    });
}

/// Several input rows: tasks of [`TASK_ROWS`] rows, each decoded once and
/// multiplied by every input row with the micro-kernel.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
fn multiply_rows(
    w: &QinsMatrix,
    x: &[u16],
    n: usize,
    padded_cols: usize,
    tables_of: &(impl Fn(usize) -> NibbleTables + Sync),
    out: &mut [f32],
) {
    for_each_row_task(out, n, w.rows, TASK_ROWS, |task_rows, out| {
        let first = task_rows.start;
        let task_rows = task_rows.len();
        DECODED.with_borrow_mut(|decoded| {
            // Every element is written by `decode_row`: grow, never clear.
            if decoded.len() < task_rows * padded_cols {
                decoded.resize(task_rows * padded_cols, 0);
            }
            let decoded = &mut decoded[..task_rows * padded_cols];
            for (i, dst) in decoded.chunks_mut(padded_cols).enumerate() {
                let row = first + i;
                let tables = Tables::new(&tables_of(row));
                decode_row(&tables, w.row_codes(row), w.row_signs(row), dst);
            }
            for t0 in (0..n).step_by(TILE_INPUTS) {
                let inputs = TILE_INPUTS.min(n - t0);
                let x_tile = &x[t0 * padded_cols..(t0 + inputs) * padded_cols];
                for r0 in (0..task_rows).step_by(TILE_ROWS) {
                    let tile_rows = TILE_ROWS.min(task_rows - r0);
                    let w_tile = &decoded[r0 * padded_cols..(r0 + tile_rows) * padded_cols];
                    let mut dots = [[0.0f32; TILE_INPUTS]; TILE_ROWS];
                    micro_kernel(w_tile, x_tile, padded_cols, &mut dots);
                    for (r, row_dots) in dots.iter().enumerate().take(tile_rows) {
                        for (t, &d) in row_dots.iter().enumerate().take(inputs) {
                            out.write(t0 + t, first + r0 + r, d);
                        }
                    }
                }
            }
        });
    });
}

/// Dots of up to 4 decoded weight rows with up to 6 input rows (both
/// `cols`-strided bf16, sliced to the tile), into `dots[row][input]`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn micro_kernel(w: &[u16], x: &[u16], cols: usize, dots: &mut [[f32; TILE_INPUTS]; TILE_ROWS]) {
    match (w.len() / cols, x.len() / cols) {
        (4, 6) => tile::<4, 6>(w, x, cols, dots),
        (4, 5) => tile::<4, 5>(w, x, cols, dots),
        (4, 4) => tile::<4, 4>(w, x, cols, dots),
        (4, 3) => tile::<4, 3>(w, x, cols, dots),
        (4, 2) => tile::<4, 2>(w, x, cols, dots),
        (4, _) => tile::<4, 1>(w, x, cols, dots),
        (3, _) => tile::<3, TILE_INPUTS>(w, x, cols, dots),
        (2, _) => tile::<2, TILE_INPUTS>(w, x, cols, dots),
        _ => tile::<1, TILE_INPUTS>(w, x, cols, dots),
    }
}

/// The register-blocked core: `R x T` accumulators, one weight register per
/// row and one input register at a time, 32 columns per step. Missing input
/// rows of a short tile (fewer than `T` in `x`) are skipped.
// Indexing (not iterators) keeps the register tile explicit for the compiler.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn tile<const R: usize, const T: usize>(
    w: &[u16],
    x: &[u16],
    cols: usize,
    dots: &mut [[f32; TILE_INPUTS]; TILE_ROWS],
) {
    let inputs = (x.len() / cols).min(T);
    assert!(w.len() >= R * cols && x.len() >= inputs * cols && cols.is_multiple_of(32));
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let (w, x) = (w.as_ptr(), x.as_ptr());
    for k in (0..cols).step_by(32) {
        // SAFETY: rows `r < R` of `w` and `t < inputs` of `x` have `cols`
        // elements (asserted), and `k + 32 <= cols`.
        unsafe {
            let weights: [__m512bh; R] =
                std::array::from_fn(|r| as_bf16(_mm512_loadu_si512(w.add(r * cols + k).cast())));
            for t in 0..inputs {
                let input = as_bf16(_mm512_loadu_si512(x.add(t * cols + k).cast()));
                for r in 0..R {
                    acc[r][t] = _mm512_dpbf16_ps(acc[r][t], weights[r], input);
                }
            }
        }
    }
    for r in 0..R {
        for t in 0..inputs {
            dots[r][t] = _mm512_reduce_add_ps(acc[r][t]);
        }
    }
}

/// The decode tables of one range: the low and the high bytes of the 256
/// bf16 magnitudes, 64 codes per register.
#[derive(Clone, Copy)]
struct Tables {
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

/// Calls `f(block, codes, sign_word)` for each 64-code block of a row, in
/// order; the last partial block comes zero-padded (code 0 decodes to 0).
#[inline(always)]
fn for_each_block(codes: &[u8], signs: &[u8], mut f: impl FnMut(usize, &[u8; BLOCK], u64)) {
    let (whole, tail) = codes.as_chunks::<BLOCK>();
    let (sign_words, _) = signs.as_chunks::<8>();
    for (block, (codes, signs)) in whole.iter().zip(sign_words).enumerate() {
        f(block, codes, u64::from_le_bytes(*signs));
    }
    if !tail.is_empty() {
        // Not the remainder of `as_chunks`: a tail of 57..63 codes has 8
        // whole sign bytes.
        let sign_tail = &signs[whole.len() * 8..];
        let negative = u64::from_le_bytes(padded::<u8, 8>(sign_tail));
        f(whole.len(), &padded::<u8, BLOCK>(tail), negative);
    }
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
        prefetch_ahead(codes, signs);
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
    for_each_block(codes, signs, |block, codes, negative| {
        let w = tables.decode64(codes, negative);
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
