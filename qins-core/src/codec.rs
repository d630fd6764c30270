//! The QINS codec: an 8-bit inverse-logarithmic magnitude code per weight plus
//! one sign bit per weight stored apart.
//!
//! For a range with bounds `log_min <= ln|w| <= log_max`:
//!
//! ```text
//! normalized = (ln|w| - log_min) / (log_max - log_min)
//! code       = clamp(round(255 - normalized * 254), 1, 255)
//! |w|        = exp(log_min + (255 - code) / 254 * (log_max - log_min))
//! ```
//!
//! The largest magnitude of a range gets code 1, the smallest code 255, and
//! code 0 is reserved for an exact zero (true zeros and pruned weights).
//! Decoding never calls `exp` per weight: every range has a 256-entry table.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Code reserved for an exact zero.
pub const ZERO_CODE: u8 = 0;
/// Code of the largest magnitude in a range.
pub const LARGEST_CODE: u8 = 1;
/// Code of the smallest magnitude in a range (and of everything clipped below it).
pub const SMALLEST_CODE: u8 = 255;
/// Number of code steps between the largest and the smallest magnitude.
const CODE_STEPS: f64 = 254.0;

/// Default fraction of the smallest non-zero magnitudes of each range that is
/// clipped up to `log_min` (see TECHNICAL_SPEC.md, "Choosing the clip").
pub const DEFAULT_CLIP_QUANTILE: f64 = 0.001;

/// Ranges larger than this are sampled (strided) to find the clip quantile.
const QUANTILE_SAMPLE_LIMIT: usize = 1 << 20;

#[derive(Debug, Error, PartialEq)]
pub enum CodecError {
    #[error("weight {index} is not finite ({value})")]
    NonFinite { index: usize, value: f32 },
    #[error("matrix of {rows}x{cols} needs {expected} values, got {actual}")]
    ShapeMismatch {
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },
    #[error("clip quantile must be in [0, 0.5), got {0}")]
    BadClip(f64),
    #[error("prune threshold must be a finite non-negative number, got {0}")]
    BadPrune(f32),
}

/// Which weights share one logarithmic range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    /// One range per output row (default: rows differ a lot in scale).
    #[default]
    PerRow,
    /// One range for the whole tensor (the original QINS scheme).
    PerTensor,
}

impl Granularity {
    /// The granularity of a matrix of `rows` rows with `ranges` ranges: one
    /// range over several rows is per-tensor (a one-row matrix is per-row
    /// either way).
    pub fn of(rows: usize, ranges: usize) -> Self {
        if ranges == 1 && rows != 1 {
            Granularity::PerTensor
        } else {
            Granularity::PerRow
        }
    }
}

impl std::fmt::Display for Granularity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PerRow => "per-row",
            Self::PerTensor => "per-tensor",
        })
    }
}

impl std::str::FromStr for Granularity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "per-row" | "row" => Ok(Self::PerRow),
            "per-tensor" | "tensor" => Ok(Self::PerTensor),
            other => Err(format!(
                "unknown granularity '{other}' (expected per-row or per-tensor)"
            )),
        }
    }
}

/// Options of the lossy encoding step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncodeOptions {
    pub granularity: Granularity,
    /// Fraction of the smallest non-zero magnitudes that sets `log_min`.
    pub clip_quantile: f64,
    /// Magnitudes strictly below this become exact zeros (code 0).
    pub prune_below: Option<f32>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            granularity: Granularity::PerRow,
            clip_quantile: DEFAULT_CLIP_QUANTILE,
            prune_below: None,
        }
    }
}

impl EncodeOptions {
    pub fn validate(&self) -> Result<(), CodecError> {
        if !(0.0..0.5).contains(&self.clip_quantile) {
            return Err(CodecError::BadClip(self.clip_quantile));
        }
        if let Some(t) = self.prune_below
            && (!t.is_finite() || t < 0.0)
        {
            return Err(CodecError::BadPrune(t));
        }
        Ok(())
    }
}

