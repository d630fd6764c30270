use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::codec::{EncodeOptions, Granularity, RangeFactors, encode_matrix};
use crate::rng::SplitMix64;
use crate::weights::Bytes;

/// The kernels this build has for this architecture that the CPU can run
/// (every one of them runs in the tests), after saying once per process
/// which ones ran and which the CPU cannot run, so that a CI log on a
/// smaller CPU shows what was not exercised.
fn kernels_under_test() -> Vec<KernelKind> {
    static REPORTED: std::sync::Once = std::sync::Once::new();
    let (run, not_run): (Vec<_>, Vec<_>) = KernelKind::ALL
        .into_iter()
        .filter(|k| k.is_built())
        .partition(|k| k.is_available());
    REPORTED.call_once(|| {
        let names = |kinds: &[KernelKind]| {
            kinds
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut line = format!("kernel tests run: {}", names(&run));
        if !not_run.is_empty() {
            line += &format!(
                "; not run, this CPU (or QINS_ISA_LIMIT) lacks their instructions: {}",
                names(&not_run)
            );
        }
        report(&line);
    });
    run
}

/// Whether a test of one kernel can run here; says why not otherwise. An
/// instruction set is not something CI can provide: a missing one is
/// reported, not failed.
fn kernel_can_run(kind: KernelKind) -> bool {
    let available = kind.is_available();
    if !available {
        report(&format!(
            "not run: the {} kernel needs instructions this CPU (or QINS_ISA_LIMIT) lacks",
            kind.name()
        ));
    }
    available
}

/// A line on the test log whether or not the harness captures output
/// (straight to the process's stderr, which it does not capture).
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Gaussian weights with some exact zeros and a few rows of very different scale.
fn random_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..rows * cols)
        .map(|i| {
            let row_scale = if (i / cols.max(1)).is_multiple_of(3) {
                10.0
            } else {
                0.05
            };
            if rng.next_f64() < 0.05 {
                0.0
            } else {
                (rng.next_normal() * row_scale) as f32
            }
        })
        .collect()
}

fn random_inputs(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..len).map(|_| rng.next_normal() as f32).collect()
}

fn qins(weights: &[f32], rows: usize, cols: usize, granularity: Granularity) -> QinsMatrix {
    let options = EncodeOptions {
        granularity,
        ..EncodeOptions::default()
    };
    QinsMatrix::from_encoded(encode_matrix(weights, rows, cols, &options).unwrap())
}

/// Naive f64 reference on the decoded matrix, plus the bound Σ|x||w| per output.
fn reference(x: &[f32], n: usize, w: &QinsMatrix) -> (Vec<f64>, Vec<f64>) {
    let decoded = w.decode();
    let mut out = vec![0.0; n * w.rows];
    let mut magnitude = vec![0.0; n * w.rows];
    for t in 0..n {
        for r in 0..w.rows {
            for c in 0..w.cols {
                let p = f64::from(x[t * w.cols + c]) * f64::from(decoded[r * w.cols + c]);
                out[t * w.rows + r] += p;
                magnitude[t * w.rows + r] += p.abs();
            }
        }
    }
    (out, magnitude)
}

fn assert_matches_reference(rows: usize, cols: usize, n: usize, granularity: Granularity) {
    let seed = (rows * 1000 + cols * 10 + n) as u64;
    let w = qins(&random_matrix(rows, cols, seed), rows, cols, granularity);
    let x = random_inputs(n * cols, seed + 1);
    let mut out = vec![f32::NAN; n * rows];
    qins_matmul(&x, n, &w, &mut out);
    let (expected, magnitude) = reference(&x, n, &w);
    // f32 accumulation error bound, with slack: ~ √cols * eps * Σ|x||w|,
    // plus what the selected kernel's rounding of its operands may cost.
    let rounding = operand_rounding(selected_kernel(), &x, n, &w);
    for i in 0..n * rows {
        let err = (f64::from(out[i]) - expected[i]).abs();
        let tolerance = 1e-6 * (cols as f64).sqrt() * magnitude[i] + rounding[i] + 1e-30;
        assert!(
            err <= tolerance,
            "{rows}x{cols} n={n} {granularity:?} out[{i}] = {} expected {} (err {err:e})",
            out[i],
            expected[i]
        );
    }
}

