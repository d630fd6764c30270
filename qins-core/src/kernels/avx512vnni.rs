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
//! ([`Registers::new`]); [`FixedTables::new`] is their scalar model.
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
//! **Threading.** As in the bf16 kernel: up to [`MAX_DIRECT_INPUTS`] input
//! rows decode each group into registers and dot it there, reading ahead of
//! the stream ([`super::prefetch_ahead`]); more decode a task's rows once
//! into a thread-local buffer and run a register-blocked micro-kernel of 4
//! weight rows x 3 input rows over it.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::{for_each_row_task, padded, prefetch_ahead};
use crate::codec::{Granularity, RangeFactors};
use crate::weights::QinsMatrix;

/// Columns per input scale: two words of sign bits, four registers of
/// 32 fixed-point weights.
const GROUP: usize = 128;
/// The largest fixed-point weight magnitude (15 bits).
const WEIGHT_UNIT: f32 = 32767.0;
/// The largest fixed-point input magnitude: an i32 lane sums 8 products of
/// a group, `8 · 32767 · 8191 < 2^31`, so it cannot overflow.
const INPUT_UNIT: f32 = 8191.0;
/// Rows decoded together by one task of a multi-row call (the buffer holds
/// `TASK_ROWS x cols` i16 weights: 256 KiB at 8192 columns, inside L2).
const TASK_ROWS: usize = 16;
/// Input rows up to which each weight row is decoded into registers and
/// dotted there (decode steps, batched or not).
const MAX_DIRECT_INPUTS: usize = 4;
/// Rows of one task of such a call.
const DECODE_TASK_ROWS: usize = 8;
/// Micro-kernel tile: weight rows x input rows (12 f32 accumulators, 4
/// weight registers).
const TILE_ROWS: usize = 4;
const TILE_INPUTS: usize = 3;

