//! AVX2 integer kernels, for x86-64 without AVX-512 (AMD Zen 1-3, Intel
//! client cores): weights decode to 15-bit fixed point through 16-byte
//! shuffles and meet 12-bit fixed-point inputs in integer dot products.
//! `avx2-int` sums with `vpmaddwd` + `vpaddd`; `avx-vnni` (Intel client
//! cores from Alder Lake, Sapphire Rapids and later servers, Zen 5) with
//! the 256-bit `vpdpwssd` of AVX-VNNI. Everything else is shared.
//!
//! **Why.** The f32 [`super::avx2`] kernel decodes through `vpermps`
//! tables, `vblendvps` and variable shifts: ~64 instructions per 32
//! weights, several of them cross-lane, which AVX2-only CPUs run slowly
//! (Zen 1 and 2 split every 256-bit instruction in two, and `vpermps` and
//! `vblendvps` are among the costly ones there). It reads weights at a
//! tenth of the memory bandwidth. This kernel decodes 32 weights in ~26
//! instructions, all within 128-bit lanes.
//!
//! **Decoding** (see [`super::fixed_point`] for the tables). Per 32 codes:
//! the index `c - first` split into nibbles; four `vpshufb` look up the low
//! and the high byte planes of `HIGH[h]` and `LOW[l]`; the row's 32 sign
//! bits become a byte mask (a broadcast, a `vpshufb`, an AND and a compare)
//! whose XOR negates the (odd) `HIGH` entries; code 0 sets the `HIGH`
//! index's top bit, which makes `vpshufb` return 0. Unpacking the planes gives words,
//! and `vpmulhrsw` multiplies `HIGH · LOW` into 32 signed 15-bit weights.
//!
//! **Order.** Unpacking interleaves within 128-bit lanes: a register of 16
//! weights holds columns `0..8` and `16..24` of its 32, the other `8..16`
//! and `24..32`. Inputs are quantized into the same order once per call.
//!
//! **Inputs and sums.** Groups of 128 columns scaled to ±4095
//! ([`super::fixed_point::NIBBLE_INPUT_UNIT`]): an i32 lane sums 16
//! products of a group exactly, then one conversion and one FMA per group
//! add it to the f32 sum.

use std::arch::x86_64::*;
use std::ops::Range;

use super::driver::{Inputs, Kernel, Prepared, TileDots, exact_tile};
#[cfg(test)]
use super::fixed_point::NibbleFixed;
use super::fixed_point::{
    GROUP, NIBBLE_INPUT_UNIT, RowPowers, WEIGHT_UNIT, nibble_dequant, quantize_rows, row_scale,
};
use super::{for_each_group, prefetch_ahead};
use crate::codec::RangeFactors;
use crate::weights::QinsMatrix;

/// Codes per register.
const CHUNK: usize = 32;

/// `avx2-int`: AVX2 with `vpmaddwd` + `vpaddd`.
pub struct Avx2Int;
/// `avx-vnni`: AVX2 with AVX-VNNI's `vpdpwssd`.
pub struct AvxVnni;

/// How a kernel adds the pairwise products of two word registers to an
/// i32 accumulator.
trait DotWords {
    /// `acc + a[2i]·b[2i] + a[2i+1]·b[2i+1]` per i32 lane.
    ///
    /// # Safety
    /// The CPU has the implementation's instructions.
    unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
}

impl DotWords for Avx2Int {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
    }
}