/// A range's magnitudes as a geometric series, in f64: code `c` in 1..=255
/// has magnitude `scale * ratio^(255 - c)`. Kept per row by resident
/// matrices, so kernels build their tables without calling `exp` (or
/// dividing: `rho` and `largest` are what the integer kernels start from).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RangeFactors {
    /// The smallest magnitude, `exp(log_min)` (code 255).
    pub scale: f64,
    /// The step between neighbouring codes, `exp((log_max - log_min) / 254)`.
    pub ratio: f64,
    /// `1 / ratio`.
    pub rho: f64,
    /// The largest magnitude (code 1), `scale / rho^254` as
    /// [`RangeFactors::magnitude_of`] computes it.
    pub largest: f64,
}

impl RangeFactors {
    pub fn new(scale: f64, ratio: f64) -> Self {
        let rho = 1.0 / ratio;
        let mut factors = Self {
            scale,
            ratio,
            rho,
            largest: 0.0,
        };
        factors.largest = factors.magnitude_of(1);
        factors
    }

    /// `rho^(2^k)` for `k` in 0..8, by squaring.
    pub fn rho_squares(&self) -> [f64; 8] {
        let mut squares = [self.rho; 8];
        for k in 1..8 {
            squares[k] = squares[k - 1] * squares[k - 1];
        }
        squares
    }

    /// The magnitude of code `code` in 1..=255, `scale / rho^(255 - code)`
    /// with the power taken bit by bit from [`RangeFactors::rho_squares`]
    /// (the integer kernels' rule; within ~1e-15 of `scale *
    /// ratio^(255 - code)`).
    pub fn magnitude_of(&self, code: u8) -> f64 {
        let steps = 255 - u32::from(code.max(1));
        let squares = self.rho_squares();
        let power = (0..8)
            .filter(|k| steps >> k & 1 == 1)
            .fold(1.0, |p, k| p * squares[k]);
        self.scale / power
    }
}

/// The logarithmic bounds of one range.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRange {
    pub log_min: f32,
    pub log_max: f32,
}

impl LogRange {
    /// The range of an all-zero block: every code is 0, the bounds are unused.
    pub const EMPTY: LogRange = LogRange {
        log_min: 0.0,
        log_max: 0.0,
    };

    /// The two exponentials every decode table of this range starts from
    /// (see [`RangeFactors`]).
    pub fn factors(&self) -> RangeFactors {
        let log_min = f64::from(self.log_min);
        RangeFactors::new(
            log_min.exp(),
            ((f64::from(self.log_max) - log_min) / CODE_STEPS).exp(),
        )
    }

    /// Code of a non-zero magnitude.
    pub fn encode(&self, magnitude: f32) -> u8 {
        let span = f64::from(self.log_max) - f64::from(self.log_min);
        if span <= 0.0 {
            return LARGEST_CODE;
        }
        let normalized = ((magnitude as f64).ln() - f64::from(self.log_min)) / span;
        let code = (255.0 - normalized * CODE_STEPS).round();
        code.clamp(f64::from(LARGEST_CODE), f64::from(SMALLEST_CODE)) as u8
    }

    /// Magnitude of a code (exact zero for code 0). Canonical definition:
    /// computed in f64, rounded once to f32.
    pub fn decode(&self, code: u8) -> f32 {
        if code == ZERO_CODE {
            return 0.0;
        }
        let span = f64::from(self.log_max) - f64::from(self.log_min);
        let steps_from_min = f64::from(SMALLEST_CODE - code) / CODE_STEPS;
        (f64::from(self.log_min) + steps_from_min * span).exp() as f32
    }

    /// Natural log of the magnitude below which a weight counts as clipped:
    /// half a code step under `log_min`, where rounding to code 255 ends
    /// and clipping begins.
    pub fn clip_bound(&self) -> f64 {
        let span = f64::from(self.log_max) - f64::from(self.log_min);
        f64::from(self.log_min) - span / CODE_STEPS / 2.0
    }

    /// The 256-entry decode table of this range.
    pub fn table(&self) -> [f32; 256] {
        let mut table = [0.0f32; 256];
        for (code, slot) in table.iter_mut().enumerate() {
            *slot = self.decode(code as u8);
        }
        table
    }
}

/// Bytes of packed sign bits for one row of `cols` weights (rows are byte-padded).
pub fn sign_row_bytes(cols: usize) -> usize {
    cols.div_ceil(8)
}