pub fn is_available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
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
        // Lane j of the register: ρ^j built from ρ, ρ², ρ⁴, ρ⁸ by the
        // multiplies whose bit j has; ρ^(32k) likewise from ρ^32.. ρ^128.
        let chain = |j: usize, factors: &[f32; 4]| {
            let mut v = 1.0f32;
            for (bit, f) in factors.iter().enumerate() {
                if j >> bit & 1 == 1 {
                    v *= f;
                }
            }
            v
        };
        let unit = |v: f32| v.round_ties_even().clamp(0.0, 65535.0) as u16;
        let mut low = [0u16; 32];
        for j in 0..16 {
            let v = chain(j, &p.small);
            low[j] = unit(v * 65535.0);
            low[16 + j] = unit(v * p.rho16 * 65535.0);
        }
        let mut high = [0u16; 32];
        for (a, slot) in high.iter_mut().enumerate().take(9).skip(1) {
            *slot = unit(chain(a - 1, &p.large) * WEIGHT_UNIT);
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

/// What a row's tables are built from: powers of `ρ = 1/ratio` by squaring
/// in f64, each rounded once to f32 (the tables need 16 bits; f32 products
/// of at most four of them stay within ~2^-22), and the row's scales.
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
        let first = first.max(1);
        // squares[i] = ρ^(2^i), i in 0..8.
        let mut squares = [1.0 / factors.ratio; 8];
        for i in 1..8 {
            squares[i] = squares[i - 1] * squares[i - 1];
        }
        // The magnitude of code `first`, scale · ratio^(255 - first): the
        // largest of the row, which the tables map to WEIGHT_UNIT.
        let steps = 255 - u32::from(first);
        let rho_steps = (0..8)
            .filter(|i| steps >> i & 1 == 1)
            .fold(1.0, |p, i| p * squares[i]);
        let largest = factors.scale / rho_steps;
        Self {
            small: [squares[0], squares[1], squares[2], squares[3]].map(|v| v as f32),
            rho16: squares[4] as f32,
            large: [squares[5], squares[6], squares[7], 1.0].map(|v| v as f32),
            bias: 32 - u16::from(first),
            dequant: (largest * 65536.0 / (f64::from(WEIGHT_UNIT) * 65535.0)) as f32,
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

/// What row `row`'s tables are built from: its range's factors and the
/// code of its largest magnitude (see [`FixedTables::new`]). A per-row
/// range's largest magnitude is its code 1; rows sharing one range are
/// scaled by their own smallest code instead, so that a row of small
/// weights keeps its precision (at the cost of a pass over its codes).
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

/// The scale and fixed-point values of one group of an input row, as the
/// kernel forms them: `x ≈ q · scale`.
pub fn quantize_group(x: &[f32; GROUP], out: &mut [i16]) -> f32 {
    let largest = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if largest == 0.0 || !largest.is_finite() {
        // Zeros stay zero; a NaN or infinite input makes every dot of the
        // row NaN through the scale, as it would in f32.
        out[..GROUP].fill(0);
        return if largest == 0.0 { 0.0 } else { f32::NAN };
    }
    let inverse = INPUT_UNIT / largest;
    for (q, &v) in out.iter_mut().zip(x) {
        // Halves away from zero, by an add and a truncating conversion
        // (`round` is a library call on baseline x86-64).
        let scaled = v * inverse;
        *q = (scaled + 0.5f32.copysign(scaled)) as i16;
    }
    largest / INPUT_UNIT
}

/// `out[n x rows] = x[n x cols] · Wᵀ` (see [`super::qins_matmul`]).
pub fn matmul(x: &[f32], n: usize, w: &QinsMatrix, out: &mut [f32]) {
    // A fn pointer to this can be called anywhere: refuse rather than fault.
    assert!(
        is_available(),
        "avx512-vnni kernel needs AVX-512 F, BW and VNNI"
    );
    let groups = w.cols.div_ceil(GROUP);
    let padded_cols = groups * GROUP;
    // Taken, not borrowed: a rayon worker waiting inside this call may run
    // another matmul, which then finds empty buffers instead of borrowed ones.
    let mut inputs = INPUTS.take();
    let mut scales = SCALES.take();
    // Every element is written below: grow, never clear.
    if inputs.len() < n * padded_cols {
        inputs.resize(n * padded_cols, 0);
    }
    if scales.len() < n * groups {
        scales.resize(n * groups, 0.0);
    }
    let (inputs_used, scales_used) = (n * padded_cols, n * groups);
    for ((row, dst), row_scales) in x
        .chunks(w.cols)
        .zip(inputs[..inputs_used].chunks_mut(padded_cols))
        .zip(scales[..scales_used].chunks_mut(groups))
    {
        quantize_row(row, dst, row_scales);
    }
    let inputs_of = Inputs {
        values: &inputs[..inputs_used],
        scales: &scales[..scales_used],
        padded_cols,
        groups,
    };
    let tables_of = |row: usize| row_scale(w, row);
    if n <= MAX_DIRECT_INPUTS {
        // SAFETY: the CPU has the features (asserted above).
        unsafe { decode_rows(w, &inputs_of, n, &tables_of, out) }
    } else {
        // SAFETY: the CPU has the features (asserted above).
        unsafe { multiply_rows(w, &inputs_of, n, &tables_of, out) }
    }
    INPUTS.set(inputs);
    SCALES.set(scales);
}

thread_local! {
    /// The calling thread's fixed-point inputs, reused across calls.
    static INPUTS: RefCell<Vec<i16>> = const { RefCell::new(Vec::new()) };
    /// Their per-group scales.
    static SCALES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A rayon worker's decoded rows, reused across tasks and calls.
    static DECODED: RefCell<Vec<i16>> = const { RefCell::new(Vec::new()) };
}

/// The quantized input rows of one call.
struct Inputs<'a> {
    /// `n x padded_cols` fixed-point values.
    values: &'a [i16],
    /// `n x groups` scales.
    scales: &'a [f32],
    padded_cols: usize,
    groups: usize,
}

impl Inputs<'_> {
    /// The 128 values and the scale of group `group` of input row `t`.
    ///
    /// # Safety
    /// `t` and `group` are in range.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn group(&self, t: usize, group: usize) -> ([__m512i; 4], f32) {
        debug_assert!(t * self.groups + group < self.scales.len());
        // SAFETY: the caller keeps `t` and `group` in range: the group's
        // 128 values lie inside row `t`'s `padded_cols`.
        unsafe {
            let p = self
                .values
                .as_ptr()
                .add(t * self.padded_cols + group * GROUP);
            (
                std::array::from_fn(|k| _mm512_loadu_si512(p.add(32 * k).cast())),
                *self.scales.get_unchecked(t * self.groups + group),
            )
        }
    }
}