impl DotWords for AvxVnni {
    /// `vpdpwssd` (VEX), written as assembly so that every caller, compiled
    /// for AVX2, can use it without LLVM splitting it into `vpmaddwd` +
    /// `vpaddd` (which it does for targets not tuned for it).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        let mut acc = acc;
        // SAFETY: a register-only AVX-VNNI instruction, which the CPU has
        // (the caller's contract).
        unsafe {
            std::arch::asm!(
                "{{vex}} vpdpwssd {acc}, {a}, {b}",
                acc = inout(ymm_reg) acc,
                a = in(ymm_reg) a,
                b = in(ymm_reg) b,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        acc
    }
}

fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

macro_rules! nibble_kernel {
    ($kernel:ty, $name:literal, $available:expr) => {
        impl Kernel for $kernel {
            type Input = i16;
            type Weight = i16;
            const NAME: &'static str = $name;
            const GROUP: usize = GROUP;
            const TILE_ROWS: usize = TILE_ROWS;
            const TILE_INPUTS: usize = TILE_INPUTS;
            const PREFETCH_DISTANCE: usize = PREFETCH_DISTANCE;

            fn is_available() -> bool {
                $available
            }

            unsafe fn prepare(
                x: &[f32],
                cols: usize,
                _direct: bool,
                inputs: &mut Prepared<'_, i16>,
            ) {
                prepare(x, cols, inputs);
            }

            type Row = (Registers, f32);

            unsafe fn row(w: &QinsMatrix, row: usize) -> (Registers, f32) {
                let (factors, first) = row_scale(w, row);
                // SAFETY: the CPU has the kernel's instructions (the
                // caller's contract).
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
                unsafe { direct_dots::<$kernel>(state, w, row, x, out) }
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
                unsafe { micro_kernel::<$kernel>(decoded, rows, x, inputs, dots) }
            }
        }
    };
}

nibble_kernel!(Avx2Int, "avx2-int", has_avx2());
nibble_kernel!(
    AvxVnni,
    "avx-vnni",
    has_avx2()
        && super::dispatch::allows(super::dispatch::Isa::AvxVnni)
        && is_x86_feature_detected!("avxvnni")
);

/// How far ahead a decode step asks for codes: 16 KiB (twice the other
/// kernels'). Phi-3.5 decode with `QINS_ISA_LIMIT=avx2` on an Intel Xeon
/// (family 6 model 167), 3 alternating runs each: 3.85-4.04 tok/s against
/// 3.59-3.68 at 8 KiB; 24-48 KiB were no better.
const PREFETCH_DISTANCE: usize = 16 * 1024;

/// Micro-kernel tile: 2 weight rows x 3 input rows, 6 i32 group sums and 6
/// f32 sums in registers, with 2 weight registers (16 of them).
const TILE_ROWS: usize = 2;
const TILE_INPUTS: usize = 3;

/// The position of column `c` of a 32-column chunk in its decoded order
/// (columns `0..8, 16..24, 8..16, 24..32`): swaps the middle eighths.
pub const fn position_of_column(c: usize) -> usize {
    match c / 8 {
        1 => c + 8,
        2 => c - 8,
        _ => c,
    }
}

/// Quantizes each input row group by group, into the decoded order.
fn prepare(x: &[f32], cols: usize, inputs: &mut Prepared<'_, i16>) {
    quantize_rows(x, cols, inputs, NIBBLE_INPUT_UNIT, Some(position_in_group));
}

/// The position of column `c` of a group in its decoded order.
fn position_in_group(c: usize) -> usize {
    c / CHUNK * CHUNK + position_of_column(c % CHUNK)
}

/// A row's tables in registers: the low and high byte planes of `HIGH` and
/// `LOW` (16 bytes each, in both lanes) and `first` in every byte.
#[derive(Clone, Copy)]
pub struct Registers {
    high: [__m256i; 2],
    low: [__m256i; 2],
    first: __m256i,
}

impl Registers {
    /// The tables of a row (see [`super::fixed_point::NibbleFixed::new`],
    /// their scalar model) built in registers, and the row's dequant.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn new(factors: RangeFactors, first: u8) -> (Self, f32) {
        let powers = RowPowers::new(factors, first);
        let s = powers.squares;
        let low = planes([s[0], s[1], s[2], s[3]], false);
        let high = planes([s[4], s[5], s[6], s[7]], true);
        let registers = Self {
            high,
            low,
            first: _mm256_set1_epi8(first.max(1) as i8),
        };
        (registers, nibble_dequant(powers.largest))
    }

