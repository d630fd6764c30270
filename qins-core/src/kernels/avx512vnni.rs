//! AVX-512 VNNI kernels (Intel Ice Lake, Sapphire Rapids and later; AMD
//! Zen 4): weights decode to 15-bit fixed point and meet 15-bit fixed-point
//! inputs in integer dot products (`vpmaddwd`, `vpdpwssd`), 32 products
//! per instruction summed exactly in i32.
//!
//! **Why.** On Intel cores the bf16 kernel's two-source byte permutes
//! (`vpermt2b`, ~2.8 cycles each there) and `vdpbf16ps` (~2.3) are slow.
//! This kernel spends one-source word permutes (`vpermw`, ~1 cycle) and
//! integer dot products (~0.75): in L1 it decodes and dots 64 weights in
//! 3.2 ns where the bf16 kernel takes 3.85, and its prefill micro-kernel
//! is ~1.45x the bf16 one (measured on issue 12's Xeon; TECHNICAL_SPEC,
//! Performance).
//!
//! **Decoding.** A code `c` in 1..=255 has magnitude `M·ρ^(c-1)`, `M` the
//! row's largest magnitude and `ρ = 1/ratio` (see [`crate::codec`]). With
//! `a = (c + 31) >> 5` and `b = (c + 31) & 31`, `c - 1 = 32(a - 1) + b`, so
//! the magnitude is `HIGH[a] · LOW[b]`: `HIGH[a] = 32767·ρ^(32(a-1))`
//! (`HIGH[0] = 0`, which makes code 0 decode to exactly 0) and `LOW[b] =
//! 65535·ρ^b`, two 16-bit tables of at most 32 entries that `vpermw` reads
//! from one register each (it looks at the index's low 5 bits only, so `b`
//! needs no mask). `vpmulhuw` keeps the top 16 bits of their product: the
//! weight as a signed 15-bit integer `q ≈ 32767·(65535/65536)·|w|/M`, which
//! a subtract negates under the 32 sign bits, loaded straight into a mask
//! register. 32 codes are zero-extended to words per register, so weights
//! and inputs stay in column order. A row's tables are built in registers
//! ([`Registers::new`]); [`FixedTables::new`] is their scalar model. The
//! input groups and row scales are [`super::fixed_point`]'s.
//!
//! **Inputs.** Each input row is cut into groups of 128 columns; a group is
//! scaled by its largest magnitude to integers in ±8191 (one f32 scale per
//! group). An i32 lane then sums 8 products below 2^31, so a group's 128
//! products sum exactly in i32 before one conversion and one FMA into f32.
//!
//! **Accuracy.** A weight is off by at most ~1.5 units of `M/32767` (the
//! tables' rounding and `vpmulhuw`'s truncation), an input by half a unit
//! of its group's `max|x|/8191`; sums are exact in i32, then f32. Unlike
//! bf16 the error is absolute per row, not relative per weight: a weight of
//! `M/100` keeps ~8 significant bits, one of `M/2` keeps ~15. On SmolLM2
//! its perplexity equals the f32 kernel's (TECHNICAL_SPEC).
//!
//! **Threading.** The shared frame ([`super::driver`]): up to 4 input rows
//! decode each group into registers and dot it there, reading ahead of the
//! stream ([`super::prefetch_ahead`]); more decode a task's rows once into
//! a worker's buffer and run a register-blocked micro-kernel of 4 weight
//! rows x 3 input rows over it.

use std::arch::x86_64::*;
use std::ops::Range;

use super::driver::{Inputs, Kernel, Prepared, TileDots, exact_tile};
use super::fixed_point::{GROUP, RowPowers, WEIGHT_UNIT, power_of_lane, quantize_rows, row_scale};
use super::{for_each_group, prefetch_ahead};
use crate::codec::RangeFactors;
use crate::weights::QinsMatrix;

/// The largest fixed-point input magnitude: an i32 lane sums 8 products of
/// a group, `8 · 32767 · 8191 < 2^31`, so it cannot overflow.
pub const INPUT_UNIT: f32 = 8191.0;

