//! QINS matrix kernels: `x · Wᵀ` with `W` kept as 8-bit codes plus packed
//! sign bits and decoded inside the kernel, one row at a time.
//!
//! A code `c` in 1..=255 decodes to `|w| = C * r^(255 - c)` (see
//! [`crate::codec`]). Splitting `c = 16 * h + l` gives
//! `|w| = hi[h] * lo[l]` with `hi[h] = C * r^(16 * (15 - h))` and
//! `lo[l] = r^(15 - l)`: two 16-entry tables per range ([`NibbleTables`]),
//! built with two `exp` calls and each small enough for one SIMD register.
//! Every kernel decodes with exactly this product (code 0 forced to 0), so
//! kernels differ only in the order they sum.
//!
//! Every kernel runs in one frame, [`driver`]: it owns the threading (rayon
//! over output rows), the scratch buffers, the output layout and the two
//! paths (a decode step decodes each weight row into registers and dots it
//! there; a prefill decodes a task's rows once into a buffer and runs a
//! register-blocked micro-kernel over them). A kernel supplies only its
//! arithmetic ([`driver::Kernel`]): the f32 kernels through [`float`]
//! (`avx512`, `avx2`, `neon` and the portable [`scalar`] reference), the
//! kernels that round weights and inputs (to 15-bit fixed point or to bf16,
//! see [`Arithmetic`]) directly: [`avx512vnni`], [`avx512bf16`],
//! [`avx2int`] (`avx-vnni`, `avx2-int`), [`neon_int`], [`neon_bf16`]. The
//! kernel is picked at run time by [`selected_kernel`], from the CPU's
//! family ([`dispatch`]).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx2int;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
pub mod avx512bf16;
#[cfg(target_arch = "x86_64")]
pub mod avx512vnni;
pub mod dispatch;
mod driver;
pub mod fixed_point;
mod float;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "aarch64")]
pub mod neon_bf16;
#[cfg(target_arch = "aarch64")]
pub mod neon_int;
pub mod scalar;

use crate::codec::{LogRange, RangeFactors};
use crate::weights::QinsMatrix;
use driver::Kernel;

/// Code steps between the largest and the smallest magnitude (see [`crate::codec`]).
const CODE_STEPS: f64 = 254.0;

/// The magnitude of code `c != 0` is `hi[c >> 4] * lo[c & 15]`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
pub struct NibbleTables {
    pub hi: [f32; 16],
    pub lo: [f32; 16],
}

impl NibbleTables {
    /// Tables of a range. Powers of `r` come from a few f64 products rather
    /// than a 16-long chain (shorter latency; this runs per row and call),
    /// with a relative drift ~1e-15, far below an f32 ulp.
    pub fn new(range: LogRange) -> Self {
        Self::from_factors(range.factors())
    }

    /// The tables from a range's precomputed factors (no `exp`): what the
    /// kernels build per row.
    pub fn from_factors(factors: RangeFactors) -> Self {
        let RangeFactors { scale, ratio, .. } = factors;
        let small = powers(ratio); // r^0 ..= r^15
        let large = powers(small[15] * ratio); // r^0, r^16 ..= r^240
        let mut tables = NibbleTables {
            hi: [0.0; 16],
            lo: [0.0; 16],
        };
        for k in 0..16 {
            tables.hi[k] = (scale * large[15 - k]) as f32;
            tables.lo[k] = small[15 - k] as f32;
        }
        tables
    }

    /// The magnitude of a code (0 for code 0); the scalar definition that
    /// every kernel reproduces bit for bit.
    #[inline]
    pub fn magnitude(&self, code: u8) -> f32 {
        if code == 0 {
            0.0
        } else {
            self.hi[usize::from(code >> 4)] * self.lo[usize::from(code & 15)]
        }
    }
}

/// `[b^0, b^1, ..., b^15]` as `b^(4i) * b^j`: two chains of three products.
fn powers(base: f64) -> [f64; 16] {
    let b2 = base * base;
    let low = [1.0, base, b2, b2 * base];
    let b4 = b2 * b2;
    let b8 = b4 * b4;
    let high = [1.0, b4, b8, b8 * b4];
    let mut out = [0.0; 16];
    for (i, h) in high.iter().enumerate() {
        for (j, l) in low.iter().enumerate() {
            out[4 * i + j] = h * l;
        }
    }
    out
}