    /// The 32 signed weights of 32 codes, as two registers of 16 words in
    /// the decoded order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn decode(&self, codes: &[u8; CHUNK], signs: [u8; 4]) -> [__m256i; 2] {
        {
            // SAFETY: 32 readable bytes.
            let codes = unsafe { _mm256_loadu_si256(codes.as_ptr().cast()) };
            let nibble = _mm256_set1_epi8(0x0F);
            let index = _mm256_sub_epi8(codes, self.first);
            let zero = _mm256_cmpeq_epi8(codes, _mm256_setzero_si256());
            let low_index = _mm256_and_si256(index, nibble);
            let high_index = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(index), nibble),
                zero,
            );
            // Sign byte k/8 into byte k, then bit k%8 of it.
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(i32::from_le_bytes(signs)),
                _mm256_setr_epi8(
                    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
                    2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
                ),
            );
            let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
            let negative = _mm256_andnot_si256(
                zero,
                _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits), bits),
            );
            // -H = H ^ 0xFFFE for odd H.
            let high_low = _mm256_xor_si256(
                _mm256_shuffle_epi8(self.high[0], high_index),
                _mm256_and_si256(negative, _mm256_set1_epi8(-2)),
            );
            let high_high =
                _mm256_xor_si256(_mm256_shuffle_epi8(self.high[1], high_index), negative);
            let low_low = _mm256_shuffle_epi8(self.low[0], low_index);
            let low_high = _mm256_shuffle_epi8(self.low[1], low_index);
            [
                _mm256_mulhrs_epi16(
                    _mm256_unpacklo_epi8(high_low, high_high),
                    _mm256_unpacklo_epi8(low_low, low_high),
                ),
                _mm256_mulhrs_epi16(
                    _mm256_unpackhi_epi8(high_low, high_high),
                    _mm256_unpackhi_epi8(low_low, low_high),
                ),
            ]
        }
    }
}

/// The low and high byte planes of a 16-entry table `32767·Π` over lanes
/// (see [`super::fixed_point::power_of_lane`]), rounded to the nearest
/// integer or (`odd`) to the nearest odd one, each plane in both lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn planes(factors: [f32; 4], odd: bool) -> [__m256i; 2] {
    let one = _mm256_set1_ps(1.0);
    // Lanes 0..8 and 8..16 of the table, bit by bit (a factor of 1.0
    // where the lane's bit is clear: exact).
    let mut lower = one;
    let mut upper = one;
    let f = |bit: usize| _mm256_set1_ps(factors[bit]);
    lower = _mm256_mul_ps(lower, _mm256_blend_ps::<0xAA>(one, f(0)));
    upper = _mm256_mul_ps(upper, _mm256_blend_ps::<0xAA>(one, f(0)));
    lower = _mm256_mul_ps(lower, _mm256_blend_ps::<0xCC>(one, f(1)));
    upper = _mm256_mul_ps(upper, _mm256_blend_ps::<0xCC>(one, f(1)));
    lower = _mm256_mul_ps(lower, _mm256_blend_ps::<0xF0>(one, f(2)));
    upper = _mm256_mul_ps(upper, _mm256_blend_ps::<0xF0>(one, f(2)));
    upper = _mm256_mul_ps(upper, f(3));
    let unit = _mm256_set1_ps(WEIGHT_UNIT);
    let integers = |v: __m256| {
        let v = _mm256_mul_ps(v, unit);
        if odd {
            // 2·trunc(v/2) + 1 (`nearest_odd`).
            let half = _mm256_cvttps_epi32(_mm256_mul_ps(v, _mm256_set1_ps(0.5)));
            _mm256_or_si256(_mm256_slli_epi32::<1>(half), _mm256_set1_epi32(1))
        } else {
            _mm256_cvtps_epi32(v)
        }
    };
    let (lower, upper) = (integers(lower), integers(upper));
    // Words per lane: [lower 0..4, upper 0..4 | lower 4..8, upper 4..8].
    let words = _mm256_packs_epi32(lower, upper);
    // Per lane, the words' low bytes then their high bytes (dwords
    // lowbytes(a), lowbytes(b), highbytes(a), highbytes(b)).
    let split = _mm256_shuffle_epi8(
        words,
        _mm256_setr_epi8(
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, //
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
        ),
    );
    // Dwords: lane 0 holds low bytes of entries 0-3, 8-11, then high bytes
    // of 0-3, 8-11; lane 1 the same for 4-7, 12-15. Gather the low plane
    // (0-3, 4-7, 8-11, 12-15) into lane 0 and the high plane into lane 1.
    let gathered = _mm256_permutevar8x32_epi32(split, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    [
        _mm256_permute2x128_si256::<0x00>(gathered, gathered),
        _mm256_permute2x128_si256::<0x11>(gathered, gathered),
    ]
}

