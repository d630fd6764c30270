//! aarch64 NEON integer kernel (every aarch64 core: Apple M1 and later,
//! Cortex-A72/A76, Graviton): the design of [`super::avx2int`] on NEON.
//! Weights decode to 15-bit fixed point through `tbl` lookups of nibble
//! tables and meet 12-bit fixed-point inputs in widening integer
//! multiply-adds (`smlal`), products exact in i32.
//!
//! **Why.** The f32 [`super::neon`] kernel assembles each weight's two f32
//! factors from eight byte planes (8 `tbl`, 12 zips and a multiply per 16
//! weights, ~38 instructions); here a weight is 16 bits, so 16 weights
//! take 4 `tbl`, 4 zips and 2 multiplies (~26 instructions), and the
//! multiply-adds are 16-bit.
//!
//! **Decoding** (see [`super::fixed_point`] for the tables). Per 16 codes:
//! the index `c - first` split into nibbles (a byte shift needs no mask);
//! four `vqtbl1q_u8` look up the low and high byte planes of `HIGH[h]` and
//! `LOW[l]` (code 0 sets the `HIGH` index out of the table, which reads
//! 0); the group's sign bytes are spread with one more `tbl` and tested
//! into a byte mask whose XOR negates the (odd) `HIGH` entries; zips join
//! the planes into words in column order and `sqrdmulh` (`(2·H·L + 2^15)
//! >> 16`, the same value as `vpmulhrsw`) forms 16 signed weights.
//!
//! **Inputs and sums.** Groups of 128 columns scaled to ±4095, in column
//! order; `smlal`/`smlal2` accumulate 4 i32 lanes per instruction into two
//! sums per input row, each lane summing 16 products of a group (exact),
//! then one conversion and one multiply-add per group into f32.
//!
//! **Prefill**: a task's rows decoded once into a worker's buffer, then a
//! micro-kernel of 4 weight rows x 2 input rows (16 i32 sums, 8 f32 sums,
//! 6 operands: 30 of the 32 registers).
//!
//! Run under qemu in CI (`-cpu max` and `-cpu cortex-a72`): correct there,
//! never timed on a real core.

use std::arch::aarch64::*;
use std::ops::Range;

use super::driver::{Inputs, Kernel, Prepared, TileDots, exact_tile};
#[cfg(test)]
use super::fixed_point::NibbleFixed;
use super::fixed_point::{
    GROUP, NIBBLE_INPUT_UNIT, RowPowers, WEIGHT_UNIT, nibble_dequant, quantize_rows, row_scale,
};
use super::{for_each_group, padded};
use crate::codec::RangeFactors;
use crate::weights::QinsMatrix;

/// Codes per register.
const CHUNK: usize = 16;

/// The `neon-int` kernel.
pub struct NeonInt;

impl Kernel for NeonInt {
    type Input = i16;
    type Weight = i16;
    const NAME: &'static str = "neon-int";
    const GROUP: usize = GROUP;
    const TILE_ROWS: usize = 4;
    const TILE_INPUTS: usize = 2;

    /// NEON is part of every aarch64 target Rust supports.
    fn is_available() -> bool {
        true
    }

    unsafe fn prepare(x: &[f32], cols: usize, _direct: bool, inputs: &mut Prepared<'_, i16>) {
        quantize_rows(x, cols, inputs, NIBBLE_INPUT_UNIT, None);
    }

    type Row = (Registers, f32);

    unsafe fn row(w: &QinsMatrix, row: usize) -> (Registers, f32) {
        let (factors, first) = row_scale(w, row);
        // SAFETY: NEON is part of every aarch64 target.
        unsafe { Registers::new(factors, first) }
    }

    unsafe fn direct_dots(
        state: &(Registers, f32),
        w: &QinsMatrix,
        row: usize,
        x: &Inputs<'_, i16>,
        out: &mut [f32],
    ) {
        // SAFETY: as above.
        unsafe { direct_dots(state, w, row, x, out) }
    }

