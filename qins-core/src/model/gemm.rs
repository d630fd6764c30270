//! Dense f32 matrix products: prefill over float weights and prefill
//! attention, through the `gemm` crate's blocked, cache-aware kernels (the
//! ones candle's CPU backend uses), behind one safe function.

use gemm::Parallelism;

/// The right-hand operand of [`matmul`], row-major either way.
#[derive(Clone, Copy)]
pub enum Rhs<'a> {
    /// `n x k` rows, used transposed: `out = a · bᵀ` (weights, keys).
    Transposed(&'a [f32]),
    /// `k x n`: `out = a · b` (values).
    Plain(&'a [f32]),
}

/// Below this many multiply-adds one thread is faster than splitting.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// `out (m x n) = scale · a (m x k) · rhs`, all row-major. Panics if a
/// length does not match its shape (a caller bug, never input-dependent).
pub fn matmul(a: &[f32], m: usize, k: usize, rhs: Rhs<'_>, n: usize, scale: f32, out: &mut [f32]) {
    let (b, rhs_cs, rhs_rs) = match rhs {
        // element (kk, j) of the operand is b[j * k + kk]
        Rhs::Transposed(b) => (b, k as isize, 1),
        // element (kk, j) is b[kk * n + j]
        Rhs::Plain(b) => (b, 1, n as isize),
    };
    assert_eq!(a.len(), m * k, "lhs is not {m} x {k}");
    assert_eq!(b.len(), k * n, "rhs does not hold {k} x {n}");
    assert_eq!(out.len(), m * n, "out is not {m} x {n}");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let parallelism = if m * n * k >= PARALLEL_MIN_WORK {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above make every pointer valid for the m x k,
    // k x n and m x n row-major layouts the strides describe; `out` is a
    // unique borrow, so the destination aliases neither operand; with
    // read_dst false the destination is only written.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn random(len: usize, rng: &mut SplitMix64) -> Vec<f32> {
        (0..len)
            .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
            .collect()
    }

    /// The textbook triple loop, in f64.
    fn reference(a: &[f32], m: usize, k: usize, b: &[f32], n: usize, transposed: bool) -> Vec<f32> {
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut sum = 0.0f64;
                for kk in 0..k {
                    let bv = if transposed {
                        b[j * k + kk]
                    } else {
                        b[kk * n + j]
                    };
                    sum += a[i * k + kk] as f64 * bv as f64;
                }
                out[i * n + j] = sum as f32;
            }
        }
        out
    }

    #[test]
    fn both_layouts_match_the_triple_loop_on_odd_and_large_shapes() {
        let mut rng = SplitMix64::new(7);
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 7),
            (17, 33, 9),
            (64, 96, 130),
            (129, 64, 257),
        ] {
            let a = random(m * k, &mut rng);
            let b = random(k * n, &mut rng);
            for transposed in [true, false] {
                let rhs = if transposed {
                    Rhs::Transposed(&b)
                } else {
                    Rhs::Plain(&b)
                };
                let mut out = vec![f32::NAN; m * n];
                matmul(&a, m, k, rhs, n, 0.5, &mut out);
                let expected = reference(&a, m, k, &b, n, transposed);
                for (got, want) in out.iter().zip(&expected) {
                    assert!(
                        (got - 0.5 * want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{m}x{k}x{n} transposed={transposed}: {got} vs {}",
                        0.5 * want
                    );
                }
            }
        }
    }

    #[test]
    fn an_empty_inner_dimension_gives_zeros() {
        let mut out = vec![f32::NAN; 6];
        matmul(&[], 2, 0, Rhs::Plain(&[]), 3, 1.0, &mut out);
        assert_eq!(out, vec![0.0; 6]);
    }
}
