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

// Weight rows, input rows and columns per tile; 16 x 16 threads compute
// 2 x 2 outputs each. TILE columns are one u32 of sign bits per row.
const TILE: u32 = 32u;
const SIDE: u32 = 16u;

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

    // The tile rows' tables: 32 x 32 values, 4 per thread.
    for (var i = lane; i < TILE * 32u; i += SIDE * SIDE) {
        let r = i / 32u;
        let row = min(row0 + r, shape.rows - 1u);
        nibbles[r][i % 32u] = tables[row * shape.table_stride * 32u + i % 32u];
    }

    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    // Thread (lx, ly) owns weight rows 2 ly + {0, 1} and input rows 2 lx + {0, 1}.
    let my_rows = 2u * local.y;
    let my_tokens = 2u * local.x;
    // The thread's share of the decode: tile row lane / 8, word lane % 8.
    let decode_row = lane / 8u;
    let decode_word = lane % 8u;
    let sign_words = shape.row_words / 8u;

    for (var k0 = 0u; k0 < cols; k0 += TILE) {
        workgroupBarrier();
        let row = row0 + decode_row;
        var packed = 0u;
        var sign_bits = 0u;
        if row < shape.rows {
            packed = codes[row * shape.row_words + k0 / 4u + decode_word];
            sign_bits = signs[row * sign_words + k0 / 32u] >> (decode_word * 4u);
        }
        for (var j = 0u; j < 4u; j++) {
            let code = (packed >> (8u * j)) & 255u;
            let magnitude = select(
                nibbles[decode_row][code >> 4u] * nibbles[decode_row][16u + (code & 15u)],
                0.0,
                code == 0u,
            );
            let negative = (sign_bits >> j) & 1u;
            weight_tile[decode_row][decode_word * 4u + j] =
                bitcast<f32>(bitcast<u32>(magnitude) ^ (negative << 31u));
        }
        for (var i = lane; i < TILE * TILE; i += SIDE * SIDE) {
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
            let w0 = weight_tile[my_rows][c];
            let w1 = weight_tile[my_rows + 1u][c];
            let x0 = input_tile[my_tokens][c];
            let x1 = input_tile[my_tokens + 1u][c];
            acc[0] += w0 * x0;
            acc[1] += w1 * x0;
            acc[2] += w0 * x1;
            acc[3] += w1 * x1;
        }
    }

    for (var i = 0u; i < 4u; i++) {
        let row = row0 + my_rows + i % 2u;
        let token = token0 + my_tokens + i / 2u;
        if row < shape.rows && token < shape.n {
            let dst = token * shape.out_stride + shape.out_offset + row;
            out[dst] = acc[i] + select(0.0, out[dst], shape.accumulate == 1u);
        }
    }
}
