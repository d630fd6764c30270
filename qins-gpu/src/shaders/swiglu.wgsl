// SwiGLU: out[t, i] = silu(gate[t, i]) * up[t, i] for n rows of `ff`,
// gate and up read from column offsets of rows `stride` wide (the fused
// [gate | up] product, phi3's or llama's two products written side by
// side).

struct Params {
    n: u32,
    ff: u32,
    stride: u32,
    gate_offset: u32,
    up_offset: u32,
    groups_x: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> gate_up: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let index = (group.x + group.y * params.groups_x) * WG + lane;
    if index >= params.n * params.ff {
        return;
    }
    let t = index / params.ff;
    let i = index % params.ff;
    let g = gate_up[t * params.stride + params.gate_offset + i];
    let u = gate_up[t * params.stride + params.up_offset + i];
    out[index] = g / (1.0 + exp(-g)) * u;
}
