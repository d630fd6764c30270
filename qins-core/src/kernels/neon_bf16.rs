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
//! **Threading and layout.** Up to 4 input rows (a decode step, batched or
//! not): each row is decoded 16 weights at a time into registers and dotted
//! there with every input row (`BFDOT`), no buffer; inputs are rounded to
//! bf16 once per call, in column order. More (prefill): a task decodes 16
//! weight rows once into a thread-local buffer and runs a `BFMMLA`
//! micro-kernel of 4 weight rows x 8 input rows over it. `BFMMLA` takes two
//! rows of 4 columns per operand, so both the decoded rows and the inputs
//! are stored pair-interleaved: for rows `2p, 2p + 1` and columns
//! `4g..4g + 4`, 4 bf16 of the first row then 4 of the second (which is
//! what `BFCVTN` + `BFCVTN2` of the two rows' f32 quarter-registers give).

use std::arch::aarch64::*;
use std::arch::asm;
use std::cell::RefCell;

use super::neon::{Decoder, for_each_block16};
use super::{NibbleTables, for_each_row_task, padded, row_tables};
use crate::weights::QinsMatrix;

/// Columns per decode step: one register of codes.
const BLOCK: usize = 16;
/// Input rows up to which each weight row is decoded into registers and
/// dotted there; more go through the buffered micro-kernel.
const MAX_DIRECT_INPUTS: usize = 4;
/// Rows of one task of a decode-step call.
const DECODE_TASK_ROWS: usize = 8;
/// Rows decoded together by one task of a prefill call (the buffer holds
/// `TASK_ROWS x cols` bf16: 256 KiB at 8192 columns, inside L2). Even.
const TASK_ROWS: usize = 16;
/// Micro-kernel tile in row pairs (weights) x input pairs: 4 x 8 rows, 8
/// accumulators and 6 operand registers of the 32.
const TILE_ROW_PAIRS: usize = 2;
const TILE_INPUT_PAIRS: usize = 4;

pub fn is_available() -> bool {
    std::arch::is_aarch64_feature_detected!("bf16")
}

/// `out[n x rows] = x[n x cols] · Wᵀ` (see [`super::qins_matmul`]).
pub fn matmul(x: &[f32], n: usize, w: &QinsMatrix, out: &mut [f32]) {
    // A fn pointer to this can be called anywhere: refuse rather than fault.
    assert!(is_available(), "neon-bf16 kernel needs FEAT_BF16");
    let padded_cols = w.cols.div_ceil(BLOCK) * BLOCK;
    let tables_of = row_tables(w);
    // Taken, not borrowed: a rayon worker waiting inside this call may run
    // another matmul, which then finds an empty buffer instead of a
    // borrowed one.
    let mut inputs = INPUTS.take();
    // SAFETY (all four calls): the CPU has BF16 (asserted above).
    if n <= MAX_DIRECT_INPUTS {
        let len = n * padded_cols;
        // Every element is written below: grow, never clear.
        if inputs.len() < len {
            inputs.resize(len, 0);
        }
        for (row, dst) in x.chunks(w.cols).zip(inputs[..len].chunks_mut(padded_cols)) {
            unsafe { convert_in_order(row, dst) };
        }
        unsafe { decode_rows(w, &inputs[..len], n, padded_cols, &tables_of, out) };
    } else {
        let len = n.div_ceil(2) * 2 * padded_cols;
        if inputs.len() < len {
            inputs.resize(len, 0);
        }
        for (pair, dst) in x
            .chunks(2 * w.cols)
            .zip(inputs[..len].chunks_mut(2 * padded_cols))
        {
            let mut rows = pair.chunks(w.cols);
            for half in 0..2 {
                match rows.next() {
                    Some(row) => unsafe { convert_half(row, half, dst) },
                    // The second row of an odd count: zeros.
                    None => zero_half(dst, half),
                }
            }
        }
        unsafe { multiply_rows(w, &inputs[..len], n, padded_cols, &tables_of, out) };
    }
    INPUTS.set(inputs);
}

