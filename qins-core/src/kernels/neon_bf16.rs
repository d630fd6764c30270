//! aarch64 BF16 kernels (FEAT_BF16: Apple M2 and later, Neoverse V1/V2/N2,
//! Graviton 3/4): weights and inputs meet as bf16 in `BFDOT` (decode
//! steps) and `BFMMLA` (prefill), products exact and summed in f32. The
//! fast path where the CPU has BF16; [`super::neon`] stays the f32 one
//! (`QINS_KERNEL=neon`).
//!
//! **Instructions.** Rust 1.95 has no stable BF16 intrinsics (they are not
//! in `std::arch::aarch64` at all), so the three instructions used here,
//! `BFCVTN`/`BFCVTN2` (f32 -> bf16, round to nearest even as
//! [`super::round_to_bf16`]), `BFDOT` and `BFMMLA`, are one-instruction
//! `asm!` blocks in functions compiled with the `bf16` target feature, and
//! the kernel runs only after `is_aarch64_feature_detected!("bf16")`.
//! `BFDOT` and `BFMMLA` ignore FPCR: they round their f32 sums to odd and
//! flush subnormals, a summation error of the same order as f32's.
//!
//! **Decoding.** Each weight is decoded exactly as [`super::neon`] decodes
//! it (the reference's f32 nibble product, in registers) and rounded to
//! bf16 with `BFCVTN`: the same bf16 weight as the x86 bf16 kernel and the
//! tests' `round_to_bf16` reference. (A bf16 table of all 256 magnitudes
//! would be 32 NEON registers, all there are, so the decode stays the f32
//! one; the gain is in the multiply-adds: `BFDOT` does 8 per instruction,
//! `BFMMLA` 16, against 4 for an f32 FMA.)
//!
//! **Threading and layout.** The shared frame ([`super::driver`]). Up to 4
//! input rows (a decode step, batched or not): each row is decoded 16
//! weights at a time into registers and dotted there with every input row
//! (`BFDOT`), no buffer; inputs are rounded to bf16 once per call, in
//! column order. More (prefill): a task decodes 16 weight rows once into a
//! worker's buffer and runs a `BFMMLA`
//! micro-kernel of 4 weight rows x 8 input rows over it. `BFMMLA` takes two
//! rows of 4 columns per operand, so both the decoded rows and the inputs
//! are stored pair-interleaved: for rows `2p, 2p + 1` and columns
//! `4g..4g + 4`, 4 bf16 of the first row then 4 of the second (which is
//! what `BFCVTN` + `BFCVTN2` of the two rows' f32 quarter-registers give).

use std::arch::aarch64::*;
use std::arch::asm;
use std::ops::Range;

use super::driver::{Inputs, Kernel, Prepared, TileDots};
use super::neon::Decoder;
use super::{NibbleTables, for_each_group, padded};
use crate::weights::QinsMatrix;

/// Columns per decode step: one register of codes.
const BLOCK: usize = 16;

/// The `neon-bf16` kernel.
pub struct NeonBf16;

pub fn is_available() -> bool {
    super::dispatch::allows(super::dispatch::Isa::ArmBf16)
        && std::arch::is_aarch64_feature_detected!("bf16")
}

impl Kernel for NeonBf16 {
    type Input = u16;
    type Weight = u16;
    const NAME: &'static str = "neon-bf16";
    /// Blocks of 16 columns; bf16 inputs need no scale.
    const GROUP: usize = BLOCK;
    /// 4 x 8 rows: 2 row pairs x 4 input pairs, 8 accumulators and 6
    /// operand registers of the 32.
    const TILE_ROWS: usize = 4;
    const TILE_INPUTS: usize = 8;
    /// `BFMMLA` takes rows in pairs.
    const ROW_GROUP: usize = 2;

    fn is_available() -> bool {
        is_available()
    }