/// The `avx512-vnni` kernel.
pub struct Avx512Vnni;

pub fn is_available() -> bool {
    super::dispatch::allows(super::dispatch::Isa::Avx512)
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

impl Kernel for Avx512Vnni {
    type Input = i16;
    type Weight = i16;
    const NAME: &'static str = "avx512-vnni";
    const GROUP: usize = GROUP;
    /// 12 f32 accumulators, 4 weight registers.
    const TILE_ROWS: usize = 4;
    const TILE_INPUTS: usize = 3;

    fn is_available() -> bool {
        is_available()
    }

    unsafe fn prepare(x: &[f32], cols: usize, _direct: bool, inputs: &mut Prepared<'_, i16>) {
        quantize_rows(x, cols, inputs, INPUT_UNIT, None);
    }

    type Row = (Registers, f32);

    unsafe fn row(w: &QinsMatrix, row: usize) -> (Registers, f32) {
        let (factors, first) = row_scale(w, row);
        // SAFETY: the CPU has the kernel's instructions (the caller's
        // contract).
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

/// The fixed-point decode tables of one row (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
pub struct FixedTables {
    /// `HIGH[a]`, `a` in 0..=8; zero elsewhere, so an index whose top bits
    /// wrapped (code 0 below a negative bias) reads 0.
    pub high: [u16; 32],
    /// `LOW[b]`, `b` in 0..32.
    pub low: [u16; 32],
    /// Added to a code to form its table index: `32 - first`, `first` the
    /// row's smallest non-zero code (its largest magnitude, which maps to
    /// 32767). Code 0 always lands on a zero of `high`.
    pub bias: u16,
    /// `|w| ≈ q · dequant` for a decoded weight `q`.
    pub dequant: f32,
}

impl FixedTables {
    /// The tables of a range whose largest magnitude in the row is code
    /// `first` (1 for a per-row range): the scalar model of what
    /// [`Registers::new`] builds in registers, operation for operation (the
    /// tests hold them equal bit for bit).
    pub fn new(factors: RangeFactors, first: u8) -> Self {
        let p = Powers::new(factors, first);
        let unit = |v: f32| v.round_ties_even().clamp(0.0, 65535.0) as u16;
        let mut low = [0u16; 32];
        for j in 0..16 {
            let v = power_of_lane(j, &p.small);
            low[j] = unit(v * 65535.0);
            low[16 + j] = unit(v * p.rho16 * 65535.0);
        }
        let mut high = [0u16; 32];
        for (a, slot) in high.iter_mut().enumerate().take(9).skip(1) {
            *slot = unit(power_of_lane(a - 1, &p.large) * WEIGHT_UNIT);
        }
        Self {
            high,
            low,
            bias: p.bias,
            dequant: p.dequant,
        }
    }

    /// The signed fixed-point weight of a code, as the kernel forms it
    /// (`vpermw` reads an index's low 5 bits).
    pub fn weight(&self, code: u8, negative: bool) -> i16 {
        let index = u16::from(code).wrapping_add(self.bias);
        let high = self.high[usize::from(index >> 5) & 31];
        let product = u32::from(high) * u32::from(self.low[usize::from(index) & 31]);
        // At most 32767 · 65535 >> 16 = 32766: fits.
        let magnitude = (product >> 16) as i16;
        if negative { -magnitude } else { magnitude }
    }
}

/// `|w| ≈ q · largest · DEQUANT_PER_LARGEST`: the largest magnitude maps to
/// `32767 · 65535 / 65536`.
const DEQUANT_PER_LARGEST: f64 = 65536.0 / (32767.0 * 65535.0);

/// The row's powers ([`RowPowers`]) as this kernel's tables use them.
struct Powers {
    /// ρ, ρ², ρ⁴, ρ⁸.
    small: [f32; 4],
    rho16: f32,
    /// ρ^32, ρ^64, ρ^128 (and 1: three are enough for 8 lanes).
    large: [f32; 4],
    bias: u16,
    dequant: f32,
}

impl Powers {
    #[inline]
    fn new(factors: RangeFactors, first: u8) -> Self {
        let RowPowers {
            squares: s,
            largest,
        } = RowPowers::new(factors, first);
        Self {
            small: [s[0], s[1], s[2], s[3]],
            rho16: s[4],
            large: [s[5], s[6], s[7], 1.0],
            bias: 32 - u16::from(first.max(1)),
            dequant: (largest * DEQUANT_PER_LARGEST) as f32,
        }
    }
}

/// The tables [`Registers::new`] builds, read back (for the tests).
#[cfg(test)]
pub fn registers_of(factors: RangeFactors, first: u8) -> FixedTables {
    assert!(
        is_available(),
        "avx512-vnni kernel needs AVX-512 F, BW and VNNI"
    );
    // SAFETY: the CPU has the features (asserted).
    let (registers, dequant) = unsafe { Registers::new(factors, first) };
    let mut tables = FixedTables {
        high: [0; 32],
        low: [0; 32],
        bias: 0,
        dequant,
    };
    // SAFETY: 32 writable u16 each; the bias register holds one value in
    // every lane.
    unsafe {
        _mm512_storeu_si512(tables.high.as_mut_ptr().cast(), registers.high);
        _mm512_storeu_si512(tables.low.as_mut_ptr().cast(), registers.low);
        tables.bias = _mm_extract_epi16::<0>(_mm512_castsi512_si128(registers.bias)) as u16;
    }
    tables
}

/// The tables in registers.
#[derive(Clone, Copy)]
pub struct Registers {
    high: __m512i,
    low: __m512i,
    bias: __m512i,
}

impl Registers {
    /// The tables of a row (see [`FixedTables::new`], their scalar model)
    /// built in registers, and the row's `dequant`: about 20 operations
    /// where the scalar model costs more than decoding a short row.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn new(factors: RangeFactors, first: u8) -> (Self, f32) {
        let p = Powers::new(factors, first);
        // Lane j: Π of the factors of j's set bits (`power_of_lane`).
        let chain = |factors: &[f32; 4]| {
            let mut v = _mm512_set1_ps(1.0);
            for (bit, mask) in [0xAAAA, 0xCCCC, 0xF0F0, 0xFF00].into_iter().enumerate() {
                v = _mm512_mask_mul_ps(v, mask, v, _mm512_set1_ps(factors[bit]));
            }
            v
        };
        let units = _mm512_set1_ps(65535.0);
        let small = chain(&p.small);
        let low_half = _mm512_cvtusepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(small, units)));
        let high_half = _mm512_cvtusepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(
            _mm512_mul_ps(small, _mm512_set1_ps(p.rho16)),
            units,
        )));
        let low = _mm512_inserti64x4::<1>(_mm512_zextsi256_si512(low_half), high_half);
        // Lanes 0..8 hold ρ^(32k); they move up one lane (HIGH[0] = 0) and
        // everything above HIGH[8] stays 0.
        let large = _mm512_mul_ps(chain(&p.large), _mm512_set1_ps(WEIGHT_UNIT));
        let large = _mm512_maskz_cvtps_epi32(0x00FF, large);
        let shifted = _mm512_alignr_epi32::<15>(large, _mm512_setzero_si512());
        let high = _mm512_zextsi256_si512(_mm512_cvtusepi32_epi16(shifted));
        (
            Self {
                high,
                low,
                bias: _mm512_set1_epi16(p.bias as i16),
            },
            p.dequant,
        )
    }

    /// The signed fixed-point weights of a group's codes (128, or a
    /// multiple of 32 at a row's end: zeros stand for the rest), 32 columns
    /// per register in column order.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn decode_group(&self, codes: &[u8], signs: &[u8]) -> [__m512i; 4] {
        // A group's leading chunks (all four but at a row's end).
        let chunks = codes.len() / 32;
        assert!(chunks <= 4 && signs.len() >= 4 * chunks);
        std::array::from_fn(|k| {
            if k >= chunks {
                return _mm512_setzero_si512();
            }
            // SAFETY: 32 readable code bytes and 4 sign bytes at `32k` and
            // `4k` (asserted).
            let (codes, negative) = unsafe {
                (
                    _mm256_loadu_si256(codes.as_ptr().add(32 * k).cast()),
                    _load_mask32(signs.as_ptr().add(4 * k).cast()),
                )
            };
            let index = _mm512_add_epi16(_mm512_cvtepu8_epi16(codes), self.bias);
            let high = _mm512_permutexvar_epi16(_mm512_srli_epi16::<5>(index), self.high);
            let low = _mm512_permutexvar_epi16(index, self.low);
            let magnitude = _mm512_mulhi_epu16(high, low);
            _mm512_mask_sub_epi16(magnitude, negative, _mm512_setzero_si512(), magnitude)
        })
    }
}