#[test]
fn matmul_matches_decoded_reference_on_odd_shapes() {
    for granularity in [Granularity::PerRow, Granularity::PerTensor] {
        for &(rows, cols) in &[
            (1, 1),
            (3, 7),
            (17, 8),
            (9, 9),
            (33, 255),
            (5, 257),
            (12, 600),
        ] {
            for n in [1, 2, 5] {
                assert_matches_reference(rows, cols, n, granularity);
            }
        }
    }
}

#[test]
fn matmul_is_exact_on_small_integers_and_zero_rows() {
    // Powers of two decode exactly when the range spans them in whole steps:
    // a row of {±1, 0} has log_min = log_max = 0, so every kept code is 1.0.
    let (rows, cols) = (4, 19);
    let mut weights = vec![0.0f32; rows * cols];
    for c in 0..cols {
        weights[c] = if c % 2 == 0 { 1.0 } else { -1.0 };
        weights[2 * cols + c] = if c % 3 == 0 { 0.0 } else { 1.0 };
    }
    // Rows 1 and 3 stay all-zero (the empty range).
    let w = qins(&weights, rows, cols, Granularity::PerRow);
    let x: Vec<f32> = (0..2 * cols).map(|i| i as f32).collect();
    for kind in kernels_under_test() {
        let mut out = vec![f32::NAN; 2 * rows];
        qins_matmul_with(kind, &x, 2, &w, &mut out);
        let rounding = operand_rounding(kind, &x, 2, &w);
        for t in 0..2 {
            let xs = &x[t * cols..(t + 1) * cols];
            let alternating: f32 = xs
                .iter()
                .enumerate()
                .map(|(c, v)| if c % 2 == 0 { *v } else { -*v })
                .sum();
            let skip_thirds: f32 = xs
                .iter()
                .enumerate()
                .filter(|(c, _)| c % 3 != 0)
                .map(|(_, v)| v)
                .sum();
            // Integers below 256 are exact in bf16; fixed point rounds its
            // operands (within `operand_rounding`), so it is exact only
            // where it is zero.
            let close = |actual: f32, expected: f32, row: usize| match kind.arithmetic() {
                Arithmetic::F32 | Arithmetic::Bf16 => actual == expected,
                Arithmetic::Fixed16 => {
                    f64::from((actual - expected).abs()) <= rounding[t * rows + row] + 1e-5
                }
            };
            let name = kind.name();
            assert!(close(out[t * rows], alternating, 0), "{name}: {out:?}");
            assert_eq!(out[t * rows + 1], 0.0, "{name}");
            assert!(close(out[t * rows + 2], skip_thirds, 2), "{name}: {out:?}");
            assert_eq!(out[t * rows + 3], 0.0, "{name}");
        }
    }
}

#[test]
fn empty_batch_writes_nothing() {
    let w = qins(&random_matrix(3, 5, 1), 3, 5, Granularity::PerRow);
    let mut out: Vec<f32> = Vec::new();
    qins_matmul(&[], 0, &w, &mut out);
    assert!(out.is_empty());
}

#[test]
#[should_panic(expected = "x must be n x cols")]
fn mismatched_input_panics() {
    let w = qins(&random_matrix(3, 5, 1), 3, 5, Granularity::PerRow);
    let mut out = vec![0.0; 3];
    qins_matmul(&[0.0; 4], 1, &w, &mut out);
}

fn ulps_apart(a: f32, b: f32) -> u32 {
    assert_eq!(a.is_sign_negative(), b.is_sign_negative());
    a.to_bits().abs_diff(b.to_bits())
}

#[test]
fn fast_table_is_within_one_ulp_of_canonical() {
    let mut rng = SplitMix64::new(42);
    let mut exact = 0usize;
    let mut total = 0usize;
    for i in 0..2000 {
        let log_max = (rng.next_f64() * 8.0 - 6.0) as f32;
        let log_min = log_max - (rng.next_f64() * 20.0) as f32;
        // Include degenerate ranges (all magnitudes equal, the empty range).
        let range = match i {
            0 => LogRange::EMPTY,
            1 => LogRange {
                log_min: log_max,
                log_max,
            },
            _ => LogRange { log_min, log_max },
        };
        let fast = decode_table(range);
        let canonical = range.table();
        assert_eq!(fast[0], 0.0);
        for code in 1..256 {
            let d = ulps_apart(fast[code], canonical[code]);
            assert!(
                d <= 1,
                "{range:?} code {code}: {} vs {}",
                fast[code],
                canonical[code]
            );
            exact += usize::from(d == 0);
            total += 1;
        }
    }
    // A 1-ulp difference needs the f64 value within ~1e-13 of a rounding tie.
    assert!(
        exact as f64 >= 0.9999 * total as f64,
        "{exact} of {total} exact"
    );
}

