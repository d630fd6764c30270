//! The one frame every prepared-input kernel runs in: the threading, the
//! scratch buffers and the two ways through a matmul. A kernel ([`Kernel`])
//! supplies only its arithmetic: how it prepares the inputs, how it decodes
//! and dots one weight row in registers, how it decodes a task's rows into
//! a buffer, and its register-blocked micro-kernel.
//!
//! **Decode steps** (up to [`Kernel::MAX_DIRECT_INPUTS`] input rows, a
//! single chat or a batch of them): tasks of [`Kernel::DECODE_TASK_ROWS`]
//! weight rows; each row is decoded into registers and dotted there with
//! every input row, reading ahead of the stream. No buffer: the weights are
//! read once and used once per input row.
//!
//! **Prefill** (more input rows): tasks of [`Kernel::TASK_ROWS`] weight
//! rows, decoded once into a worker's buffer (in the kernel's layout), then
//! a micro-kernel of [`Kernel::TILE_ROWS`] x [`Kernel::TILE_INPUTS`] runs
//! over them for every tile of input rows, so each decoded weight serves
//! every input row from registers.
//!
//! The inputs are prepared once per call by the calling thread into its
//! scratch buffer (rounded to bf16, quantized to fixed point, reordered to
//! match the decoded weights: the kernel decides), padded to whole groups
//! of [`Kernel::GROUP`] columns with one scale per group.

use std::cell::Cell;
use std::ops::Range;
use std::thread::LocalKey;

use bytemuck::Pod;

use super::for_each_row_task;
use crate::weights::QinsMatrix;

/// The largest micro-kernel tile of any kernel (rows x inputs): the size of
/// the dots buffer the driver hands a tile.
pub const MAX_TILE_ROWS: usize = 4;
pub const MAX_TILE_INPUTS: usize = 8;

/// The dots of one micro-kernel tile, `[weight row][input row]`.
pub type TileDots = [[f32; MAX_TILE_INPUTS]; MAX_TILE_ROWS];

/// A kernel's arithmetic, run by [`matmul`].
///
/// Every method is `unsafe` because it is compiled for instructions the
/// baseline target lacks: a caller must have checked
/// [`Kernel::is_available`] (which [`matmul`] does once per call).
pub trait Kernel {
    /// What a prepared input value is (bf16 bits, a fixed-point integer).
    type Input: Pod + Send + Sync;
    /// What a decoded weight in the prefill buffer is.
    type Weight: Pod + Send + Sync;
    /// The kernel's name in messages.
    const NAME: &'static str;
    /// Columns per input group: prepared rows are padded to whole groups,
    /// each with one scale.
    const GROUP: usize;
    /// Input rows up to which weight rows are decoded into registers.
    const MAX_DIRECT_INPUTS: usize = 4;
    /// Weight rows of one task of a decode step: enough work to amortize
    /// rayon's scheduling, few enough to balance the narrowest matrices.
    const DECODE_TASK_ROWS: usize = 8;
    /// Weight rows decoded together by one prefill task (the buffer holds
    /// `TASK_ROWS x padded cols` weights: 256 KiB of 16-bit weights at
    /// 8192 columns, inside L2).
    const TASK_ROWS: usize = 16;
    /// Micro-kernel tile (at most [`MAX_TILE_ROWS`] x [`MAX_TILE_INPUTS`]).
    const TILE_ROWS: usize;
    const TILE_INPUTS: usize;
    /// Rows come in groups of this many in the prefill buffers (2 for a
    /// kernel that interleaves pairs of rows): the driver sizes the input
    /// and decoded buffers for whole groups.
    const ROW_GROUP: usize = 1;

    /// Whether this CPU has the instructions the kernel uses.
    fn is_available() -> bool;

    /// Prepares the input rows of `x` (`cols` each) into `inputs` in the
    /// kernel's layout, for the direct path (`direct`) or the micro-kernel
    /// (whose buffers hold whole [`Kernel::ROW_GROUP`]s of rows).
    ///
    /// # Safety
    /// [`Kernel::is_available`].
    unsafe fn prepare(x: &[f32], cols: usize, direct: bool, inputs: &mut Prepared<'_, Self::Input>);

    /// `out[t]` = the dot of weight row `row` with input row `t`, for
    /// `out.len()` (1 to [`Kernel::MAX_DIRECT_INPUTS`]) input rows, the
    /// row decoded in registers.
    ///
    /// # Safety
    /// [`Kernel::is_available`].
    unsafe fn direct_dots(w: &QinsMatrix, row: usize, x: &Inputs<'_, Self::Input>, out: &mut [f32]);

    /// Decodes weight rows `rows` into `decoded` (`rows.len()` rows of
    /// `padded_cols`, rounded up to whole [`Kernel::ROW_GROUP`]s, in the
    /// kernel's layout) and each row's output scale (what its raw dots are
    /// multiplied by) into `scales`.
    ///
    /// # Safety
    /// [`Kernel::is_available`].
    unsafe fn decode_task(
        w: &QinsMatrix,
        rows: Range<usize>,
        padded_cols: usize,
        decoded: &mut [Self::Weight],
        scales: &mut [f32],
    );

    /// The raw dots of task rows `rows` (at most [`Kernel::TILE_ROWS`],
    /// indices into `decoded`) with input rows `inputs` (at most
    /// [`Kernel::TILE_INPUTS`]), into `dots[row - rows.start][t - inputs.start]`.
    ///
    /// # Safety
    /// [`Kernel::is_available`].
    unsafe fn tile(
        decoded: &[Self::Weight],
        rows: Range<usize>,
        x: &Inputs<'_, Self::Input>,
        inputs: Range<usize>,
        dots: &mut TileDots,
    );
}

/// The prepared input rows of one call, being written.
pub struct Prepared<'a, T> {
    /// `n x padded_cols` values, in the kernel's layout.
    pub values: &'a mut [T],
    /// `n x groups` scales: input row `t`'s group `g` is `scales[t * groups + g]`.
    pub scales: &'a mut [f32],
    pub padded_cols: usize,
    pub groups: usize,
}

/// The prepared input rows of one call.
#[derive(Clone, Copy)]
pub struct Inputs<'a, T> {
    pub values: &'a [T],
    pub scales: &'a [f32],
    pub padded_cols: usize,
    pub groups: usize,
}