/// The 32-code chunks of a group (four, or fewer at a row's end) and their
/// sign words.
#[inline(always)]
fn chunks<'a>(
    codes: &'a [u8],
    signs: &'a [u8],
) -> impl Iterator<Item = (&'a [u8; CHUNK], [u8; 4])> {
    let (codes, _) = codes.as_chunks::<CHUNK>();
    let (signs, _) = signs.as_chunks::<4>();
    codes.iter().zip(signs.iter().copied())
}

/// Direct path: decodes row `row` group by group into registers and dots
/// it with each of `out.len()` input rows.
#[target_feature(enable = "avx2,fma")]
fn direct_dots<D: DotWords>(
    &(registers, dequant): &(Registers, f32),
    w: &QinsMatrix,
    row: usize,
    x: &Inputs<'_, i16>,
    out: &mut [f32],
) {
    let (codes, signs) = (w.row_codes(row), w.row_signs(row));
    match out.len() {
        1 => out.copy_from_slice(&row_dots::<D, 1>(&registers, codes, signs, x)),
        2 => out.copy_from_slice(&row_dots::<D, 2>(&registers, codes, signs, x)),
        3 => out.copy_from_slice(&row_dots::<D, 3>(&registers, codes, signs, x)),
        _ => out.copy_from_slice(&row_dots::<D, 4>(&registers, codes, signs, x)),
    }
    for d in out {
        *d *= dequant;
    }
}

/// `Σ q[c] · x_t[c] · scale` over one row for `T` input rows (raw: the
/// caller applies the row's dequant).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn row_dots<D: DotWords, const T: usize>(
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
    let mut acc = [_mm256_setzero_ps(); T];
    let values = x.values.as_ptr();
    for_each_group::<GROUP, { GROUP / 8 }, CHUNK>(codes, signs, |group, codes, signs| {
        prefetch_ahead::<PREFETCH_DISTANCE>(codes, signs);
        // Two sums per input row (the two halves of each chunk), so that
        // `vpdpwssd`'s latency is spread over two chains; each sums 8
        // products per lane of the group, both together 16 (exact).
        let mut sums = [[_mm256_setzero_si256(); 2]; T];
        for (k, (codes, signs)) in chunks(codes, signs).enumerate() {
            let [a, b] = registers.decode(codes, signs);
            for (t, [sum_a, sum_b]) in sums.iter_mut().enumerate() {
                // SAFETY: `t < T` rows and `group` < the row's groups
                // (asserted: a row's groups end within `padded_cols`); the
                // chunk's 32 values lie inside the group. AVX2 (and, for
                // `D`, its instructions) the caller's contract.
                unsafe {
                    let p = values.add(t * x.padded_cols + group * GROUP + k * CHUNK);
                    *sum_a = D::dot(*sum_a, a, _mm256_loadu_si256(p.cast()));
                    *sum_b = D::dot(*sum_b, b, _mm256_loadu_si256(p.add(16).cast()));
                }
            }
        }
        for (t, (acc, [sum_a, sum_b])) in acc.iter_mut().zip(sums).enumerate() {
            // SAFETY: `t < T`, `group < groups` (asserted).
            let scale = unsafe { *x.scales.get_unchecked(t * x.groups + group) };
            let sum = _mm256_add_epi32(sum_a, sum_b);
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(scale), *acc);
        }
    });
    std::array::from_fn(|t| sum_lanes(acc[t]))
}