/// Whether weight `col` of a packed sign row is negative (bit set, LSB first).
#[inline]
pub fn is_negative(sign_row: &[u8], col: usize) -> bool {
    sign_row[col / 8] >> (col % 8) & 1 == 1
}

/// A matrix in QINS form: row-major codes, row-padded sign bits, and one range
/// per row ([`Granularity::PerRow`]) or one for all rows.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedMatrix {
    pub rows: usize,
    pub cols: usize,
    pub codes: Vec<u8>,
    pub signs: Vec<u8>,
    pub ranges: Vec<LogRange>,
}

impl EncodedMatrix {
    pub fn granularity(&self) -> Granularity {
        Granularity::of(self.rows, self.ranges.len())
    }

    /// Decodes the whole matrix to f32 (tests, export and quality reports only;
    /// inference decodes inside the kernels).
    pub fn decode(&self) -> Vec<f32> {
        decode_rows(self.rows, self.cols, &self.codes, &self.signs, &self.ranges)
    }
}

/// Decodes row-major codes and signs with their ranges to f32.
pub fn decode_rows(
    rows: usize,
    cols: usize,
    codes: &[u8],
    signs: &[u8],
    ranges: &[LogRange],
) -> Vec<f32> {
    let sign_bytes = sign_row_bytes(cols);
    let mut out = Vec::with_capacity(rows * cols);
    let mut table = ranges.first().map(LogRange::table).unwrap_or([0.0; 256]);
    for row in 0..rows {
        if ranges.len() > 1 {
            table = ranges[row].table();
        }
        let row_codes = &codes[row * cols..(row + 1) * cols];
        let row_signs = &signs[row * sign_bytes..(row + 1) * sign_bytes];
        for (col, &code) in row_codes.iter().enumerate() {
            let magnitude = table[code as usize];
            out.push(if is_negative(row_signs, col) {
                -magnitude
            } else {
                magnitude
            });
        }
    }
    out
}

/// Encodes a row-major `rows x cols` matrix.
pub fn encode_matrix(
    weights: &[f32],
    rows: usize,
    cols: usize,
    options: &EncodeOptions,
) -> Result<EncodedMatrix, CodecError> {
    options.validate()?;
    if weights.len() != rows * cols {
        return Err(CodecError::ShapeMismatch {
            rows,
            cols,
            expected: rows * cols,
            actual: weights.len(),
        });
    }
    if let Some(index) = weights.iter().position(|w| !w.is_finite()) {
        return Err(CodecError::NonFinite {
            index,
            value: weights[index],
        });
    }
    let ranges = match options.granularity {
        Granularity::PerTensor => vec![fit_range(weights, options)],
        Granularity::PerRow => weights
            .par_chunks(cols.max(1))
            .take(rows)
            .map(|row| fit_range(row, options))
            .collect(),
    };
    let sign_bytes = sign_row_bytes(cols);
    let mut codes = vec![ZERO_CODE; rows * cols];
    let mut signs = vec![0u8; rows * sign_bytes];
    if cols > 0 && sign_bytes > 0 {
        codes
            .par_chunks_mut(cols)
            .zip(signs.par_chunks_mut(sign_bytes))
            .enumerate()
            .for_each(|(row, (row_codes, row_signs))| {
                let range = ranges[if ranges.len() == 1 { 0 } else { row }];
                let src = &weights[row * cols..(row + 1) * cols];
                encode_row(src, range, options.prune_below, row_codes, row_signs);
            });
    }
    Ok(EncodedMatrix {
        rows,
        cols,
        codes,
        signs,
        ranges,
    })
}

fn encode_row(
    src: &[f32],
    range: LogRange,
    prune_below: Option<f32>,
    codes: &mut [u8],
    signs: &mut [u8],
) {
    for (col, (&w, code)) in src.iter().zip(codes.iter_mut()).enumerate() {
        if is_kept(w, prune_below) {
            *code = range.encode(w.abs());
            if w < 0.0 {
                signs[col / 8] |= 1 << (col % 8);
            }
        }
    }
}