thread_local! {
    /// The calling thread's bf16 copy of the inputs, reused across calls.
    static INPUTS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    /// A rayon worker's decoded rows, reused across tasks and calls.
    static DECODED: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

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

/// Up to [`MAX_DIRECT_INPUTS`] input rows: every weight row is decoded into
/// registers and dotted with each input row there, no buffer.
#[target_feature(enable = "neon,bf16")]
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
            let decoder = Decoder::new(&tables_of(row));
            let (codes, signs) = (w.row_codes(row), w.row_signs(row));
            let store = |dots: &[f32]| {
                for (t, &d) in dots.iter().enumerate() {
                    out.write(t, row, d);
                }
            };
            match n {
                1 => store(&decode_dots::<1>(&decoder, codes, signs, x, padded_cols)),
                2 => store(&decode_dots::<2>(&decoder, codes, signs, x, padded_cols)),
                3 => store(&decode_dots::<3>(&decoder, codes, signs, x, padded_cols)),
                _ => store(&decode_dots::<4>(&decoder, codes, signs, x, padded_cols)),
            }
        }
    });
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
    for_each_block16(codes, signs, |block, codes, negative| {
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

/// Several input rows: tasks of [`TASK_ROWS`] rows, each decoded once
/// (pair-interleaved) and multiplied by every input pair with the
/// micro-kernel.
#[target_feature(enable = "neon,bf16")]
fn multiply_rows(
    w: &QinsMatrix,
    x: &[u16],
    n: usize,
    padded_cols: usize,
    tables_of: &(impl Fn(usize) -> NibbleTables + Sync),
    out: &mut [f32],
) {
    let pair_len = 2 * padded_cols;
    let input_pairs = n.div_ceil(2);
    for_each_row_task(out, n, w.rows, TASK_ROWS, |task_rows, out| {
        let first = task_rows.start;
        let rows = task_rows.len();
        let row_pairs = rows.div_ceil(2);
        DECODED.with_borrow_mut(|decoded| {
            // Every element is written below: grow, never clear.
            if decoded.len() < row_pairs * pair_len {
                decoded.resize(row_pairs * pair_len, 0);
            }
            let decoded = &mut decoded[..row_pairs * pair_len];
            for (p, dst) in decoded.chunks_mut(pair_len).enumerate() {
                for half in 0..2 {
                    let row = first + 2 * p + half;
                    if row < first + rows {
                        let decoder = Decoder::new(&tables_of(row));
                        decode_half(&decoder, w.row_codes(row), w.row_signs(row), half, dst);
                    } else {
                        // The second row of an odd count: zeros.
                        zero_half(dst, half);
                    }
                }
            }
            for q0 in (0..input_pairs).step_by(TILE_INPUT_PAIRS) {
                let q_count = TILE_INPUT_PAIRS.min(input_pairs - q0);
                let x_tile = &x[q0 * pair_len..(q0 + q_count) * pair_len];
                for p0 in (0..row_pairs).step_by(TILE_ROW_PAIRS) {
                    let p_count = TILE_ROW_PAIRS.min(row_pairs - p0);
                    let w_tile = &decoded[p0 * pair_len..(p0 + p_count) * pair_len];
                    let dots = micro_kernel(w_tile, x_tile, pair_len);
                    // Lane 2i + j of a 2x2 block is (row 2p + i, input 2q + j).
                    for (p, blocks) in dots.iter().enumerate().take(p_count) {
                        for (q, block) in blocks.iter().enumerate().take(q_count) {
                            for (lane, &d) in block.iter().enumerate() {
                                let row = 2 * (p0 + p) + lane / 2;
                                let t = 2 * (q0 + q) + lane % 2;
                                if row < rows && t < n {
                                    out.write(t, first + row, d);
                                }
                            }
                        }
                    }
                }
            }
        });
    });
}

/// Decodes one row into its half (0 or 1) of a pair-interleaved buffer
/// (see [`store_half`]); the last partial block is zero-padded.
#[target_feature(enable = "neon,bf16")]
fn decode_half(decoder: &Decoder, codes: &[u8], signs: &[u8], half: usize, out: &mut [u16]) {
    for_each_block16(codes, signs, |block, codes, negative| {
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