/// `acc + scale · Σ weights[k] · inputs[k]` over a group, its 128 products
/// summed exactly in i32 lanes first.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
fn accumulate_group(
    acc: __m512,
    weights: &[__m512i; 4],
    inputs: &[__m512i; 4],
    scale: f32,
) -> __m512 {
    let mut sum = _mm512_setzero_si512();
    for (w, x) in weights.iter().zip(inputs) {
        sum = dot_words(sum, *w, *x);
    }
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(scale), acc)
}

/// `vpdpwssd`: `acc + a[2i]·b[2i] + a[2i+1]·b[2i+1]` per i32 lane. Written
/// as assembly because LLVM splits the intrinsic into `vpmaddwd` plus
/// `vpaddd` (two operations instead of one) for targets it does not know
/// to have a fast one, which is every target of a portable build.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
fn dot_words(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    let mut acc = acc;
    // SAFETY: a register-only instruction of AVX512-VNNI, which this
    // function's callers have (it is enabled here).
    unsafe {
        std::arch::asm!(
            "vpdpwssd {acc}, {a}, {b}",
            acc = inout(zmm_reg) acc,
            a = in(zmm_reg) a,
            b = in(zmm_reg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Direct path: decodes row `row` group by group into registers and dots
/// it with each of `out.len()` input rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn direct_dots(
    &(registers, dequant): &(Registers, f32),
    w: &QinsMatrix,
    row: usize,
    x: &Inputs<'_, i16>,
    out: &mut [f32],
) {
    let (codes, signs) = (w.row_codes(row), w.row_signs(row));
    match out.len() {
        1 => out.copy_from_slice(&decode_dots::<1>(&registers, codes, signs, x)),
        2 => out.copy_from_slice(&decode_dots::<2>(&registers, codes, signs, x)),
        3 => out.copy_from_slice(&decode_dots::<3>(&registers, codes, signs, x)),
        _ => out.copy_from_slice(&decode_dots::<4>(&registers, codes, signs, x)),
    }
    for d in out {
        *d *= dequant;
    }
}

/// `Σ q[c] · x_t[c]` over one row for `T` input rows, in input units,
/// decoding each group once into registers.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn decode_dots<const T: usize>(
    registers: &Registers,
    codes: &[u8],
    signs: &[u8],
    x: &Inputs<'_, i16>,
) -> [f32; T] {
    assert!(
        x.values.len() >= T * x.padded_cols
            && x.scales.len() >= T * x.groups
            && codes.len() <= x.padded_cols
    );
    let mut acc = [_mm512_setzero_ps(); T];
    for_each_group::<GROUP, { GROUP / 8 }, 32>(codes, signs, |group, codes, signs| {
        prefetch_ahead::<{ super::PREFETCH_DISTANCE }>(codes, signs);
        let weights = registers.decode_group(codes, signs);
        for (t, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `t < T` rows and `group` < the row's groups (asserted:
            // the groups of a row end within `padded_cols`).
            let (inputs, scale) = unsafe { group_of(x, t, group) };
            *acc = accumulate_group(*acc, &weights, &inputs, scale);
        }
    });
    std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t]))
}

