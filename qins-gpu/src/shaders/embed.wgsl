// Embedding lookup: row `tokens[t]` of a QINS matrix (the layout of
// qins_matvec.wgsl), decoded to f32 into row t of out. One workgroup per
// token; each weight is hi[c >> 4] * lo[c & 15] with its sign bit, code 0
// an exact zero.

struct Params {
    cols: u32,
    row_words: u32,
    table_stride: u32,
    n: u32,
}

const WG: u32 = 128u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;
@group(0) @binding(2) var<storage, read> signs: array<u32>;
@group(0) @binding(3) var<storage, read> tables: array<f32>;
@group(0) @binding(4) var<storage, read> tokens: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let t = group.x;
    if t >= params.n {
        return;
    }
    let row = tokens[t];
    let table = row * params.table_stride * 32u;
    let code_base = row * params.row_words;
    let sign_base = row * (params.row_words / 8u);
    for (var c = lane; c < params.cols; c += WG) {
        let code = (codes[code_base + c / 4u] >> (8u * (c % 4u))) & 255u;
        let negative = (signs[sign_base + c / 32u] >> (c % 32u)) & 1u;
        let magnitude = select(
            tables[table + (code >> 4u)] * tables[table + 16u + (code & 15u)],
            0.0,
            code == 0u,
        );
        out[t * params.cols + c] = bitcast<f32>(bitcast<u32>(magnitude) ^ (negative << 31u));
    }
}
