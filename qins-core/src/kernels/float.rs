//! The f32 kernels (`avx512`, `avx2`, `neon`, `scalar`) on the shared
//! driver ([`super::driver`]). Each supplies its registers
//! ([`FloatLanes`]): how it decodes `4 x LANES` weights to f32 (the
//! reference's nibble product, bit for bit, signed), a multiply-add, a load,
//! a store and a sum. The frame here does the rest, once for all of them:
//!
//! - inputs: copied as they are, zero-padded to whole steps;
//! - decode steps: each weight row decoded step by step into registers and
//!   dotted there with every input row;
//! - prefill: a task's rows decoded once into the worker's buffer, then a
//!   4 x 2 micro-kernel of f32 multiply-adds over it.
//!
//! These kernels multiply exact f32 decodes by exact f32 inputs: they are
//! the references the rounding kernels are measured against (perplexity,
//! `QINS_KERNEL=avx2` and friends), and the fallback of CPUs without a
//! faster one.

use std::ops::Range;

use super::NibbleTables;
use super::driver::{Inputs, Prepared, TileDots, exact_tile, for_each_input_row};
use crate::weights::QinsMatrix;

/// The largest step of any f32 kernel (AVX-512: 4 x 16 weights).
const MAX_STEP: usize = 64;

/// One f32 kernel's registers and operations. Every method is `unsafe`
/// because it is compiled for the kernel's instructions: callers have
/// checked the CPU (see [`super::driver::Kernel`]).
pub trait FloatLanes {
    /// f32 per register; a decode step is 4 registers.
    const LANES: usize;
    /// A register of `LANES` f32.
    type V: Copy;
    /// A row's tables, as the kernel keeps them.
    type Decoder: Copy;

