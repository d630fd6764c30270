//! A key/value cache preallocated to the context limit (never concatenated
//! per token): per layer, keys and values laid out `kv_heads x capacity x head_dim`.
//!
//! Entries are f32, or bf16 for models running the bf16 kernel (which
//! rounds every activation to bf16 anyway): half the memory, and half the
//! bytes a decode step reads from the cache, which at long contexts is the
//! second cost of a step after the weights.

use super::block::{Fill, SequenceCache};
use crate::kernels::{round_to_bf16, widen_bf16};

/// How cached keys and values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvPrecision {
    F32,
    Bf16,
}

#[derive(Clone, Debug)]
enum Planes {
    F32 {
        keys: Vec<Vec<f32>>,
        values: Vec<Vec<f32>>,
    },
    Bf16 {
        keys: Vec<Vec<u16>>,
        values: Vec<Vec<u16>>,
    },
}

/// The cached keys and values of one kv head (`len x head_dim` each).
#[derive(Clone, Copy, Debug)]
pub enum HeadView<'a> {
    F32 { keys: &'a [f32], values: &'a [f32] },
    Bf16 { keys: &'a [u16], values: &'a [u16] },
}

impl HeadView<'_> {
    /// Keys and values widened to f32 (copies).
    pub fn to_f32(self) -> (Vec<f32>, Vec<f32>) {
        match self {
            HeadView::F32 { keys, values } => (keys.to_vec(), values.to_vec()),
            HeadView::Bf16 { keys, values } => (
                keys.iter().map(|&k| widen_bf16(k)).collect(),
                values.iter().map(|&v| widen_bf16(v)).collect(),
            ),
        }
    }
}

#[derive(Clone, Debug)]
pub struct KvCache {
    planes: Planes,
    kv_heads: usize,
    head_dim: usize,
    fill: Fill,
}

impl KvCache {
    pub fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        precision: KvPrecision,
    ) -> Self {
        let size = kv_heads * capacity * head_dim;
        let planes = match precision {
            KvPrecision::F32 => Planes::F32 {
                keys: (0..layers).map(|_| vec![0.0; size]).collect(),
                values: (0..layers).map(|_| vec![0.0; size]).collect(),
            },
            KvPrecision::Bf16 => Planes::Bf16 {
                keys: (0..layers).map(|_| vec![0; size]).collect(),
                values: (0..layers).map(|_| vec![0; size]).collect(),
            },
        };
        Self {
            planes,
            kv_heads,
            head_dim,
            fill: Fill { len: 0, capacity },
        }
    }

    /// A cache with no room, holding no memory (a placeholder while the
    /// real one is lent out).
    pub fn empty() -> Self {
        Self::new(0, 0, 0, 0, KvPrecision::F32)
    }

    pub fn precision(&self) -> KvPrecision {
        match self.planes {
            Planes::F32 { .. } => KvPrecision::F32,
            Planes::Bf16 { .. } => KvPrecision::Bf16,
        }
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        let (layers, entry) = match &self.planes {
            Planes::F32 { keys, .. } => (keys.len(), 4),
            Planes::Bf16 { keys, .. } => (keys.len(), 2),
        };
        2 * layers * self.kv_heads * self.fill.capacity * self.head_dim * entry
    }

    /// Stores keys/values (`tokens x kv_heads x head_dim`) of `layer` at `start..`.
    pub(super) fn write(&mut self, layer: usize, start: usize, k: &[f32], v: &[f32]) {
        let (h, d, cap) = (self.kv_heads, self.head_dim, self.fill.capacity);
        for (t, (kt, vt)) in k.chunks(h * d).zip(v.chunks(h * d)).enumerate() {
            for head in 0..h {
                let dst = (head * cap + start + t) * d;
                let (src_k, src_v) = (&kt[head * d..(head + 1) * d], &vt[head * d..(head + 1) * d]);
                match &mut self.planes {
                    Planes::F32 { keys, values } => {
                        keys[layer][dst..dst + d].copy_from_slice(src_k);
                        values[layer][dst..dst + d].copy_from_slice(src_v);
                    }
                    Planes::Bf16 { keys, values } => {
                        round_into(src_k, &mut keys[layer][dst..dst + d]);
                        round_into(src_v, &mut values[layer][dst..dst + d]);
                    }
                }
            }
        }
    }

    /// Keys and values of one kv head in `layer`, first `len` positions.
    pub(super) fn head(&self, layer: usize, head: usize, len: usize) -> HeadView<'_> {
        let start = head * self.fill.capacity * self.head_dim;
        let end = start + len * self.head_dim;
        match &self.planes {
            Planes::F32 { keys, values } => HeadView::F32 {
                keys: &keys[layer][start..end],
                values: &values[layer][start..end],
            },
            Planes::Bf16 { keys, values } => HeadView::Bf16 {
                keys: &keys[layer][start..end],
                values: &values[layer][start..end],
            },
        }
    }
}

impl SequenceCache for KvCache {
    fn fill(&self) -> Fill {
        self.fill
    }

    fn fill_mut(&mut self) -> &mut Fill {
        &mut self.fill
    }

    fn empty() -> Self {
        KvCache::empty()
    }
}

fn round_into(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = round_to_bf16(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bf16_cache_keeps_rounded_entries_in_half_the_bytes() {
        let (layers, heads, d, capacity) = (2, 3, 4, 5);
        let mut full = KvCache::new(layers, heads, d, capacity, KvPrecision::F32);
        let mut half = KvCache::new(layers, heads, d, capacity, KvPrecision::Bf16);
        assert_eq!(half.precision(), KvPrecision::Bf16);
        assert_eq!(2 * half.bytes(), full.bytes());
        // Two tokens at positions 1..3 of layer 1.
        let k: Vec<f32> = (0..2 * heads * d).map(|i| 1.0 + i as f32 / 7.0).collect();
        let v: Vec<f32> = k.iter().map(|x| -x * 3.3).collect();
        full.write(1, 1, &k, &v);
        half.write(1, 1, &k, &v);
        for head in 0..heads {
            let (fk, fv) = full.head(1, head, 3).to_f32();
            let (hk, hv) = half.head(1, head, 3).to_f32();
            for (f, h) in fk.iter().chain(&fv).zip(hk.iter().chain(&hv)) {
                assert_eq!(*h, widen_bf16(round_to_bf16(*f)));
            }
            // Position 1 of head `head` holds token 0's entries for it.
            assert_eq!(fk[d..2 * d], k[head * d..(head + 1) * d]);
        }
    }
}
