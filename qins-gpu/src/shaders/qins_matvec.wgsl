// QINS matrix times a few input rows (decode steps): out = x · Wᵀ.
//
// W (`rows x cols`) stays 8-bit codes, packed four per u32, rows padded to
// `row_words` words (a multiple of 8, so each row's sign bits start on a
// u32); sign bits are packed 32 per u32, LSB first, `row_words / 8` words
// per row; `tables` holds each row's nibble tables (hi[16] then lo[16],
// built on the CPU from the row's decode factors, see `NibbleTables`), or
// one shared entry when `table_stride` is 0 (a per-tensor range).
//
// A workgroup takes ROWS weight rows, LANES threads per row: the rows'
// nibble tables go to workgroup memory, each weight is decoded as
// hi[c >> 4] * lo[c & 15] (code 0 an exact zero, the sign bit xored in),
// exactly the CPU reference's decode, each thread dots a strided share
// of its row's words with every input row, and a tree reduction over the
// row's LANES threads sums the shares. Several rows per workgroup keep the
// per-workgroup cost (table load, barriers) small next to the row's work.

struct Shape {
    rows: u32,
    cols: u32,
    // Input rows, 1 ..= TOKENS.
    n: u32,
    row_words: u32,
    // 1: one table entry per row; 0: one for the whole matrix.
    table_stride: u32,
    // Workgroups along x in the dispatch (rows beyond 65535 use y too).
    groups_x: u32,
    // Output row t, weight row r goes to out[t * out_stride + out_offset + r]
    // (a product can fill columns of a wider buffer: llama's q, k, v side
    // by side like phi3's fused qkv)...
    out_stride: u32,
    out_offset: u32,
    // ...and is added to what is there when accumulate is 1 (residuals).
    accumulate: u32,
}

const WG: u32 = 128u;
const LANES: u32 = 16u;
const ROWS: u32 = WG / LANES;
// TOKENS (1 or 4) is declared in front of this body: the input rows one
// compiled variant takes, a constant so the per-token loops unroll and the
// sums stay in registers. Input rows beyond `n` read row n - 1 again and
// are not written.

@group(0) @binding(0) var<uniform> shape: Shape;
@group(0) @binding(1) var<storage, read> codes: array<u32>;
@group(0) @binding(2) var<storage, read> signs: array<u32>;
@group(0) @binding(3) var<storage, read> tables: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> nibbles: array<array<f32, 32>, ROWS>;
var<workgroup> partial: array<array<f32, WG>, TOKENS>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let first_row = (group.x + group.y * shape.groups_x) * ROWS;
    if first_row >= shape.rows {
        return;
    }
    for (var i = lane; i < ROWS * 32u; i += WG) {
        let row = min(first_row + i / 32u, shape.rows - 1u);
        nibbles[i / 32u][i % 32u] = tables[row * shape.table_stride * 32u + i % 32u];
    }
    workgroupBarrier();

    let local_row = lane / LANES;
    let part = lane % LANES;
    let row = first_row + local_row;
    let cols = shape.cols;
    let n = shape.n;
    var acc: array<f32, TOKENS>;
    if row < shape.rows {
        let code_base = row * shape.row_words;
        let sign_base = row * (shape.row_words / 8u);
        let words = (cols + 3u) / 4u;
        for (var w = part; w < words; w += LANES) {
            let packed = codes[code_base + w];
            let sign_bits = signs[sign_base + w / 8u] >> ((w % 8u) * 4u);
            for (var j = 0u; j < 4u; j++) {
                let col = 4u * w + j;
                if col < cols {
                    let code = (packed >> (8u * j)) & 255u;
                    let magnitude = select(
                        nibbles[local_row][code >> 4u] * nibbles[local_row][16u + (code & 15u)],
                        0.0,
                        code == 0u,
                    );
                    let negative = (sign_bits >> j) & 1u;
                    let weight = bitcast<f32>(bitcast<u32>(magnitude) ^ (negative << 31u));
                    for (var t = 0u; t < TOKENS; t++) {
                        acc[t] += weight * x[min(t, n - 1u) * cols + col];
                    }
                }
            }
        }
    }

    for (var t = 0u; t < TOKENS; t++) {
        partial[t][lane] = acc[t];
    }
    workgroupBarrier();
    for (var half = LANES / 2u; half > 0u; half /= 2u) {
        if part < half {
            for (var t = 0u; t < TOKENS; t++) {
                partial[t][lane] += partial[t][lane + half];
            }
        }
        workgroupBarrier();
    }
    // Lane t of each row writes input row t's output.
    if row < shape.rows && part < n {
        let dst = part * shape.out_stride + shape.out_offset + row;
        let sum = partial[part][local_row * LANES];
        out[dst] = sum + select(0.0, out[dst], shape.accumulate == 1u);
    }
}
