//! The 15-bit fixed-point arithmetic of the integer kernels
//! ([`super::avx512vnni`], [`super::avx2int`], [`super::neon_int`]): how an
//! input row becomes integers, how a weight row is scaled, and the nibble
//! tables of the AVX2 and NEON kernels with their scalar model.
//!
//! **Inputs.** Each input row is cut into groups of columns; a group is
//! scaled by its largest magnitude to integers in ±`unit` (one f32 scale
//! per group, [`quantize_group`]). The unit is chosen per kernel so that
//! an i32 lane sums a group's products exactly.
//!
//! **Weight rows.** A row's weights become integers of its largest
//! magnitude ([`row_scale`]): the magnitude of a per-row range's code 1, or
//! of the row's own smallest code when rows share one range (so a row of
//! small weights keeps its precision).
//!
//! **Nibble tables** ([`NibbleFixed`], the AVX2 and NEON kernels). With
//! `i = c - first` (wrapping, `first` the row's largest-magnitude code) a
//! code's magnitude is `M·ρ^i = M·ρ^(16·(i >> 4))·ρ^(i & 15)`, `ρ = 1/ratio`
//! (see [`crate::codec`]). Two 16-entry tables of 15-bit integers,
//! `HIGH[h] ≈ 32767·ρ^(16h)` and `LOW[l] ≈ 32767·ρ^l`, are what a 16-byte
//! shuffle (`vpshufb`, `tbl`) looks up, one byte plane at a time; their
//! rounded product `(±HIGH·LOW + 2^14) >> 15` (`vpmulhrsw`, `sqrdmulh`) is
//! the weight, at most 32766. `HIGH` is rounded to the nearest *odd*
//! integer so that its negation is byte-wise: for odd `H`, `-H = H ^
//! 0xFFFE`, an XOR of the high plane with the sign mask and of the low
//! plane with the mask less its bit 0, before the planes are joined. Code 0
//! reads `HIGH = 0` and is exactly 0 whatever its sign bit.
//!
//! **Accuracy.** A weight is off by at most ~1.5 units of `M/32767` in
//! [`super::avx512vnni`] (its tables' rounding and `vpmulhuw`'s truncation)
//! and ~2 units in the nibble kernels (`HIGH` to the nearest odd integer,
//! `LOW` to the nearest, the product's rounding), an input by half a unit
//! of its group's `max|x|/unit`; products are exact and sum exactly in i32
//! per group, then in f32. The error is absolute per row, not relative per
//! weight, and the same for both signs.

use super::driver::{Prepared, for_each_input_row};
use super::padded;
use crate::codec::{Granularity, RangeFactors};
use crate::weights::QinsMatrix;

/// The largest fixed-point weight magnitude (15 bits).
pub const WEIGHT_UNIT: f32 = 32767.0;

/// The largest fixed-point input of the nibble kernels: an i32 lane of an
/// 8-lane register sums 16 products of a 128-column group,
/// `16 · 32767 · 4095 < 2^31`, so it cannot overflow.
pub const NIBBLE_INPUT_UNIT: f32 = 4095.0;

/// Columns per input group of every integer kernel.
pub const GROUP: usize = 128;

/// The input rows of `x` (`cols` each) as groups of [`GROUP`] columns
/// scaled to ±`unit` ([`quantize_group`]), into `inputs` (each row padded
/// to whole groups); column `c` of a group goes to position `position(c)`
/// (the kernel's decoded order; the identity for column order). A
/// prefill's rows are quantized in parallel.
pub fn quantize_rows(
    x: &[f32],
    cols: usize,
    inputs: &mut Prepared<'_, i16>,
    unit: f32,
    position: Option<fn(usize) -> usize>,
) {
    for_each_input_row(x, cols, inputs, |row, values, scales| {
        for ((group, dst), scale) in values.chunks_mut(GROUP).enumerate().zip(scales) {
            let start = group * GROUP;
            let src = &row[start..cols.min(start + GROUP)];
            let src = match src.first_chunk::<GROUP>() {
                Some(whole) => *whole,
                None => padded::<f32, GROUP>(src),
            };
            match position {
                None => *scale = quantize_group(&src, unit, dst),
                Some(position) => {
                    let mut natural = [0i16; GROUP];
                    *scale = quantize_group(&src, unit, &mut natural);
                    for (c, &q) in natural.iter().enumerate() {
                        dst[position(c)] = q;
                    }
                }
            }
        }
    });
}

/// Scales `x` (one group of an input row, zero-padded by the caller) to
/// integers in ±`unit` into `out`, returning the scale: `x ≈ q · scale`.
pub fn quantize_group(x: &[f32], unit: f32, out: &mut [i16]) -> f32 {
    let largest = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let out = &mut out[..x.len()];
    if largest == 0.0 || !largest.is_finite() {
        // Zeros stay zero; a NaN or infinite input makes every dot of the
        // row NaN through the scale, as it would in f32.
        out.fill(0);
        return if largest == 0.0 { 0.0 } else { f32::NAN };
    }
    let inverse = unit / largest;
    for (q, &v) in out.iter_mut().zip(x) {
        // Halves away from zero, by an add and a truncating conversion
        // (`round` is a library call on baseline x86-64).
        let scaled = v * inverse;
        *q = (scaled + 0.5f32.copysign(scaled)) as i16;
    }
    largest / unit
}