/// What a kernel's multiplications see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arithmetic {
    /// The f32 decode of every weight times the f32 input, summed in f32.
    F32,
    /// Weights and inputs rounded once to bf16 (8 significant bits), exact
    /// products summed in f32.
    Bf16,
    /// Weights as 15-bit integers of their row's largest magnitude, inputs
    /// as integers of their 128-column group's largest (13 bits for
    /// avx512-vnni, 12 for the nibble kernels), products summed exactly in
    /// i32 per group, then in f32 (see [`fixed_point`]).
    Fixed16,
}

/// The kernels this crate has, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// 15-bit fixed-point weights and inputs, integer dot products
    /// (`vpdpwssd`).
    Avx512Vnni,
    /// bf16 products (`vdpbf16ps`) of bf16-rounded weights and inputs.
    Avx512Bf16,
    Avx512,
    /// 15-bit fixed-point weights from nibble tables (`vpshufb`), 12-bit
    /// inputs, integer dot products with AVX-VNNI's 256-bit `vpdpwssd`.
    AvxVnni,
    /// The same with `vpmaddwd` + `vpaddd` (AVX2 only).
    Avx2Int,
    Avx2,
    /// bf16 products (`BFDOT`, `BFMMLA`) of bf16-rounded weights and inputs.
    NeonBf16,
    /// 15-bit fixed-point weights from nibble tables (`tbl`), 12-bit
    /// inputs, widening integer multiply-adds (`smlal`).
    NeonInt,
    Neon,
    Scalar,
}

impl KernelKind {
    pub const ALL: [KernelKind; 10] = [
        KernelKind::Avx512Vnni,
        KernelKind::Avx512Bf16,
        KernelKind::Avx512,
        KernelKind::AvxVnni,
        KernelKind::Avx2Int,
        KernelKind::Avx2,
        KernelKind::NeonBf16,
        KernelKind::NeonInt,
        KernelKind::Neon,
        KernelKind::Scalar,
    ];

    /// The name `QINS_KERNEL` takes.
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::Avx512Vnni => "avx512-vnni",
            KernelKind::Avx512Bf16 => "avx512-bf16",
            KernelKind::Avx512 => "avx512",
            KernelKind::AvxVnni => "avx-vnni",
            KernelKind::Avx2Int => "avx2-int",
            KernelKind::Avx2 => "avx2",
            KernelKind::NeonBf16 => "neon-bf16",
            KernelKind::NeonInt => "neon-int",
            KernelKind::Neon => "neon",
            KernelKind::Scalar => "scalar",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether this build has the kernel (it is for this architecture).
    pub fn is_built(self) -> bool {
        match self {
            KernelKind::Avx512Vnni
            | KernelKind::Avx512Bf16
            | KernelKind::Avx512
            | KernelKind::AvxVnni
            | KernelKind::Avx2Int
            | KernelKind::Avx2 => cfg!(target_arch = "x86_64"),
            KernelKind::NeonBf16 | KernelKind::NeonInt | KernelKind::Neon => {
                cfg!(target_arch = "aarch64")
            }
            KernelKind::Scalar => true,
        }
    }