    unsafe fn decode_task(
        w: &QinsMatrix,
        rows: Range<usize>,
        padded_cols: usize,
        decoded: &mut [i16],
        scales: &mut [f32],
    ) {
        // SAFETY: as above.
        unsafe { decode_task(w, rows, padded_cols, decoded, scales) }
    }

    unsafe fn tile(
        decoded: &[i16],
        rows: Range<usize>,
        x: &Inputs<'_, i16>,
        inputs: Range<usize>,
        dots: &mut TileDots,
    ) {
        // SAFETY: as above.
        unsafe { micro_kernel(decoded, rows, x, inputs, dots) }
    }
}

/// A row's tables in registers: the low and high byte planes of `HIGH`
/// and `LOW`, and `first` in every byte.
#[derive(Clone, Copy)]
pub struct Registers {
    high: [uint8x16_t; 2],
    low: [uint8x16_t; 2],
    first: uint8x16_t,
}

/// Index vectors that spread sign byte `2k` of a group over lanes 0..8 and
/// byte `2k + 1` over lanes 8..16, for chunk `k`.
const SPREAD: [[u8; 16]; GROUP / CHUNK] = {
    let mut spread = [[0u8; 16]; GROUP / CHUNK];
    let mut k = 0;
    while k < GROUP / CHUNK {
        let mut lane = 0;
        while lane < 16 {
            spread[k][lane] = (2 * k + lane / 8) as u8;
            lane += 1;
        }
        k += 1;
    }
    spread
};

/// Bit `i % 8` for lane `i`: tests the sign bit of column `i` in its byte.
const LANE_BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];

impl Registers {
    /// The tables of a row (see [`NibbleFixed::new`], their scalar model)
    /// built in registers, and the row's dequant.
    #[inline]
    #[target_feature(enable = "neon")]
    fn new(factors: RangeFactors, first: u8) -> (Self, f32) {
        let powers = RowPowers::new(factors, first);
        let s = powers.squares;
        let registers = Self {
            high: planes([s[4], s[5], s[6], s[7]], true),
            low: planes([s[0], s[1], s[2], s[3]], false),
            first: vdupq_n_u8(first.max(1)),
        };
        (registers, nibble_dequant(powers.largest))
    }

    /// The 16 signed weights of chunk `k` of a group (its codes, and the
    /// group's 16 sign bytes), as two registers of 8 in column order.
    #[inline]
    #[target_feature(enable = "neon")]
    fn decode(&self, codes: &[u8; CHUNK], signs: uint8x16_t, k: usize) -> [int16x8_t; 2] {
        // SAFETY: 16 readable bytes each.
        let (codes, spread, lane_bits) = unsafe {
            (
                vld1q_u8(codes.as_ptr()),
                vld1q_u8(SPREAD[k].as_ptr()),
                vld1q_u8(LANE_BITS.as_ptr()),
            )
        };
        let index = vsubq_u8(codes, self.first);
        let zero = vceqzq_u8(codes);
        let low_index = vandq_u8(index, vdupq_n_u8(15));
        // Out of the table (reads 0) for code 0.
        let high_index = vorrq_u8(vshrq_n_u8::<4>(index), zero);
        let negative = vbicq_u8(vtstq_u8(vqtbl1q_u8(signs, spread), lane_bits), zero);
        // -H = H ^ 0xFFFE for odd H.
        let high_low = veorq_u8(
            vqtbl1q_u8(self.high[0], high_index),
            vandq_u8(negative, vdupq_n_u8(0xFE)),
        );
        let high_high = veorq_u8(vqtbl1q_u8(self.high[1], high_index), negative);
        let low_low = vqtbl1q_u8(self.low[0], low_index);
        let low_high = vqtbl1q_u8(self.low[1], low_index);
        let words = |low: uint8x16_t, high: uint8x16_t| {
            [
                vreinterpretq_s16_u8(vzip1q_u8(low, high)),
                vreinterpretq_s16_u8(vzip2q_u8(low, high)),
            ]
        };
        let (high, low) = (words(high_low, high_high), words(low_low, low_high));
        [
            vqrdmulhq_s16(high[0], low[0]),
            vqrdmulhq_s16(high[1], low[1]),
        ]
    }
}

