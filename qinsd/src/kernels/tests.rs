use super::*;
use crate::codec::{EncodeOptions, Granularity, encode_matrix};
use crate::rng::SplitMix64;

/// Gaussian weights with some exact zeros and a few rows of very different scale.
fn random_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..rows * cols)
        .map(|i| {
            let row_scale = if (i / cols.max(1)) % 3 == 0 {
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
    for i in 0..n * rows {
        let err = (f64::from(out[i]) - expected[i]).abs();
        // f32 accumulation error bound, with slack: ~ cols * eps * Σ|x||w|.
        let tolerance = 1e-6 * (cols as f64).sqrt() * magnitude[i] + 1e-30;
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
    let mut out = vec![f32::NAN; 2 * rows];
    qins_matmul(&x, 2, &w, &mut out);
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
        assert_eq!(out[t * rows], alternating);
        assert_eq!(out[t * rows + 1], 0.0);
        assert_eq!(out[t * rows + 2], skip_thirds);
        assert_eq!(out[t * rows + 3], 0.0);
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