    /// Whether this build and this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx512Vnni => avx512vnni::Avx512Vnni::is_available(),
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx512Bf16 => avx512bf16::Avx512Bf16::is_available(),
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx512 => avx512::Avx512::is_available(),
            #[cfg(target_arch = "x86_64")]
            KernelKind::AvxVnni => avx2int::AvxVnni::is_available(),
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2Int => avx2int::Avx2Int::is_available(),
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2 => avx2::Avx2::is_available(),
            #[cfg(target_arch = "aarch64")]
            KernelKind::NeonBf16 => neon_bf16::NeonBf16::is_available(),
            #[cfg(target_arch = "aarch64")]
            KernelKind::NeonInt => neon_int::NeonInt::is_available(),
            #[cfg(target_arch = "aarch64")]
            KernelKind::Neon => neon::Neon::is_available(),
            KernelKind::Scalar => scalar::Scalar::is_available(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The numbers the kernel multiplies.
    pub fn arithmetic(self) -> Arithmetic {
        match self {
            KernelKind::Avx512Bf16 | KernelKind::NeonBf16 => Arithmetic::Bf16,
            KernelKind::Avx512Vnni
            | KernelKind::AvxVnni
            | KernelKind::Avx2Int
            | KernelKind::NeonInt => Arithmetic::Fixed16,
            KernelKind::Avx512 | KernelKind::Avx2 | KernelKind::Neon | KernelKind::Scalar => {
                Arithmetic::F32
            }
        }
    }

    /// Whether the kernel rounds weights and inputs before they multiply
    /// (to bf16 or to fixed point) rather than multiplying the f32 decode
    /// of every weight by the f32 input.
    pub fn rounds_operands(self) -> bool {
        self.arithmetic() != Arithmetic::F32
    }
}

/// The kernels this machine can run, best first (scalar is always last).
pub fn available_kernels() -> Vec<KernelKind> {
    KernelKind::ALL
        .into_iter()
        .filter(|k| k.is_available())
        .collect()
}

/// The kernel [`qins_matmul`] uses: the table's choice for this CPU's
/// family, or the one named by the `QINS_KERNEL` environment variable (for
/// comparisons). Chosen once; [`dispatch::kernel_choice`] says why.
pub fn selected_kernel() -> KernelKind {
    dispatch::kernel_choice().kernel
}

/// `out[n x rows] = x[n x cols] · Wᵀ` for a QINS matrix `W` of `rows x cols`.
///
/// Multi-threaded over output rows. Panics if the slice lengths do not match
/// the shapes (a caller bug: models validate shapes when they load).
pub fn qins_matmul(x: &[f32], n: usize, w: &QinsMatrix, out: &mut [f32]) {
    qins_matmul_with(selected_kernel(), x, n, w, out);
}

/// [`qins_matmul`] with an explicit kernel (tests and benchmarks compare
/// kernels with it). Panics if the kernel is not available here.
pub fn qins_matmul_with(kind: KernelKind, x: &[f32], n: usize, w: &QinsMatrix, out: &mut [f32]) {
    qins_matmul_many_with(kind, x, n, &mut [(w, out)]);
}

/// `out_i[n x rows_i] = x[n x cols] · W_iᵀ` for several matrices of the
/// same width in one call: the inputs are prepared once and the threads
/// share out all the matrices' rows in one parallel section, where one call
/// per matrix would pay that twice per matrix (most of the cost of the
/// narrow matrices of small models).
pub fn qins_matmul_many_with(
    kind: KernelKind,
    x: &[f32],
    n: usize,
    parts: &mut [(&QinsMatrix, &mut [f32])],
) {
    for (w, out) in parts.iter_mut() {
        assert_eq!(x.len(), n * w.cols, "qins_matmul: x must be n x cols");
        assert_eq!(out.len(), n * w.rows, "qins_matmul: out must be n x rows");
        if n == 0 || w.rows == 0 || w.cols == 0 {
            out.fill(0.0);
        }
    }
    if n == 0 || parts.iter().all(|(w, _)| w.rows == 0 || w.cols == 0) {
        return;
    }
    match kind {
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx512Vnni => driver::matmul::<avx512vnni::Avx512Vnni>(x, n, parts),
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx512Bf16 => driver::matmul::<avx512bf16::Avx512Bf16>(x, n, parts),
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx512 => driver::matmul::<avx512::Avx512>(x, n, parts),
        #[cfg(target_arch = "x86_64")]
        KernelKind::AvxVnni => driver::matmul::<avx2int::AvxVnni>(x, n, parts),
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx2Int => driver::matmul::<avx2int::Avx2Int>(x, n, parts),
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx2 => driver::matmul::<avx2::Avx2>(x, n, parts),
        #[cfg(target_arch = "aarch64")]
        KernelKind::NeonBf16 => driver::matmul::<neon_bf16::NeonBf16>(x, n, parts),
        #[cfg(target_arch = "aarch64")]
        KernelKind::NeonInt => driver::matmul::<neon_int::NeonInt>(x, n, parts),
        #[cfg(target_arch = "aarch64")]
        KernelKind::Neon => driver::matmul::<neon::Neon>(x, n, parts),
        KernelKind::Scalar => driver::matmul::<scalar::Scalar>(x, n, parts),
        #[allow(unreachable_patterns)]
        _ => panic!("kernel {} is not in this build", kind.name()),
    }
}

/// f32 -> bf16 (the top 16 bits), rounding to nearest even as
/// `vcvtne2ps2bf16` does for the finite, normal values weights and
/// activations take; NaN stays NaN.
pub fn round_to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// bf16 -> f32, exact.
#[inline(always)]
pub fn widen_bf16(v: u16) -> f32 {
    f32::from_bits(u32::from(v) << 16)
}

/// How far ahead of the codes being decoded a decode step asks for them
/// (and for their signs, as many columns ahead), by default. On issue 12's
/// Xeon the hardware's stream prefetch alone left a Phi-3.5 decode step
/// reading weights at ~16 GB/s of the machine's ~35 (2 threads); asking
/// 4-16 KiB ahead for every line gave ~26, one line in two ~21 (measured
/// with `qinsd bench`, avx512-vnni). Kernels may ask further
/// ([`driver::Kernel::PREFETCH_DISTANCE`]).
const PREFETCH_DISTANCE: usize = 8192;

/// Prefetches the cache lines `D` bytes past the codes being decoded, and
/// the line of their signs as far ahead.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_ahead<const D: usize>(codes: &[u8], signs: &[u8]) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    let (lines, signs) = (codes.len(), signs.as_ptr());
    let codes = codes.as_ptr();
    for line in (0..lines).step_by(64) {
        // SAFETY: a prefetch reads nothing the program sees and never
        // faults, whatever the address (hence `wrapping_add`: it may lie
        // past the matrix).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(codes.wrapping_add(D + line).cast()) };
    }
    // SAFETY: as above.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(signs.wrapping_add(D / 8).cast()) };
}