/// The low and high byte planes of a 16-entry table `32767·Π` over lanes
/// (see [`super::fixed_point::power_of_lane`]), rounded to the nearest
/// integer or (`odd`) to the nearest odd one.
#[inline]
#[target_feature(enable = "neon")]
fn planes(factors: [f32; 4], odd: bool) -> [uint8x16_t; 2] {
    let one = vdupq_n_f32(1.0);
    // SAFETY: 4 readable u32 each.
    let (bit0, bit1) = unsafe {
        (
            vld1q_u32([0, u32::MAX, 0, u32::MAX].as_ptr()),
            vld1q_u32([0, 0, u32::MAX, u32::MAX].as_ptr()),
        )
    };
    // Register r holds lanes 4r..4r+4: bits 0 and 1 vary within it, bits
    // 2 and 3 are r's. Factors multiply in the order of the bits (a factor
    // of 1.0 where a lane's bit is clear: exact).
    let integers: [int32x4_t; 4] = std::array::from_fn(|r| {
        let mut v = vmulq_f32(one, vbslq_f32(bit0, vdupq_n_f32(factors[0]), one));
        v = vmulq_f32(v, vbslq_f32(bit1, vdupq_n_f32(factors[1]), one));
        if r & 1 == 1 {
            v = vmulq_n_f32(v, factors[2]);
        }
        if r & 2 == 2 {
            v = vmulq_n_f32(v, factors[3]);
        }
        let v = vmulq_n_f32(v, WEIGHT_UNIT);
        if odd {
            // 2·trunc(v/2) + 1 (`nearest_odd`).
            let half = vcvtq_s32_f32(vmulq_n_f32(v, 0.5));
            vaddq_s32(vshlq_n_s32::<1>(half), vdupq_n_s32(1))
        } else {
            vcvtnq_s32_f32(v)
        }
    });
    let entries = [
        vreinterpretq_u8_s16(vcombine_s16(vmovn_s32(integers[0]), vmovn_s32(integers[1]))),
        vreinterpretq_u8_s16(vcombine_s16(vmovn_s32(integers[2]), vmovn_s32(integers[3]))),
    ];
    [
        vuzp1q_u8(entries[0], entries[1]),
        vuzp2q_u8(entries[0], entries[1]),
    ]
}

/// A group's sign bytes (16, or fewer at a row's end) in one register.
#[inline]
#[target_feature(enable = "neon")]
fn load_signs(signs: &[u8]) -> uint8x16_t {
    let whole: &[u8; 16] = match signs.first_chunk() {
        Some(whole) => whole,
        None => &padded(signs),
    };
    // SAFETY: 16 readable bytes.
    unsafe { vld1q_u8(whole.as_ptr()) }
}

/// Direct path: decodes row `row` group by group into registers and dots
/// it with each of `out.len()` input rows.
#[target_feature(enable = "neon")]
fn direct_dots(
    &(registers, dequant): &(Registers, f32),
    w: &QinsMatrix,
    row: usize,
    x: &Inputs<'_, i16>,
    out: &mut [f32],
) {
    let (codes, signs) = (w.row_codes(row), w.row_signs(row));
    match out.len() {
        1 => out.copy_from_slice(&row_dots::<1>(&registers, codes, signs, x)),
        2 => out.copy_from_slice(&row_dots::<2>(&registers, codes, signs, x)),
        3 => out.copy_from_slice(&row_dots::<3>(&registers, codes, signs, x)),
        _ => out.copy_from_slice(&row_dots::<4>(&registers, codes, signs, x)),
    }
    for d in out {
        *d *= dequant;
    }
}