/// The 128 values and the scale of group `group` of input row `t`.
///
/// # Safety
/// `t` and `group` are in range.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn group_of(x: &Inputs<'_, i16>, t: usize, group: usize) -> ([__m512i; 4], f32) {
    debug_assert!(t * x.groups + group < x.scales.len());
    // SAFETY: the caller keeps `t` and `group` in range: the group's 128
    // values lie inside row `t`'s `padded_cols`.
    unsafe {
        let p = x.values.as_ptr().add(t * x.padded_cols + group * GROUP);
        (
            std::array::from_fn(|k| _mm512_loadu_si512(p.add(32 * k).cast())),
            *x.scales.get_unchecked(t * x.groups + group),
        )
    }
}

/// Decodes rows `rows` into `decoded` (`padded_cols` each).
#[target_feature(enable = "avx512f,avx512bw")]
fn decode_task(
    w: &QinsMatrix,
    rows: Range<usize>,
    padded_cols: usize,
    decoded: &mut [i16],
    scales: &mut [f32],
) {
    for ((row, out), scale) in rows.zip(decoded.chunks_mut(padded_cols)).zip(scales) {
        let (factors, first) = row_scale(w, row);
        let (registers, dequant) = Registers::new(factors, first);
        *scale = dequant;
        decode_row(&registers, w.row_codes(row), w.row_signs(row), out);
    }
}