/// Calls `f(group, codes, signs)` for each group of `G` codes of a row
/// (and its `S = G / 8` sign bytes), in order. A last partial group comes
/// as it is when its length is a multiple of `C` (the kernel's chunk: it
/// then decodes fewer chunks, with no copy), zero-padded to `G` otherwise
/// (code 0 decodes to 0).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
#[inline(always)]
fn for_each_group<const G: usize, const S: usize, const C: usize>(
    codes: &[u8],
    signs: &[u8],
    mut f: impl FnMut(usize, &[u8], &[u8]),
) {
    debug_assert!(G == 8 * S && G.is_multiple_of(C) && C.is_multiple_of(8));
    let (whole, tail) = codes.as_chunks::<G>();
    let (sign_groups, _) = signs.as_chunks::<S>();
    for (group, (codes, signs)) in whole.iter().zip(sign_groups).enumerate() {
        f(group, codes, signs);
    }
    if tail.is_empty() {
        return;
    }
    // Not the remainder of `as_chunks`: the sign bytes of a partial group
    // may be whole.
    let sign_tail = &signs[whole.len() * S..];
    if tail.len().is_multiple_of(C) {
        f(whole.len(), tail, &sign_tail[..tail.len() / 8]);
    } else {
        f(
            whole.len(),
            &padded::<u8, G>(tail),
            &padded::<u8, S>(sign_tail),
        );
    }
}

/// Asks for the first `distance` bytes of codes of `rows` (and their
/// signs): the stretch a task's reading ahead ([`prefetch_ahead`]) never
/// covers because it starts behind it.
#[inline]
fn prefetch_start(w: &QinsMatrix, rows: &std::ops::Range<usize>, distance: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        if rows.is_empty() {
            return;
        }
        let codes = &w.codes()[rows.start * w.cols..rows.end * w.cols];
        let codes = &codes[..codes.len().min(distance)];
        let sign_bytes = crate::codec::sign_row_bytes(w.cols);
        let signs = &w.signs()[rows.start * sign_bytes..rows.end * sign_bytes];
        let signs = &signs[..signs.len().min(distance / 8)];
        for line in codes.chunks(64).chain(signs.chunks(64)) {
            // SAFETY: a prefetch reads nothing the program sees and never
            // faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (w, rows, distance);
}

/// Zero-padded copy of a row's last partial SIMD group (codes, signs or
/// inputs): padded codes are 0, so they decode to 0 and add nothing.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
fn padded<T: Copy + Default, const N: usize>(tail: &[T]) -> [T; N] {
    let mut out = [T::default(); N];
    out[..tail.len()].copy_from_slice(tail);
    out
}

/// The 256-entry decode table of a range, equal to [`LogRange::table`] within
/// one f32 ulp but with two `exp` calls instead of 255: the magnitudes form a
/// geometric series, accumulated in f64 (relative drift ~1e-13, far below an
/// f32 ulp of ~6e-8).
pub fn decode_table(range: LogRange) -> [f32; 256] {
    let mut table = [0.0f32; 256];
    let log_min = f64::from(range.log_min);
    let span = f64::from(range.log_max) - log_min;
    let ratio = (span / CODE_STEPS).exp();
    let mut magnitude = log_min.exp();
    for slot in table[1..].iter_mut().rev() {
        *slot = magnitude as f32;
        magnitude *= ratio;
    }
    table
}

#[cfg(test)]
mod tests;