    unsafe fn prepare(x: &[f32], cols: usize, direct: bool, inputs: &mut Prepared<'_, u16>) {
        let padded_cols = inputs.padded_cols;
        if direct {
            for (row, dst) in x.chunks(cols).zip(inputs.values.chunks_mut(padded_cols)) {
                // SAFETY: the CPU has BF16 (the caller's contract).
                unsafe { convert_in_order(row, dst) };
            }
            return;
        }
        for (pair, dst) in x
            .chunks(2 * cols)
            .zip(inputs.values.chunks_mut(2 * padded_cols))
        {
            let mut rows = pair.chunks(cols);
            for half in 0..2 {
                match rows.next() {
                    // SAFETY: as above.
                    Some(row) => unsafe { convert_half(row, half, dst) },
                    // The second row of an odd count: zeros.
                    None => zero_half(dst, half),
                }
            }
        }
    }

    type Row = Decoder;

    unsafe fn row(w: &QinsMatrix, row: usize) -> Decoder {
        // SAFETY: NEON is part of every aarch64 target.
        unsafe { Decoder::new(&NibbleTables::from_factors(w.row_factors(row))) }
    }

    unsafe fn direct_dots(
        decoder: &Decoder,
        w: &QinsMatrix,
        row: usize,
        x: &Inputs<'_, u16>,
        out: &mut [f32],
    ) {
        // SAFETY: as above.
        unsafe { direct_dots(decoder, w, row, x, out) }
    }

    unsafe fn decode_task(
        w: &QinsMatrix,
        rows: Range<usize>,
        padded_cols: usize,
        decoded: &mut [u16],
        scales: &mut [f32],
    ) {
        scales.fill(1.0);
        let pair_len = 2 * padded_cols;
        for (p, dst) in decoded
            .chunks_mut(pair_len)
            .enumerate()
            .take(rows.len().div_ceil(2))
        {
            for half in 0..2 {
                let row = rows.start + 2 * p + half;
                if row < rows.end {
                    // SAFETY: as above.
                    unsafe { decode_half(w, row, half, dst) };
                } else {
                    // The second row of an odd count: zeros.
                    zero_half(dst, half);
                }
            }
        }
    }

    unsafe fn tile(
        decoded: &[u16],
        rows: Range<usize>,
        x: &Inputs<'_, u16>,
        inputs: Range<usize>,
        dots: &mut TileDots,
    ) {
        // Rows and inputs start on pairs (the tile sizes are even).
        let pair_len = 2 * x.padded_cols;
        let (p0, p_count) = (rows.start / 2, rows.len().div_ceil(2));
        let (q0, q_count) = (inputs.start / 2, inputs.len().div_ceil(2));
        let w_tile = &decoded[p0 * pair_len..(p0 + p_count) * pair_len];
        let x_tile = &x.values[q0 * pair_len..(q0 + q_count) * pair_len];
        // SAFETY: as above.
        let blocks = unsafe { micro_kernel(w_tile, x_tile, pair_len) };
        // Lane 2i + j of a 2x2 block is (row 2p + i, input 2q + j).
        for (p, blocks) in blocks.iter().enumerate().take(p_count) {
            for (q, block) in blocks.iter().enumerate().take(q_count) {
                for (lane, &d) in block.iter().enumerate() {
                    dots[2 * p + lane / 2][2 * q + lane % 2] = d;
                }
            }
        }
    }
}

/// Row pairs x input pairs of the micro-kernel.
const TILE_ROW_PAIRS: usize = 2;
const TILE_INPUT_PAIRS: usize = 4;

/// `x` (one input row) as bf16 in column order, zero-padded to whole
/// blocks (`out` is that long).
#[target_feature(enable = "neon,bf16")]
fn convert_in_order(x: &[f32], out: &mut [u16]) {
    let (whole, tail) = x.as_chunks::<BLOCK>();
    let mut blocks = out.chunks_exact_mut(BLOCK);
    for (src, dst) in whole.iter().zip(&mut blocks) {
        store_bf16x16(dst, in_order(load_f32x16(src)));
    }
    if let Some(dst) = blocks.next() {
        store_bf16x16(dst, in_order(load_f32x16(&padded(tail))));
    }
}