/// Decodes one row into `out` (its padded length).
#[target_feature(enable = "avx512f,avx512bw")]
fn decode_row(registers: &Registers, codes: &[u8], signs: &[u8], out: &mut [i16]) {
    assert!(out.len() >= codes.len().div_ceil(GROUP) * GROUP);
    for_each_group::<GROUP, { GROUP / 8 }, 32>(codes, signs, |group, codes, signs| {
        let weights = registers.decode_group(codes, signs);
        for (k, w) in weights.iter().enumerate() {
            // SAFETY: group `group` of out is 128 writable i16 (asserted),
            // written as four quarters.
            unsafe {
                let p = out.as_mut_ptr().add(group * GROUP + 32 * k);
                _mm512_storeu_si512(p.cast(), *w);
            }
        }
    });
}

/// Dots of up to 4 decoded weight rows with up to 3 input rows, into
/// `dots[row][input]` (in input units: the driver applies `dequant`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn micro_kernel(
    decoded: &[i16],
    rows: Range<usize>,
    x: &Inputs<'_, i16>,
    inputs: Range<usize>,
    dots: &mut TileDots,
) {
    let cols = x.padded_cols;
    let w = &decoded[rows.start * cols..rows.end * cols];
    let x = Inputs {
        values: &x.values[inputs.start * cols..inputs.end * cols],
        scales: &x.scales[inputs.start * x.groups..inputs.end * x.groups],
        padded_cols: cols,
        groups: x.groups,
    };
    exact_tile!(tile[], rows.len(), inputs.len(), rows: [1 2 3 4], inputs: [1 2 3], (w, &x, dots));
}

/// The register-blocked core: `R x T` f32 accumulators; per group, each
/// weight row's four registers meet every input row's.
// Indexing (not iterators) keeps the register tile explicit for the compiler.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile<const R: usize, const T: usize>(w: &[i16], x: &Inputs<'_, i16>, dots: &mut TileDots) {
    let cols = x.padded_cols;
    assert!(
        w.len() >= R * cols
            && x.values.len() >= T * cols
            && x.scales.len() >= T * x.groups
            && cols == x.groups * GROUP
    );
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let wp = w.as_ptr();
    for group in 0..x.groups {
        for r in 0..R {
            // SAFETY: row `r < R` of `w` has `cols` elements (asserted) and
            // the group's 128 end within them.
            let weights: [__m512i; 4] = std::array::from_fn(|k| unsafe {
                _mm512_loadu_si512(wp.add(r * cols + group * GROUP + 32 * k).cast())
            });
            for t in 0..T {
                // SAFETY: `t < T` rows of `groups` groups (asserted).
                let (values, scale) = unsafe { group_of(x, t, group) };
                acc[r][t] = accumulate_group(acc[r][t], &weights, &values, scale);
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            dots[r][t] = _mm512_reduce_add_ps(acc[r][t]);
        }
    }
}