#[test]
fn nibble_product_is_within_two_ulps_of_canonical() {
    // hi and lo are each rounded once from f64 and the product once more:
    // at most ~1.5 ulp from the correctly rounded magnitude.
    let mut rng = SplitMix64::new(7);
    for i in 0..2000 {
        let log_max = (rng.next_f64() * 8.0 - 6.0) as f32;
        let log_min = log_max - (rng.next_f64() * 20.0) as f32;
        let range = match i {
            0 => LogRange::EMPTY,
            1 => LogRange {
                log_min: log_max,
                log_max,
            },
            _ => LogRange { log_min, log_max },
        };
        let tables = NibbleTables::new(range);
        let canonical = range.table();
        assert_eq!(tables.magnitude(0), 0.0);
        for code in 1..=255u8 {
            let d = ulps_apart(tables.magnitude(code), canonical[usize::from(code)]);
            assert!(d <= 2, "{range:?} code {code}: {d} ulps");
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Signs {
    Random,
    AllNegative,
    AllPositive,
}

/// A matrix straight from random codes (every code, with extra 0s and 255s),
/// random ranges and the given signs; the padding bits of the last sign byte
/// follow the same rule, so kernels must ignore them.
fn random_codes_matrix(
    rows: usize,
    cols: usize,
    per_row: bool,
    signs: Signs,
    seed: u64,
) -> QinsMatrix {
    let mut rng = SplitMix64::new(seed);
    let codes: Vec<u8> = (0..rows * cols)
        .map(|_| match rng.next_u64() % 10 {
            0 => 0,
            1 => 255,
            _ => (rng.next_u64() % 256) as u8,
        })
        .collect();
    let sign_bytes = rows * cols.div_ceil(8);
    let signs: Vec<u8> = (0..sign_bytes)
        .map(|_| match signs {
            Signs::Random => rng.next_u64() as u8,
            Signs::AllNegative => 0xFF,
            Signs::AllPositive => 0,
        })
        .collect();
    let range = |rng: &mut SplitMix64| {
        let log_max = (rng.next_f64() * 6.0 - 4.0) as f32;
        LogRange {
            log_min: log_max - (rng.next_f64() * 16.0) as f32,
            log_max,
        }
    };
    let ranges = if per_row {
        (0..rows).map(|_| range(&mut rng)).collect()
    } else {
        vec![range(&mut rng)]
    };
    QinsMatrix::new(
        rows,
        cols,
        Bytes::Owned(Arc::new(codes)),
        Bytes::Owned(Arc::new(signs)),
        ranges,
    )
}

/// Σ|w·x| per output, in f64 on the canonical decode.
fn magnitudes(x: &[f32], n: usize, w: &QinsMatrix) -> Vec<f64> {
    let decoded = w.decode();
    let mut out = vec![0.0; n * w.rows];
    for t in 0..n {
        for r in 0..w.rows {
            let xs = &x[t * w.cols..(t + 1) * w.cols];
            let ws = &decoded[r * w.cols..(r + 1) * w.cols];
            out[t * w.rows + r] = xs
                .iter()
                .zip(ws)
                .map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs())
                .sum();
        }
    }
    out
}

/// What a bf16 kernel computes, in f64: every weight (the kernels' nibble
/// product, signed) and every input rounded once to bf16, exact products.
fn bf16_reference(x: &[f32], n: usize, w: &QinsMatrix) -> Vec<f64> {
    let widen = |v: f32| f64::from(widen_bf16(round_to_bf16(v)));
    let mut out = vec![0.0; n * w.rows];
    for r in 0..w.rows {
        let tables = NibbleTables::new(w.row_range(r));
        let (codes, signs) = (w.row_codes(r), w.row_signs(r));
        let weights: Vec<f64> = (0..w.cols)
            .map(|c| {
                let magnitude = widen(tables.magnitude(codes[c]));
                if signs[c / 8] >> (c % 8) & 1 == 1 {
                    -magnitude
                } else {
                    magnitude
                }
            })
            .collect();
        for t in 0..n {
            let xs = &x[t * w.cols..(t + 1) * w.cols];
            out[t * w.rows + r] = xs.iter().zip(&weights).map(|(&a, b)| widen(a) * b).sum();
        }
    }
    out
}

/// The fixed-point arithmetic of a [`Arithmetic::Fixed16`] kernel, as its
/// scalar model: the input unit, the bound of a weight's error in units of
/// its row's largest magnitude / 32767, and per row the integer weights and
/// their dequant.
struct FixedModel {
    input_unit: f32,
    weight_error_units: f64,
    row: fn(&QinsMatrix, usize) -> (Vec<i16>, f32),
}

fn fixed_model(kind: KernelKind) -> FixedModel {
    use fixed_point::{NIBBLE_INPUT_UNIT, NibbleFixed, row_scale};
    fn signed(w: &QinsMatrix, r: usize, weight: impl Fn(u8, bool) -> i16) -> Vec<i16> {
        let (codes, signs) = (w.row_codes(r), w.row_signs(r));
        (0..w.cols)
            .map(|c| weight(codes[c], signs[c / 8] >> (c % 8) & 1 == 1))
            .collect()
    }
    match kind {
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx512Vnni => FixedModel {
            input_unit: avx512vnni::INPUT_UNIT,
            weight_error_units: 1.5,
            row: |w, r| {
                let (factors, first) = row_scale(w, r);
                let tables = avx512vnni::FixedTables::new(factors, first);
                (signed(w, r, |c, n| tables.weight(c, n)), tables.dequant)
            },
        },
        _ => {
            assert_eq!(kind.arithmetic(), Arithmetic::Fixed16, "{kind:?}");
            FixedModel {
                input_unit: NIBBLE_INPUT_UNIT,
                weight_error_units: 2.0,
                row: |w, r| {
                    let (factors, first) = row_scale(w, r);
                    let (tables, dequant) = NibbleFixed::new(factors, first);
                    (signed(w, r, |c, n| tables.weight(c, n)), dequant)
                },
            }
        }
    }
}

/// What a fixed-point kernel computes, in f64: its integer weights and
/// inputs (its scalar model, [`fixed_model`], and the shared
/// [`fixed_point::quantize_group`]), exact sums per group, then the scales.
fn fixed16_reference(kind: KernelKind, x: &[f32], n: usize, w: &QinsMatrix) -> Vec<f64> {
    let model = fixed_model(kind);
    let groups = w.cols.div_ceil(128);
    let mut out = vec![0.0; n * w.rows];
    for t in 0..n {
        let row_x = &x[t * w.cols..(t + 1) * w.cols];
        let quantized: Vec<(f64, [i16; 128])> = (0..groups)
            .map(|g| {
                let mut group = [0.0f32; 128];
                let end = w.cols.min(128 * (g + 1));
                group[..end - 128 * g].copy_from_slice(&row_x[128 * g..end]);
                let mut values = [0i16; 128];
                let scale = fixed_point::quantize_group(&group, model.input_unit, &mut values);
                (f64::from(scale), values)
            })
            .collect();
        for r in 0..w.rows {
            let (weights, dequant) = (model.row)(w, r);
            let mut dot = 0.0;
            for (g, (scale, values)) in quantized.iter().enumerate() {
                let sum: i64 = (128 * g..w.cols.min(128 * (g + 1)))
                    .map(|c| i64::from(weights[c]) * i64::from(values[c - 128 * g]))
                    .sum();
                dot += scale * sum as f64;
            }
            out[t * w.rows + r] = dot * f64::from(dequant);
        }
    }
    out
}

/// Ranges narrow and wide, the degenerate ones, and first codes (1 for a
/// per-row range, any for a row of a shared one): what the table tests
/// sweep.
fn table_cases(count: usize, seed: u64) -> Vec<(LogRange, u8)> {
    let mut rng = SplitMix64::new(seed);
    (0..count)
        .map(|i| {
            let log_max = (rng.next_f64() * 8.0 - 6.0) as f32;
            let range = match i {
                0 => LogRange::EMPTY,
                1 => LogRange {
                    log_min: log_max,
                    log_max,
                },
                _ => LogRange {
                    log_min: log_max - (rng.next_f64() * 40.0) as f32,
                    log_max,
                },
            };
            let first = if i % 3 == 0 {
                1
            } else {
                (rng.next_u64() % 256) as u8
            };
            (range, first)
        })
        .collect()
}

/// The vnni kernel's tables, built in registers, equal their scalar model
/// bit for bit, over ranges narrow and wide and every first code.
#[cfg(target_arch = "x86_64")]
#[test]
fn fixed_point_tables_match_their_scalar_model() {
    use avx512vnni::{FixedTables, registers_of};
    if !kernel_can_run(KernelKind::Avx512Vnni) {
        return;
    }
    for (range, first) in table_cases(3000, 5) {
        let model = FixedTables::new(range.factors(), first);
        assert_eq!(
            registers_of(range.factors(), first),
            model,
            "{range:?}, first {first}"
        );
        // The largest magnitude maps to the top of the scale, code 0 to 0.
        let first = first.max(1);
        assert_eq!(model.weight(0, false), 0);
        let top = model.weight(first, false);
        assert!(
            (32760..=32767).contains(&top),
            "{range:?} first {first}: {top}"
        );
        let expected = f64::from(range.decode(first));
        let decoded = f64::from(top) * f64::from(model.dequant);
        assert!(
            (decoded - expected).abs() <= 2e-4 * expected,
            "{range:?} first {first}: {decoded} vs {expected}"
        );
    }
}

/// What a kernel's table test reads back: its tables built in registers.
type TablesInRegisters = fn(RangeFactors, u8) -> (fixed_point::NibbleFixed, f32);

/// The nibble tables of the AVX2 and NEON integer kernels, built in registers, equal
/// their scalar model bit for bit; the model decodes every code within its
/// error bound, both signs alike (but for ties), code 0 to 0.
#[test]
fn nibble_tables_match_their_scalar_model() {
    use fixed_point::NibbleFixed;
    #[cfg(target_arch = "x86_64")]
    let registers: Option<TablesInRegisters> =
        kernel_can_run(KernelKind::Avx2Int).then_some(avx2int::registers_of);
    #[cfg(target_arch = "aarch64")]
    let registers: Option<TablesInRegisters> =
        kernel_can_run(KernelKind::NeonInt).then_some(neon_int::registers_of);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let registers: Option<TablesInRegisters> = None;
    for (range, first) in table_cases(3000, 6) {
        let model = NibbleFixed::new(range.factors(), first);
        if let Some(registers) = registers {
            assert_eq!(
                registers(range.factors(), first),
                model,
                "{range:?}, first {first}"
            );
        }
        let (tables, dequant) = model;
        assert!(tables.high.iter().all(|h| h % 2 == 1), "{tables:?}");
        let first = first.max(1);
        assert_eq!(tables.weight(0, false), 0);
        assert_eq!(tables.weight(0, true), 0);
        let largest = f64::from(range.decode(first));
        let unit = largest / 32767.0;
        for code in first..=255 {
            let (positive, negative) = (tables.weight(code, false), tables.weight(code, true));
            // `vpmulhrsw` rounds ties up, so a tie is one unit smaller in
            // magnitude when negative.
            assert!(
                (i32::from(positive) + i32::from(negative)).abs() <= 1,
                "{range:?} first {first} code {code}: {positive} {negative}"
            );
            let decoded = f64::from(positive) * f64::from(dequant);
            let expected = f64::from(range.decode(code));
            assert!(
                (decoded - expected).abs() <= 2.0 * unit + 1e-6 * expected,
                "{range:?} first {first} code {code}: {decoded} vs {expected}"
            );
        }
    }
}

/// How far a kernel's rounding of its operands may move each output from
/// the exact dot of the f32 decode with the f32 inputs:
/// - f32: nothing;
/// - bf16: 2^-7 of Σ|w·x| (each operand keeps 8 significant bits);
/// - fixed point: the model's weight error (1.5 or 2 units of the row's
///   largest magnitude / 32767) times |x|, plus half a unit of the group's
///   largest input / the input unit per input times |w| (groups of 128
///   columns).
fn operand_rounding(kind: KernelKind, x: &[f32], n: usize, w: &QinsMatrix) -> Vec<f64> {
    match kind.arithmetic() {
        Arithmetic::F32 => vec![0.0; n * w.rows],
        Arithmetic::Bf16 => magnitudes(x, n, w)
            .into_iter()
            .map(|m| 2f64.powi(-7) * m)
            .collect(),
        Arithmetic::Fixed16 => {
            let model = fixed_model(kind);
            let decoded = w.decode();
            let mut out = vec![0.0; n * w.rows];
            for r in 0..w.rows {
                let row = &decoded[r * w.cols..(r + 1) * w.cols];
                // Per-row ranges scale by the range's largest magnitude
                // (code 1), shared ones by the row's largest.
                let largest = match w.granularity() {
                    Granularity::PerTensor => {
                        row.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())))
                    }
                    Granularity::PerRow => f64::from(w.row_range(r).log_max).exp(),
                };
                for t in 0..n {
                    let xs = &x[t * w.cols..(t + 1) * w.cols];
                    let mut bound = 0.0;
                    for (group_x, group_w) in xs.chunks(128).zip(row.chunks(128)) {
                        let group_max = group_x
                            .iter()
                            .fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
                        for (&xv, &wv) in group_x.iter().zip(group_w) {
                            bound += model.weight_error_units * largest / 32767.0
                                * f64::from(xv.abs())
                                + 0.5 * group_max / f64::from(model.input_unit)
                                    * f64::from(wv.abs());
                        }
                    }
                    out[t * w.rows + r] = bound;
                }
            }
            out
        }
    }
}

