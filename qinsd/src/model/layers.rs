//! Building blocks shared by the architectures: linear layers on QINS (or,
//! for float reference models, f32) matrices, RMSNorm, SwiGLU, attention.

use candle_core::{D, Device, Tensor};
use rayon::prelude::*;

use super::ModelError;
use crate::kernels::{KernelKind, qins_matmul_with};
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

    /// `x` is `n x cols`; returns `n x rows`. `kernel` runs QINS matrices.
    pub fn forward(&self, x: &[f32], n: usize, kernel: KernelKind) -> Result<Vec<f32>, ModelError> {
        let mut out = vec![0.0f32; n * self.rows()];
        match self {
            Self::Qins(m) => qins_matmul_with(kernel, x, n, m, &mut out),
            // Many rows: candle's blocked GEMM instead of one pass over the
            // weights per row (the copy into a tensor is small next to it).
            Self::Dense { rows, cols, data } if n > 1 => {
                let w = Tensor::from_slice(data, (*rows, *cols), &Device::Cpu)?;
                let x = Tensor::from_slice(x, (n, *cols), &Device::Cpu)?;
                return Ok(x.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?);
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
        out.extend(
            gate.iter()
                .zip(up)
                .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u),
        );
    }
    out
}

/// Causal attention of `n` new query tokens (`n x heads x head_dim`) at
/// positions `start..start + n` over `len = start + n` cached keys/values
/// per kv head. Returns `n x heads x head_dim`.
pub fn attention(
    q: &[f32],
    heads: usize,
    head_dim: usize,
    kv_heads: usize,
    start: usize,
    kv: impl Fn(usize) -> (Vec<f32>, Vec<f32>),
) -> Result<Vec<f32>, ModelError> {
    let n = q.len() / (heads * head_dim);
    let len = start + n;
    let group = heads / kv_heads;
    let device = Device::Cpu;
    // queries as heads x n x head_dim
    let q = Tensor::from_slice(q, (n, heads, head_dim), &device)?
        .transpose(0, 1)?
        .contiguous()?;
    let mask = causal_mask(n, start, &device)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut outputs = Vec::with_capacity(kv_heads);
    for kv_head in 0..kv_heads {
        let (k, v) = kv(kv_head);
        let k = Tensor::from_vec(k, (len, head_dim), &device)?;
        let v = Tensor::from_vec(v, (len, head_dim), &device)?;
        let q_group = q
            .narrow(0, kv_head * group, group)?
            .reshape((group * n, head_dim))?;
        let scores = (q_group.matmul(&k.t()?)? * scale)?.reshape((group, n, len))?;
        let scores = scores.broadcast_add(&mask)?;
        let max = scores.max_keepdim(D::Minus1)?;
        let exp = scores.broadcast_sub(&max)?.exp()?;
        let probs = exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?;
        let out = probs
            .reshape((group * n, len))?
            .matmul(&v)?
            .reshape((group, n, head_dim))?;
        outputs.push(out);
    }
    // heads x n x head_dim -> n x heads x head_dim
    let out = Tensor::cat(&outputs, 0)?.transpose(0, 1)?.contiguous()?;
    Ok(out.flatten_all()?.to_vec1::<f32>()?)
}

/// `n x (start + n)`: 0 where query `i` (at position `start + i`) may attend, -inf after.
fn causal_mask(n: usize, start: usize, device: &Device) -> Result<Tensor, ModelError> {
    let len = start + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..len).map(move |j| {
                if j <= start + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (n, len), device)?)
}