/// What row `row`'s integer weights are scaled by: its range's factors and
/// the code of its largest magnitude. A per-row range's largest magnitude
/// is its code 1; rows sharing one range are scaled by their own smallest
/// code instead, so that a row of small weights keeps its precision (at
/// the cost of a pass over its codes).
pub fn row_scale(w: &QinsMatrix, row: usize) -> (RangeFactors, u8) {
    let first = match w.granularity() {
        Granularity::PerRow => 1,
        Granularity::PerTensor => first_code(w.row_codes(row)),
    };
    (w.row_factors(row), first)
}

/// The smallest non-zero code of a row (its largest magnitude), 1 for an
/// all-zero row. Codes minus one, wrapping, put code 0 last.
fn first_code(codes: &[u8]) -> u8 {
    let smallest = codes.iter().fold(u8::MAX, |m, &c| m.min(c.wrapping_sub(1)));
    smallest.wrapping_add(1).max(1)
}

/// What a row's tables are built from: `ρ^(2^k)` for `k` in 0..8 by
/// squaring in f64 ([`RangeFactors::rho_squares`]), each rounded once to
/// f32 (the tables need 15-16 bits; f32 products of at most four of them
/// stay within ~2^-22), and the magnitude of code `first`, the row's
/// largest (precomputed for a per-row range's code 1).
#[derive(Clone, Copy, Debug)]
pub struct RowPowers {
    pub squares: [f32; 8],
    pub largest: f64,
}

impl RowPowers {
    #[inline]
    pub fn new(factors: RangeFactors, first: u8) -> Self {
        Self {
            squares: factors.rho_squares().map(|v| v as f32),
            largest: if first <= 1 {
                factors.largest
            } else {
                factors.magnitude_of(first)
            },
        }
    }
}

/// `Π factors[b]` over the set bits `b` of `lane`, multiplied in order of
/// the bits: lane `j` of a register of powers (every kernel builds its
/// tables this way, so the scalar models equal the registers bit for bit).
#[inline]
pub fn power_of_lane(lane: usize, factors: &[f32; 4]) -> f32 {
    let mut v = 1.0f32;
    for (bit, f) in factors.iter().enumerate() {
        if lane >> bit & 1 == 1 {
            v *= f;
        }
    }
    v
}

/// The nibble tables of one row (see the module docs): the scalar model of
/// what the AVX2 and NEON kernels build in registers, operation for
/// operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NibbleFixed {
    /// `HIGH[h] = 32767·ρ^(16h)` to the nearest odd integer.
    pub high: [i16; 16],
    /// `LOW[l] = 32767·ρ^l` to the nearest integer.
    pub low: [i16; 16],
    /// The row's largest-magnitude code: index 0 of the tables.
    pub first: u8,
}

impl NibbleFixed {
    /// The tables of a row whose largest magnitude is code `first`, and
    /// the row's `dequant` (`|w| ≈ q · dequant` for a decoded weight `q`).
    pub fn new(factors: RangeFactors, first: u8) -> (Self, f32) {
        let powers = RowPowers::new(factors, first);
        let s = powers.squares;
        let (small, large) = ([s[0], s[1], s[2], s[3]], [s[4], s[5], s[6], s[7]]);
        let nearest = |v: f32| (v * WEIGHT_UNIT).round_ties_even() as i16;
        let tables = Self {
            high: std::array::from_fn(|h| nearest_odd(power_of_lane(h, &large) * WEIGHT_UNIT)),
            low: std::array::from_fn(|l| nearest(power_of_lane(l, &small))),
            first: first.max(1),
        };
        (tables, nibble_dequant(powers.largest))
    }

    /// The signed fixed-point weight of a code, as the kernels form it.
    pub fn weight(&self, code: u8, negative: bool) -> i16 {
        if code == 0 {
            return 0;
        }
        let index = code.wrapping_sub(self.first);
        let high = self.high[usize::from(index >> 4)];
        // Odd: the byte-wise negation the kernels do is exact.
        let high = if negative { -high } else { high };
        let low = self.low[usize::from(index & 15)];
        // |HIGH · LOW| < 2^30: the rounded top half fits 16 bits.
        ((i32::from(high) * i32::from(low) + (1 << 14)) >> 15) as i16
    }
}

/// The odd integer nearest to `v` (in 0..=32767): `2·⌊v/2⌋ + 1`, the
/// truncating conversion of `v/2` (exact in f32) doubled plus one.
#[inline]
pub fn nearest_odd(v: f32) -> i16 {
    ((v * 0.5) as i16) * 2 + 1
}

/// `|w| ≈ q · dequant`: code `first` decodes to `(32767² + 2^14) >> 15`,
/// which stands for `largest`.
pub fn nibble_dequant(largest: f64) -> f32 {
    const PER_UNIT: f64 = 32768.0 / (32767.0 * 32767.0);
    (largest * PER_UNIT) as f32
}