/// Runs every available kernel on one case and compares it with scalar.
///
/// Tolerance: all kernels decode bit-identical f32 weights (the same nibble
/// product) and form the same f32 products, so they differ only in the order
/// of f32 additions. The classical bound is γ_L·Σ|w·x| with L the longest
/// accumulation chain (≤ cols/8 + a few for scalar: 2.3e-5 for 3077 columns),
/// but rounding errors of sign-mixed data grow like √L·u ≈ 1e-6 here, so
/// `1e-5 · Σ|w·x|` leaves a wide margin (the seeds are fixed: no flakes),
/// while one wrong weight among 3077 already costs ~3e-4 of Σ|w·x|.
fn assert_kernels_match_scalar(w: &QinsMatrix, n: usize, seed: u64, what: &str) {
    let x = random_inputs(n * w.cols, seed);
    let mut expected = vec![f32::NAN; n * w.rows];
    qins_matmul_with(KernelKind::Scalar, &x, n, w, &mut expected);
    let bound = magnitudes(&x, n, w);
    for kind in kernels_under_test() {
        let mut out = vec![f32::NAN; n * w.rows];
        qins_matmul_with(kind, &x, n, w, &mut out);
        // A rounding kernel is held to the same summation tolerance against
        // the same sum over its rounded operands, computed in f64; and its
        // rounding may cost at most `operand_rounding` against scalar.
        // (neon-bf16's BFDOT/BFMMLA round their sums to odd, not to
        // nearest: at most twice f32's rounding error, inside the margin of
        // this tolerance.)
        let model = match kind.arithmetic() {
            Arithmetic::F32 => None,
            Arithmetic::Bf16 => Some(bf16_reference(&x, n, w)),
            Arithmetic::Fixed16 => Some(fixed16_reference(kind, &x, n, w)),
        };
        let rounding = operand_rounding(kind, &x, n, w);
        for i in 0..out.len() {
            if let Some(model) = &model {
                let err = (f64::from(out[i]) - model[i]).abs();
                assert!(
                    err <= 1e-5 * bound[i] + 1e-30,
                    "{} {what} {}x{} n={n} out[{i}] = {} model of its arithmetic {} (err {err:e}, Σ|wx| {:e})",
                    kind.name(),
                    w.rows,
                    w.cols,
                    out[i],
                    model[i],
                    bound[i]
                );
            }
            let err = (f64::from(out[i]) - f64::from(expected[i])).abs();
            let tolerance = 1e-5 * bound[i] + rounding[i] + 1e-30;
            assert!(
                err <= tolerance,
                "{} {what} {}x{} n={n} out[{i}] = {} scalar {} (err {err:e}, allowed {tolerance:e}, Σ|wx| {:e})",
                kind.name(),
                w.rows,
                w.cols,
                out[i],
                expected[i],
                bound[i]
            );
        }
    }
}