/// `Σ q[c] · x_t[c] · scale` over one row for `T` input rows (raw: the
/// caller applies the row's dequant).
#[inline]
#[target_feature(enable = "neon")]
fn row_dots<const T: usize>(
    registers: &Registers,
    codes: &[u8],
    signs: &[u8],
    x: &Inputs<'_, i16>,
) -> [f32; T] {
    assert!(
        x.values.len() >= T * x.padded_cols
            && x.scales.len() >= T * x.groups
            && codes.len() <= x.padded_cols
            && x.padded_cols == x.groups * GROUP
    );
    let mut acc = [vdupq_n_f32(0.0); T];
    let values = x.values.as_ptr();
    for_each_group::<GROUP, { GROUP / 8 }, CHUNK>(codes, signs, |group, codes, signs| {
        let signs = load_signs(signs);
        let (chunks, _) = codes.as_chunks::<CHUNK>();
        // Two sums per input row (the chunk's two halves): each lane sums
        // 16 products of the group (exact).
        let mut sums = [[vdupq_n_s32(0); 2]; T];
        for (k, codes) in chunks.iter().enumerate() {
            let [a, b] = registers.decode(codes, signs, k);
            for (t, [sum_a, sum_b]) in sums.iter_mut().enumerate() {
                // SAFETY: `t < T` rows and `group` < the row's groups
                // (asserted: a row's groups end within `padded_cols`); the
                // chunk's 16 values lie inside the group.
                let (xa, xb) = unsafe {
                    let p = values.add(t * x.padded_cols + group * GROUP + k * CHUNK);
                    (vld1q_s16(p), vld1q_s16(p.add(8)))
                };
                *sum_a =
                    vmlal_high_s16(vmlal_s16(*sum_a, vget_low_s16(a), vget_low_s16(xa)), a, xa);
                *sum_b =
                    vmlal_high_s16(vmlal_s16(*sum_b, vget_low_s16(b), vget_low_s16(xb)), b, xb);
            }
        }
        for (t, (acc, [sum_a, sum_b])) in acc.iter_mut().zip(sums).enumerate() {
            let scale = x.scales[t * x.groups + group];
            *acc = vfmaq_n_f32(*acc, vcvtq_f32_s32(vaddq_s32(sum_a, sum_b)), scale);
        }
    });
    std::array::from_fn(|t| vaddvq_f32(acc[t]))
}

/// Decodes rows `rows` into `decoded` (`padded_cols` each, column order).
#[target_feature(enable = "neon")]
fn decode_task(
    w: &QinsMatrix,
    rows: Range<usize>,
    padded_cols: usize,
    decoded: &mut [i16],
    scales: &mut [f32],
) {
    assert!(decoded.len() >= rows.len() * padded_cols && scales.len() >= rows.len());
    for ((row, out), scale) in rows.zip(decoded.chunks_mut(padded_cols)).zip(scales) {
        let (factors, first) = row_scale(w, row);
        let (registers, dequant) = Registers::new(factors, first);
        *scale = dequant;
        assert!(out.len() >= w.cols.div_ceil(GROUP) * GROUP);
        for_each_group::<GROUP, { GROUP / 8 }, CHUNK>(
            w.row_codes(row),
            w.row_signs(row),
            |group, codes, signs| {
                let signs = load_signs(signs);
                let (chunks, _) = codes.as_chunks::<CHUNK>();
                for (k, codes) in chunks.iter().enumerate() {
                    let [a, b] = registers.decode(codes, signs, k);
                    // SAFETY: the chunk's 16 words lie within the row's padded
                    // length (asserted).
                    unsafe {
                        let p = out.as_mut_ptr().add(group * GROUP + k * CHUNK);
                        vst1q_s16(p, a);
                        vst1q_s16(p.add(8), b);
                    }
                }
                // A short last group: zeros for the rest (the micro-kernel
                // reads whole groups).
                out[group * GROUP + codes.len()..(group + 1) * GROUP].fill(0);
            },
        );
    }
}