/// One input row as bf16 into its half (0 or 1) of a pair-interleaved
/// buffer (see [`store_half`]), zero-padded to whole blocks.
#[target_feature(enable = "neon,bf16")]
fn convert_half(x: &[f32], half: usize, out: &mut [u16]) {
    let (whole, tail) = x.as_chunks::<BLOCK>();
    let padded_tail = (!tail.is_empty()).then(|| padded::<f32, BLOCK>(tail));
    for (block, src) in whole.iter().chain(padded_tail.as_ref()).enumerate() {
        store_half(out, block, half, load_f32x16(src));
    }
}

/// Direct path: decodes row `row` 16 weights at a time into registers and
/// dots it with each of `out.len()` input rows.
#[target_feature(enable = "neon,bf16")]
fn direct_dots(
    decoder: &Decoder,
    w: &QinsMatrix,
    row: usize,
    x: &Inputs<'_, u16>,
    out: &mut [f32],
) {
    let (codes, signs) = (w.row_codes(row), w.row_signs(row));
    let (x, cols) = (x.values, x.padded_cols);
    match out.len() {
        1 => out.copy_from_slice(&decode_dots::<1>(decoder, codes, signs, x, cols)),
        2 => out.copy_from_slice(&decode_dots::<2>(decoder, codes, signs, x, cols)),
        3 => out.copy_from_slice(&decode_dots::<3>(decoder, codes, signs, x, cols)),
        _ => out.copy_from_slice(&decode_dots::<4>(decoder, codes, signs, x, cols)),
    }
}

/// `Σ w[c] * x_t[c]` over one row for `T` input rows (`padded_cols` apart
/// in `x`, bf16 in column order), decoding each block once into registers.
#[target_feature(enable = "neon,bf16")]
fn decode_dots<const T: usize>(
    decoder: &Decoder,
    codes: &[u8],
    signs: &[u8],
    x: &[u16],
    padded_cols: usize,
) -> [f32; T] {
    assert!(x.len() >= T * padded_cols && codes.len() <= padded_cols);
    let mut acc = [[zeros(); 2]; T];
    for_each_group::<16, 2, 16>(codes, signs, |block, codes, signs| {
        // Whole blocks: a partial one comes padded (the chunk is the block).
        let (codes, negative) = (&codes.as_chunks::<16>().0[0], [signs[0], signs[1]]);
        let w = in_order(decoder.decode16(codes, negative));
        for (t, acc) in acc.iter_mut().enumerate() {
            // SAFETY: block `block` of input row `t` is 16 readable u16
            // (asserted: the blocks of a row end within `padded_cols`).
            let (x0, x1) = unsafe {
                let p = x.as_ptr().add(t * padded_cols + block * BLOCK);
                (vld1q_u16(p), vld1q_u16(p.add(8)))
            };
            acc[0] = bfdot(acc[0], w[0], x0);
            acc[1] = bfdot(acc[1], w[1], x1);
        }
    });
    std::array::from_fn(|t| vaddvq_f32(vaddq_f32(acc[t][0], acc[t][1])))
}

/// Decodes one row into its half (0 or 1) of a pair-interleaved buffer
/// (see [`store_half`]); the last partial block is zero-padded.
#[target_feature(enable = "neon,bf16")]
fn decode_half(w: &QinsMatrix, row: usize, half: usize, out: &mut [u16]) {
    let decoder = Decoder::new(&NibbleTables::from_factors(w.row_factors(row)));
    let (codes, signs) = (w.row_codes(row), w.row_signs(row));
    for_each_group::<16, 2, 16>(codes, signs, |block, codes, signs| {
        // Whole blocks: a partial one comes padded (the chunk is the block).
        let (codes, negative) = (&codes.as_chunks::<16>().0[0], [signs[0], signs[1]]);
        store_half(out, block, half, decoder.decode16(codes, negative));
    });
}

