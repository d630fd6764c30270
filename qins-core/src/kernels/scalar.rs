//! The portable f32 kernel: the reference that every SIMD kernel is tested
//! against, and the fallback of CPUs without one.
//!
//! A row's 256 magnitudes are expanded once from the nibble tables (bit
//! for bit [`NibbleTables::magnitude`]); a weight is a lookup with its sign
//! bit XORed in. The frame (threading, decode steps, prefill) is
//! [`super::float`]'s, over "registers" of 8 f32 that the compiler keeps in
//! SIMD registers where the target has them.

use super::NibbleTables;
use super::float::{FloatLanes, float_kernel};

/// The `scalar` kernel.
pub struct Scalar;

float_kernel!(Scalar, "scalar", true);

/// Lanes of a "register".
const LANES: usize = 8;

impl FloatLanes for Scalar {
    const LANES: usize = LANES;
    type V = [f32; LANES];
    type Decoder = [f32; 256];

    unsafe fn decoder(tables: &NibbleTables) -> [f32; 256] {
        expand(tables)
    }

    unsafe fn decode(table: &[f32; 256], codes: &[u8], signs: &[u8]) -> [[f32; LANES]; 4] {
        std::array::from_fn(|k| {
            let sign_byte = signs[k];
            std::array::from_fn(|bit| {
                let code = codes[k * LANES + bit];
                let negative = u32::from(sign_byte >> bit & 1);
                f32::from_bits(table[usize::from(code)].to_bits() ^ (negative << 31))
            })
        })
    }

    unsafe fn load(p: *const f32) -> [f32; LANES] {
        // SAFETY: 8 readable f32 (the caller's contract).
        unsafe { p.cast::<[f32; LANES]>().read_unaligned() }
    }

    unsafe fn store(p: *mut f32, v: [f32; LANES]) {
        // SAFETY: 8 writable f32 (the caller's contract).
        unsafe { p.cast::<[f32; LANES]>().write_unaligned(v) }
    }

    unsafe fn zero() -> [f32; LANES] {
        [0.0; LANES]
    }

    unsafe fn fma(acc: [f32; LANES], a: [f32; LANES], b: [f32; LANES]) -> [f32; LANES] {
        std::array::from_fn(|i| acc[i] + a[i] * b[i])
    }

    unsafe fn sum(a: [f32; LANES], b: [f32; LANES]) -> f32 {
        let lanes: [f32; LANES] = std::array::from_fn(|i| a[i] + b[i]);
        let pairs = [
            lanes[0] + lanes[4],
            lanes[1] + lanes[5],
            lanes[2] + lanes[6],
            lanes[3] + lanes[7],
        ];
        (pairs[0] + pairs[2]) + (pairs[1] + pairs[3])
    }
}

/// The magnitude of every code.
pub fn expand(tables: &NibbleTables) -> [f32; 256] {
    std::array::from_fn(|code| tables.magnitude(code as u8))
}