/// Whether a weight gets a non-zero code (true zeros and pruned weights do not).
fn is_kept(w: f32, prune_below: Option<f32>) -> bool {
    w != 0.0 && prune_below.is_none_or(|t| w.abs() >= t)
}

/// Fits `log_max` to the largest kept magnitude and `log_min` to the clip
/// quantile of the kept magnitudes.
fn fit_range(weights: &[f32], options: &EncodeOptions) -> LogRange {
    let stride = weights.len().div_ceil(QUANTILE_SAMPLE_LIMIT).max(1);
    let mut max = 0.0f32;
    let mut sample: Vec<f32> = Vec::with_capacity(weights.len().min(QUANTILE_SAMPLE_LIMIT));
    for (i, &w) in weights.iter().enumerate() {
        if is_kept(w, options.prune_below) {
            let m = w.abs();
            max = max.max(m);
            if i % stride == 0 {
                sample.push(m);
            }
        }
    }
    if max == 0.0 {
        return LogRange::EMPTY;
    }
    let min = if sample.is_empty() {
        max
    } else {
        let k = ((sample.len() - 1) as f64 * options.clip_quantile).round() as usize;
        let (_, kth, _) = sample.select_nth_unstable_by(k, f32::total_cmp);
        *kth
    };
    LogRange {
        log_min: min.ln(),
        log_max: max.ln(),
    }
}

/// Accumulated error statistics of an encoding (mergeable across tensors).
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorStats {
    pub weights: u64,
    pub nonzero_weights: u64,
    pub zero_codes: u64,
    pub sign_mismatches: u64,
    pub sum_rel_err: f64,
    pub max_rel_err: f64,
    /// Non-zero weights more than half a code step below their range's
    /// minimum: stored at the minimum (see [`DEFAULT_CLIP_QUANTILE`]).
    pub clipped_weights: u64,
    /// Largest relative error among the weights that were not clipped: the
    /// rounding to the nearest code, at most half a code step.
    pub max_rel_err_in_range: f64,
    pub sum_sq_err: f64,
    pub sum_sq_ref: f64,
    pub code_histogram: Box<[u64; 256]>,
}

impl Default for ErrorStats {
    fn default() -> Self {
        Self {
            weights: 0,
            nonzero_weights: 0,
            zero_codes: 0,
            sign_mismatches: 0,
            sum_rel_err: 0.0,
            max_rel_err: 0.0,
            clipped_weights: 0,
            max_rel_err_in_range: 0.0,
            sum_sq_err: 0.0,
            sum_sq_ref: 0.0,
            code_histogram: Box::new([0; 256]),
        }
    }
}

impl ErrorStats {
    /// Compares original weights with their encoding, row by row (no decoded
    /// copy of the matrix), in parallel over fixed blocks of rows merged in
    /// order, so the float sums (and the report) are deterministic.
    pub fn measure(original: &[f32], encoded: &EncodedMatrix) -> Self {
        const ROWS_PER_BLOCK: usize = 64;
        let cols = encoded.cols.max(1);
        let sign_bytes = sign_row_bytes(encoded.cols);
        let blocks: Vec<Self> = original
            .par_chunks(cols * ROWS_PER_BLOCK)
            .enumerate()
            .map(|(block, rows)| {
                let mut stats = Self::default();
                for (i, src) in rows.chunks(cols).enumerate() {
                    let row = block * ROWS_PER_BLOCK + i;
                    let range = encoded.ranges[if encoded.ranges.len() == 1 { 0 } else { row }];
                    let codes = &encoded.codes[row * cols..(row + 1) * cols];
                    let signs = &encoded.signs[row * sign_bytes..(row + 1) * sign_bytes];
                    stats.merge(&Self::measure_row(src, codes, signs, range));
                }
                stats
            })
            .collect();
        let mut total = Self::default();
        for block in &blocks {
            total.merge(block);
        }
        total
    }

