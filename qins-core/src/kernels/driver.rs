//! The one frame every kernel runs in: the threading, the scratch buffers
//! and the two ways through a matmul. A kernel ([`Kernel`]) supplies only
//! its arithmetic: how it prepares the inputs, a row's tables, how it
//! decodes and dots one weight row in registers, how it decodes a task's
//! rows into a buffer, and its register-blocked micro-kernel.
//!
//! **Decode steps** (up to [`Kernel::MAX_DIRECT_INPUTS`] input rows, a
//! single chat or a batch of them): tasks of at least
//! [`Kernel::DECODE_TASK_ROWS`] weight rows and 16 KiB of codes; each row
//! is decoded into registers and dotted there with every input row, reading
//! ahead of the stream, while the next row's tables are built ([`Kernel::row`]).
//! No buffer: the weights are read once and used once per input row.
//!
//! **Prefill** (more input rows): tasks of [`Kernel::TASK_ROWS`] weight
//! rows, decoded once into a worker's buffer (in the kernel's layout), then
//! a micro-kernel of [`Kernel::TILE_ROWS`] x [`Kernel::TILE_INPUTS`] runs
//! over them for every tile of input rows, so each decoded weight serves
//! every input row from registers.
//!
//! The inputs are prepared once per call into the calling thread's scratch
//! buffer (rounded to bf16, quantized to fixed point, reordered to match the
//! decoded weights: the kernel decides; a prefill's rows in parallel,
//! [`for_each_input_row`]), padded to whole groups of [`Kernel::GROUP`]
//! columns with one scale per group. Several matrices of the same width
//! share one call and one parallel section ([`matmul`]).

use std::cell::Cell;
use std::ops::Range;
use std::thread::LocalKey;

use bytemuck::Pod;
use rayon::prelude::*;

use crate::weights::QinsMatrix;

/// The largest micro-kernel tile of any kernel (rows x inputs): the size of
/// the dots buffer the driver hands a tile.
pub const MAX_TILE_ROWS: usize = 4;
pub const MAX_TILE_INPUTS: usize = 8;

/// Calls `$tile::<G.., R, T>(args)` (`$tile[G..]`, the leading generic
/// arguments in brackets) with `R = $rows` and `T = $inputs` as
/// constants, for each of the listed sizes: a micro-kernel compiled for
/// its exact tile keeps its accumulators in registers (a loop to a run-time
/// bound would index them, which puts them in memory).
macro_rules! exact_tile {
    ($tile:ident $generics:tt, $rows:expr, $inputs:expr, rows: [$($r:literal)+], inputs: $ts:tt, $args:tt) => {
        match $rows {
            $( $r => $crate::kernels::driver::exact_tile!(@inputs $tile $generics, $r, $inputs, $ts, $args), )+
            rows => unreachable!("a tile of {rows} rows"),
        }
    };
    (@inputs $tile:ident $generics:tt, $r:literal, $inputs:expr, [$($t:literal)+], $args:tt) => {
        match $inputs {
            $( $t => $crate::kernels::driver::exact_tile!(@call $tile $generics, $r, $t, $args), )+
            inputs => unreachable!("a tile of {inputs} inputs"),
        }
    };
    (@call $tile:ident [$($g:ty),*], $r:literal, $t:literal, ($($arg:expr),*)) => {
        $tile::<$($g,)* $r, $t>($($arg),*)
    };
}
pub(crate) use exact_tile;

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
    /// How far ahead of its decoding a decode step asks for codes (see
    /// [`super::prefetch_ahead`]).
    const PREFETCH_DISTANCE: usize = super::PREFETCH_DISTANCE;
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

    /// What decoding one weight row starts from: its tables (in registers
    /// where the kernel builds them there) and its output scale.
    type Row: Copy;

    /// Row `row`'s [`Kernel::Row`]. The driver asks for the next row's
    /// while the current one decodes: building tables is a chain of
    /// dependent multiplies whose latency would otherwise stall each row
    /// of a narrow matrix.
    ///
    /// # Safety
    /// [`Kernel::is_available`].
    unsafe fn row(w: &QinsMatrix, row: usize) -> Self::Row;

    /// `out[t]` = the dot of weight row `row` (its [`Kernel::Row`] is
    /// `state`) with input row `t`, for `out.len()` (1 to
    /// [`Kernel::MAX_DIRECT_INPUTS`]) input rows, the row decoded in
    /// registers.
    ///
    /// # Safety
    /// [`Kernel::is_available`].
    unsafe fn direct_dots(
        state: &Self::Row,
        w: &QinsMatrix,
        row: usize,
        x: &Inputs<'_, Self::Input>,
        out: &mut [f32],
    );

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

