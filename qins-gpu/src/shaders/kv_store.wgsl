// Stores n tokens' keys and values (already rotated, read from columns
// `k_offset` and `v_offset` of rows first_row .. first_row + n, `stride`
// wide) at positions
// start .. start + n of one layer's cache, laid out
// kv_heads x capacity x head_dim as on the CPU. The module is prefixed
// with `alias kv = f32;` or, where the device has shader-f16,
// `enable f16; alias kv = f16;`.

struct Params {
    n: u32,
    kv_heads: u32,
    head_dim: u32,
    capacity: u32,
    start: u32,
    stride: u32,
    k_offset: u32,
    v_offset: u32,
    // Row of the segment's first token in qkv.
    first_row: u32,
    groups_x: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> keys: array<kv>;
@group(0) @binding(3) var<storage, read_write> values: array<kv>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let index = (group.x + group.y * params.groups_x) * WG + lane;
    let d = params.head_dim;
    let per_row = params.kv_heads * d;
    if index >= params.n * per_row {
        return;
    }
    let t = index / per_row;
    let head = (index % per_row) / d;
    let j = index % d;
    let src = (params.first_row + t) * params.stride + head * d + j;
    let dst = (head * params.capacity + params.start + t) * d + j;
    keys[dst] = kv(qkv[src + params.k_offset]);
    values[dst] = kv(qkv[src + params.v_offset]);
}
