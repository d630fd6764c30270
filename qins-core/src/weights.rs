//! Resident weights: what a loaded .qins file becomes in memory.
//!
//! QINS matrices stay 8-bit codes plus packed sign bits (borrowed from the
//! memory-mapped file when stored uncompressed); kernels decode on the fly.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use memmap2::Mmap;
use thiserror::Error;

use crate::codec::{self, Granularity, LogRange, RangeFactors};

#[derive(Debug, Error)]
pub enum WeightsError {
    #[error("the model has no tensor '{0}' (the file does not match its architecture)")]
    Missing(String),
    #[error("tensor '{name}' has shape {actual:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("tensor '{name}' is stored as {actual}, expected {expected}")]
    Encoding {
        name: String,
        expected: &'static str,
        actual: &'static str,
    },
}

/// Immutable bytes, either a slice of the mapped file or an owned buffer
/// (sections that were entropy-coded on disk).
#[derive(Clone)]
pub enum Bytes {
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
    Owned(Arc<Vec<u8>>),
}

impl Bytes {
    pub fn is_mapped(&self) -> bool {
        matches!(self, Bytes::Mapped { .. })
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
            Bytes::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_mapped() { "mapped" } else { "owned" };
        write!(f, "Bytes({kind}, {} bytes)", self.len())
    }
}

/// A weight matrix in QINS form.
#[derive(Clone, Debug)]
pub struct QinsMatrix {
    pub rows: usize,
    pub cols: usize,
    codes: Bytes,
    signs: Bytes,
    /// One range per row, or a single range for the whole matrix.
    ranges: Vec<LogRange>,
    /// Each range's factors (two `exp` each), computed once here rather
    /// than per row and call by the kernels.
    factors: Vec<RangeFactors>,
}

impl QinsMatrix {
    /// Callers (the container reader) have validated the section sizes.
    pub fn new(
        rows: usize,
        cols: usize,
        codes: Bytes,
        signs: Bytes,
        ranges: Vec<LogRange>,
    ) -> Self {
        debug_assert_eq!(codes.len(), rows * cols);
        debug_assert_eq!(signs.len(), rows * codec::sign_row_bytes(cols));
        debug_assert!(ranges.len() == 1 || ranges.len() == rows);
        let factors = ranges.iter().map(LogRange::factors).collect();
        Self {
            rows,
            cols,
            codes,
            signs,
            ranges,
            factors,
        }
    }

    /// Builds a resident matrix from a fresh encoding (tests, generators).
    pub fn from_encoded(m: codec::EncodedMatrix) -> Self {
        Self::new(
            m.rows,
            m.cols,
            Bytes::Owned(Arc::new(m.codes)),
            Bytes::Owned(Arc::new(m.signs)),
            m.ranges,
        )
    }

    /// Whether the codes are used in place from the mapped file.
    pub fn is_mapped(&self) -> bool {
        self.codes.is_mapped()
    }

    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    pub fn signs(&self) -> &[u8] {
        &self.signs
    }

    /// Whether the rows share one range (see [`Granularity::of`]).
    pub fn granularity(&self) -> Granularity {
        Granularity::of(self.rows, self.ranges.len())
    }

    pub fn ranges(&self) -> &[LogRange] {
        &self.ranges
    }

    pub fn row_codes(&self, row: usize) -> &[u8] {
        &self.codes[row * self.cols..(row + 1) * self.cols]
    }

    pub fn row_signs(&self, row: usize) -> &[u8] {
        let n = codec::sign_row_bytes(self.cols);
        &self.signs[row * n..(row + 1) * n]
    }

    /// The factors of a row's range (see [`RangeFactors`]).
    pub fn row_factors(&self, row: usize) -> RangeFactors {
        if self.factors.len() == 1 {
            self.factors[0]
        } else {
            self.factors[row]
        }
    }

    pub fn row_range(&self, row: usize) -> LogRange {
        if self.ranges.len() == 1 {
            self.ranges[0]
        } else {
            self.ranges[row]
        }
    }

    /// Decodes one row (embedding lookup).
    pub fn decode_row(&self, row: usize, out: &mut [f32]) {
        let table = self.row_range(row).table();
        let signs = self.row_signs(row);
        for (col, (&code, o)) in self.row_codes(row).iter().zip(out.iter_mut()).enumerate() {
            let m = table[code as usize];
            *o = if codec::is_negative(signs, col) {
                -m
            } else {
                m
            };
        }
    }

    /// Decodes the whole matrix (export and reference checks only).
    pub fn decode(&self) -> Vec<f32> {
        codec::decode_rows(self.rows, self.cols, &self.codes, &self.signs, &self.ranges)
    }