/// Input rows from which [`for_each_input_row`] splits the work over the
/// thread pool (a prefill; a decode step's few rows are not worth a fork).
const PARALLEL_INPUT_ROWS: usize = 16;

/// Calls `prepare(row, values, scales)` for each input row of `x` (`cols`
/// each) with its share of the prepared buffers, in parallel for a
/// prefill's many rows.
pub fn for_each_input_row<T: Send>(
    x: &[f32],
    cols: usize,
    inputs: &mut Prepared<'_, T>,
    prepare: impl Fn(&[f32], &mut [T], &mut [f32]) + Sync,
) {
    let (padded_cols, groups) = (inputs.padded_cols, inputs.groups);
    let n = x.len() / cols.max(1);
    if n >= PARALLEL_INPUT_ROWS {
        x.par_chunks(cols)
            .zip(inputs.values.par_chunks_mut(padded_cols))
            .zip(inputs.scales.par_chunks_mut(groups))
            .for_each(|((row, values), scales)| prepare(row, values, scales));
    } else {
        x.chunks(cols)
            .zip(inputs.values.chunks_mut(padded_cols))
            .zip(inputs.scales.chunks_mut(groups))
            .for_each(|((row, values), scales)| prepare(row, values, scales));
    }
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

/// `out_i[n x rows_i] = x[n x cols] · W_iᵀ` with kernel `K` for every
/// `(W_i, out_i)` of `parts` (of the same width; see
/// [`super::qins_matmul_many_with`]), in one parallel section.
pub fn matmul<K: Kernel>(x: &[f32], n: usize, parts: &mut [(&QinsMatrix, &mut [f32])]) {
    // Reachable from any caller through `qins_matmul_with`: refuse rather
    // than fault.
    assert!(
        K::is_available(),
        "the {} kernel needs instructions this CPU lacks",
        K::NAME
    );
    const { assert!(K::TASK_ROWS <= MAX_TASK_ROWS) };
    let Some(cols) = parts.first().map(|(w, _)| w.cols) else {
        return;
    };
    assert!(
        parts.iter().all(|(w, _)| w.cols == cols),
        "one input for matrices of one width"
    );
    let groups = cols.div_ceil(K::GROUP);
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
            unsafe { K::prepare(x, cols, direct, &mut prepared) };
            let inputs = Inputs {
                values: prepared.values,
                scales: prepared.scales,
                padded_cols,
                groups,
            };
            if direct {
                direct_rows::<K>(parts, &inputs, n);
            } else {
                multiply_rows::<K>(parts, &inputs, n);
            }
        })
    });
}

/// The fewest codes a decode-step task reads: narrow matrices (small
/// models) get more rows per task, so that a task's start (its first
/// cache misses, its scheduling) is paid over at least 16 KiB.
const MIN_DIRECT_TASK_CODES: usize = 16 * 1024;

/// The most weight rows a prefill task of any kernel decodes.
const MAX_TASK_ROWS: usize = 64;