/// Dots of up to [`TILE_ROW_PAIRS`] decoded row pairs with up to
/// [`TILE_INPUT_PAIRS`] input pairs (both `pair_len` apart, sliced to the
/// tile), as 2x2 blocks `dots[row pair][input pair]`.
#[target_feature(enable = "neon,bf16")]
fn micro_kernel(
    w: &[u16],
    x: &[u16],
    pair_len: usize,
) -> [[[f32; 4]; TILE_INPUT_PAIRS]; TILE_ROW_PAIRS] {
    match (w.len() / pair_len, x.len() / pair_len) {
        (2, 4) => tile::<2, 4>(w, x, pair_len),
        (2, 3) => tile::<2, 3>(w, x, pair_len),
        (2, 2) => tile::<2, 2>(w, x, pair_len),
        (2, _) => tile::<2, 1>(w, x, pair_len),
        (_, 4) => tile::<1, 4>(w, x, pair_len),
        (_, 3) => tile::<1, 3>(w, x, pair_len),
        (_, 2) => tile::<1, 2>(w, x, pair_len),
        _ => tile::<1, 1>(w, x, pair_len),
    }
}

/// The register-blocked core: `P x Q` accumulators of 2x2 dots, one
/// `BFMMLA` per row pair, input pair and 4 columns.
// Indexing (not iterators) keeps the register tile explicit for the compiler.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "neon,bf16")]
fn tile<const P: usize, const Q: usize>(
    w: &[u16],
    x: &[u16],
    pair_len: usize,
) -> [[[f32; 4]; TILE_INPUT_PAIRS]; TILE_ROW_PAIRS] {
    assert!(w.len() >= P * pair_len && x.len() >= Q * pair_len && pair_len.is_multiple_of(8));
    let mut acc = [[zeros(); Q]; P];
    let (w, x) = (w.as_ptr(), x.as_ptr());
    for k in (0..pair_len).step_by(8) {
        // SAFETY: pairs `p < P` of `w` and `q < Q` of `x` have `pair_len`
        // elements (asserted), and `k + 8 <= pair_len`.
        let (weights, inputs) = unsafe {
            let weights: [uint16x8_t; P] =
                std::array::from_fn(|p| vld1q_u16(w.add(p * pair_len + k)));
            let inputs: [uint16x8_t; Q] =
                std::array::from_fn(|q| vld1q_u16(x.add(q * pair_len + k)));
            (weights, inputs)
        };
        for p in 0..P {
            for q in 0..Q {
                acc[p][q] = bfmmla(acc[p][q], weights[p], inputs[q]);
            }
        }
    }
    let mut dots = [[[0.0f32; 4]; TILE_INPUT_PAIRS]; TILE_ROW_PAIRS];
    for p in 0..P {
        for q in 0..Q {
            // SAFETY: 4 writable f32.
            unsafe { vst1q_f32(dots[p][q].as_mut_ptr(), acc[p][q]) };
        }
    }
    dots
}

/// 16 f32 in column order -> 16 bf16 in column order (two registers).
#[target_feature(enable = "neon,bf16")]
fn in_order(v: [float32x4_t; 4]) -> [uint16x8_t; 2] {
    [to_bf16x8(v[0], v[1]), to_bf16x8(v[2], v[3])]
}

/// 16 columns (block `block`) of one row as bf16 into its half of a
/// pair-interleaved buffer: columns `4g..4g + 4` of the pair's first row
/// (half 0) go to `out[8g..8g + 4]`, of its second row (half 1) to
/// `out[8g + 4..8g + 8]`, for the block's `g`.
#[target_feature(enable = "neon,bf16")]
fn store_half(out: &mut [u16], block: usize, half: usize, v: [float32x4_t; 4]) {
    assert!(half < 2 && out.len() >= (block + 1) * 2 * BLOCK);
    for (g, v) in v.into_iter().enumerate() {
        let group = 4 * block + g;
        // SAFETY: 4 writable u16 at `8 * group + 4 * half`, which ends at
        // most at `8 * (4 * block + 4) = (block + 1) * 2 * BLOCK` (asserted).
        unsafe { vst1_u16(out.as_mut_ptr().add(8 * group + 4 * half), to_bf16x4(v)) };
    }
}