/// One input row into fixed point, zero-padded to whole groups.
fn quantize_row(x: &[f32], out: &mut [i16], scales: &mut [f32]) {
    let (whole, tail) = x.as_chunks::<GROUP>();
    let mut groups = out.chunks_exact_mut(GROUP).zip(scales.iter_mut());
    for (src, (dst, scale)) in whole.iter().zip(&mut groups) {
        *scale = quantize_group(src, dst);
    }
    if let Some((dst, scale)) = groups.next() {
        *scale = quantize_group(&padded::<f32, GROUP>(tail), dst);
    }
}

/// The tables in registers.
#[derive(Clone, Copy)]
struct Registers {
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

    /// The signed fixed-point weights of a group's 128 codes, 32 columns
    /// per register in column order.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn decode_group(&self, codes: &[u8; GROUP], signs: &[u8; GROUP / 8]) -> [__m512i; 4] {
        std::array::from_fn(|k| {
            // SAFETY: 32 readable code bytes and 4 sign bytes at `32k` and
            // `4k` (the arrays are 128 and 16 long).
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

/// Calls `f(group, codes, signs)` for each 128-code group of a row, in
/// order; the last partial group comes zero-padded (code 0 decodes to 0).
#[inline(always)]
fn for_each_group(
    codes: &[u8],
    signs: &[u8],
    mut f: impl FnMut(usize, &[u8; GROUP], &[u8; GROUP / 8]),
) {
    let (whole, tail) = codes.as_chunks::<GROUP>();
    let (sign_groups, _) = signs.as_chunks::<{ GROUP / 8 }>();
    for (group, (codes, signs)) in whole.iter().zip(sign_groups).enumerate() {
        f(group, codes, signs);
    }
    if !tail.is_empty() {
        // Not the remainder of `as_chunks`: the sign bytes of a partial
        // group may be whole.
        let sign_tail = &signs[whole.len() * GROUP / 8..];
        f(
            whole.len(),
            &padded::<u8, GROUP>(tail),
            &padded::<u8, { GROUP / 8 }>(sign_tail),
        );
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

/// Up to [`MAX_DIRECT_INPUTS`] input rows: every weight row is decoded into
/// registers and dotted with each input row there, no buffer.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn decode_rows(
    w: &QinsMatrix,
    x: &Inputs<'_>,
    n: usize,
    tables_of: &(impl Fn(usize) -> (RangeFactors, u8) + Sync),
    out: &mut [f32],
) {
    for_each_row_task(out, n, w.rows, DECODE_TASK_ROWS, |task_rows, out| {
        for row in task_rows {
            let (factors, first) = tables_of(row);
            let (registers, dequant) = Registers::new(factors, first);
            let (codes, signs) = (w.row_codes(row), w.row_signs(row));
            let store = |dots: &[f32]| {
                for (t, &d) in dots.iter().enumerate() {
                    out.write(t, row, d * dequant);
                }
            };
            match n {
                1 => store(&decode_dots::<1>(&registers, codes, signs, x)),
                2 => store(&decode_dots::<2>(&registers, codes, signs, x)),
                3 => store(&decode_dots::<3>(&registers, codes, signs, x)),
                _ => store(&decode_dots::<4>(&registers, codes, signs, x)),
            }
        }
    });
}

/// `Σ q[c] · x_t[c]` over one row for `T` input rows, in input units,
/// decoding each group once into registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn decode_dots<const T: usize>(
    registers: &Registers,
    codes: &[u8],
    signs: &[u8],
    x: &Inputs<'_>,
) -> [f32; T] {
    assert!(
        x.values.len() >= T * x.padded_cols
            && x.scales.len() >= T * x.groups
            && codes.len() <= x.padded_cols
    );
    let mut acc = [_mm512_setzero_ps(); T];
    for_each_group(codes, signs, |group, codes, signs| {
        prefetch_ahead(codes, signs);
        let weights = registers.decode_group(codes, signs);
        for (t, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `t < T` rows and `group` < the row's groups (asserted:
            // the groups of a row end within `padded_cols`).
            let (inputs, scale) = unsafe { x.group(t, group) };
            *acc = accumulate_group(*acc, &weights, &inputs, scale);
        }
    });
    std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t]))
}