    fn measure_row(original: &[f32], codes: &[u8], signs: &[u8], range: LogRange) -> Self {
        let table = range.table();
        let clip_bound = range.clip_bound();
        let mut stats = Self::default();
        for (col, (&w, &code)) in original.iter().zip(codes).enumerate() {
            let magnitude = table[code as usize];
            let d = if is_negative(signs, col) {
                -magnitude
            } else {
                magnitude
            };
            stats.weights += 1;
            stats.code_histogram[code as usize] += 1;
            if code == ZERO_CODE {
                stats.zero_codes += 1;
            }
            let (w, d) = (f64::from(w), f64::from(d));
            stats.sum_sq_err += (w - d) * (w - d);
            stats.sum_sq_ref += w * w;
            if w != 0.0 {
                stats.nonzero_weights += 1;
                let rel = (w - d).abs() / w.abs();
                stats.sum_rel_err += rel;
                stats.max_rel_err = stats.max_rel_err.max(rel);
                // Only the smallest code (or the one code of a range of one
                // magnitude) can hold a clipped weight: the logarithm is
                // taken for those few alone.
                if matches!(code, SMALLEST_CODE | LARGEST_CODE) && w.abs().ln() < clip_bound {
                    stats.clipped_weights += 1;
                } else {
                    stats.max_rel_err_in_range = stats.max_rel_err_in_range.max(rel);
                }
                if d != 0.0 && (d < 0.0) != (w < 0.0) {
                    stats.sign_mismatches += 1;
                }
            }
        }
        stats
    }

    pub fn merge(&mut self, other: &ErrorStats) {
        self.weights += other.weights;
        self.nonzero_weights += other.nonzero_weights;
        self.zero_codes += other.zero_codes;
        self.sign_mismatches += other.sign_mismatches;
        self.sum_rel_err += other.sum_rel_err;
        self.max_rel_err = self.max_rel_err.max(other.max_rel_err);
        self.clipped_weights += other.clipped_weights;
        self.max_rel_err_in_range = self.max_rel_err_in_range.max(other.max_rel_err_in_range);
        self.sum_sq_err += other.sum_sq_err;
        self.sum_sq_ref += other.sum_sq_ref;
        for (a, b) in self
            .code_histogram
            .iter_mut()
            .zip(other.code_histogram.iter())
        {
            *a += b;
        }
    }

    pub fn summary(&self) -> ErrorSummary {
        let nonzero = self.nonzero_weights.max(1) as f64;
        ErrorSummary {
            weights: self.weights,
            mean_rel_err: self.sum_rel_err / nonzero,
            max_rel_err: self.max_rel_err,
            max_rel_err_in_range: self.max_rel_err_in_range,
            clipped_fraction: self.clipped_weights as f64 / self.weights.max(1) as f64,
            rel_rms_err: if self.sum_sq_ref > 0.0 {
                (self.sum_sq_err / self.sum_sq_ref).sqrt()
            } else {
                0.0
            },
            sign_preservation: 1.0 - self.sign_mismatches as f64 / nonzero,
            zero_fraction: self.zero_codes as f64 / self.weights.max(1) as f64,
            code_entropy_bits: entropy_bits(&self.code_histogram[..]),
        }
    }
}

/// Error figures as written into the .qins quality report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorSummary {
    pub weights: u64,
    /// Mean of |w - w'| / |w| over non-zero weights.
    pub mean_rel_err: f64,
    /// Largest |w - w'| / |w| over every non-zero weight, clipped ones
    /// included. Not a measure of quality: a weight 300 times smaller than
    /// its range's minimum is stored at the minimum, a relative error of
    /// 29,900%, while its absolute error stays below that tiny minimum.
    /// Kept for completeness; judge a conversion by `rel_rms_err`,
    /// `max_rel_err_in_range` and `clipped_fraction`.
    pub max_rel_err: f64,
    /// Largest |w - w'| / |w| over the weights inside their range (not
    /// clipped): half a code step, `exp((log_max - log_min) / 508) - 1`, of
    /// the widest range. 0 in files written before it was recorded.
    #[serde(default)]
    pub max_rel_err_in_range: f64,
    /// Fraction of all weights clipped: more than half a code step below
    /// their range's minimum, so stored at the minimum (the `--clip`
    /// quantile of each range, minus ties). 0 in files written before it was
    /// recorded.
    #[serde(default)]
    pub clipped_fraction: f64,
    /// ||w - w'|| / ||w||.
    pub rel_rms_err: f64,
    /// Fraction of non-zero weights whose decoded sign matches (zeros excluded).
    pub sign_preservation: f64,
    /// Fraction of weights stored as exact zeros (true zeros and pruned).
    pub zero_fraction: f64,
    /// Shannon entropy of the code histogram, bits per weight.
    pub code_entropy_bits: f64,
}