    pub fn code_bytes(&self) -> usize {
        self.codes.len()
    }

    pub fn sign_bytes(&self) -> usize {
        self.signs.len()
    }
}

/// A dense f32 tensor (norm weights and other vectors).
#[derive(Clone, Debug)]
pub struct F32Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Clone, Debug)]
pub enum Weight {
    Qins(QinsMatrix),
    F32(F32Tensor),
}

impl Weight {
    fn kind(&self) -> &'static str {
        match self {
            Weight::Qins(_) => "QINS",
            Weight::F32(_) => "f32",
        }
    }
}

/// Memory held by resident weights, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResidentBytes {
    pub codes: u64,
    pub signs: u64,
    /// Ranges and f32 tensors.
    pub other: u64,
    /// Parameters (weights) in all tensors.
    pub parameters: u64,
}

impl ResidentBytes {
    pub fn total(&self) -> u64 {
        self.codes + self.signs + self.other
    }
}

/// All tensors of a model, by name.
#[derive(Clone, Debug, Default)]
pub struct ResidentWeights {
    tensors: HashMap<String, Weight>,
}

impl ResidentWeights {
    pub fn insert(&mut self, name: impl Into<String>, weight: Weight) {
        self.tensors.insert(name.into(), weight);
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&Weight> {
        self.tensors.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A QINS matrix of exactly `rows x cols`.
    pub fn qins(&self, name: &str, rows: usize, cols: usize) -> Result<&QinsMatrix, WeightsError> {
        match self.tensors.get(name) {
            Some(Weight::Qins(m)) if m.rows == rows && m.cols == cols => Ok(m),
            Some(Weight::Qins(m)) => Err(WeightsError::Shape {
                name: name.into(),
                expected: vec![rows, cols],
                actual: vec![m.rows, m.cols],
            }),
            Some(other) => Err(WeightsError::Encoding {
                name: name.into(),
                expected: "QINS",
                actual: other.kind(),
            }),
            None => Err(WeightsError::Missing(name.into())),
        }
    }

    /// An f32 vector of exactly `len` values.
    pub fn vector(&self, name: &str, len: usize) -> Result<&[f32], WeightsError> {
        match self.tensors.get(name) {
            Some(Weight::F32(t)) if t.data.len() == len && t.shape.len() == 1 => Ok(&t.data),
            Some(Weight::F32(t)) => Err(WeightsError::Shape {
                name: name.into(),
                expected: vec![len],
                actual: t.shape.clone(),
            }),
            Some(other) => Err(WeightsError::Encoding {
                name: name.into(),
                expected: "f32",
                actual: other.kind(),
            }),
            None => Err(WeightsError::Missing(name.into())),
        }
    }

    /// Removes and returns a matrix of exactly `rows x cols`, QINS or (for
    /// float reference models) f32.
    pub fn take_matrix(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Weight, WeightsError> {
        let shape_error = |actual: Vec<usize>| WeightsError::Shape {
            name: name.into(),
            expected: vec![rows, cols],
            actual,
        };
        match self.tensors.remove(name) {
            Some(Weight::Qins(m)) if m.rows == rows && m.cols == cols => Ok(Weight::Qins(m)),
            Some(Weight::Qins(m)) => Err(shape_error(vec![m.rows, m.cols])),
            Some(Weight::F32(t)) if t.shape == [rows, cols] => Ok(Weight::F32(t)),
            Some(Weight::F32(t)) => Err(shape_error(t.shape)),
            None => Err(WeightsError::Missing(name.into())),
        }
    }

    /// Removes and returns an f32 vector of exactly `len` values.
    pub fn take_vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, WeightsError> {
        self.vector(name, len)?;
        match self.tensors.remove(name) {
            Some(Weight::F32(t)) => Ok(t.data),
            _ => Err(WeightsError::Missing(name.into())),
        }
    }

    pub fn resident_bytes(&self) -> ResidentBytes {
        let mut bytes = ResidentBytes::default();
        for weight in self.tensors.values() {
            match weight {
                Weight::Qins(m) => {
                    bytes.codes += m.code_bytes() as u64;
                    bytes.signs += m.sign_bytes() as u64;
                    bytes.other += (m.ranges.len()
                        * (std::mem::size_of::<LogRange>() + std::mem::size_of::<RangeFactors>()))
                        as u64;
                    bytes.parameters += (m.rows * m.cols) as u64;
                }
                Weight::F32(t) => {
                    bytes.other += (t.data.len() * 4) as u64;
                    bytes.parameters += t.data.len() as u64;
                }
            }
        }
        bytes
    }
}