    /// # Safety
    /// The CPU has the kernel's instructions.
    unsafe fn decoder(tables: &NibbleTables) -> Self::Decoder;
    /// The `4 x LANES` signed weights of `codes`, whose sign bits are
    /// `signs` (`LANES / 2` bytes), in column order.
    ///
    /// # Safety
    /// As above; `codes` and `signs` have those lengths.
    unsafe fn decode(decoder: &Self::Decoder, codes: &[u8], signs: &[u8]) -> [Self::V; 4];
    /// # Safety
    /// As above; `LANES` readable f32 at `p`.
    unsafe fn load(p: *const f32) -> Self::V;
    /// # Safety
    /// As above; `LANES` writable f32 at `p`.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// # Safety
    /// As above.
    unsafe fn zero() -> Self::V;
    /// `acc + a · b` lane by lane.
    ///
    /// # Safety
    /// As above.
    unsafe fn fma(acc: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// The sum of the lanes of `a` and `b`.
    ///
    /// # Safety
    /// As above.
    unsafe fn sum(a: Self::V, b: Self::V) -> f32;
}

/// Runs `$body` with `$i`, `$codes` and `$signs` bound to each step of a
/// row in order: the step's index, its `$step` codes and their `$step / 8`
/// sign bytes; the last partial step comes zero-padded (code 0 decodes to
/// 0). A macro, not a function taking a closure: a closure is compiled
/// apart from the kernel's `#[target_feature]` function and does not get
/// its instructions, so its multiply-adds were calls (2 to 4 input rows
/// ran 5 to 7 times slower than one).
macro_rules! for_each_step {
    ($codes:expr, $signs:expr, $step:expr, |$i:ident, $c:ident, $s:ident| $body:block) => {{
        let (codes, signs, step): (&[u8], &[u8], usize) = ($codes, $signs, $step);
        let whole = codes.len() / step;
        let sign_step = step / 8;
        for $i in 0..whole {
            let $c = &codes[$i * step..($i + 1) * step];
            let $s = &signs[$i * sign_step..($i + 1) * sign_step];
            $body
        }
        let tail = &codes[whole * step..];
        if !tail.is_empty() {
            let mut padded_codes = [0u8; MAX_STEP];
            padded_codes[..tail.len()].copy_from_slice(tail);
            // Not the remainder of the whole steps' signs: the sign bytes
            // of a partial step may be whole.
            let sign_tail = &signs[whole * sign_step..];
            let mut padded_signs = [0u8; MAX_STEP / 8];
            padded_signs[..sign_tail.len()].copy_from_slice(sign_tail);
            let $i = whole;
            let $c = &padded_codes[..step];
            let $s = &padded_signs[..sign_step];
            $body
        }
    }};
}

/// Inputs as they are, zero-padded to whole steps.
pub fn prepare(x: &[f32], cols: usize, inputs: &mut Prepared<'_, f32>) {
    for_each_input_row(x, cols, inputs, |row, values, _| {
        values[..cols].copy_from_slice(row);
        values[cols..].fill(0.0);
    });
}

/// Dots of weight row `row` with each of `out.len()` input rows, decoding
/// each step once into registers.
///
/// # Safety
/// The CPU has `F`'s instructions.
#[inline(always)]
pub unsafe fn direct_dots<F: FloatLanes>(
    decoder: &F::Decoder,
    w: &QinsMatrix,
    row: usize,
    x: &Inputs<'_, f32>,
    out: &mut [f32],
) {
    // SAFETY: every call here: the caller's contract.
    unsafe {
        let (codes, signs) = (w.row_codes(row), w.row_signs(row));
        match out.len() {
            1 => out.copy_from_slice(&dots::<F, 1>(decoder, codes, signs, x)),
            2 => out.copy_from_slice(&dots::<F, 2>(decoder, codes, signs, x)),
            3 => out.copy_from_slice(&dots::<F, 3>(decoder, codes, signs, x)),
            _ => out.copy_from_slice(&dots::<F, 4>(decoder, codes, signs, x)),
        }
    }
}

/// A row's decoder.
///
/// # Safety
/// As [`direct_dots`].
#[inline(always)]
pub unsafe fn row<F: FloatLanes>(w: &QinsMatrix, row: usize) -> F::Decoder {
    // SAFETY: the caller's contract.
    unsafe { F::decoder(&NibbleTables::from_factors(w.row_factors(row))) }
}

/// `Σ w[c] · x_t[c]` over one row for `T` input rows: two accumulators
/// per input row (two FMA chains).
///
/// # Safety
/// As [`direct_dots`].
#[inline(always)]
unsafe fn dots<F: FloatLanes, const T: usize>(
    decoder: &F::Decoder,
    codes: &[u8],
    signs: &[u8],
    x: &Inputs<'_, f32>,
) -> [f32; T] {
    let step = 4 * F::LANES;
    assert!(x.values.len() >= T * x.padded_cols && codes.len() <= x.padded_cols);
    // SAFETY: every call here: the caller's contract; every step of input row
    // `t < T` lies within its `padded_cols` (asserted).
    unsafe {
        let mut acc = [[F::zero(); 2]; T];
        for_each_step!(codes, signs, step, |i, codes, signs| {
            let weights = F::decode(decoder, codes, signs);
            for (t, acc) in acc.iter_mut().enumerate() {
                let p = x.values.as_ptr().add(t * x.padded_cols + i * step);
                for (k, w) in weights.iter().enumerate() {
                    acc[k % 2] = F::fma(acc[k % 2], *w, F::load(p.add(k * F::LANES)));
                }
            }
        });
        std::array::from_fn(|t| F::sum(acc[t][0], acc[t][1]))
    }
}

/// Decodes rows `rows` into `decoded` (`padded_cols` each); f32 weights
/// need no scale.
///
/// # Safety
/// As [`direct_dots`].
#[inline(always)]
pub unsafe fn decode_task<F: FloatLanes>(
    w: &QinsMatrix,
    rows: Range<usize>,
    padded_cols: usize,
    decoded: &mut [f32],
    scales: &mut [f32],
) {
    let step = 4 * F::LANES;
    scales.fill(1.0);
    assert!(
        decoded.len() >= rows.len() * padded_cols && w.cols.div_ceil(step) * step <= padded_cols
    );
    for (row, out) in rows.zip(decoded.chunks_mut(padded_cols)) {
        // SAFETY: every call here: the caller's contract; each step's 4
        // registers lie within the row's padded length (asserted).
        unsafe {
            let decoder = F::decoder(&NibbleTables::from_factors(w.row_factors(row)));
            for_each_step!(
                w.row_codes(row),
                w.row_signs(row),
                step,
                |i, codes, signs| {
                    for (k, v) in F::decode(&decoder, codes, signs).into_iter().enumerate() {
                        F::store(out.as_mut_ptr().add(i * step + k * F::LANES), v);
                    }
                }
            );
        }
    }
}

/// Rows x inputs of the f32 micro-kernel: 8 accumulators, 4 weight and 2
/// input registers (fits AVX2's 16).
pub const TILE_ROWS: usize = 4;
pub const TILE_INPUTS: usize = 2;

/// Dots of up to 4 decoded rows with up to 2 input rows.
///
/// # Safety
/// As [`direct_dots`].
#[inline(always)]
pub unsafe fn tile<F: FloatLanes>(
    decoded: &[f32],
    rows: Range<usize>,
    x: &Inputs<'_, f32>,
    inputs: Range<usize>,
    dots: &mut TileDots,
) {
    let cols = x.padded_cols;
    let w = &decoded[rows.start * cols..rows.end * cols];
    let x = &x.values[inputs.start * cols..inputs.end * cols];
    // SAFETY: every call here: as above.
    unsafe {
        exact_tile!(tile_of[F], rows.len(), inputs.len(), rows: [1 2 3 4], inputs: [1 2], (w, x, cols, dots))
    }
}

/// The register-blocked core: `R x T` accumulators, one register of each
/// weight row and each input row per step.
///
/// # Safety
/// As [`direct_dots`].
// Indexing (not iterators) keeps the register tile explicit for the compiler.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile_of<F: FloatLanes, const R: usize, const T: usize>(
    w: &[f32],
    x: &[f32],
    cols: usize,
    dots: &mut TileDots,
) {
    assert!(w.len() >= R * cols && x.len() >= T * cols && cols.is_multiple_of(F::LANES));
    // SAFETY: every call here: the caller's contract; rows `r < R` of `w` and
    // `t < T` of `x` have `cols` elements (asserted) and `k + LANES <=
    // cols`.
    unsafe {
        let mut acc = [[F::zero(); T]; R];
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        for k in (0..cols).step_by(F::LANES) {
            let weights: [F::V; R] = std::array::from_fn(|r| F::load(wp.add(r * cols + k)));
            for t in 0..T {
                let input = F::load(xp.add(t * cols + k));
                for r in 0..R {
                    acc[r][t] = F::fma(acc[r][t], weights[r], input);
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                dots[r][t] = F::sum(acc[r][t], F::zero());
            }
        }
    }
}

/// `impl Kernel` for an f32 kernel `$kernel` (which implements
/// [`FloatLanes`]): the frame above compiled with the kernel's
/// `#[target_feature]`, if it has one.
macro_rules! float_kernel {
    ($kernel:ty, $name:literal, $available:expr $(, #[$features:meta])?) => {
        impl $crate::kernels::driver::Kernel for $kernel {
            type Input = f32;
            type Weight = f32;
            const NAME: &'static str = $name;
            const GROUP: usize = 4 * <$kernel as $crate::kernels::float::FloatLanes>::LANES;
            const TILE_ROWS: usize = $crate::kernels::float::TILE_ROWS;
            const TILE_INPUTS: usize = $crate::kernels::float::TILE_INPUTS;

            fn is_available() -> bool {
                $available
            }

            unsafe fn prepare(
                x: &[f32],
                cols: usize,
                _direct: bool,
                inputs: &mut $crate::kernels::driver::Prepared<'_, f32>,
            ) {
                $crate::kernels::float::prepare(x, cols, inputs);
            }

            type Row = <$kernel as $crate::kernels::float::FloatLanes>::Decoder;

            unsafe fn row(w: &$crate::weights::QinsMatrix, row: usize) -> Self::Row {
                $(#[$features])?
                fn run(w: &$crate::weights::QinsMatrix, row: usize) -> <$kernel as $crate::kernels::float::FloatLanes>::Decoder {
                    // SAFETY: compiled for the kernel's instructions, which
                    // the CPU has (the caller of `run`'s contract).
                    unsafe { $crate::kernels::float::row::<$kernel>(w, row) }
                }
                // SAFETY: the caller checked the CPU (the trait's contract).
                #[allow(unused_unsafe)]
                unsafe {
                    run(w, row)
                }
            }

            unsafe fn direct_dots(
                decoder: &Self::Row,
                w: &$crate::weights::QinsMatrix,
                row: usize,
                x: &$crate::kernels::driver::Inputs<'_, f32>,
                out: &mut [f32],
            ) {
                $(#[$features])?
                fn run(
                    decoder: &<$kernel as $crate::kernels::float::FloatLanes>::Decoder,
                    w: &$crate::weights::QinsMatrix,
                    row: usize,
                    x: &$crate::kernels::driver::Inputs<'_, f32>,
                    out: &mut [f32],
                ) {
                    // SAFETY: as above.
                    unsafe { $crate::kernels::float::direct_dots::<$kernel>(decoder, w, row, x, out) }
                }
                // SAFETY: as above.
                #[allow(unused_unsafe)]
                unsafe {
                    run(decoder, w, row, x, out)
                }
            }

            unsafe fn decode_task(
                w: &$crate::weights::QinsMatrix,
                rows: std::ops::Range<usize>,
                padded_cols: usize,
                decoded: &mut [f32],
                scales: &mut [f32],
            ) {
                $(#[$features])?
                fn run(
                    w: &$crate::weights::QinsMatrix,
                    rows: std::ops::Range<usize>,
                    padded_cols: usize,
                    decoded: &mut [f32],
                    scales: &mut [f32],
                ) {
                    // SAFETY: as above.
                    unsafe {
                        $crate::kernels::float::decode_task::<$kernel>(
                            w,
                            rows,
                            padded_cols,
                            decoded,
                            scales,
                        )
                    }
                }
                // SAFETY: as above.
                #[allow(unused_unsafe)]
                unsafe {
                    run(w, rows, padded_cols, decoded, scales)
                }
            }

            unsafe fn tile(
                decoded: &[f32],
                rows: std::ops::Range<usize>,
                x: &$crate::kernels::driver::Inputs<'_, f32>,
                inputs: std::ops::Range<usize>,
                dots: &mut $crate::kernels::driver::TileDots,
            ) {
                $(#[$features])?
                fn run(
                    decoded: &[f32],
                    rows: std::ops::Range<usize>,
                    x: &$crate::kernels::driver::Inputs<'_, f32>,
                    inputs: std::ops::Range<usize>,
                    dots: &mut $crate::kernels::driver::TileDots,
                ) {
                    // SAFETY: as above.
                    unsafe { $crate::kernels::float::tile::<$kernel>(decoded, rows, x, inputs, dots) }
                }
                // SAFETY: as above.
                #[allow(unused_unsafe)]
                unsafe {
                    run(decoded, rows, x, inputs, dots)
                }
            }
        }
    };
}
pub(crate) use float_kernel;
