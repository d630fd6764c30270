//! Building blocks shared by the architectures: linear layers on QINS (or,
//! for float reference models, f32) matrices, RMSNorm, SwiGLU.

use rayon::prelude::*;

use super::ModelError;
use super::gemm::{Rhs, matmul};
use crate::kernels::{KernelKind, qins_matmul_many_with, qins_matmul_with};
use crate::weights::{QinsMatrix, Weight};

/// `y = x · Wᵀ` over a resident matrix.
#[derive(Clone, Debug)]
pub enum Linear {
    /// Decoded on the fly inside the kernel: the normal case.
    Qins(QinsMatrix),
    /// Row-major f32 (`--reference-f32` models used as quality baselines).
    Dense {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
}

impl Linear {
    pub fn from_weight(weight: Weight) -> Self {
        match weight {
            Weight::Qins(m) => Self::Qins(m),
            Weight::F32(t) => Self::Dense {
                rows: t.shape[0],
                cols: t.shape[1],
                data: t.data,
            },
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            Self::Qins(m) => m.rows,
            Self::Dense { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Self::Qins(m) => m.cols,
            Self::Dense { cols, .. } => *cols,
        }
    }

    /// Bytes of the matrix as stored: codes and sign bits for QINS (the
    /// per-row ranges aside), 4 a weight for f32.
    pub fn weight_bytes(&self) -> u64 {
        match self {
            Self::Qins(m) => (m.code_bytes() + m.sign_bytes()) as u64,
            Self::Dense { data, .. } => data.len() as u64 * 4,
        }
    }

    /// `x` is `n x cols`; returns `n x rows`. `kernel` runs QINS matrices.
    pub fn forward(&self, x: &[f32], n: usize, kernel: KernelKind) -> Result<Vec<f32>, ModelError> {
        let mut out = vec![0.0f32; n * self.rows()];
        match self {
            Self::Qins(m) => qins_matmul_with(kernel, x, n, m, &mut out),
            // Many rows: a blocked GEMM instead of one pass over the
            // weights per row.
            Self::Dense { rows, cols, data } if n > 1 => {
                matmul(x, n, *cols, Rhs::Transposed(data), *rows, 1.0, &mut out);
            }
            Self::Dense { rows, cols, data } => {
                out.par_chunks_mut(*rows)
                    .zip(x.par_chunks(*cols))
                    .for_each(|(o, xi)| {
                        for (r, slot) in o.iter_mut().enumerate() {
                            *slot = dot(&data[r * cols..(r + 1) * cols], xi);
                        }
                    });
            }
        }
        Ok(out)
    }

    /// [`Linear::forward`] of several matrices of the same width on the
    /// same input (a layer's q, k and v, or gate and up): QINS matrices in
    /// one kernel call ([`qins_matmul_many_with`]), so the small ones of
    /// small models share one parallel section.
    pub fn forward_many(
        linears: &[&Linear],
        x: &[f32],
        n: usize,
        kernel: KernelKind,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let matrices: Option<Vec<&QinsMatrix>> = linears
            .iter()
            .map(|l| match l {
                Self::Qins(m) => Some(m),
                Self::Dense { .. } => None,
            })
            .collect();
        let Some(matrices) = matrices else {
            return linears.iter().map(|l| l.forward(x, n, kernel)).collect();
        };
        let mut outs: Vec<Vec<f32>> = matrices.iter().map(|m| vec![0.0f32; n * m.rows]).collect();
        let mut parts: Vec<(&QinsMatrix, &mut [f32])> = matrices
            .iter()
            .zip(outs.iter_mut())
            .map(|(m, out)| (*m, out.as_mut_slice()))
            .collect();
        qins_matmul_many_with(kernel, x, n, &mut parts);
        Ok(outs)
    }

    /// One row of the matrix as f32 (embedding lookup).
    pub fn row(&self, row: usize, out: &mut [f32]) {
        match self {
            Self::Qins(m) => m.decode_row(row, out),
            Self::Dense { cols, data, .. } => {
                out.copy_from_slice(&data[row * cols..(row + 1) * cols])
            }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// RMSNorm of each `dim`-sized row: `x / sqrt(mean(x²) + eps) * weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f64) -> Vec<f32> {
    let dim = weight.len();
    let mut out = vec![0.0f32; x.len()];
    for (row, o) in x.chunks(dim).zip(out.chunks_mut(dim)) {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let scale = 1.0 / (mean_sq + eps as f32).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(row).zip(weight) {
            *o = w * (v * scale);
        }
    }
    out
}

/// `silu(gate) * up` where `gate_up` rows are `[gate | up]` of `ff` each.
pub fn swiglu(gate_up: &[f32], ff: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks(2 * ff) {
        let (gate, up) = row.split_at(ff);
        out.extend(gate.iter().zip(up).map(|(&g, &u)| silu(g) * u));
    }
    out
}

/// `silu(gate) * up` element by element, from separate gate and up rows.
pub fn silu_times(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(&g, &u)| silu(g) * u).collect()
}

#[inline]
fn silu(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}
