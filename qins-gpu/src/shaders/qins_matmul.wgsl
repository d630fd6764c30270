// QINS matrix times many input rows (prefill): out = x · Wᵀ, tiled.
//
// Same matrix layout as qins_matvec.wgsl. A workgroup computes a tile of
// TILE weight rows x TILE input rows: for each slice of TILE columns it
// decodes the weight tile once into workgroup memory (hi[c >> 4] *
// lo[c & 15] from the rows' nibble tables, code 0 an exact zero, the sign
// bit xored in) and serves every input row of the tile from it, so a
// weight is decoded once per TILE input rows rather than once per row.

struct Shape {
    rows: u32,
    cols: u32,
    // Input rows.
    n: u32,
    row_words: u32,
    // 1: one table entry per row; 0: one for the whole matrix.
    table_stride: u32,
    // Unused here (the dispatch is rows / TILE x n / TILE); shared layout.
    groups_x: u32,
    // Output row t, weight row r goes to out[t * out_stride + out_offset + r]
    // (a product can fill columns of a wider buffer: llama's q, k, v side
    // by side like phi3's fused qkv)...
    out_stride: u32,
    out_offset: u32,
    // ...and is added to what is there when accumulate is 1 (residuals).
    accumulate: u32,
}

// Weight rows, input rows and columns per tile; 8 x 8 threads compute
// 4 x 4 outputs each (few invocations with more work each: cheaper
// barriers, and 8 values loaded per 16 products). TILE columns are one u32
// of sign bits per row.
const TILE: u32 = 32u;
const SIDE: u32 = 8u;
const BLOCK: u32 = 4u;
const THREADS: u32 = SIDE * SIDE;

@group(0) @binding(0) var<uniform> shape: Shape;
@group(0) @binding(1) var<storage, read> codes: array<u32>;
@group(0) @binding(2) var<storage, read> signs: array<u32>;
@group(0) @binding(3) var<storage, read> tables: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

// Rows padded by one to spread the columns a thread reads over banks.
var<workgroup> weight_tile: array<array<f32, 33>, TILE>;
var<workgroup> input_tile: array<array<f32, 33>, TILE>;
// Each tile row's hi[16] and lo[16].
var<workgroup> nibbles: array<array<f32, 32>, TILE>;

@compute @workgroup_size(SIDE, SIDE)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let row0 = group.x * TILE;
    let token0 = group.y * TILE;
    let cols = shape.cols;
    let sign_words = shape.row_words / 8u;

    // The tile rows' tables: 32 x 32 values.
    for (var i = lane; i < TILE * 32u; i += THREADS) {
        let r = i / 32u;
        let row = min(row0 + r, shape.rows - 1u);
        nibbles[r][i % 32u] = tables[row * shape.table_stride * 32u + i % 32u];
    }

    var acc: array<f32, 16>;
    // Thread (lx, ly) owns weight rows 4 ly + i and input rows 4 lx + j.
    let my_rows = BLOCK * local.y;
    let my_tokens = BLOCK * local.x;

    for (var k0 = 0u; k0 < cols; k0 += TILE) {
        workgroupBarrier();
        // Decode: 32 rows x 8 words of 4 codes, 4 words per thread.
        for (var i = lane; i < TILE * 8u; i += THREADS) {
            let r = i / 8u;
            let word = i % 8u;
            let row = row0 + r;
            var packed = 0u;
            var sign_bits = 0u;
            if row < shape.rows {
                packed = codes[row * shape.row_words + k0 / 4u + word];
                sign_bits = signs[row * sign_words + k0 / 32u] >> (word * 4u);
            }
            for (var j = 0u; j < 4u; j++) {
                let code = (packed >> (8u * j)) & 255u;
                let magnitude = select(
                    nibbles[r][code >> 4u] * nibbles[r][16u + (code & 15u)],
                    0.0,
                    code == 0u,
                );
                let negative = (sign_bits >> j) & 1u;
                weight_tile[r][word * 4u + j] =
                    bitcast<f32>(bitcast<u32>(magnitude) ^ (negative << 31u));
            }
        }
        for (var i = lane; i < TILE * TILE; i += THREADS) {
            let t = i / TILE;
            let c = i % TILE;
            let token = token0 + t;
            let col = k0 + c;
            var value = 0.0;
            if token < shape.n && col < cols {
                value = x[token * cols + col];
            }
            input_tile[t][c] = value;
        }
        workgroupBarrier();
        for (var c = 0u; c < TILE; c++) {
            var w: array<f32, 4>;
            var v: array<f32, 4>;
            for (var i = 0u; i < BLOCK; i++) {
                w[i] = weight_tile[my_rows + i][c];
                v[i] = input_tile[my_tokens + i][c];
            }
            for (var i = 0u; i < BLOCK; i++) {
                for (var j = 0u; j < BLOCK; j++) {
                    acc[i * BLOCK + j] += w[i] * v[j];
                }
            }
        }
    }

    for (var i = 0u; i < BLOCK; i++) {
        for (var j = 0u; j < BLOCK; j++) {
            let row = row0 + my_rows + i;
            let token = token0 + my_tokens + j;
            if row < shape.rows && token < shape.n {
                let dst = token * shape.out_stride + shape.out_offset + row;
                out[dst] = acc[i * BLOCK + j] + select(0.0, out[dst], shape.accumulate == 1u);
            }
        }
    }
}