#[test]
fn every_kernel_matches_scalar_on_odd_shapes() {
    let mut seed = 1;
    for &cols in &[1, 7, 15, 16, 17, 63, 64, 65, 100, 257, 513, 3072 + 5] {
        for &rows in &[1, 3, 9, 17] {
            for per_row in [true, false] {
                let w = random_codes_matrix(rows, cols, per_row, Signs::Random, seed);
                for n in [1, 2, 4, 5] {
                    seed += 1;
                    let what = if per_row { "per-row" } else { "per-tensor" };
                    assert_kernels_match_scalar(&w, n, seed, what);
                }
            }
        }
    }
}

#[test]
fn every_kernel_matches_scalar_with_uniform_signs() {
    for (i, signs) in [Signs::AllNegative, Signs::AllPositive]
        .into_iter()
        .enumerate()
    {
        for &cols in &[7, 64, 100, 3077] {
            let w = random_codes_matrix(5, cols, true, signs, 100 + i as u64);
            for n in [1, 2, 5] {
                assert_kernels_match_scalar(&w, n, 200 + n as u64, &format!("{signs:?}"));
            }
        }
    }
}

#[test]
fn every_kernel_matches_scalar_past_one_batch() {
    // Many input rows (tiles of every size at the end), and row counts
    // that are not multiples of the driver's tasks (8 and 16) or of any
    // kernel's tiles.
    let w = random_codes_matrix(13, 300, true, Signs::Random, 9);
    assert_kernels_match_scalar(&w, 67, 10, "batched");
    let w = random_codes_matrix(39, 130, false, Signs::Random, 11);
    assert_kernels_match_scalar(&w, 13, 12, "tiles");
}