/// Zeros one half of a pair-interleaved buffer (a missing row).
fn zero_half(out: &mut [u16], half: usize) {
    for group in out.chunks_exact_mut(8) {
        group[4 * half..4 * half + 4].fill(0);
    }
}

#[target_feature(enable = "neon,bf16")]
fn store_bf16x16(out: &mut [u16], v: [uint16x8_t; 2]) {
    assert!(out.len() >= BLOCK);
    // SAFETY: 16 writable u16 (asserted), written as two halves.
    unsafe {
        vst1q_u16(out.as_mut_ptr(), v[0]);
        vst1q_u16(out.as_mut_ptr().add(8), v[1]);
    }
}

#[inline]
#[target_feature(enable = "neon")]
fn load_f32x16(v: &[f32; 16]) -> [float32x4_t; 4] {
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
fn zeros() -> float32x4_t {
    vdupq_n_f32(0.0)
}

/// `[bf16(low[0..4]), bf16(high[0..4])]`, rounding to nearest even
/// (`BFCVTN`, `BFCVTN2`).
#[inline]
#[target_feature(enable = "neon,bf16")]
fn to_bf16x8(low: float32x4_t, high: float32x4_t) -> uint16x8_t {
    let out: uint16x8_t;
    // SAFETY: FEAT_BF16 is present (this function's target feature, which
    // every caller has after `is_available`); register-only instructions.
    // `out` is a plain (not late) output, so it is not allocated to `high`,
    // which the second instruction still reads.
    unsafe {
        asm!(
            "bfcvtn {out:v}.4h, {low:v}.4s",
            "bfcvtn2 {out:v}.8h, {high:v}.4s",
            out = out(vreg) out,
            low = in(vreg) low,
            high = in(vreg) high,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// `bf16(v[0..4])`, rounding to nearest even (`BFCVTN`).
#[inline]
#[target_feature(enable = "neon,bf16")]
fn to_bf16x4(v: float32x4_t) -> uint16x4_t {
    let out: uint16x4_t;
    // SAFETY: FEAT_BF16 is present (as in `to_bf16x8`); register-only.
    unsafe {
        asm!(
            "bfcvtn {out:v}.4h, {v:v}.4s",
            out = lateout(vreg) out,
            v = in(vreg) v,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// `acc[i] += a[2i] * b[2i] + a[2i + 1] * b[2i + 1]` over bf16 pairs (`BFDOT`).
#[inline]
#[target_feature(enable = "neon,bf16")]
fn bfdot(mut acc: float32x4_t, a: uint16x8_t, b: uint16x8_t) -> float32x4_t {
    // SAFETY: FEAT_BF16 is present (as in `to_bf16x8`); register-only.
    unsafe {
        asm!(
            "bfdot {acc:v}.4s, {a:v}.8h, {b:v}.8h",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// `acc[2i + j] += Σ_k a[4i + k] * b[4j + k]`: a 2x4 by (2x4)ᵀ bf16 matrix
/// product into a 2x2 f32 block (`BFMMLA`).
#[inline]
#[target_feature(enable = "neon,bf16")]
fn bfmmla(mut acc: float32x4_t, a: uint16x8_t, b: uint16x8_t) -> float32x4_t {
    // SAFETY: FEAT_BF16 is present (as in `to_bf16x8`); register-only.
    unsafe {
        asm!(
            "bfmmla {acc:v}.4s, {a:v}.8h, {b:v}.8h",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}