/// Dots of up to 4 decoded rows with up to 2 input rows.
#[target_feature(enable = "neon")]
fn micro_kernel(
    decoded: &[i16],
    rows: Range<usize>,
    x: &Inputs<'_, i16>,
    inputs: Range<usize>,
    dots: &mut TileDots,
) {
    let cols = x.padded_cols;
    let w = &decoded[rows.start * cols..rows.end * cols];
    let x_tile = Inputs {
        values: &x.values[inputs.start * cols..inputs.end * cols],
        scales: &x.scales[inputs.start * x.groups..inputs.end * x.groups],
        padded_cols: cols,
        groups: x.groups,
    };
    exact_tile!(tile[], rows.len(), inputs.len(), rows: [1 2 3 4], inputs: [1 2], (w, &x_tile, dots));
}

/// The register-blocked core: `R x T` pairs of i32 group sums and f32
/// sums; per 8 columns, each weight row's register meets every input
/// row's.
// Indexing (not iterators) keeps the register tile explicit for the compiler.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "neon")]
fn tile<const R: usize, const T: usize>(w: &[i16], x: &Inputs<'_, i16>, dots: &mut TileDots) {
    let cols = x.padded_cols;
    assert!(
        w.len() >= R * cols
            && x.values.len() >= T * cols
            && x.scales.len() >= T * x.groups
            && cols == x.groups * GROUP
    );
    let mut acc = [[vdupq_n_f32(0.0); T]; R];
    let (wp, xp) = (w.as_ptr(), x.values.as_ptr());
    for group in 0..x.groups {
        let mut low = [[vdupq_n_s32(0); T]; R];
        let mut high = [[vdupq_n_s32(0); T]; R];
        for k in (group * GROUP..(group + 1) * GROUP).step_by(8) {
            // SAFETY: rows `r < R` of `w` and `t < T` of `x` have `cols`
            // elements (asserted) and `k + 8 <= cols`.
            let (weights, inputs) = unsafe {
                let weights: [int16x8_t; R] =
                    std::array::from_fn(|r| vld1q_s16(wp.add(r * cols + k)));
                let inputs: [int16x8_t; T] =
                    std::array::from_fn(|t| vld1q_s16(xp.add(t * cols + k)));
                (weights, inputs)
            };
            for r in 0..R {
                for t in 0..T {
                    low[r][t] =
                        vmlal_s16(low[r][t], vget_low_s16(weights[r]), vget_low_s16(inputs[t]));
                    high[r][t] = vmlal_high_s16(high[r][t], weights[r], inputs[t]);
                }
            }
        }
        for t in 0..T {
            let scale = x.scales[t * x.groups + group];
            for r in 0..R {
                let sum = vcvtq_f32_s32(vaddq_s32(low[r][t], high[r][t]));
                acc[r][t] = vfmaq_n_f32(acc[r][t], sum, scale);
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            dots[r][t] = vaddvq_f32(acc[r][t]);
        }
    }
}

/// The tables [`Registers::new`] builds, read back as their scalar model's
/// type (for the tests).
#[cfg(test)]
pub fn registers_of(factors: RangeFactors, first: u8) -> (NibbleFixed, f32) {
    // SAFETY: NEON is part of every aarch64 target.
    let (registers, dequant) = unsafe { Registers::new(factors, first) };
    let mut planes = [[0u8; 16]; 4];
    for (plane, register) in planes.iter_mut().zip([
        registers.high[0],
        registers.high[1],
        registers.low[0],
        registers.low[1],
    ]) {
        // SAFETY: 16 writable bytes.
        unsafe { vst1q_u8(plane.as_mut_ptr(), register) };
    }
    let join = |low: &[u8; 16], high: &[u8; 16]| -> [i16; 16] {
        std::array::from_fn(|i| i16::from_le_bytes([low[i], high[i]]))
    };
    let tables = NibbleFixed {
        high: join(&planes[0], &planes[1]),
        low: join(&planes[2], &planes[3]),
        // SAFETY: one value in every byte.
        first: unsafe { vgetq_lane_u8::<0>(registers.first) },
    };
    (tables, dequant)
}