#[test]
fn kernel_selection_lists_and_names() {
    let available = available_kernels();
    assert_eq!(available.last(), Some(&KernelKind::Scalar));
    assert!(available.contains(&selected_kernel()));
    for kind in KernelKind::ALL {
        assert_eq!(KernelKind::from_name(kind.name()), Some(kind));
    }
    assert_eq!(KernelKind::from_name("sse9"), None);
    #[cfg(target_arch = "x86_64")]
    {
        use dispatch::{Isa, allows};
        let avx512 = allows(Isa::Avx512)
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw");
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        assert_eq!(available.contains(&KernelKind::Avx512), avx512);
        assert_eq!(
            available.contains(&KernelKind::Avx512Bf16),
            avx512
                && is_x86_feature_detected!("avx512vbmi")
                && is_x86_feature_detected!("avx512bf16")
        );
        assert_eq!(
            available.contains(&KernelKind::Avx512Vnni),
            avx512 && is_x86_feature_detected!("avx512vnni")
        );
        assert_eq!(available.contains(&KernelKind::Avx2), avx2);
        assert_eq!(available.contains(&KernelKind::Avx2Int), avx2);
        assert_eq!(
            available.contains(&KernelKind::AvxVnni),
            avx2 && allows(Isa::AvxVnni) && is_x86_feature_detected!("avxvnni")
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        assert!(available.contains(&KernelKind::Neon));
        assert!(available.contains(&KernelKind::NeonInt));
        assert_eq!(
            available.contains(&KernelKind::NeonBf16),
            dispatch::allows(dispatch::Isa::ArmBf16)
                && std::arch::is_aarch64_feature_detected!("bf16")
        );
    }
    println!(
        "available kernels: {:?}, selected {:?} ({})",
        available,
        selected_kernel(),
        dispatch::kernel_choice().reason
    );
}

/// Times `qins_matmul` per kernel, shape, batch and thread count:
/// `cargo test --release -p qins-core --lib kernels::tests::bench -- --ignored --nocapture`.
/// `QINS_BENCH_KERNELS=avx2-int,avx2` and `QINS_BENCH_N=1,64` narrow it
/// (every kernel and 1, 2, 64 input rows otherwise); `QINS_BENCH_THREADS`
/// likewise (1 and 2); `QINS_BENCH_SHAPES=3072x576,576x1536` sets the
/// matrices (Phi-3.5's otherwise).
#[test]
#[ignore]
fn bench() {
    let list = |var: &str| {
        std::env::var(var)
            .ok()
            .map(|v| v.split(',').map(str::to_owned).collect::<Vec<_>>())
    };
    let kernels: Vec<KernelKind> = match list("QINS_BENCH_KERNELS") {
        Some(names) => names
            .iter()
            .map(|n| KernelKind::from_name(n).unwrap_or_else(|| panic!("unknown kernel {n}")))
            .filter(|k| kernel_can_run(*k))
            .collect(),
        None => available_kernels(),
    };
    let numbers = |var: &str, default: &[usize]| -> Vec<usize> {
        list(var).map_or(default.to_vec(), |v| {
            v.iter().map(|n| n.parse().expect("a number")).collect()
        })
    };
    let batches = numbers("QINS_BENCH_N", &[1, 2, 64]);
    let thread_counts = numbers("QINS_BENCH_THREADS", &[1, 2]);
    let shapes: Vec<(usize, usize)> = list("QINS_BENCH_SHAPES").map_or(
        vec![(3072, 8192), (8192, 3072), (16384, 3072)],
        |shapes| {
            shapes
                .iter()
                .map(|s| {
                    let (r, c) = s.split_once('x').expect("ROWSxCOLS");
                    (r.parse().expect("rows"), c.parse().expect("cols"))
                })
                .collect()
        },
    );
    for &(rows, cols) in &shapes {
        for per_row in [true, false] {
            let w = random_codes_matrix(rows, cols, per_row, Signs::Random, 1);
            let weight_bytes = (w.code_bytes() + w.sign_bytes()) as f64;
            for &n in &batches {
                if n > 4 && !per_row {
                    continue;
                }
                let x = random_inputs(n * cols, 2);
                let mut out = vec![0.0f32; n * rows];
                for &kind in &kernels {
                    for &threads in &thread_counts {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .unwrap();
                        let seconds = pool.install(|| {
                            qins_matmul_with(kind, &x, n, &w, &mut out); // warm-up
                            let start = Instant::now();
                            let mut calls = 0u32;
                            while start.elapsed() < Duration::from_millis(400) || calls < 3 {
                                qins_matmul_with(kind, &x, n, &w, &mut out);
                                calls += 1;
                            }
                            start.elapsed().as_secs_f64() / f64::from(calls)
                        });
                        let flops = 2.0 * (n * rows * cols) as f64;
                        println!(
                            "{rows:>5}x{cols:<5} {:<10} n={n:<3} {:<11} threads={threads}: {:8.3} ms  {:6.2} GB/s weights  {:7.2} GFLOP/s",
                            if per_row { "per-row" } else { "per-tensor" },
                            kind.name(),
                            seconds * 1e3,
                            weight_bytes / seconds / 1e9,
                            flops / seconds / 1e9
                        );
                    }
                }
            }
        }
    }
}

/// Several matrices in one call give what one call each gives, on the
/// direct path and the micro-kernel's, matrices of different heights.
#[test]
fn one_call_for_several_matrices_equals_one_call_each() {
    let cols = 300;
    let matrices = [
        random_codes_matrix(24, cols, true, Signs::Random, 31),
        random_codes_matrix(5, cols, false, Signs::Random, 32),
        random_codes_matrix(17, cols, true, Signs::Random, 33),
    ];
    for kind in kernels_under_test() {
        for n in [1, 3, 9] {
            let x = random_inputs(n * cols, 34 + n as u64);
            let expected: Vec<Vec<f32>> = matrices
                .iter()
                .map(|w| {
                    let mut out = vec![f32::NAN; n * w.rows];
                    qins_matmul_with(kind, &x, n, w, &mut out);
                    out
                })
                .collect();
            let mut outs: Vec<Vec<f32>> = matrices
                .iter()
                .map(|w| vec![f32::NAN; n * w.rows])
                .collect();
            let mut parts: Vec<(&QinsMatrix, &mut [f32])> = matrices
                .iter()
                .zip(outs.iter_mut())
                .map(|(w, out)| (w, out.as_mut_slice()))
                .collect();
            qins_matmul_many_with(kind, &x, n, &mut parts);
            assert_eq!(outs, expected, "{} n={n}", kind.name());
        }
    }
}