/// The decode-step path: every weight row decoded into registers and dotted
/// there with each of the `n` input rows.
fn direct_rows<K: Kernel>(
    parts: &mut [(&QinsMatrix, &mut [f32])],
    x: &Inputs<'_, K::Input>,
    n: usize,
) {
    let cols = parts.first().map_or(1, |(w, _)| w.cols.max(1));
    let task_rows = K::DECODE_TASK_ROWS.max(MIN_DIRECT_TASK_CODES.div_ceil(cols));
    for_each_row_task(parts, n, task_rows, |w, task_rows, out| {
        super::prefetch_start(w, &task_rows, K::PREFETCH_DISTANCE);
        if task_rows.is_empty() {
            return;
        }
        let mut dots = [0.0f32; MAX_TILE_INPUTS];
        let dots = &mut dots[..n];
        let end = task_rows.end;
        // SAFETY: `matmul` checked the CPU (all calls).
        let mut next = unsafe { K::row(w, task_rows.start) };
        for row in task_rows {
            let state = next;
            if row + 1 < end {
                // SAFETY: as above.
                next = unsafe { K::row(w, row + 1) };
            }
            // SAFETY: as above.
            unsafe { K::direct_dots(&state, w, row, x, dots) };
            for (t, &d) in dots.iter().enumerate() {
                out.write(t, row, d);
            }
        }
    });
}

/// The prefill path: tasks of rows decoded once into a buffer, then the
/// micro-kernel over every tile of input rows.
fn multiply_rows<K: Kernel>(
    parts: &mut [(&QinsMatrix, &mut [f32])],
    x: &Inputs<'_, K::Input>,
    n: usize,
) {
    debug_assert!(K::TILE_ROWS <= MAX_TILE_ROWS && K::TILE_INPUTS <= MAX_TILE_INPUTS);
    let cols = x.padded_cols;
    for_each_row_task(parts, n, K::TASK_ROWS, |w, task_rows, out| {
        let first = task_rows.start;
        let rows = task_rows.len();
        let buffer_rows = rows.next_multiple_of(K::ROW_GROUP);
        with_scratch::<K::Weight, _>(&DECODED, buffer_rows * cols, |decoded| {
            let mut scales = [0.0f32; MAX_TASK_ROWS];
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

/// Runs `task(w, rows, writer)` in parallel over consecutive groups of
/// `task_rows` rows of every matrix of `parts` (one parallel section for
/// all of them). A row's dots lie in a strided column of its output
/// (`out[t * rows + row]`, `n x rows`), so instead of a slice each task
/// gets a [`RowWriter`] for its own rows.
fn for_each_row_task(
    parts: &mut [(&QinsMatrix, &mut [f32])],
    n: usize,
    task_rows: usize,
    task: impl Fn(&QinsMatrix, Range<usize>, &RowWriter) + Sync,
) {
    let outputs: Vec<(&QinsMatrix, OutPtr)> = parts
        .iter_mut()
        .map(|(w, out)| {
            assert_eq!(out.len(), n * w.rows, "out must be n x rows");
            (*w, OutPtr(out.as_mut_ptr()))
        })
        .collect();
    let tasks: Vec<(usize, Range<usize>)> = outputs
        .iter()
        .enumerate()
        .flat_map(|(part, (w, _))| {
            (0..w.rows.div_ceil(task_rows))
                .map(move |i| (part, i * task_rows..w.rows.min((i + 1) * task_rows)))
        })
        .collect();
    tasks.into_par_iter().for_each(|(part, own)| {
        let (w, ptr) = outputs[part];
        let writer = RowWriter {
            ptr,
            rows: w.rows,
            n,
            own: own.clone(),
        };
        task(w, own, &writer);
    });
}

/// Writes the outputs of one task's rows (see [`for_each_row_task`]).
struct RowWriter {
    ptr: OutPtr,
    rows: usize,
    n: usize,
    own: Range<usize>,
}

impl RowWriter {
    /// `out[t * rows + row] = value`; panics for a row of another task.
    #[inline]
    fn write(&self, t: usize, row: usize, value: f32) {
        assert!(
            t < self.n && self.own.contains(&row),
            "output ({t}, {row}) is not this task's"
        );
        // SAFETY: `t < n` and `row < rows` (own rows are), so the index is
        // below `n * rows == out.len()`; only this task's writer covers
        // `row`, so no other thread writes the element; `out` outlives the
        // parallel loop that hands out the writers.
        unsafe { self.ptr.get().add(t * self.rows + row).write(value) };
    }
}

/// An output shared by a call's rayon tasks.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: tasks write disjoint elements through the pointer (see
// `RowWriter::write`).
unsafe impl Send for OutPtr {}
// SAFETY: as above; nothing reads through it.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method (not field access) so closures capture the `Sync` wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}