/// Decodes rows `rows` into `decoded` (`padded_cols` each, decoded order).
#[target_feature(enable = "avx2,fma")]
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
                for (k, (codes, signs)) in chunks(codes, signs).enumerate() {
                    let [a, b] = registers.decode(codes, signs);
                    // SAFETY: the chunk's 32 words lie within the row's padded
                    // length (asserted).
                    unsafe {
                        let p = out.as_mut_ptr().add(group * GROUP + k * CHUNK);
                        _mm256_storeu_si256(p.cast(), a);
                        _mm256_storeu_si256(p.add(16).cast(), b);
                    }
                }
                // A short last group: zeros for the rest (the micro-kernel
                // reads whole groups).
                out[group * GROUP + codes.len()..(group + 1) * GROUP].fill(0);
            },
        );
    }
}

/// Dots of up to [`TILE_ROWS`] decoded rows with up to [`TILE_INPUTS`]
/// input rows.
#[target_feature(enable = "avx2,fma")]
fn micro_kernel<D: DotWords>(
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
    exact_tile!(tile[D], rows.len(), inputs.len(), rows: [1 2], inputs: [1 2 3], (w, &x_tile, dots));
}

/// The register-blocked core: `R x T` i32 group sums and f32 sums; per 16
/// columns, each weight row's register meets every input row's.
// Indexing (not iterators) keeps the register tile explicit for the compiler.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn tile<D: DotWords, const R: usize, const T: usize>(
    w: &[i16],
    x: &Inputs<'_, i16>,
    dots: &mut TileDots,
) {
    let cols = x.padded_cols;
    assert!(
        w.len() >= R * cols
            && x.values.len() >= T * cols
            && x.scales.len() >= T * x.groups
            && cols == x.groups * GROUP
    );
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let (wp, xp) = (w.as_ptr(), x.values.as_ptr());
    for group in 0..x.groups {
        let mut sums = [[_mm256_setzero_si256(); T]; R];
        for k in (group * GROUP..(group + 1) * GROUP).step_by(16) {
            // SAFETY: rows `r < R` of `w` and `t < T` of `x` have `cols`
            // elements (asserted) and `k + 16 <= cols`.
            unsafe {
                let weights: [__m256i; R] =
                    std::array::from_fn(|r| _mm256_loadu_si256(wp.add(r * cols + k).cast()));
                for t in 0..T {
                    let input = _mm256_loadu_si256(xp.add(t * cols + k).cast());
                    for r in 0..R {
                        sums[r][t] = D::dot(sums[r][t], weights[r], input);
                    }
                }
            }
        }
        for t in 0..T {
            let scale = _mm256_set1_ps(x.scales[t * x.groups + group]);
            for r in 0..R {
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[r][t]), scale, acc[r][t]);
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            dots[r][t] = sum_lanes(acc[r][t]);
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn sum_lanes(v: __m256) -> f32 {
    let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)))
}

/// The tables [`Registers::new`] builds, read back as their scalar model's
/// type (for the tests).
#[cfg(test)]
pub fn registers_of(factors: RangeFactors, first: u8) -> (NibbleFixed, f32) {
    assert!(has_avx2(), "the avx2-int kernel needs AVX2 and FMA");
    // SAFETY: the CPU has the features (asserted).
    let (registers, dequant) = unsafe { Registers::new(factors, first) };
    let mut planes = [[0u8; 32]; 4];
    for (plane, register) in planes.iter_mut().zip([
        registers.high[0],
        registers.high[1],
        registers.low[0],
        registers.low[1],
    ]) {
        // SAFETY: 32 writable bytes.
        unsafe { _mm256_storeu_si256(plane.as_mut_ptr().cast(), register) };
        assert_eq!(
            plane[..16],
            plane[16..],
            "a plane is the same in both lanes"
        );
    }
    let join = |low: &[u8; 32], high: &[u8; 32]| -> [i16; 16] {
        std::array::from_fn(|i| i16::from_le_bytes([low[i], high[i]]))
    };
    let tables = NibbleFixed {
        high: join(&planes[0], &planes[1]),
        low: join(&planes[2], &planes[3]),
        // SAFETY: one value in every byte.
        first: unsafe { _mm256_extract_epi8::<0>(registers.first) } as u8,
    };
    (tables, dequant)
}