thread_local! {
    /// The calling thread's prepared inputs, reused across calls.
    static INPUTS: Cell<Vec<u64>> = const { Cell::new(Vec::new()) };
    /// Their group scales.
    static SCALES: Cell<Vec<u64>> = const { Cell::new(Vec::new()) };
    /// A rayon worker's decoded rows, reused across tasks and calls.
    static DECODED: Cell<Vec<u64>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on `len` elements of this thread's scratch buffer `slot`
/// (grown as needed, never cleared: holds whatever the last user left).
/// Taken, not borrowed: a rayon worker waiting inside `f` may run another
/// matmul, which then finds an empty buffer instead of a borrowed one.
fn with_scratch<T: Pod, R>(
    slot: &'static LocalKey<Cell<Vec<u64>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut words = slot.take();
    let needed = (len * size_of::<T>()).div_ceil(size_of::<u64>());
    if words.len() < needed {
        words.resize(needed, 0);
    }
    let result = f(&mut bytemuck::cast_slice_mut::<u64, T>(&mut words[..needed])[..len]);
    slot.set(words);
    result
}

/// `out[n x rows] = x[n x cols] · Wᵀ` with kernel `K` (see
/// [`super::qins_matmul`]).
pub fn matmul<K: Kernel>(x: &[f32], n: usize, w: &QinsMatrix, out: &mut [f32]) {
    // Reachable from any caller through `qins_matmul_with`: refuse rather
    // than fault.
    assert!(
        K::is_available(),
        "the {} kernel needs instructions this CPU lacks",
        K::NAME
    );
    let groups = w.cols.div_ceil(K::GROUP);
    let padded_cols = groups * K::GROUP;
    let direct = n <= K::MAX_DIRECT_INPUTS;
    let input_rows = if direct {
        n
    } else {
        n.next_multiple_of(K::ROW_GROUP)
    };
    with_scratch::<K::Input, _>(&INPUTS, input_rows * padded_cols, |values| {
        with_scratch::<f32, _>(&SCALES, input_rows * groups, |scales| {
            let mut prepared = Prepared {
                values,
                scales,
                padded_cols,
                groups,
            };
            // SAFETY: the CPU has the kernel's instructions (asserted).
            unsafe { K::prepare(x, w.cols, direct, &mut prepared) };
            let inputs = Inputs {
                values: prepared.values,
                scales: prepared.scales,
                padded_cols,
                groups,
            };
            if direct {
                direct_rows::<K>(w, &inputs, n, out);
            } else {
                multiply_rows::<K>(w, &inputs, n, out);
            }
        })
    });
}

/// The decode-step path: every weight row decoded into registers and dotted
/// there with each of the `n` input rows.
fn direct_rows<K: Kernel>(w: &QinsMatrix, x: &Inputs<'_, K::Input>, n: usize, out: &mut [f32]) {
    for_each_row_task(out, n, w.rows, K::DECODE_TASK_ROWS, |task_rows, out| {
        let mut dots = [0.0f32; MAX_TILE_INPUTS];
        let dots = &mut dots[..n];
        for row in task_rows {
            // SAFETY: `matmul` checked the CPU.
            unsafe { K::direct_dots(w, row, x, dots) };
            for (t, &d) in dots.iter().enumerate() {
                out.write(t, row, d);
            }
        }
    });
}

/// The prefill path: tasks of rows decoded once into a buffer, then the
/// micro-kernel over every tile of input rows.
fn multiply_rows<K: Kernel>(w: &QinsMatrix, x: &Inputs<'_, K::Input>, n: usize, out: &mut [f32]) {
    debug_assert!(K::TILE_ROWS <= MAX_TILE_ROWS && K::TILE_INPUTS <= MAX_TILE_INPUTS);
    let cols = x.padded_cols;
    for_each_row_task(out, n, w.rows, K::TASK_ROWS, |task_rows, out| {
        let first = task_rows.start;
        let rows = task_rows.len();
        let buffer_rows = rows.next_multiple_of(K::ROW_GROUP);
        with_scratch::<K::Weight, _>(&DECODED, buffer_rows * cols, |decoded| {
            let mut scales = [0.0f32; 64];
            let scales = &mut scales[..rows];
            // SAFETY: `matmul` checked the CPU.
            unsafe { K::decode_task(w, task_rows.clone(), cols, decoded, scales) };
            for t0 in (0..n).step_by(K::TILE_INPUTS) {
                let inputs = t0..n.min(t0 + K::TILE_INPUTS);
                for r0 in (0..rows).step_by(K::TILE_ROWS) {
                    let tile_rows = r0..rows.min(r0 + K::TILE_ROWS);
                    let mut dots = [[0.0f32; MAX_TILE_INPUTS]; MAX_TILE_ROWS];
                    // SAFETY: `matmul` checked the CPU.
                    unsafe { K::tile(decoded, tile_rows.clone(), x, inputs.clone(), &mut dots) };
                    for (r, row_dots) in tile_rows.clone().zip(&dots) {
                        for (t, &d) in inputs.clone().zip(row_dots) {
                            out.write(t, first + r, d * scales[r]);
                        }
                    }
                }
            }
        })
    });
}