/// Several input rows: tasks of [`TASK_ROWS`] rows, each decoded once and
/// multiplied by every input row with the micro-kernel.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn multiply_rows(
    w: &QinsMatrix,
    x: &Inputs<'_>,
    n: usize,
    tables_of: &(impl Fn(usize) -> (RangeFactors, u8) + Sync),
    out: &mut [f32],
) {
    let cols = x.padded_cols;
    for_each_row_task(out, n, w.rows, TASK_ROWS, |task_rows, out| {
        let first = task_rows.start;
        let task_rows = task_rows.len();
        DECODED.with_borrow_mut(|decoded| {
            // Every element is written by `decode_row`: grow, never clear.
            if decoded.len() < task_rows * cols {
                decoded.resize(task_rows * cols, 0);
            }
            let decoded = &mut decoded[..task_rows * cols];
            let mut dequant = [0.0f32; TASK_ROWS];
            for (i, dst) in decoded.chunks_mut(cols).enumerate() {
                let row = first + i;
                let (factors, first_code) = tables_of(row);
                let (registers, row_dequant) = Registers::new(factors, first_code);
                dequant[i] = row_dequant;
                decode_row(&registers, w.row_codes(row), w.row_signs(row), dst);
            }
            for t0 in (0..n).step_by(TILE_INPUTS) {
                let inputs = TILE_INPUTS.min(n - t0);
                let x_tile = Inputs {
                    values: &x.values[t0 * cols..(t0 + inputs) * cols],
                    scales: &x.scales[t0 * x.groups..(t0 + inputs) * x.groups],
                    padded_cols: cols,
                    groups: x.groups,
                };
                for r0 in (0..task_rows).step_by(TILE_ROWS) {
                    let tile_rows = TILE_ROWS.min(task_rows - r0);
                    let w_tile = &decoded[r0 * cols..(r0 + tile_rows) * cols];
                    let mut dots = [[0.0f32; TILE_INPUTS]; TILE_ROWS];
                    micro_kernel(w_tile, &x_tile, &mut dots);
                    for (r, row_dots) in dots.iter().enumerate().take(tile_rows) {
                        for (t, &d) in row_dots.iter().enumerate().take(inputs) {
                            out.write(t0 + t, first + r0 + r, d * dequant[r0 + r]);
                        }
                    }
                }
            }
        });
    });
}

/// Decodes one row into `out` (its padded length).
#[target_feature(enable = "avx512f,avx512bw")]
fn decode_row(registers: &Registers, codes: &[u8], signs: &[u8], out: &mut [i16]) {
    assert!(out.len() >= codes.len().div_ceil(GROUP) * GROUP);
    for_each_group(codes, signs, |group, codes, signs| {
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
/// `dots[row][input]` (in input units: the caller applies `dequant`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn micro_kernel(w: &[i16], x: &Inputs<'_>, dots: &mut [[f32; TILE_INPUTS]; TILE_ROWS]) {
    let cols = x.padded_cols;
    match (w.len() / cols, x.values.len() / cols) {
        (4, 3) => tile::<4, 3>(w, x, dots),
        (4, 2) => tile::<4, 2>(w, x, dots),
        (4, _) => tile::<4, 1>(w, x, dots),
        (3, _) => tile::<3, TILE_INPUTS>(w, x, dots),
        (2, _) => tile::<2, TILE_INPUTS>(w, x, dots),
        _ => tile::<1, TILE_INPUTS>(w, x, dots),
    }
}

/// The register-blocked core: `R x T` f32 accumulators; per group, each
/// weight row's four registers meet every input row's. Missing input rows
/// of a short tile (fewer than `T` in `x`) are skipped.
// Indexing (not iterators) keeps the register tile explicit for the compiler.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile<const R: usize, const T: usize>(
    w: &[i16],
    x: &Inputs<'_>,
    dots: &mut [[f32; TILE_INPUTS]; TILE_ROWS],
) {
    let cols = x.padded_cols;
    let inputs = (x.values.len() / cols).min(T);
    assert!(w.len() >= R * cols && x.scales.len() >= inputs * x.groups && cols == x.groups * GROUP);
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let wp = w.as_ptr();
    for group in 0..x.groups {
        for r in 0..R {
            // SAFETY: row `r < R` of `w` has `cols` elements (asserted) and
            // the group's 128 end within them.
            let weights: [__m512i; 4] = std::array::from_fn(|k| unsafe {
                _mm512_loadu_si512(wp.add(r * cols + group * GROUP + 32 * k).cast())
            });
            for t in 0..inputs {
                // SAFETY: `t < inputs` rows of `groups` groups (asserted).
                let (values, scale) = unsafe { x.group(t, group) };
                acc[r][t] = accumulate_group(acc[r][t], &weights, &values, scale);
            }
        }
    }
    for r in 0..R {
        for t in 0..inputs {
            dots[r][t] = _mm512_reduce_add_ps(acc[r][t]);
        }
    }
}
