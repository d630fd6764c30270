//! A key/value cache preallocated to the context limit (never concatenated
//! per token): per layer, keys and values laid out `kv_heads x capacity x head_dim`.

#[derive(Clone, Debug)]
pub struct KvCache {
    pub(super) keys: Vec<Vec<f32>>,
    pub(super) values: Vec<Vec<f32>>,
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
}

impl KvCache {
    pub fn new(layers: usize, kv_heads: usize, head_dim: usize, capacity: usize) -> Self {
        let size = kv_heads * capacity * head_dim;
        Self {
            keys: (0..layers).map(|_| vec![0.0; size]).collect(),
            values: (0..layers).map(|_| vec![0.0; size]).collect(),
            kv_heads,
            head_dim,
            capacity,
            len: 0,
        }
    }

    /// A cache with no room, holding no memory (a placeholder while the
    /// real one is lent out).
    pub fn empty() -> Self {
        Self::new(0, 0, 0, 0)
    }

    /// Tokens whose keys and values are cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every token from `len` on (prefix reuse keeps the rest).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        2 * self.keys.len() * self.kv_heads * self.capacity * self.head_dim * 4
    }

    /// Stores keys/values (`tokens x kv_heads x head_dim`) of `layer` at `start..`.
    pub(super) fn write(&mut self, layer: usize, start: usize, k: &[f32], v: &[f32]) {
        let (h, d, cap) = (self.kv_heads, self.head_dim, self.capacity);
        for (t, (kt, vt)) in k.chunks(h * d).zip(v.chunks(h * d)).enumerate() {
            for head in 0..h {
                let dst = (head * cap + start + t) * d;
                self.keys[layer][dst..dst + d].copy_from_slice(&kt[head * d..(head + 1) * d]);
                self.values[layer][dst..dst + d].copy_from_slice(&vt[head * d..(head + 1) * d]);
            }
        }
    }

    pub(super) fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    /// Keys and values of one kv head in `layer`, first `len` positions.
    pub(super) fn head(&self, layer: usize, head: usize, len: usize) -> (&[f32], &[f32]) {
        let start = head * self.capacity * self.head_dim;
        let end = start + len * self.head_dim;
        (
            &self.keys[layer][start..end],
            &self.values[layer][start..end],
        )
    }
}