/// Shannon entropy in bits of a histogram.
pub fn entropy_bits(histogram: &[u64]) -> f64 {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return 0.0;
    }
    histogram
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = n as f64 / total as f64;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random weights in a realistic Gaussian-like shape.
    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::SplitMix64::new(seed);
        (0..n).map(|_| rng.next_normal() as f32 * 0.02).collect()
    }

    #[test]
    fn largest_magnitude_gets_code_one_and_smallest_255() {
        let w = [0.5f32, -0.001, 0.25, -0.1];
        let options = EncodeOptions {
            clip_quantile: 0.0,
            ..Default::default()
        };
        let enc = encode_matrix(&w, 1, 4, &options).unwrap();
        assert_eq!(enc.codes[0], LARGEST_CODE);
        assert_eq!(enc.codes[1], SMALLEST_CODE);
    }

    #[test]
    fn codes_are_inversely_ordered_with_magnitude() {
        let w = weights(4096, 1);
        let enc = encode_matrix(&w, 1, 4096, &EncodeOptions::default()).unwrap();
        let mut pairs: Vec<(f32, u8)> = w.iter().map(|x| x.abs()).zip(enc.codes.clone()).collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        for pair in pairs.windows(2) {
            assert!(
                pair[0].1 >= pair[1].1,
                "larger magnitude got larger code: {pair:?}"
            );
        }
    }

    #[test]
    fn signs_are_preserved_exactly() {
        let w = weights(3 * 37, 2);
        let enc = encode_matrix(&w, 3, 37, &EncodeOptions::default()).unwrap();
        let dec = enc.decode();
        for (a, b) in w.iter().zip(&dec) {
            assert_eq!(a.is_sign_negative(), b.is_sign_negative(), "{a} vs {b}");
        }
        let stats = ErrorStats::measure(&w, &enc).summary();
        assert_eq!(stats.sign_preservation, 1.0);
    }

    #[test]
    fn zero_code_only_for_zeros_and_pruned() {
        let mut w = weights(1000, 3);
        w[10] = 0.0;
        w[500] = -0.0;
        let enc = encode_matrix(&w, 1, 1000, &EncodeOptions::default()).unwrap();
        for (i, (&x, &c)) in w.iter().zip(&enc.codes).enumerate() {
            assert_eq!(c == ZERO_CODE, x == 0.0, "index {i}");
        }
        assert!(!is_negative(&enc.signs, 500), "exact zeros count as +");

        let pruned = EncodeOptions {
            prune_below: Some(0.01),
            ..Default::default()
        };
        let enc = encode_matrix(&w, 1, 1000, &pruned).unwrap();
        for (&x, &c) in w.iter().zip(&enc.codes) {
            assert_eq!(c == ZERO_CODE, x.abs() < 0.01);
        }
    }

    #[test]
    fn round_trip_error_is_within_half_a_code_step() {
        let w = weights(64 * 256, 4);
        for granularity in [Granularity::PerRow, Granularity::PerTensor] {
            let options = EncodeOptions {
                granularity,
                clip_quantile: 0.0,
                prune_below: None,
            };
            let enc = encode_matrix(&w, 64, 256, &options).unwrap();
            let dec = enc.decode();
            for (row, (src, out)) in w.chunks(256).zip(dec.chunks(256)).enumerate() {
                let r = enc.ranges[if enc.ranges.len() == 1 { 0 } else { row }];
                let half_step = f64::from(r.log_max - r.log_min) / 254.0 / 2.0;
                for (&a, &b) in src.iter().zip(out) {
                    let log_err = (f64::from(a.abs()).ln() - f64::from(b.abs()).ln()).abs();
                    assert!(log_err <= half_step * 1.0001 + 1e-6, "{a} -> {b}");
                }
            }
        }
    }

    #[test]
    fn clipping_the_tail_lowers_rms_error() {
        let w = weights(512 * 512, 5);
        let err = |q: f64| {
            let options = EncodeOptions {
                granularity: Granularity::PerTensor,
                clip_quantile: q,
                prune_below: None,
            };
            let enc = encode_matrix(&w, 512, 512, &options).unwrap();
            ErrorStats::measure(&w, &enc).summary().rel_rms_err
        };
        let (unclipped, clipped) = (err(0.0), err(DEFAULT_CLIP_QUANTILE));
        assert!(clipped < unclipped, "clip {clipped} vs none {unclipped}");
        assert!(clipped < 0.012, "relative RMS error {clipped}");
    }

    #[test]
    fn clipped_weights_are_counted_and_kept_out_of_the_in_range_maximum() {
        let mut w = weights(1000, 6);
        for i in [3, 300, 700] {
            w[i] = 1e-7;
        }
        let options = EncodeOptions {
            clip_quantile: 0.01,
            ..Default::default()
        };
        let enc = encode_matrix(&w, 1, 1000, &options).unwrap();
        let stats = ErrorStats::measure(&w, &enc);
        // The 1% quantile is the 11th smallest magnitude: the 10 below it
        // are clipped, less any within half a code step of it.
        assert!(
            (3..=10).contains(&stats.clipped_weights),
            "{}",
            stats.clipped_weights
        );
        let summary = stats.summary();
        assert_eq!(
            summary.clipped_fraction,
            stats.clipped_weights as f64 / 1000.0
        );
        assert!(summary.max_rel_err > 100.0, "{}", summary.max_rel_err);
        let r = enc.ranges[0];
        let half_step = (f64::from(r.log_max - r.log_min) / 254.0 / 2.0).exp() - 1.0;
        assert!(
            summary.max_rel_err_in_range <= half_step * 1.001,
            "{} vs half a step {half_step}",
            summary.max_rel_err_in_range
        );
        assert!(summary.max_rel_err_in_range > half_step * 0.5);

        let unclipped = EncodeOptions {
            clip_quantile: 0.0,
            ..Default::default()
        };
        let enc = encode_matrix(&w, 1, 1000, &unclipped).unwrap();
        assert_eq!(ErrorStats::measure(&w, &enc).clipped_weights, 0);
    }

    #[test]
    fn decode_table_matches_decode() {
        let r = LogRange {
            log_min: -9.0,
            log_max: -1.5,
        };
        let t = r.table();
        assert_eq!(t[0], 0.0);
        assert!((t[1] - (-1.5f64).exp() as f32).abs() < 1e-6);
        assert!((t[255] - (-9.0f64).exp() as f32).abs() < 1e-9);
        for c in 1..=255u8 {
            assert_eq!(t[c as usize], r.decode(c));
            assert_eq!(
                r.encode(t[c as usize]),
                c,
                "code {c} must survive a round trip"
            );
        }
    }

    #[test]
    fn rejects_non_finite_and_bad_shapes() {
        let err = encode_matrix(&[1.0, f32::NAN], 1, 2, &EncodeOptions::default()).unwrap_err();
        assert!(matches!(err, CodecError::NonFinite { index: 1, .. }));
        let err = encode_matrix(&[1.0], 1, 2, &EncodeOptions::default()).unwrap_err();
        assert!(matches!(err, CodecError::ShapeMismatch { .. }));
    }

    #[test]
    fn all_zero_and_constant_rows() {
        let enc = encode_matrix(&[0.0; 8], 2, 4, &EncodeOptions::default()).unwrap();
        assert!(enc.codes.iter().all(|&c| c == 0));
        assert!(enc.decode().iter().all(|&x| x == 0.0));
        let enc = encode_matrix(&[0.3, -0.3, 0.3], 1, 3, &EncodeOptions::default()).unwrap();
        for (a, b) in enc.decode().iter().zip([0.3f32, -0.3, 0.3]) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn entropy_of_uniform_histogram() {
        assert!((entropy_bits(&[5; 256]) - 8.0).abs() < 1e-12);
        assert_eq!(entropy_bits(&[0, 7, 0]), 0.0);
    }
}
