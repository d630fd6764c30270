//! A QINS matrix on the GPU: still codes, sign bits and decode factors.
//!
//! Layout (what the shaders in `shaders/qins_mat*.wgsl` read):
//! - `codes`: the 8-bit codes, row-major, each row padded with code 0 to
//!   a multiple of [`ROW_ALIGN`] codes, read as u32 words (four codes per
//!   word, the first in the low byte: the bytes as they are in the file);
//! - `signs`: the sign bits, LSB first, each row padded to the same
//!   multiple, so a row's bits start on a u32 (one word per 32 codes);
//! - `tables`: each range's nibble tables, `hi[16]` then `lo[16]` in f32
//!   ([`NibbleTables`], built from the range's decode factors exactly as
//!   the CPU kernels build them), one entry per row or one for the whole
//!   matrix.
//!
//! A matrix whose columns are already a multiple of [`ROW_ALIGN`] (every
//! matrix of Phi-3.5 and SmolLM2) is uploaded straight from its bytes;
//! others are repacked row by row. Padding codes are 0, so they decode to
//! an exact zero and add nothing.

use std::borrow::Cow;

use qins_core::codec::sign_row_bytes;
use qins_core::kernels::NibbleTables;
use qins_core::weights::QinsMatrix;

use crate::GpuError;
use crate::device::{GpuContext, TrackedBuffer};

/// Codes per padded row: a multiple of 32 so each row's sign bits fill
/// whole u32 words.
pub const ROW_ALIGN: usize = 32;

/// f32 values per table entry: `hi[16]` then `lo[16]`.
pub const TABLE_FLOATS: usize = 32;

pub struct GpuMatrix {
    pub rows: usize,
    pub cols: usize,
    /// u32 words of codes per padded row (a multiple of 8).
    pub row_words: usize,
    /// 1 when each row has its own table entry, 0 for one shared entry.
    pub table_stride: usize,
    pub codes: TrackedBuffer,
    pub signs: TrackedBuffer,
    pub tables: TrackedBuffer,
}

impl GpuMatrix {
    /// Uploads `matrix` (named `name` in errors) into three storage buffers.
    pub fn upload(ctx: &GpuContext, name: &str, matrix: &QinsMatrix) -> Result<Self, GpuError> {
        let padded_cols = padded_cols(matrix.cols);
        let codes = padded_codes(matrix);
        let signs = padded_signs(matrix);
        let tables = nibble_tables(matrix);
        let table_bytes: &[u8] = bytemuck::cast_slice(&tables);
        let limit = ctx.limits().max_storage_buffer_binding_size;
        for bytes in [codes.len(), signs.len(), table_bytes.len()] {
            if bytes as u64 > limit {
                return Err(GpuError::TooLarge {
                    name: name.to_string(),
                    bytes: bytes as u64,
                    limit,
                });
            }
        }
        let usage = wgpu::BufferUsages::STORAGE;
        Ok(Self {
            rows: matrix.rows,
            cols: matrix.cols,
            row_words: padded_cols / 4,
            table_stride: usize::from(tables.len() > TABLE_FLOATS),
            codes: ctx.buffer_with(&format!("{name} codes"), &codes, usage)?,
            signs: ctx.buffer_with(&format!("{name} signs"), &signs, usage)?,
            tables: ctx.buffer_with(&format!("{name} tables"), table_bytes, usage)?,
        })
    }

    /// Bytes the matrix holds on the GPU.
    pub fn bytes(&self) -> u64 {
        self.codes.size() + self.signs.size() + self.tables.size()
    }
}

fn padded_cols(cols: usize) -> usize {
    cols.next_multiple_of(ROW_ALIGN).max(ROW_ALIGN)
}

/// The codes with each row padded to [`padded_cols`] (borrowed when no
/// padding is needed).
fn padded_codes(matrix: &QinsMatrix) -> Cow<'_, [u8]> {
    let padded = padded_cols(matrix.cols);
    if padded == matrix.cols {
        return Cow::Borrowed(matrix.codes());
    }
    let mut out = vec![0u8; matrix.rows * padded];
    for (row, dst) in out.chunks_exact_mut(padded).enumerate() {
        dst[..matrix.cols].copy_from_slice(matrix.row_codes(row));
    }
    Cow::Owned(out)
}

/// The sign bits with each row padded to [`padded_cols`] bits.
fn padded_signs(matrix: &QinsMatrix) -> Cow<'_, [u8]> {
    let padded = padded_cols(matrix.cols) / 8;
    let stored = sign_row_bytes(matrix.cols);
    if padded == stored {
        return Cow::Borrowed(matrix.signs());
    }
    let mut out = vec![0u8; matrix.rows * padded];
    for (row, dst) in out.chunks_exact_mut(padded).enumerate() {
        dst[..stored].copy_from_slice(matrix.row_signs(row));
    }
    Cow::Owned(out)
}

/// One [`NibbleTables`] per range, flattened.
fn nibble_tables(matrix: &QinsMatrix) -> Vec<f32> {
    let entries = matrix.ranges().len();
    let mut out = Vec::with_capacity(entries * TABLE_FLOATS);
    for entry in 0..entries {
        let tables = NibbleTables::from_factors(matrix.row_factors(entry));
        out.extend_from_slice(&tables.hi);
        out.extend_from_slice(&tables.lo);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use qins_core::codec::{EncodeOptions, encode_matrix};

    fn matrix(rows: usize, cols: usize) -> QinsMatrix {
        let weights: Vec<f32> = (0..rows * cols)
            .map(|i| {
                if i % 5 == 0 {
                    0.0
                } else {
                    (i as f32 * 0.37).sin()
                }
            })
            .collect();
        QinsMatrix::from_encoded(
            encode_matrix(&weights, rows, cols, &EncodeOptions::default()).expect("encodes"),
        )
    }

    #[test]
    fn padding_keeps_every_code_and_sign_bit_at_its_column() {
        for (rows, cols) in [(3, 7), (2, 32), (4, 45), (1, 64)] {
            let m = matrix(rows, cols);
            let padded = padded_cols(cols);
            let codes = padded_codes(&m);
            let signs = padded_signs(&m);
            assert_eq!(codes.len(), rows * padded);
            assert_eq!(signs.len(), rows * padded / 8);
            for row in 0..rows {
                for col in 0..padded {
                    let code = codes[row * padded + col];
                    let negative = signs[row * padded / 8 + col / 8] >> (col % 8) & 1 == 1;
                    if col < cols {
                        assert_eq!(code, m.row_codes(row)[col], "{rows}x{cols} ({row}, {col})");
                        assert_eq!(
                            negative,
                            qins_core::codec::is_negative(m.row_signs(row), col)
                        );
                    } else {
                        assert_eq!((code, negative), (0, false), "padding ({row}, {col})");
                    }
                }
            }
        }
    }

    #[test]
    fn tables_hold_the_cpu_kernels_nibble_tables() {
        let m = matrix(3, 40);
        let tables = nibble_tables(&m);
        assert_eq!(tables.len(), 3 * TABLE_FLOATS);
        for row in 0..3 {
            let expected = NibbleTables::from_factors(m.row_factors(row));
            let entry = &tables[row * TABLE_FLOATS..(row + 1) * TABLE_FLOATS];
            assert_eq!(entry[..16], expected.hi);
            assert_eq!(entry[16..], expected.lo);
        }
    }
}
