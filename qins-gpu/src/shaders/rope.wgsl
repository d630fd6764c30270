// Rotary embedding in place, NeoX style (the first half of each head
// pairs with the second), on `heads` heads of `head_dim` starting at
// column `offset` of each of n rows `stride` wide: q and k are rotated
// where the QKV product left them. `table` holds the cos values
// (n x head_dim/2) then the sin values, computed on the CPU by the
// model's `Rope` (longrope factors and attention factor included).

struct Params {
    n: u32,
    heads: u32,
    head_dim: u32,
    stride: u32,
    offset: u32,
    // Workgroups along x in the dispatch.
    groups_x: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let half = params.head_dim / 2u;
    let index = (group.x + group.y * params.groups_x) * WG + lane;
    let per_row = params.heads * half;
    if index >= params.n * per_row {
        return;
    }
    let t = index / per_row;
    let head = (index % per_row) / half;
    let j = index % half;
    let base = t * params.stride + params.offset + head * params.head_dim;
    let c = table[t * half + j];
    let s = table[(params.n + t) * half + j];
    let x1 = x[base + j];
    let x2 = x[base + j + half];
    x[base + j] = x1 * c - x2 * s;
    x[base + j + half] = x2 * c + x1 * s;
}
